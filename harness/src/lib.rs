//! dtm's evaluation engine: the model runtime (checkpoints, the shared decoder, tokenisation) and
//! the request engine that scores text with it.

pub mod data;
pub mod engine;
pub mod evaluate;
pub mod report;

// The runtime lives in `dtm-model` (shared with the trainer); re-exported so that paths such as
// `dtm_harness::model::Decoder` keep working.
pub use dtm_model::{checkpoint, device, error, model, tokenizer};
