//! Finding benchmark plugins: the built-in ones next to the `harness` binary, every plugin in
//! `--plugin-dir` folders, and files named with `--plugin`.

use std::path::{Path, PathBuf};

use dtm_plugin_api::host::{Plugin, PluginError};

use super::error::{EvalError, Result};

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

/// Where a candidate plugin file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Installed beside the harness binary.
    Builtin,
    /// Found by listing a `--plugin-dir`.
    Folder,
    /// Named with `--plugin`.
    Explicit,
}

/// Candidate plugin files: built-ins beside `exe_dir`, any library in `dirs`, and `files`.
pub fn candidates(
    exe_dir: Option<&Path>,
    dirs: &[PathBuf],
    files: &[PathBuf],
) -> Result<Vec<(PathBuf, Origin)>> {
    let mut out = Vec::new();
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| EvalError::io(dir, "cannot list plugin folder", e))?
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
                .filter(|p| library_stem(p).is_some_and(|s| s.starts_with(BUILTIN_PREFIX)))
                .map(|p| (p, Origin::Builtin)),
        );
    }
    for dir in dirs {
        out.extend(list(dir)?.into_iter().map(|p| (p, Origin::Folder)));
    }
    for f in files {
        if !f.is_file() {
            return Err(EvalError::PluginFile {
                path: f.clone(),
                problem: if f.exists() {
                    "not a file (pass a plugin library, or its folder with --plugin-dir)".into()
                } else {
                    "no such plugin file".into()
                },
            });
        }
        out.push((f.clone(), Origin::Explicit));
    }
    Ok(out)
}

/// Opens every candidate. A plugin named by `--plugin` must open; a file found by listing a
/// folder that fails to open is reported and skipped, so one bad file does not stop the others.
/// Two plugins of one name are refused (naming both files), except that a plugin from
/// `--plugin`/`--plugin-dir` replaces a built-in of its name when `replace_builtins` is set.
pub fn open_all(
    candidates: &[(PathBuf, Origin)],
    replace_builtins: bool,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<Plugin>> {
    let mut plugins: Vec<(Plugin, Origin)> = Vec::new();
    for (path, origin) in candidates {
        match Plugin::open(path) {
            Ok(p) => {
                let name = p.describe().name.clone();
                if let Some(k) = plugins.iter().position(|(q, _)| q.describe().name == name) {
                    let (earlier, earlier_origin) = &plugins[k];
                    if *earlier_origin == Origin::Builtin && replace_builtins {
                        plugins.remove(k);
                    } else {
                        let hint = if *earlier_origin == Origin::Builtin {
                            "; pass --replace-builtin to use it instead of the built-in"
                        } else {
                            ""
                        };
                        return Err(EvalError::PluginFile {
                            path: path.clone(),
                            problem: format!(
                                "plugin `{name}` is already provided by {}{hint}",
                                earlier.path().display()
                            ),
                        });
                    }
                }
                plugins.push((p, *origin));
            }
            Err(e) if *origin == Origin::Explicit => return Err(e.into()),
            Err(e @ PluginError::MissingSymbol { .. }) => warn(format!(
                "skipping {}: not a dtm plugin ({e})",
                path.display()
            )),
            Err(e) => warn(format!("skipping {}: {e}", path.display())),
        }
    }
    Ok(plugins.into_iter().map(|(p, _)| p).collect())
}

/// The folder of the running executable, where the built-in plugins are installed.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(Path::to_owned)
}
