//! Finding benchmarks: the built-in plugins next to the `harness` binary, every plugin in
//! `--plugin-dir` folders, files named with `--plugin`, and the task files of `--include-path`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use dtm_plugin_api::host::{Plugin, PluginError};

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
/// The same file reached twice (a folder listed and a file named) is opened once.
pub fn open_all(
    candidates: &[PathBuf],
    explicit: &[PathBuf],
    warn: &mut dyn FnMut(String),
) -> Result<Vec<Plugin>> {
    let mut plugins: Vec<Plugin> = Vec::new();
    let mut seen = Vec::new();
    for path in candidates {
        let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
        if seen.contains(&canonical) {
            continue;
        }
        seen.push(canonical);
        match Plugin::open(path) {
            Ok(p) => plugins.push(p),
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
                    bail!(
                        "{} {} defines `{name}`, the name of the built-in plugin {}; rename it, or pass --allow-shadowing to use it instead of the built-in",
                        source.kind().name(),
                        source.path().display(),
                        all[i].path().display()
                    );
                }
                warn(format!(
                    "`{name}`: {} {} replaces the built-in plugin {} (--allow-shadowing)",
                    source.kind().name(),
                    source.path().display(),
                    all[i].path().display()
                ));
                all[i] = source;
            }
            Some(i) => bail!(
                "two benchmarks are named `{name}`: {} {} and {} {}; rename one",
                all[i].kind().name(),
                all[i].path().display(),
                source.kind().name(),
                source.path().display()
            ),
        }
    }
    Ok(all)
}

/// The folder of the running executable, where the built-in plugins are installed.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(Path::to_owned)
}
