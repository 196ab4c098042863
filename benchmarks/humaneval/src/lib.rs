//! humaneval plugin (in progress).
