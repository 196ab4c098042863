//! Utilities for the plugins' tests.

use std::path::{Path, PathBuf};

/// The shared data folder: `$DTM_DATA_DIR`, else `<workspace root>/../shared/data`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DTM_DATA_DIR") {
        return PathBuf::from(d);
    }
    // This crate is `<workspace>/benchmarks/common`.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

/// Find a built plugin library `lib<name>.so` (or `.dylib` / `.dll`) next to the running test
/// binary (`target/<profile>/deps`) or one level up.
pub fn find_plugin(lib_name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let names = [
        format!("lib{lib_name}.so"),
        format!("lib{lib_name}.dylib"),
        format!("{lib_name}.dll"),
    ];
    for dir in [deps, deps.parent()?] {
        for n in &names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}
