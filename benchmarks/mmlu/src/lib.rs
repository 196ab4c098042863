//! mmlu plugin (in progress).
