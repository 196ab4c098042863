//! Finding benchmarks: the built-in plugins next to the `harness` binary, every plugin in
//! `--plugin-dir` folders, files named with `--plugin`, and the task files of `--include-path`.

use std::path::{Path, PathBuf};

use dtm_plugin_api::host::{Plugin, PluginError};

use super::error::{EvalError, Result};
use super::source::{PluginSource, SourceKind, TaskSource, YamlSource};

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
/// The same file reached twice (a folder listed and a file named) is opened once.
/// Which of them may stand for a built-in is decided by [`sources`].
pub fn open_all(
    candidates: &[(PathBuf, Origin)],
    warn: &mut dyn FnMut(String),
) -> Result<Vec<Plugin>> {
    let mut plugins: Vec<Plugin> = Vec::new();
    let mut seen = Vec::new();
    for (path, origin) in candidates {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
        if seen.contains(&canonical) {
            continue;
        }
        seen.push(canonical);
        match Plugin::open(path) {
            Ok(p) => plugins.push(p),
            Err(e) if *origin == Origin::Explicit => return Err(e.into()),
            Err(e @ PluginError::MissingSymbol { .. }) => warn(format!(
                "skipping {}: not a dtm plugin ({e})",
                path.display()
            )),
            Err(e) => warn(format!("skipping {}: {e}", path.display())),
        }
    }
    Ok(plugins)
}

/// Every benchmark: the plugins (built-ins first) and the YAML tasks. Two benchmarks of one name
/// are refused, naming both; one that shadows a built-in is accepted only with `allow_shadowing`
/// (then it replaces the built-in, with a warning).
pub fn sources(
    plugins: Vec<Plugin>,
    builtin_dir: Option<&Path>,
    yaml: Vec<dtm_yaml_tasks::YamlTask>,
    allow_shadowing: bool,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<Box<dyn TaskSource>>> {
    let mut all: Vec<Box<dyn TaskSource>> = Vec::new();
    let builtin = |p: &Plugin| {
        builtin_dir.is_some_and(|d| p.path().parent() == Some(d))
            && library_stem(p.path()).is_some_and(|s| s.starts_with(BUILTIN_PREFIX))
    };
    let mut plugins: Vec<(Plugin, SourceKind)> = plugins
        .into_iter()
        .map(|p| {
            let kind = if builtin(&p) {
                SourceKind::Builtin
            } else {
                SourceKind::Plugin
            };
            (p, kind)
        })
        .collect();
    plugins.sort_by_key(|(_, k)| *k != SourceKind::Builtin);
    let incoming = plugins
        .into_iter()
        .map(|(plugin, kind)| Box::new(PluginSource { plugin, kind }) as Box<dyn TaskSource>)
        .chain(
            yaml.into_iter()
                .map(|t| Box::new(YamlSource::new(t)) as Box<dyn TaskSource>),
        );
    for source in incoming {
        let name = source.describe().name.clone();
        match all.iter().position(|s| s.describe().name == name) {
            None => all.push(source),
            Some(i)
                if all[i].kind() == SourceKind::Builtin && source.kind() != SourceKind::Builtin =>
            {
                if !allow_shadowing {
                    return Err(EvalError::PluginFile {
                        path: source.path().to_owned(),
                        problem: format!(
                            "this {} defines `{name}`, the name of the built-in plugin {}; rename it, or pass --allow-shadowing to use it instead of the built-in",
                            source.kind().name(),
                            all[i].path().display()
                        ),
                    });
                }
                warn(format!(
                    "`{name}`: {} {} replaces the built-in plugin {} (--allow-shadowing)",
                    source.kind().name(),
                    source.path().display(),
                    all[i].path().display()
                ));
                all[i] = source;
            }
            Some(i) => {
                return Err(EvalError::PluginFile {
                    path: source.path().to_owned(),
                    problem: format!(
                        "two benchmarks are named `{name}`: this {} and the {} {}; rename one",
                        source.kind().name(),
                        all[i].kind().name(),
                        all[i].path().display()
                    ),
                })
            }
        }
    }
    Ok(all)
}

/// The folder of the running executable, where the built-in plugins are installed.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(Path::to_owned)
}
