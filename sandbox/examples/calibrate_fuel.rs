//! Calibrates `FUEL_PER_SECOND`: how much fuel the sandbox burns per second of CPU time on the
//! reference workload (the 164 canonical HumanEval programs, interpreter start-up included).
//!
//! ```text
//! cargo run --release -p dtm-sandbox --example calibrate_fuel [-- ROUNDS]
//! ```
//! Programs run one at a time on this thread, unmetered, ROUNDS times each (default 3). Time is
//! the thread's CPU clock, not the wall clock, so other processes competing for the cores do
//! not inflate it; each program's smallest CPU time counts. The rate printed is total fuel /
//! total of those times (wall time is printed beside it); the per-program rates' quartiles show
//! how much work per second varies between programs. MBPP task 123 (quadratic trial division;
//! ~5 s in native CPython) is measured too, against the protocol's 3 s budget.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use dtm_sandbox::{Limits, Sandbox, SandboxConfig, Status, FUEL_PER_SECOND};

fn unmetered() -> Limits {
    Limits {
        fuel: None,
        timeout: Duration::from_secs(600),
        ..Limits::default()
    }
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID exists on Linux and macOS.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|j| j.parse().expect("ROUNDS must be a number"))
        .unwrap_or(3);
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    sandbox.run("pass", &unmetered()); // page the module image in
    let tasks = common::humaneval();
    let mut total_fuel = 0u128;
    let mut total_cpu = 0f64;
    let mut total_wall = 0f64;
    let mut rates = Vec::new();
    for t in &tasks {
        let program = t.program(&t.canonical_solution);
        let mut best: Option<(u64, f64, f64)> = None;
        for _ in 0..rounds {
            let before = thread_cpu();
            let o = sandbox.run(&program, &unmetered());
            let cpu = (thread_cpu() - before).as_secs_f64();
            assert_eq!(o.status, Status::Passed, "{}: {o:#?}", t.task_id);
            let fuel = o.fuel_used.expect("metered");
            if best.is_none_or(|(_, c, _)| cpu < c) {
                best = Some((fuel, cpu, o.millis as f64 / 1000.0));
            }
        }
        let (fuel, cpu, wall) = best.expect("at least one round");
        total_fuel += u128::from(fuel);
        total_cpu += cpu;
        total_wall += wall;
        rates.push(fuel as f64 / cpu);
    }
    rates.sort_by(f64::total_cmp);
    let q = |p: f64| rates[((rates.len() - 1) as f64 * p) as usize] / 1e6;
    let rate = total_fuel as f64 / total_cpu;
    println!(
        "{} programs, {rounds} rounds each: {:.0} M fuel in {total_cpu:.2} s of CPU ({total_wall:.2} s wall) = {:.0} M fuel per CPU second",
        tasks.len(),
        total_fuel as f64 / 1e6,
        rate / 1e6
    );
    println!(
        "per program: quartiles {:.0} / {:.0} / {:.0} M fuel/s (min {:.0}, max {:.0})",
        q(0.25),
        q(0.5),
        q(0.75),
        q(0.0),
        q(1.0)
    );
    println!("FUEL_PER_SECOND in use: {} M", FUEL_PER_SECOND as f64 / 1e6);

    if let Some((_, slow)) = common::mbpp_test_split()
        .into_iter()
        .find(|(id, _)| *id == 123)
    {
        let before = thread_cpu();
        let o = sandbox.run(&slow, &unmetered());
        println!(
            "MBPP 123 unmetered: {:?}, {:.1} s CPU, {} ms wall, {:.0} M fuel = {:.1} s of protocol time",
            o.status,
            (thread_cpu() - before).as_secs_f64(),
            o.millis,
            o.fuel_used.unwrap_or(0) as f64 / 1e6,
            o.fuel_used.unwrap_or(0) as f64 / FUEL_PER_SECOND as f64
        );
    }
}
