//! arc_challenge plugin (in progress).
