//! `harness exec`: run one Python file in the sandbox and print its outcome, to debug an item.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use dtm_sandbox::{Limits, Sandbox, SandboxConfig};

#[derive(Args)]
pub struct ExecArgs {
    /// The Python program.
    file: PathBuf,
    /// Wall-clock limit in seconds.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Memory cap in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mb: usize,
}

pub fn run(args: ExecArgs) -> Result<()> {
    let program = std::fs::read_to_string(&args.file)
        .with_context(|| format!("{}: cannot read", args.file.display()))?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let limits = Limits {
        timeout: Duration::from_secs_f64(args.timeout),
        memory_bytes: args.memory_mb << 20,
        ..Limits::default()
    };
    let outcome = sandbox.run(&program, &limits);
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}
