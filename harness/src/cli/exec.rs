//! `harness exec`: run one Python file in the sandbox and print its outcome, to debug an item.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use dtm_sandbox::{Limits, Sandbox, SandboxConfig};

use super::output::{print_line, CliError};
use super::values;

#[derive(Args)]
pub struct ExecArgs {
    /// The Python program (any encoding Python accepts, e.g. with a `# -*- coding: latin-1 -*-` line).
    file: PathBuf,
    /// The protocol's per-program time limit in seconds: a work budget of that many seconds on
    /// the reference machine (wasmtime fuel), with 10x as much wall time as a safety net.
    #[arg(long, default_value_t = 3.0, value_parser = values::seconds)]
    timeout: f64,
    /// Memory cap in MiB (1 to 4096).
    #[arg(long, default_value_t = 512, value_parser = values::memory_mb)]
    memory_mb: usize,
}

pub fn run(args: ExecArgs) -> Result<()> {
    let program = std::fs::read(&args.file)
        .map_err(|e| CliError::BadInput(format!("{}: cannot read: {e}", args.file.display())))?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let limits = Limits {
        memory_bytes: args.memory_mb << 20,
        ..Limits::for_protocol_seconds(args.timeout)
    };
    let outcome = sandbox.run_source(&program, &limits);
    print_line(&serde_json::to_string(&outcome)?)
}
