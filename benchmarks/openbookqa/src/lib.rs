//! openbookqa plugin (in progress).
