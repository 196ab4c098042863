//! dtm's evaluation engine: the model runtime (checkpoints, the shared decoder, tokenisation) and
//! the request engine that scores text with it.

pub mod checkpoint;
pub mod device;
pub mod engine;
pub mod error;
pub mod evaluate;
pub mod model;
pub mod tokenizer;
