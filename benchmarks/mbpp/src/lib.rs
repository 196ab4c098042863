//! mbpp plugin (in progress).
