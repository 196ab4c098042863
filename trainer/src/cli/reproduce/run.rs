//! Running stages on this machine, in graph order: a finished stage (its `done.json` is there)
//! is never run again; an unfinished one is run again in the same folder, where the command
//! resumes what it had saved (`trainer sft --resume`, `harness score`'s saved chunks, …).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use super::graph::{Graph, Program};
use super::store::{self, Done, DONE_FILE};

/// The binaries stages run.
pub struct Binaries {
    pub trainer: PathBuf,
    pub harness: PathBuf,
}

impl Binaries {
    /// This `trainer`, and the `harness` given, else the one beside it, else the one on PATH.
    pub fn find(harness: Option<PathBuf>) -> anyhow::Result<Binaries> {
        let trainer = std::env::current_exe().context("cannot tell where `trainer` is")?;
        let harness = match harness {
            Some(h) => h,
            None => {
                let beside =
                    trainer.with_file_name(format!("harness{}", std::env::consts::EXE_SUFFIX));
                if beside.is_file() {
                    beside
                } else {
                    PathBuf::from("harness")
                }
            }
        };
        Ok(Binaries { trainer, harness })
    }

    fn of(&self, p: Program) -> &Path {
        match p {
            Program::Trainer => &self.trainer,
            Program::Harness => &self.harness,
        }
    }
}

pub struct Runner<'a> {
    pub graph: &'a Graph,
    pub keys: Vec<String>,
    pub out: PathBuf,
    pub bins: Binaries,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `3723.4` s as `1h02m03s`.
pub fn human(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{seconds:.1}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

impl Runner<'_> {
    pub fn dir(&self, i: usize) -> PathBuf {
        store::stage_dir(&self.out, &self.graph.stages[i].name, &self.keys[i])
    }

    pub fn done(&self, i: usize) -> Option<Done> {
        store::done(&self.dir(i))
    }

    /// Runs every stage that is not finished, in order; stops at the first failure.
    pub fn run_all(&self) -> anyhow::Result<()> {
        let n = self.graph.stages.len();
        let started = Instant::now();
        let mut ran = 0;
        for i in 0..n {
            if let Some(d) = self.done(i) {
                eprintln!(
                    "[{}/{n}] {}: finished earlier ({})",
                    i + 1,
                    self.graph.stages[i].name,
                    human(d.wall_seconds)
                );
                continue;
            }
            self.run_stage(i)?;
            ran += 1;
            self.write_summary()?;
        }
        self.write_summary()?;
        eprintln!(
            "all {n} stages finished ({ran} run now, in {}); summary in {}",
            human(started.elapsed().as_secs_f64()),
            self.out.join("stages.md").display()
        );
        Ok(())
    }

    /// Runs stage `i` (its upstream stages must be finished) unless it finished earlier.
    pub fn run_stage(&self, i: usize) -> anyhow::Result<()> {
        let stage = &self.graph.stages[i];
        let n = self.graph.stages.len();
        let waiting: Vec<&str> = stage
            .deps
            .iter()
            .filter(|&&d| self.done(d).is_none())
            .map(|&d| self.graph.stages[d].name.as_str())
            .collect();
        if !waiting.is_empty() {
            bail!(
                "stage {} needs {} finished first",
                stage.name,
                waiting.join(", ")
            );
        }
        let dir = self.dir(i);
        if self.done(i).is_some() {
            eprintln!("[{}/{n}] {}: finished earlier", i + 1, stage.name);
            return Ok(());
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        // Two runs of one stage at once (a resubmitted job, a second terminal) would write the
        // same files: the second is refused. The lock goes with the process, even on kill -9.
        let lock = std::fs::File::create(dir.join(".lock"))?;
        if lock.try_lock().is_err() {
            bail!(
                "stage {} is being run by another process ({})",
                stage.name,
                dir.display()
            );
        }
        let args = store::render(self.graph, &self.keys, &self.out, i);
        let program = self.bins.of(stage.program);
        let mut command = vec![stage.program.name().to_owned()];
        command.extend(args.iter().cloned());
        let shown: Vec<String> = command
            .iter()
            .map(|w| super::graph::shell_quote(w))
            .collect();
        std::fs::write(dir.join("command.sh"), shown.join(" ") + "\n")?;
        eprintln!("[{}/{n}] {}: started", i + 1, stage.name);
        eprintln!("        {}", shown.join(" "));
        let start_unix = now_unix();
        let t0 = Instant::now();
        let status = self.spawn(program, &args, &dir)?;
        let wall = t0.elapsed().as_secs_f64();
        if !status.success() {
            bail!(
                "stage {} failed ({status}) after {}; its output is in {} (log.txt); run again to resume",
                stage.name,
                human(wall),
                dir.display()
            );
        }
        let done = Done {
            name: stage.name.clone(),
            key: self.keys[i].clone(),
            command,
            started_unix: start_unix,
            wall_seconds: wall,
            host: hostname(),
        };
        dtm_trainer::data::write_atomic(
            &dir.join(DONE_FILE),
            (serde_json::to_string_pretty(&done)? + "\n").as_bytes(),
        )?;
        eprintln!(
            "[{}/{n}] {}: finished in {}",
            i + 1,
            stage.name,
            human(wall)
        );
        Ok(())
    }

    /// Runs the command with its stderr shown live and kept in `log.txt`. On a terminal the
    /// command keeps the terminal (its own progress bars) and the log says so.
    fn spawn(
        &self,
        program: &Path,
        args: &[String],
        dir: &Path,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut log = std::fs::File::create(dir.join("log.txt"))?;
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        let spawn_err = |e: std::io::Error| {
            anyhow::anyhow!(
                "cannot run {}: {e} (pass --harness PATH, or build it: cargo build --release)",
                program.display()
            )
        };
        if std::io::stderr().is_terminal() {
            writeln!(log, "(the command's output went to the terminal)")?;
            return cmd.status().map_err(spawn_err);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let copy = |mut from: Box<dyn Read + Send>, mut log: std::fs::File, to_stdout: bool| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = log.write_all(&buf[..n]);
                    if to_stdout {
                        let _ = std::io::stdout().write_all(&buf[..n]);
                    } else {
                        let _ = std::io::stderr().write_all(&buf[..n]);
                    }
                }
            })
        };
        let out = copy(
            Box::new(child.stdout.take().expect("piped")),
            log.try_clone()?,
            true,
        );
        let err = copy(Box::new(child.stderr.take().expect("piped")), log, false);
        let status = child.wait()?;
        let _ = out.join();
        let _ = err.join();
        Ok(status)
    }

    /// `stages.md` and `stages.json`: every stage with its state, wall time and command.
    pub fn write_summary(&self) -> anyhow::Result<()> {
        let mut md =
            String::from("| # | stage | state | wall time | command |\n|---|---|---|---|---|\n");
        let mut rows = Vec::new();
        let mut total = 0.0;
        for (i, s) in self.graph.stages.iter().enumerate() {
            let done = self.done(i);
            let rendered = store::render(self.graph, &self.keys, &self.out, i);
            let command = match &done {
                Some(d) => d.command.clone(),
                None => std::iter::once(s.program.name().to_owned())
                    .chain(rendered)
                    .collect(),
            };
            let wall = done.as_ref().map(|d| d.wall_seconds);
            total += wall.unwrap_or(0.0);
            let shown: Vec<String> = command
                .iter()
                .map(|w| super::graph::shell_quote(w))
                .collect();
            md.push_str(&format!(
                "| {} | {} | {} | {} | `{}` |\n",
                i + 1,
                s.name,
                if done.is_some() { "finished" } else { "to do" },
                wall.map_or(String::new(), human),
                shown.join(" ").replace('|', "\\|")
            ));
            rows.push(serde_json::json!({
                "stage": s.name,
                "key": self.keys[i],
                "folder": self.dir(i),
                "finished": done.is_some(),
                "wall_seconds": wall,
                "command": command,
            }));
        }
        md.push_str(&format!(
            "\nTotal wall time of the finished stages: {}\n",
            human(total)
        ));
        std::fs::create_dir_all(&self.out)?;
        dtm_trainer::data::write_atomic(&self.out.join("stages.md"), md.as_bytes())?;
        dtm_trainer::data::write_atomic(
            &self.out.join("stages.json"),
            (serde_json::to_string_pretty(&rows)? + "\n").as_bytes(),
        )?;
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
