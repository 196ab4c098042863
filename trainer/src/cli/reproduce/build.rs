//! A recipe turned into its stage graph: data → (Fisher, selection) → SFT runs → dispersal →
//! sub-models → merges → scoring of every model on the same items → report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;

use super::graph::{Arg, Graph, Program, Stage, Work};
use super::recipe::{FisherSpec, Kind, Loaded, MergeSpec};
use crate::cli::sft::SftOptions;

/// `~/x` under the home folder; a relative path under the current folder.
pub fn resolve(p: &Path) -> PathBuf {
    let p = match p.strip_prefix("~") {
        Ok(rest) => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(rest))
            .unwrap_or_else(|| p.to_owned()),
        Err(_) => p.to_owned(),
    };
    let p = if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    };
    // `a/b/../c` as `a/c`, so that commands and summaries show plain paths.
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir
                if matches!(
                    out.components().next_back(),
                    Some(std::path::Component::Normal(_))
                ) =>
            {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `trainer sft` flags whose values are files the run reads (content-hashed inputs).
const PATH_FLAGS: [&str; 3] = ["init-adapter", "fisher", "replay"];

/// The default Fisher text of EWC (pre-training-like text, PROTOCOL.md §4).
const DEFAULT_FISHER_TEXT: &str = "../shared/data/replay_text";

/// A model to score: a checkpoint and perhaps an adapter on it.
struct Member {
    model: Arg,
    adapter: Option<Arg>,
}

/// What the report is built from.
struct Scored {
    name: String,
    stage: usize,
    labels: BTreeMap<String, String>,
}

struct Builder<'a> {
    loaded: &'a Loaded,
    graph: Graph,
    /// The base model as a Hugging Face folder.
    base: Arg,
    /// The SFT data (JSONL).
    data: Arg,
    scored: Vec<Scored>,
    train_logs: Vec<(String, Arg)>,
    /// Adapters of each dtm method's sub-models (for ensembles).
    submodels: BTreeMap<String, Vec<Arg>>,
    /// The first dtm method with scored sub-models: (sub-model run names, merged run name).
    error_figures: Option<(Vec<String>, String)>,
}

/// The stage graph of a recipe.
pub fn build(loaded: &Loaded) -> anyhow::Result<Graph> {
    let r = &loaded.recipe;
    let mut graph = Graph::default();
    let model = resolve(&r.model);
    let base = if model.extension().is_some_and(|e| e == "gguf") {
        let i = graph.add(Stage::new(
            "convert/base".into(),
            "convert",
            Program::Harness,
            vec![
                Arg::lit("convert"),
                Arg::lit("--model"),
                Arg::input(&model),
                Arg::lit("--output"),
                Arg::own("model"),
                Arg::lit("--overwrite"),
            ],
        ))?;
        Arg::out(i, "model")
    } else {
        Arg::input(&model)
    };
    let data = match (&r.data.file, &r.data.mix) {
        (Some(file), _) => Arg::input(&resolve(file)),
        (None, Some(counts)) => {
            crate::cli::data::parse_counts(counts)
                .with_context(|| format!("{}: [data] mix", loaded.path.display()))?;
            let dir = resolve(
                r.data
                    .data_dir
                    .as_deref()
                    .unwrap_or(Path::new("../shared/data")),
            );
            let i = graph.add(Stage::new(
                "data/mix".into(),
                "data",
                Program::Trainer,
                vec![
                    Arg::lit("data"),
                    Arg::lit("mix"),
                    Arg::lit("--counts"),
                    Arg::lit(counts.clone()),
                    Arg::lit("--seed"),
                    Arg::lit(r.data.seed.to_string()),
                    Arg::lit("--data-dir"),
                    Arg::input(&dir),
                    Arg::lit("--output"),
                    Arg::own("sft.jsonl"),
                ],
            ))?;
            Arg::out(i, "sft.jsonl")
        }
        (None, None) => unreachable!("checked when the recipe was read"),
    };
    let mut b = Builder {
        loaded,
        graph,
        base,
        data,
        scored: Vec::new(),
        train_logs: Vec::new(),
        submodels: BTreeMap::new(),
        error_figures: None,
    };
    // Ensembles read other methods' sub-models: they come last.
    let order: Vec<usize> = (0..r.methods.len())
        .filter(|&i| r.methods[i].get_ref().kind != Kind::Ensemble)
        .chain((0..r.methods.len()).filter(|&i| r.methods[i].get_ref().kind == Kind::Ensemble))
        .collect();
    for i in order {
        b.method(i).with_context(|| {
            format!(
                "{}: method {:?}",
                loaded.method_at(i),
                r.methods[i].get_ref().name
            )
        })?;
    }
    b.report()?;
    Ok(b.graph)
}

/// `table` over `base`: keys of `table` win.
fn overlay(base: &toml::Table, table: &toml::Table) -> toml::Table {
    let mut out = base.clone();
    for (k, v) in table {
        out.insert(k.clone(), v.clone());
    }
    out
}

impl Builder<'_> {
    fn device(&self) -> [Arg; 2] {
        [
            Arg::lit("--device"),
            Arg::lit(self.loaded.recipe.device.clone()),
        ]
    }

    fn method(&mut self, i: usize) -> anyhow::Result<()> {
        let m = self.loaded.recipe.methods[i].get_ref();
        let name = m.name.clone();
        let train = overlay(&self.loaded.shared_train(), &self.loaded.method_train(i));
        match m.kind {
            Kind::Base => {
                let base = self.base.clone();
                self.score(
                    &name,
                    vec![Member {
                        model: base,
                        adapter: None,
                    }],
                    None,
                    &m.labels,
                )?;
            }
            Kind::Sft => {
                let options = options_of(&train)?;
                let needs_fisher = options.reg == dtm_trainer::sft::Regularisation::Ewc
                    && options.fisher.is_none();
                let extra = match (&m.fisher, needs_fisher) {
                    (Some(spec), true) => {
                        let text = resolve(
                            spec.data
                                .as_deref()
                                .unwrap_or(Path::new(DEFAULT_FISHER_TEXT)),
                        );
                        let stage = self.fisher_stage(
                            format!("fisher/{name}"),
                            None,
                            spec,
                            (Arg::input(&text), Some(text.clone())),
                            &options,
                            1.0,
                        )?;
                        vec![Arg::lit("--fisher"), Arg::out(stage, "fisher.safetensors")]
                    }
                    (None, true) => bail!(
                        "reg = \"ewc\" needs the base model's Fisher: a `fisher = {{ data = … }}` table (or train.fisher = FILE)"
                    ),
                    (Some(_), false) => {
                        bail!("`fisher` is the Fisher of EWC: it goes with train.reg = \"ewc\"")
                    }
                    (None, false) => Vec::new(),
                };
                let run = self.train_stage(
                    format!("train/{name}"),
                    self.data.clone(),
                    &train,
                    1.0,
                    None,
                    extra,
                )?;
                self.score_run(&name, run, &m.labels)?;
            }
            Kind::Deita => {
                let s = m.select.clone().expect("checked");
                let scorer = s
                    .scorer
                    .as_deref()
                    .map(|p| Arg::input(&resolve(p)))
                    .unwrap_or_else(|| self.base.clone());
                let mut args = vec![
                    Arg::lit("select"),
                    Arg::lit("--method"),
                    Arg::lit(s.method.clone()),
                    Arg::lit("--scorer"),
                    scorer,
                    Arg::lit("--data"),
                    self.data.clone(),
                    Arg::lit("--output"),
                    Arg::own("selection"),
                ];
                if let Some(t) = s.threshold {
                    args.extend([Arg::lit("--threshold"), Arg::lit(t.to_string())]);
                }
                if let Some(k) = s.top_k {
                    args.extend([Arg::lit("--top-k"), Arg::lit(k.to_string())]);
                }
                if let Some(n) = s.batch_size {
                    args.extend([Arg::lit("--batch-size"), Arg::lit(n.to_string())]);
                }
                args.extend(self.device());
                let stage = Stage::new(format!("select/{name}"), "select", Program::Trainer, args)
                    .with_model(Work::Select);
                let select = self.add_checked(stage)?;
                let run = self.train_stage(
                    format!("train/{name}"),
                    Arg::out(select, "selection/selected.jsonl"),
                    &train,
                    1.0,
                    Some(s.top_k.unwrap_or(0)),
                    Vec::new(),
                )?;
                self.score_run(&name, run, &m.labels)?;
            }
            Kind::Soup => {
                let mut adapters = Vec::new();
                for (j, run) in self.loaded.method_runs(i).iter().enumerate() {
                    let table = overlay(&train, run);
                    let stage = self.train_stage(
                        format!("train/{name}/run-{}", j + 1),
                        self.data.clone(),
                        &table,
                        1.0,
                        None,
                        Vec::new(),
                    )?;
                    self.train_log(format!("{name}-run-{}", j + 1), stage);
                    adapters.push(Arg::out(stage, "run/adapter"));
                }
                let merged = self.merge_stage(&name, &adapters, &MergeSpec::default(), &[])?;
                self.score(&name, vec![merged], None, &m.labels)?;
            }
            Kind::Dtm => self.dtm(i, &train)?,
            Kind::Ensemble => {
                let of = m.of.clone().expect("checked");
                let adapters = self
                    .submodels
                    .get(&of)
                    .cloned()
                    .expect("dtm methods come first");
                let members = adapters
                    .into_iter()
                    .map(|a| Member {
                        model: self.base.clone(),
                        adapter: Some(a),
                    })
                    .collect();
                let mode = m.mode.clone().unwrap_or_else(|| "logprobs".into());
                self.score(&name, members, Some(mode), &m.labels)?;
            }
        }
        Ok(())
    }

    fn dtm(&mut self, i: usize, train: &toml::Table) -> anyhow::Result<()> {
        let m = self.loaded.recipe.methods[i].get_ref();
        let name = m.name.clone();
        let k = m.k.expect("checked");
        let options = options_of(train)?;
        let d = m.dispersal.clone().unwrap_or_default();
        let mut args = vec![
            Arg::lit("disperse"),
            Arg::lit("--data"),
            self.data.clone(),
            Arg::lit("--k"),
            Arg::lit(k.to_string()),
            Arg::lit("--method"),
            Arg::lit(d.method.clone()),
            Arg::lit("--seed"),
            Arg::lit(d.seed.or(options.seed).unwrap_or(0).to_string()),
            Arg::lit("--output"),
            Arg::own("portions"),
        ];
        if let Some(e) = &d.embed {
            args.extend([Arg::lit("--embed"), Arg::lit(e.clone())]);
        }
        if d.method == "kmeans" {
            // The encoder is an input like any other: named, and hashed into the key.
            let encoder = d
                .encoder
                .as_deref()
                .map(resolve)
                .unwrap_or_else(dtm_trainer::embed::default_encoder_dir);
            args.extend([Arg::lit("--encoder"), Arg::input(&encoder)]);
        } else if d.encoder.is_some() {
            bail!("dispersal.encoder is for method \"kmeans\"");
        }
        if let Some(n) = d.restarts {
            args.extend([Arg::lit("--restarts"), Arg::lit(n.to_string())]);
        }
        if let Some(n) = d.max_iter {
            args.extend([Arg::lit("--max-iter"), Arg::lit(n.to_string())]);
        }
        let mut disperse = Stage::new(
            format!("disperse/{name}"),
            "disperse",
            Program::Trainer,
            args,
        );
        if d.method != "random" {
            disperse.args.extend(self.device());
            disperse.runs_model = true;
        }
        let disperse = self.add_checked(disperse)?;

        let mut adapters = Vec::new();
        let mut portions = Vec::new();
        for j in 1..=k {
            let portion = Arg::out(disperse, &format!("portions/portion-{j}.jsonl"));
            let stage = self.train_stage(
                format!("train/{name}/sub-{j}"),
                portion.clone(),
                train,
                1.0 / k as f64,
                None,
                Vec::new(),
            )?;
            self.train_log(format!("{name}-sub-{j}"), stage);
            adapters.push(Arg::out(stage, "run/adapter"));
            portions.push(portion);
        }
        let merge = m.merge.clone().unwrap_or_default();
        let mut fishers = Vec::new();
        if let Some(spec) = &merge.fisher {
            for (j, (adapter, portion)) in adapters.iter().zip(&portions).enumerate() {
                if spec.data.is_some() {
                    bail!("merge.fisher reads each sub-model's own portion: it takes no `data`");
                }
                let stage = self.fisher_stage(
                    format!("fisher/{name}/sub-{}", j + 1),
                    Some(adapter.clone()),
                    spec,
                    (portion.clone(), None),
                    &options,
                    1.0 / k as f64,
                )?;
                fishers.push(Arg::out(stage, "fisher.safetensors"));
            }
        }
        let merged = self.merge_stage(&name, &adapters, &merge, &fishers)?;
        self.score(&name, vec![merged], None, &m.labels)?;
        if m.score_submodels {
            let mut names = Vec::new();
            for (j, a) in adapters.iter().enumerate() {
                let sub = format!("{name}-sub-{}", j + 1);
                let member = Member {
                    model: self.base.clone(),
                    adapter: Some(a.clone()),
                };
                self.score(&sub, vec![member], None, &BTreeMap::new())?;
                names.push(sub);
            }
            if self.error_figures.is_none() {
                self.error_figures = Some((names, name.clone()));
            }
        }
        self.submodels.insert(name, adapters);
        Ok(())
    }

    /// Adds a `trainer` stage after checking that `trainer` accepts its command line.
    fn add_checked(&mut self, stage: Stage) -> anyhow::Result<usize> {
        let argv: Vec<String> = std::iter::once("trainer".to_owned())
            .chain(stage.args.iter().map(|a| {
                a.0.iter()
                    .map(|p| match p {
                        super::graph::Part::Lit(s) => s.clone(),
                        _ => "/placeholder".to_owned(),
                    })
                    .collect::<String>()
            }))
            .collect();
        if let Err(e) = crate::cli::Cli::try_parse_from(&argv) {
            bail!(
                "stage {} would run a command `trainer` refuses: {}",
                stage.name,
                e.to_string().lines().next().unwrap_or("")
            );
        }
        self.graph.add(stage)
    }

    /// `trainer fisher` of the base on text (EWC), or of a sub-model on its portion (Fisher
    /// merging: `data` is then another stage's file, `text` None).
    fn fisher_stage(
        &mut self,
        name: String,
        adapter: Option<Arg>,
        spec: &FisherSpec,
        (data, text): (Arg, Option<PathBuf>),
        options: &SftOptions,
        fraction: f64,
    ) -> anyhow::Result<usize> {
        let max_len = spec.max_len.or(options.max_len).unwrap_or(
            options
                .preset
                .unwrap_or(dtm_trainer::sft::Preset::Paper)
                .values()
                .max_len,
        );
        let mut args = vec![
            Arg::lit("fisher"),
            Arg::lit("--model"),
            self.base.clone(),
            Arg::lit("--data"),
            data,
            Arg::lit("--output"),
            Arg::own("fisher.safetensors"),
            Arg::lit("--max-len"),
            Arg::lit(max_len.to_string()),
        ];
        // A sub-model's Fisher draws its records with the train seed, as `trainer dtm --merge
        // fisher` does, unless the recipe names one.
        let seed = match adapter.is_some() {
            true => spec.seed.or(options.seed),
            false => spec.seed,
        };
        if let Some(a) = adapter {
            args.extend([Arg::lit("--adapter"), a]);
        }
        if let Some(n) = spec.samples {
            args.extend([Arg::lit("--samples"), Arg::lit(n.to_string())]);
        }
        if let Some(s) = seed {
            args.extend([Arg::lit("--seed"), Arg::lit(s.to_string())]);
        }
        if let Some(t) = &options.lora_targets {
            args.extend([Arg::lit("--lora-targets"), Arg::lit(t.join(","))]);
        }
        if options.no_eos {
            args.push(Arg::lit("--no-eos"));
        }
        args.extend(self.device());
        let stage = Stage::new(name, "fisher", Program::Trainer, args).with_model(Work::Fisher {
            text,
            samples: spec.samples,
            max_len,
            fraction,
        });
        self.add_checked(stage)
    }

    /// One `trainer sft` run; returns its stage.
    fn train_stage(
        &mut self,
        name: String,
        data: Arg,
        table: &toml::Table,
        fraction: f64,
        selected: Option<usize>,
        extra: Vec<Arg>,
    ) -> anyhow::Result<usize> {
        let options = options_of(table)?;
        options
            .config(PathBuf::from("model"), PathBuf::from("data"))
            .with_context(|| format!("the train settings of {name}"))?;
        let mut args = vec![
            Arg::lit("sft"),
            Arg::lit("--model"),
            self.base.clone(),
            Arg::lit("--data"),
            data,
            Arg::lit("--output"),
            Arg::own("run"),
            Arg::lit("--resume"),
        ];
        args.extend(self.device());
        for (key, value) in table {
            let flag = Arg::lit(format!("--{key}"));
            match value {
                toml::Value::Boolean(true) => args.push(flag),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) if PATH_FLAGS.contains(&key.as_str()) => {
                    args.extend([flag, Arg::input(&resolve(Path::new(s)))]);
                }
                toml::Value::Array(items) => {
                    let words = items
                        .iter()
                        .map(|v| {
                            scalar(v)
                                .with_context(|| format!("train.{key}: a list of plain values"))
                        })
                        .collect::<anyhow::Result<Vec<String>>>()?;
                    args.extend([flag, Arg::lit(words.join(","))]);
                }
                other => {
                    let value =
                        scalar(other).with_context(|| format!("train.{key}: not a flag value"))?;
                    args.extend([flag, Arg::lit(value)]);
                }
            }
        }
        args.extend(extra);
        let stage =
            Stage::new(name.clone(), "train", Program::Trainer, args).with_model(Work::Train {
                fraction,
                selected: selected.filter(|&n| n > 0),
                options: Box::new(options),
            });
        self.add_checked(stage)
    }

    /// A scored SFT run: its adapter on the base, and its loss curve in the report.
    fn score_run(
        &mut self,
        name: &str,
        run: usize,
        labels: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        self.train_log(name.to_owned(), run);
        let member = Member {
            model: self.base.clone(),
            adapter: Some(Arg::out(run, "run/adapter")),
        };
        self.score(name, vec![member], None, labels)
    }

    /// `trainer merge` of adapters; returns the model to score.
    fn merge_stage(
        &mut self,
        name: &str,
        adapters: &[Arg],
        m: &MergeSpec,
        fishers: &[Arg],
    ) -> anyhow::Result<Member> {
        let mut args = vec![
            Arg::lit("merge"),
            Arg::lit("--method"),
            Arg::lit(m.method.clone()),
        ];
        if !m.lora_factors {
            args.extend([Arg::lit("--base"), self.base.clone()]);
        }
        args.push(Arg::lit("--models"));
        args.extend(adapters.iter().cloned());
        if !m.weights.is_empty() {
            let w: Vec<String> = m.weights.iter().map(|w| w.to_string()).collect();
            args.extend([Arg::lit("--weights"), Arg::lit(w.join(","))]);
        }
        for (flag, v) in [("--density", m.density), ("--lambda", m.lambda)] {
            if let Some(v) = v {
                args.extend([Arg::lit(flag), Arg::lit(v.to_string())]);
            }
        }
        if let Some(n) = m.normalize {
            args.extend([Arg::lit("--normalize"), Arg::lit(n.to_string())]);
        }
        if let Some(r) = &m.rescale {
            args.extend([Arg::lit("--rescale"), Arg::lit(r.clone())]);
        }
        if let Some(s) = m.seed {
            args.extend([Arg::lit("--seed"), Arg::lit(s.to_string())]);
        }
        if !fishers.is_empty() {
            args.extend([Arg::lit("--fisher"), Arg::joined(fishers, ",")]);
        }
        let out = if m.lora_factors {
            args.push(Arg::lit("--lora-factors"));
            "adapter"
        } else {
            "model"
        };
        args.extend([Arg::lit("--output"), Arg::own(out), Arg::lit("--overwrite")]);
        let stage = self.add_checked(Stage::new(
            format!("merge/{name}"),
            "merge",
            Program::Trainer,
            args,
        ))?;
        Ok(if m.lora_factors {
            Member {
                model: self.base.clone(),
                adapter: Some(Arg::out(stage, "adapter")),
            }
        } else {
            Member {
                model: Arg::out(stage, "model"),
                adapter: None,
            }
        })
    }

    /// `harness score` of one model (or an ensemble) with the recipe's evaluation, as one
    /// stage or as shards joined by `harness merge-shards`.
    fn score(
        &mut self,
        name: &str,
        members: Vec<Member>,
        ensemble: Option<String>,
        labels: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let e = &self.loaded.recipe.eval;
        let mut args = vec![Arg::lit("score")];
        for m in &members {
            args.extend([Arg::lit("--model"), m.model.clone()]);
        }
        if members.iter().any(|m| m.adapter.is_some()) {
            for m in &members {
                args.push(Arg::lit("--adapter"));
                args.push(m.adapter.clone().unwrap_or_else(|| Arg::lit("none")));
            }
        }
        if let Some(mode) = &ensemble {
            args.extend([Arg::lit("--ensemble"), Arg::lit(mode.clone())]);
        }
        args.extend([Arg::lit("--tasks"), Arg::lit(e.tasks.join(","))]);
        args.extend(self.task_sources());
        let data_dir = resolve(e.data_dir.as_deref().unwrap_or(Path::new("../shared/data")));
        args.extend([Arg::lit("--data-dir"), Arg::input(&data_dir)]);
        let mut number = |flag: &str, v: Option<usize>| {
            if let Some(v) = v {
                args.extend([Arg::lit(flag), Arg::lit(v.to_string())]);
            }
        };
        number("--limit", e.limit);
        number("--num-fewshot", e.num_fewshot);
        number("--max-new-tokens", e.max_new_tokens);
        number("--batch-size", e.batch_size);
        number("--chunk-size", e.chunk_size);
        number("--prefix-cache", e.prefix_cache);
        number("--max-length", e.max_length);
        if let Some(s) = e.seed {
            args.extend([Arg::lit("--seed"), Arg::lit(s.to_string())]);
        }
        if let Some(items) = &e.items {
            args.extend([Arg::lit("--items"), Arg::input(&resolve(items))]);
        }
        for o in &e.options {
            args.extend([Arg::lit("--option"), Arg::lit(o.clone())]);
        }
        if let Some(d) = &e.dtype {
            args.extend([Arg::lit("--dtype"), Arg::lit(d.clone())]);
        }
        if e.no_exec {
            args.push(Arg::lit("--no-exec"));
        }
        args.extend(self.device());
        let work = Work::Score {
            models: members.len(),
            shards: e.shards,
        };
        let shards = e.shards;
        let stage = if shards == 1 {
            args.extend([Arg::lit("--output"), Arg::own("scores")]);
            self.graph.add(
                Stage::new(format!("score/{name}"), "score", Program::Harness, args)
                    .with_model(work),
            )?
        } else {
            let mut parts = Vec::new();
            for s in 1..=shards {
                let mut a = args.clone();
                a.extend([
                    Arg::lit("--shard"),
                    Arg::lit(format!("{s}/{shards}")),
                    Arg::lit("--output"),
                    Arg::own("scores"),
                ]);
                let i = self.graph.add(
                    Stage::new(
                        format!("score/{name}/shard-{s}"),
                        "score",
                        Program::Harness,
                        a,
                    )
                    .with_model(work.clone()),
                )?;
                parts.push(Arg::out(i, "scores"));
            }
            let mut a = vec![Arg::lit("merge-shards")];
            a.extend(parts);
            a.extend(self.task_sources());
            a.extend([Arg::lit("--output"), Arg::own("scores")]);
            self.graph.add(Stage::new(
                format!("score/{name}"),
                "merge-shards",
                Program::Harness,
                a,
            ))?
        };
        self.scored.push(Scored {
            name: name.to_owned(),
            stage,
            labels: labels.clone(),
        });
        Ok(())
    }

    /// `--include-path` of the evaluation's YAML tasks.
    fn task_sources(&self) -> Vec<Arg> {
        self.loaded
            .recipe
            .eval
            .include_path
            .iter()
            .flat_map(|p| [Arg::lit("--include-path"), Arg::input(&resolve(p))])
            .collect()
    }

    /// Records a training run's log for the report's loss curves (once per run: methods that
    /// share a run share its curve).
    fn train_log(&mut self, name: String, stage: usize) {
        let log = Arg::out(stage, "run/train_log.jsonl");
        if !self.train_logs.iter().any(|(_, l)| *l == log) {
            self.train_logs.push((name, log));
        }
    }

    fn report(&mut self) -> anyhow::Result<()> {
        let r = &self.loaded.recipe.report;
        let mut args = vec![Arg::lit("report")];
        for s in &self.scored {
            let run = Arg::prefixed(&format!("{}=", s.name), Arg::out(s.stage, "scores"));
            args.push(if s.labels.is_empty() {
                run
            } else {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                Arg::suffixed(run, &format!("@{}", labels.join(",")))
            });
        }
        args.extend([
            Arg::lit("--baseline"),
            Arg::lit(r.baseline.clone()),
            Arg::lit("--output"),
            Arg::own("report"),
        ]);
        for (flag, on) in [
            ("--paper-reference", r.paper_reference),
            ("--subtasks", r.subtasks),
            ("--allow-mismatch", r.allow_mismatch),
        ] {
            if on {
                args.push(Arg::lit(flag));
            }
        }
        if let Some(s) = r.seed {
            args.extend([Arg::lit("--seed"), Arg::lit(s.to_string())]);
        }
        if let Some(n) = r.resamples {
            args.extend([Arg::lit("--resamples"), Arg::lit(n.to_string())]);
        }
        for (name, log) in &self.train_logs {
            args.extend([
                Arg::lit("--train-log"),
                Arg::prefixed(&format!("{name}="), log.clone()),
            ]);
        }
        if let Some((subs, merged)) = &self.error_figures {
            args.extend([
                Arg::lit("--submodels"),
                Arg::lit(subs.join(",")),
                Arg::lit("--merged"),
                Arg::lit(merged.clone()),
            ]);
        }
        self.graph.add(Stage::new(
            "report".into(),
            "report",
            Program::Harness,
            args,
        ))?;
        Ok(())
    }
}

/// A TOML string, number or boolean as a command-line word.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A merged train table as `trainer sft` options (checked: known flags, right types).
fn options_of(table: &toml::Table) -> anyhow::Result<SftOptions> {
    toml::Value::Table(table.clone())
        .try_into::<SftOptions>()
        .map_err(|e| anyhow::anyhow!("train settings: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recipe's `train` keys are `trainer sft`'s flags: the same names, all of them.
    #[test]
    fn every_sft_flag_is_a_train_key_and_nothing_else() {
        use clap::Args;
        let cmd = SftOptions::augment_args(clap::Command::new("sft"));
        let flags: std::collections::BTreeSet<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        let mut t = toml::Table::new();
        t.insert("no-such-flag".into(), toml::Value::Integer(1));
        let err = options_of(&t).unwrap_err().to_string();
        let listed: std::collections::BTreeSet<String> = err
            .split("expected one of ")
            .nth(1)
            .expect("serde lists the known fields")
            .split(", ")
            .map(|f| f.trim().trim_matches('`').to_owned())
            .collect();
        assert_eq!(listed, flags);
        // Unset keys take the command line's defaults.
        let o = options_of(&toml::Table::new()).unwrap();
        assert_eq!(o.moe_type_field, "task_type");
        assert_eq!(o.reg, dtm_trainer::sft::Regularisation::None);
    }

    /// DTM with Fisher merging: one `trainer fisher` per sub-model, of its adapter on its own
    /// portion with its training settings (max-len, and the train seed as `trainer dtm --merge
    /// fisher` uses it), then `trainer merge --method fisher` with the files in sub-model order.
    #[test]
    fn a_fisher_merge_weighs_each_sub_model_by_its_own_fisher() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("r.toml");
        let text = |seed: &str| {
            format!(
                "name = \"t\"\nmodel = \"/m\"\n[data]\nfile = \"/d.jsonl\"\n\
                 [train]\nmax-len = 64\nseed = 7\n[eval]\ntasks = [\"arc_challenge\"]\n\
                 [report]\nbaseline = \"dtm-fisher\"\n[[method]]\nname = \"dtm-fisher\"\nkind = \"dtm\"\nk = 2\n\
                 merge = {{ method = \"fisher\", fisher = {{ samples = 4{seed} }} }}\n"
            )
        };
        let commands = |text: String| {
            std::fs::write(&recipe, text).unwrap();
            let graph = build(&super::super::recipe::load(&recipe).unwrap()).unwrap();
            let cmd = |name: &str| graph.stages[graph.index(name).unwrap()].display(&graph);
            let fishers: Vec<String> = (1..=2)
                .map(|j| cmd(&format!("fisher/dtm-fisher/sub-{j}")))
                .collect();
            (fishers, cmd("merge/dtm-fisher"))
        };
        let (fishers, merge) = commands(text(""));
        for (j, f) in fishers.iter().enumerate() {
            let j = j + 1;
            for part in [
                format!("--adapter <train/dtm-fisher/sub-{j}>/run/adapter"),
                format!("portions/portion-{j}.jsonl"),
                "--max-len 64".into(),
                "--samples 4".into(),
                "--seed 7".into(),
            ] {
                assert!(f.contains(&part), "{part} in {f}");
            }
        }
        assert!(merge.contains("--method fisher"), "{merge}");
        assert!(
            merge.contains(
                "--fisher <fisher/dtm-fisher/sub-1>/fisher.safetensors,<fisher/dtm-fisher/sub-2>/fisher.safetensors"
            ),
            "{merge}"
        );
        // A seed of the Fisher's own wins.
        let (fishers, _) = commands(text(", seed = 3"));
        assert!(fishers[0].contains("--seed 3"), "{}", fishers[0]);
    }

    #[test]
    fn paths_resolve_against_the_current_folder_without_dot_dot() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolve(Path::new("a/../b/./c")), cwd.join("b/c"));
        assert_eq!(resolve(Path::new("/x/y/../z")), PathBuf::from("/x/z"));
        let home = PathBuf::from(std::env::var_os("HOME").unwrap());
        assert_eq!(resolve(Path::new("~/m.gguf")), home.join("m.gguf"));
    }
}
