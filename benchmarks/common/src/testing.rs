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

/// A scratch data folder holding copies of `paths` (files or folders, relative to the shared
/// data folder), for tests that damage a file. Each call gets a fresh folder.
pub fn scratch_copy(paths: &[&str]) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let root = std::env::temp_dir().join(format!(
        "dtm-scratch-data-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&root);
    fn copy(from: &Path, to: &Path) {
        if from.is_dir() {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                copy(&e.path(), &to.join(e.file_name()));
            }
        } else {
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
    }
    for p in paths {
        copy(&data_dir().join(p), &root.join(p));
    }
    root
}
