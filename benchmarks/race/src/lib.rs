//! race plugin (in progress).
