//! Runs one Python file in the sandbox and prints its outcome as JSON (one line).
//!
//! ```text
//! cargo run --release -p dtm-sandbox --example run -- FILE.py [--timeout S] [--memory-mb M]
//! ```
//! `-` reads the program from stdin.

use std::io::Read;

use dtm_sandbox::{Limits, Sandbox, SandboxConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut limits = Limits::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--timeout" => {
                let s: f64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .expect("--timeout S (seconds of protocol time, 0 < S <= 3600)");
                let memory = limits.memory_bytes;
                limits = Limits {
                    memory_bytes: memory,
                    ..Limits::for_protocol_seconds(s)
                };
            }
            "--memory-mb" => {
                let m: usize = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--memory-mb M");
                limits.memory_bytes = m << 20;
            }
            _ => file = Some(a),
        }
    }
    let file = file.expect("usage: run FILE.py [--timeout S] [--memory-mb M]");
    let program = if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).expect("read stdin");
        s
    } else {
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let sandbox = match Sandbox::new(SandboxConfig::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let outcome = sandbox.run(&program, &limits);
    println!("{}", serde_json::to_string(&outcome).expect("serialise"));
}
