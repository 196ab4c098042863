//! `trainer`: LoRA SFT, baselines, dispersal and merging. `main` only parses and reports.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    dtm_model::memory::reuse_freed_memory();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
