//! bbh plugin (in progress).
