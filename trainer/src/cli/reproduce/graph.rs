//! The stage graph: one data structure that the local runner executes, `--dry-run` prints and
//! `--emit-slurm` writes as batch scripts, so a run on one machine and a run on a cluster cannot
//! differ.
//!
//! A stage is a name, the exact command line of one of our binaries (`trainer …` or
//! `harness …`), and what that command reads: input files and folders (content-hashed) and the
//! output folders of earlier stages. Its settings are its arguments. A stage's key hashes its
//! program, its arguments, the contents of its inputs and the keys of the stages it reads, so a
//! stage is recomputed exactly when something it depends on changed.

use std::path::{Path, PathBuf};

use crate::cli::sft::SftOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Trainer,
    Harness,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::Trainer => "trainer",
            Program::Harness => "harness",
        }
    }
}

/// One piece of an argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Lit(String),
    /// A file or folder the stage reads (absolute), hashed by content.
    Input(PathBuf),
    /// A path inside another stage's output folder ("" = the folder itself).
    Out(usize, String),
    /// A path inside this stage's own output folder.
    Own(String),
}

/// One command-line argument: usually one part, sometimes `NAME=` followed by a path.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg(pub Vec<Part>);

impl Arg {
    pub fn lit(s: impl Into<String>) -> Arg {
        Arg(vec![Part::Lit(s.into())])
    }
    pub fn input(p: &Path) -> Arg {
        Arg(vec![Part::Input(p.to_owned())])
    }
    pub fn out(stage: usize, rel: &str) -> Arg {
        Arg(vec![Part::Out(stage, rel.to_owned())])
    }
    pub fn own(rel: &str) -> Arg {
        Arg(vec![Part::Own(rel.to_owned())])
    }
    /// `prefix` glued to `arg`, e.g. `vanilla=` + a stage's folder.
    pub fn prefixed(prefix: &str, arg: Arg) -> Arg {
        let mut parts = vec![Part::Lit(prefix.to_owned())];
        parts.extend(arg.0);
        Arg(parts)
    }
    /// `args` joined by `sep` into one argument (e.g. a comma-separated list of files).
    pub fn joined(args: &[Arg], sep: &str) -> Arg {
        let mut parts = Vec::new();
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                parts.push(Part::Lit(sep.to_owned()));
            }
            parts.extend(a.0.iter().cloned());
        }
        Arg(parts)
    }
    /// `arg` followed by a literal suffix, e.g. a stage's folder + `@k=4`.
    pub fn suffixed(arg: Arg, suffix: &str) -> Arg {
        let mut parts = arg.0;
        parts.push(Part::Lit(suffix.to_owned()));
        Arg(parts)
    }
}

/// What a stage costs, in the units its speed is measured in.
#[derive(Debug, Clone)]
pub enum Work {
    /// Moves files (data mix, conversion, dispersal, merges, reports): minutes at most.
    Light,
    /// LoRA training on `fraction` of the SFT data (or of the selected records).
    Train {
        fraction: f64,
        selected: Option<usize>,
        options: Box<SftOptions>,
    },
    /// Gradients over text (`text`) or over a sub-model's portion of the SFT data.
    Fisher {
        text: Option<PathBuf>,
        samples: Option<usize>,
        max_len: usize,
        /// The share of the SFT data a sub-model's portion holds (when `text` is None).
        fraction: f64,
    },
    /// A scorer model's forward pass over every record.
    Select,
    /// Scoring `models` models at once (an ensemble) on one of `shards` slices.
    Score { models: usize, shards: usize },
}

#[derive(Debug, Clone)]
pub struct Stage {
    /// Unique, e.g. `train/vanilla`, `score/dtm/shard-2`.
    pub name: String,
    /// Stages of one group with the same upstream jobs become one Slurm array job.
    pub group: String,
    pub program: Program,
    pub args: Vec<Arg>,
    /// The stages whose outputs it reads.
    pub deps: Vec<usize>,
    /// Runs a model (a GPU on a cluster).
    pub runs_model: bool,
    pub work: Work,
}

impl Stage {
    pub fn new(name: String, group: &str, program: Program, args: Vec<Arg>) -> Stage {
        let mut deps: Vec<usize> = args
            .iter()
            .flat_map(|a| &a.0)
            .filter_map(|p| match p {
                Part::Out(s, _) => Some(*s),
                _ => None,
            })
            .collect();
        deps.sort_unstable();
        deps.dedup();
        Stage {
            name,
            group: group.to_owned(),
            program,
            args,
            deps,
            runs_model: false,
            work: Work::Light,
        }
    }

    pub fn with_model(mut self, work: Work) -> Stage {
        self.runs_model = true;
        self.work = work;
        self
    }

    /// The command line with every path written as a placeholder: what a person reads.
    pub fn display(&self, graph: &Graph) -> String {
        let mut words = vec![self.program.name().to_owned()];
        for a in &self.args {
            let mut w = String::new();
            for p in &a.0 {
                match p {
                    Part::Lit(s) => w.push_str(s),
                    Part::Input(p) => w.push_str(&p.display().to_string()),
                    Part::Out(s, rel) => {
                        w.push('<');
                        w.push_str(&graph.stages[*s].name);
                        w.push('>');
                        if !rel.is_empty() {
                            w.push('/');
                            w.push_str(rel);
                        }
                    }
                    Part::Own(rel) => {
                        w.push_str("<out>");
                        if !rel.is_empty() {
                            w.push('/');
                            w.push_str(rel);
                        }
                    }
                }
            }
            words.push(shell_quote(&w));
        }
        words.join(" ")
    }
}

/// `s` as one shell word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@<>+%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[derive(Debug, Default)]
pub struct Graph {
    pub stages: Vec<Stage>,
}

impl Graph {
    /// Adds `stage` after the stages it reads; a stage with the same program and arguments as
    /// one already there is that stage (methods share it). Names must be unique.
    pub fn add(&mut self, stage: Stage) -> anyhow::Result<usize> {
        if let Some(i) = self
            .stages
            .iter()
            .position(|s| s.program == stage.program && s.args == stage.args)
        {
            return Ok(i);
        }
        if self.stages.iter().any(|s| s.name == stage.name) {
            anyhow::bail!(
                "two different stages are both named {:?} (rename a method)",
                stage.name
            );
        }
        debug_assert!(stage.deps.iter().all(|&d| d < self.stages.len()));
        self.stages.push(stage);
        Ok(self.stages.len() - 1)
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, args: Vec<Arg>) -> Stage {
        Stage::new(name.into(), "g", Program::Trainer, args)
    }

    #[test]
    fn identical_stages_are_shared_and_deps_come_from_arguments() {
        let mut g = Graph::default();
        let a = g.add(stage("a", vec![Arg::lit("x")])).unwrap();
        let b = g
            .add(stage("b", vec![Arg::out(a, "f"), Arg::own("o")]))
            .unwrap();
        // The same command under another name is the same stage.
        assert_eq!(
            g.add(stage("b2", vec![Arg::out(a, "f"), Arg::own("o")]))
                .unwrap(),
            b
        );
        assert_eq!(g.stages[b].deps, vec![a]);
        // A different command may not take a used name.
        assert!(g.add(stage("b", vec![Arg::lit("y")])).is_err());
        let c = g
            .add(stage(
                "c",
                vec![Arg::joined(&[Arg::out(b, ""), Arg::out(a, "")], ",")],
            ))
            .unwrap();
        assert_eq!(g.stages[c].deps, vec![a, b]);
        assert_eq!(g.stages[c].display(&g), "trainer <b>,<a>");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a/b.c"), "a/b.c");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
