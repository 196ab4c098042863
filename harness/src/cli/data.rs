//! `harness data fetch` and `harness data verify`: the data files of the manifest.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use dtm_harness::data;

use super::output::{print_line, CliError};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Download every data file that is missing or differs from the manifest (upstream sources
    /// at pinned commits), checking each against its sha256.
    Fetch(FetchArgs),
    /// Check the data files against the manifest's sha256 (missing files are reported too).
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct FetchArgs {
    /// Where to install (default: $DTM_DATA_DIR, else $XDG_DATA_HOME/dtm/data, else
    /// ~/.local/share/dtm/data).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only these groups (comma-separated: gsm8k, mmlu, bbh, arc, ...; default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Fetch `https://host/path` as `MIRROR/host/path` instead (a local mirror or cache).
    #[arg(long)]
    mirror: Option<String>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The data folder to check (default: the one `harness score` would use).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only these groups (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Fetch(a) => fetch(a),
        DataCommand::Verify(a) => verify(a),
    }
}

fn fetch(args: FetchArgs) -> Result<()> {
    let dir = args.dir.unwrap_or_else(data::install_dir);
    eprintln!("fetching into {}", dir.display());
    let report = data::fetch(&dir, &args.only, args.mirror.as_deref(), &mut |path| {
        eprintln!("fetched {path}")
    })?;
    print_line(&format!(
        "{}: {} files fetched, {} already present and correct",
        dir.display(),
        report.written,
        report.present
    ))
}

fn verify(args: VerifyArgs) -> Result<()> {
    let dir = data::locate(args.dir.as_deref())?;
    let check = data::verify(&dir, &args.only)?;
    for path in &check.missing {
        print_line(&format!("missing  {path}"))?;
    }
    for (path, actual) in &check.wrong {
        print_line(&format!("differs  {path} (sha256 {actual})"))?;
    }
    print_line(&format!(
        "{}: {} files match the manifest, {} missing, {} differ",
        dir.display(),
        check.ok,
        check.missing.len(),
        check.wrong.len()
    ))?;
    if check.is_ok() {
        Ok(())
    } else {
        Err(CliError::BadInput(format!(
            "{}: the data does not match the manifest; `harness data fetch --dir {}` downloads what is missing or differs",
            dir.display(),
            dir.display()
        ))
        .into())
    }
}
