//! What the evaluator scores: a benchmark from a compiled plugin or from an lm-eval task YAML
//! file, behind one interface, so that both go through the same engine, checks, reports and
//! resume.

use std::path::{Path, PathBuf};

use dtm_plugin_api::host::{self, Aggregate, Plugin};
use dtm_plugin_api::{
    validate, Description, Item, ItemScore, LoadOptions, Outcome, Response, TaskInfo,
};
use dtm_yaml_tasks::{LoadedYamlTask, YamlTask};

use super::error::{EvalError, Result};

/// Where a benchmark comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A plugin installed beside the harness.
    Builtin,
    /// A plugin named with `--plugin` or found in `--plugin-dir`.
    Plugin,
    /// A task file found in `--include-path`.
    Yaml,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Builtin => "built-in plugin",
            SourceKind::Plugin => "plugin",
            SourceKind::Yaml => "YAML task",
        }
    }
}

/// A benchmark the harness can describe and load.
pub trait TaskSource: Send + Sync {
    fn describe(&self) -> &Description;
    /// The plugin library or the task file.
    fn path(&self) -> &Path;
    /// Files besides [`TaskSource::path`] that define the benchmark (a YAML task's `include:`
    /// files); a run's identity hashes them with it.
    fn definition_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn kind(&self) -> SourceKind;
    /// Whether the task reads `--data-dir` (a YAML task names its own files).
    fn uses_data_dir(&self) -> bool {
        true
    }
    /// YAML tasks: the `tag:` names that select it in `--tasks`.
    fn tags(&self) -> &[String] {
        &[]
    }
    /// Check options without reading data (before the model loads).
    fn check_options(&self, options: &LoadOptions) -> Result<()>;
    /// Read the data and build the items. `seed` seeds random few-shot sampling.
    fn load(
        &self,
        data_dir: &Path,
        options: &LoadOptions,
        seed: u64,
    ) -> Result<Box<dyn LoadedTask>>;
}

/// A loaded benchmark: items to answer, answers to score.
pub trait LoadedTask: Send + Sync {
    fn info(&self) -> &TaskInfo;
    /// Every item (after `limit`), in upstream file order.
    fn items(&self) -> Result<Vec<Item>>;
    /// Code benchmarks: one program per response.
    fn programs(&self, doc_id: usize, responses: &[Response]) -> Result<Vec<String>>;
    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        outcomes: &[Outcome],
    ) -> Result<ItemScore>;
    /// The reported aggregates of the item scores.
    fn aggregate(&self, scores: &[ItemScore]) -> Aggregate {
        host::aggregate(scores)
    }
    /// The data files read: the name to report and the file to hash.
    fn data_files(&self) -> Vec<(String, PathBuf)>;
}

/// A compiled plugin.
pub struct PluginSource {
    pub plugin: Plugin,
    pub kind: SourceKind,
}

struct PluginTask {
    task: host::Task,
    data_dir: PathBuf,
}

impl TaskSource for PluginSource {
    fn describe(&self) -> &Description {
        self.plugin.describe()
    }

    fn path(&self) -> &Path {
        self.plugin.path()
    }

    fn kind(&self) -> SourceKind {
        self.kind
    }

    fn check_options(&self, options: &LoadOptions) -> Result<()> {
        validate::options(self.describe(), options).map_err(EvalError::Options)?;
        Ok(())
    }

    fn load(
        &self,
        data_dir: &Path,
        options: &LoadOptions,
        _seed: u64,
    ) -> Result<Box<dyn LoadedTask>> {
        self.check_options(options)?;
        let task = self.plugin.load(data_dir, options)?;
        Ok(Box::new(PluginTask {
            task,
            data_dir: data_dir.to_owned(),
        }))
    }
}

impl LoadedTask for PluginTask {
    fn info(&self) -> &TaskInfo {
        self.task.info()
    }

    fn items(&self) -> Result<Vec<Item>> {
        Ok(self.task.items()?)
    }

    fn programs(&self, doc_id: usize, responses: &[Response]) -> Result<Vec<String>> {
        Ok(self.task.programs(doc_id, responses)?)
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        outcomes: &[Outcome],
    ) -> Result<ItemScore> {
        Ok(self.task.score(doc_id, responses, outcomes)?)
    }

    fn data_files(&self) -> Vec<(String, PathBuf)> {
        self.task
            .info()
            .data_files
            .iter()
            .map(|f| (f.clone(), self.data_dir.join(f)))
            .collect()
    }
}

/// An lm-eval task file.
pub struct YamlSource {
    task: YamlTask,
    description: Description,
}

impl YamlSource {
    pub fn new(task: YamlTask) -> Self {
        let description = task.describe();
        YamlSource { task, description }
    }
}

struct YamlLoaded(LoadedYamlTask);

impl TaskSource for YamlSource {
    fn describe(&self) -> &Description {
        &self.description
    }

    fn path(&self) -> &Path {
        self.task.file()
    }

    fn kind(&self) -> SourceKind {
        SourceKind::Yaml
    }

    fn uses_data_dir(&self) -> bool {
        false
    }

    fn tags(&self) -> &[String] {
        &self.task.config.tags
    }

    fn definition_files(&self) -> Vec<PathBuf> {
        self.task.config.includes.clone()
    }

    fn check_options(&self, options: &LoadOptions) -> Result<()> {
        if let Some(k) = options.flags.keys().next() {
            return Err(EvalError::Options(format!(
                "{}: unknown option {k:?} (YAML tasks have none)",
                self.description.name
            )));
        }
        Ok(())
    }

    fn load(
        &self,
        _data_dir: &Path,
        options: &LoadOptions,
        seed: u64,
    ) -> Result<Box<dyn LoadedTask>> {
        Ok(Box::new(YamlLoaded(self.task.load(options, seed)?)))
    }
}

impl LoadedTask for YamlLoaded {
    fn info(&self) -> &TaskInfo {
        self.0.info()
    }

    fn items(&self) -> Result<Vec<Item>> {
        Ok(self.0.items().to_vec())
    }

    fn programs(&self, _doc_id: usize, _responses: &[Response]) -> Result<Vec<String>> {
        Err(EvalError::Contract(format!(
            "{}: YAML tasks produce no programs",
            self.0.info().name
        )))
    }

    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        _outcomes: &[Outcome],
    ) -> Result<ItemScore> {
        self.0
            .score(doc_id, responses)
            .map_err(|e| EvalError::Contract(format!("{}: {e}", self.0.info().name)))
    }

    fn aggregate(&self, scores: &[ItemScore]) -> Aggregate {
        self.0.aggregate(scores)
    }

    fn data_files(&self) -> Vec<(String, PathBuf)> {
        self.0
            .info()
            .data_files
            .iter()
            .cloned()
            .zip(self.0.data_files().iter().cloned())
            .collect()
    }
}
