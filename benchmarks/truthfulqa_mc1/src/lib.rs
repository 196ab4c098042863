//! truthfulqa_mc1 plugin (in progress).
