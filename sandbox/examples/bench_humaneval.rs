//! Wall time for the 164 canonical HumanEval programs: through the sandbox versus a native
//! `python3` subprocess per program, both with the same number of parallel jobs.
//!
//! ```text
//! cargo run --release -p dtm-sandbox --example bench_humaneval [-- JOBS]
//! ```
//! Env: `DTM_NATIVE_PYTHON` (default `python3`), `DTM_DATA_DIR`, `DTM_PYTHON_WASM`, `DTM_CACHE`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dtm_sandbox::{Limits, Sandbox, SandboxConfig, Status};

fn main() {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|j| j.parse().expect("JOBS must be a number"))
        .unwrap_or(2);
    let tasks = common::humaneval();
    let programs: Vec<String> = tasks
        .iter()
        .map(|t| t.program(&t.canonical_solution))
        .collect();
    println!("{} programs, jobs={jobs}", programs.len());

    let t = Instant::now();
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "sandbox set-up (load cached compiled module, or compile): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let limits = Limits {
        timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    // Warm-up run (page in the module image).
    sandbox.run("pass", &limits);

    let t = Instant::now();
    let outcomes = sandbox.run_many(&programs, &limits, jobs);
    let wasm_secs = t.elapsed().as_secs_f64();
    let passed = outcomes
        .iter()
        .filter(|o| o.status == Status::Passed)
        .count();
    let mut ms: Vec<u64> = outcomes.iter().map(|o| o.millis).collect();
    ms.sort_unstable();
    println!(
        "sandbox: {wasm_secs:.2} s wall, {passed}/{} passed, per program median {} ms, p90 {} ms, max {} ms",
        programs.len(),
        ms[ms.len() / 2],
        ms[ms.len() * 9 / 10],
        ms[ms.len() - 1]
    );

    let mut slowest: Vec<(u64, &str)> = outcomes
        .iter()
        .zip(&tasks)
        .map(|(o, t)| (o.millis, t.task_id.as_str()))
        .collect();
    slowest.sort_unstable_by(|a, b| b.cmp(a));
    println!("slowest in the sandbox (ms): {:?}", &slowest[..5]);

    let python = std::env::var("DTM_NATIVE_PYTHON").unwrap_or_else(|_| "python3".into());
    // Resolve the real interpreter (pyenv-style shims need PATH; the runs get no env).
    let python = Command::new(&python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or(python);
    let version = Command::new(&python)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unavailable: {e}"));
    let next = AtomicUsize::new(0);
    let native_passed = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = programs.get(i) else { break };
                let mut child = Command::new(&python)
                    .arg("-")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .env_clear()
                    .spawn()
                    .expect("spawn native python");
                child.stdin.take().unwrap().write_all(p.as_bytes()).unwrap();
                let out = child.wait_with_output().unwrap();
                if out.status.success() {
                    native_passed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let native_secs = t.elapsed().as_secs_f64();
    println!(
        "native {python} ({version}), one subprocess per program: {native_secs:.2} s wall, {}/{} exited 0",
        native_passed.load(Ordering::Relaxed),
        programs.len()
    );
    println!("ratio sandbox/native: {:.2}x", wasm_secs / native_secs);
}
