//! The `harness` command line. Parses arguments, runs one command, prints one error line on
//! failure and exits with a code that says what kind of failure it was (see `cli::EXIT_CODES`);
//! all the work lives in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    dtm_model::memory::reuse_freed_memory();
    dtm_harness::device::pin_thread_count();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`harness logprobs … | head`) is not an error.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::message(&e));
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
