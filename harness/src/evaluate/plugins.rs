//! Finding benchmark plugins: the built-in ones next to the `harness` binary, every plugin in
//! `--plugin-dir` folders, and files named with `--plugin`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use dtm_plugin_api::host::{Plugin, PluginError};

/// The file name prefix of the built-in plugins (`libdtm_bench_gsm8k.so`, …).
const BUILTIN_PREFIX: &str = "dtm_bench_";

fn is_library(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

fn library_stem(path: &Path) -> Option<&str> {
    let stem = path.file_stem()?.to_str()?;
    Some(stem.strip_prefix("lib").unwrap_or(stem))
}

/// Candidate plugin files: built-ins beside `exe_dir`, any library in `dirs`, and `files`.
pub fn candidates(
    exe_dir: Option<&Path>,
    dirs: &[PathBuf],
    files: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: cannot list plugin folder: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_library(p))
            .collect();
        v.sort();
        Ok(v)
    };
    if let Some(dir) = exe_dir {
        out.extend(
            list(dir)?
                .into_iter()
                .filter(|p| library_stem(p).is_some_and(|s| s.starts_with(BUILTIN_PREFIX))),
        );
    }
    for dir in dirs {
        out.extend(list(dir)?);
    }
    for f in files {
        if !f.exists() {
            bail!("{}: no such plugin file", f.display());
        }
        out.push(f.clone());
    }
    Ok(out)
}

/// Opens every candidate. A plugin named by `--plugin` must open; a file found by listing a
/// folder that fails to open is reported and skipped, so one bad file does not stop the others.
/// Later plugins of the same name replace earlier ones (a `--plugin` overrides a built-in).
pub fn open_all(
    candidates: &[PathBuf],
    explicit: &[PathBuf],
    warn: &mut dyn FnMut(String),
) -> Result<Vec<Plugin>> {
    let mut plugins: Vec<Plugin> = Vec::new();
    for path in candidates {
        match Plugin::open(path) {
            Ok(p) => {
                plugins.retain(|q| q.describe().name != p.describe().name);
                plugins.push(p);
            }
            Err(e) if explicit.contains(path) => return Err(e.into()),
            Err(e @ PluginError::MissingSymbol { .. }) => warn(format!(
                "skipping {}: not a dtm plugin ({e})",
                path.display()
            )),
            Err(e) => warn(format!("skipping {}: {e}", path.display())),
        }
    }
    Ok(plugins)
}

/// The folder of the running executable, where the built-in plugins are installed.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(Path::to_owned)
}
