//! Calibrates `FUEL_PER_SECOND`: how much fuel the sandbox burns for a second of CPU work, in
//! the sandbox itself and in native CPython, on the canonical HumanEval and MBPP programs.
//!
//! ```text
//! cargo run --release -p dtm-sandbox --example calibrate_fuel [-- ROUNDS [PYTHON...]]
//! ```
//! 1. Sandbox: the 164 canonical HumanEval programs run one at a time on this thread,
//!    unmetered, ROUNDS times each (default 3). Time is the thread's CPU clock, not the wall
//!    clock, so other processes competing for the cores do not inflate it; each program's
//!    smallest CPU time counts. Printed: total fuel / total of those times (wall time beside
//!    it), the per-program rates' quartiles, and the rate over the *work-bound* programs alone
//!    (those burning at least [`WORK_BOUND`] fuel, whose CPU time is their own work rather than
//!    the instantiation, which burns no fuel).
//! 2. Every canonical HumanEval program and MBPP test-split program once more (fuel does not
//!    vary between runs); the heaviest are printed in protocol seconds under the
//!    `FUEL_PER_SECOND` in use, against the protocol's 3 s.
//! 3. Native: each work-bound program (of both sets) is run by each PYTHON given (default
//!    `python3`) as `PYTHON -I -c PROGRAM`, ROUNDS times; its smallest child CPU time less the
//!    smallest for `pass` (start-up) is its native work time. Printed: fuel per native CPU
//!    second, per program and pooled.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use dtm_sandbox::{Limits, Sandbox, SandboxConfig, Status, FUEL_PER_SECOND};

/// Programs burning at least this much fuel count as work-bound (about 0.1 s of CPU in the
/// sandbox, several times its instantiation).
const WORK_BOUND: u64 = 1_000_000_000;

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

/// CPU time (user + system) of this process's waited-for children so far, in seconds.
fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; RUSAGE_CHILDREN exists on Linux and macOS.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Smallest CPU time of `rounds` native runs of `program`.
fn native_cpu(python: &str, program: &str, rounds: usize) -> f64 {
    (0..rounds)
        .map(|_| {
            let before = children_cpu();
            let status = Command::new(python)
                .args(["-I", "-c", program])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("running {python}: {e}"));
            assert!(status.success(), "{python} failed on a reference program");
            children_cpu() - before
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args
        .next()
        .map(|j| j.parse().expect("ROUNDS must be a number"))
        .unwrap_or(3);
    let mut pythons: Vec<String> = args.collect();
    if pythons.is_empty() {
        pythons.push("python3".into());
    }
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    sandbox.run("pass", &unmetered()); // page the module image in

    // 1. Fuel per CPU second in the sandbox.
    let tasks = common::humaneval();
    let mut total_fuel = 0u128;
    let mut total_cpu = 0f64;
    let mut total_wall = 0f64;
    let (mut bound_fuel, mut bound_cpu) = (0u128, 0f64);
    let mut rates = Vec::new();
    let mut programs: Vec<(String, String, u64)> = Vec::new();
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
        if fuel >= WORK_BOUND {
            bound_fuel += u128::from(fuel);
            bound_cpu += cpu;
        }
        rates.push(fuel as f64 / cpu);
        programs.push((t.task_id.clone(), program, fuel));
    }
    rates.sort_by(f64::total_cmp);
    let q = |p: f64| rates[((rates.len() - 1) as f64 * p) as usize] / 1e6;
    println!(
        "sandbox, {} HumanEval programs, {rounds} rounds each: {:.0} M fuel in {total_cpu:.2} s of CPU ({total_wall:.2} s wall) = {:.0} M fuel per CPU second",
        tasks.len(),
        total_fuel as f64 / 1e6,
        total_fuel as f64 / total_cpu / 1e6
    );
    println!(
        "  per program: quartiles {:.0} / {:.0} / {:.0} M fuel/s (min {:.0}, max {:.0})",
        q(0.25),
        q(0.5),
        q(0.75),
        q(0.0),
        q(1.0)
    );
    if bound_cpu > 0.0 {
        println!(
            "  work-bound programs (>= {} M fuel): {:.0} M fuel in {bound_cpu:.2} s of CPU = {:.0} M fuel per CPU second",
            WORK_BOUND / 1_000_000,
            bound_fuel as f64 / 1e6,
            bound_fuel as f64 / bound_cpu / 1e6
        );
    }

    // 2. The heaviest reference programs under the constant in use.
    let mbpp = common::mbpp_test_split();
    let sources: Vec<&str> = mbpp.iter().map(|(_, p)| p.as_str()).collect();
    let outcomes = sandbox.run_many(&sources, &unmetered(), 0);
    let mbpp_programs: Vec<(String, String, u64)> = mbpp
        .iter()
        .zip(&outcomes)
        .map(|((id, p), o)| {
            (
                format!("MBPP/{id}"),
                p.clone(),
                o.fuel_used.expect("metered"),
            )
        })
        .collect();
    println!("FUEL_PER_SECOND in use: {} M", FUEL_PER_SECOND as f64 / 1e6);
    print_heaviest("HumanEval", &programs);
    print_heaviest("MBPP test split", &mbpp_programs);
    if let Some((id, program, fuel)) = mbpp_programs.iter().find(|(id, _, _)| id == "MBPP/123") {
        let before = thread_cpu();
        let o = sandbox.run(program, &unmetered());
        println!(
            "{id} in the sandbox: {:?}, {:.2} s CPU, {} ms wall, {:.0} M fuel",
            o.status,
            (thread_cpu() - before).as_secs_f64(),
            o.millis,
            *fuel as f64 / 1e6
        );
    }

    // 3. Fuel per second of native CPython work.
    programs.extend(mbpp_programs);
    let bound: Vec<_> = programs
        .iter()
        .filter(|(_, _, fuel)| *fuel >= WORK_BOUND)
        .collect();
    for python in &pythons {
        let version = Command::new(python)
            .args(["-c", "import sys; print(sys.version.split()[0])"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| panic!("running {python}: {e}"));
        let start_up = native_cpu(python, "pass", rounds);
        let (mut fuel_sum, mut cpu_sum) = (0u128, 0f64);
        let mut each = Vec::new();
        for (id, program, fuel) in &bound {
            let cpu = (native_cpu(python, program, rounds) - start_up).max(1e-3);
            fuel_sum += u128::from(*fuel);
            cpu_sum += cpu;
            each.push(format!(
                "{id} {cpu:.3} s = {:.0} M/s",
                *fuel as f64 / cpu / 1e6
            ));
        }
        println!(
            "native {python} ({version}, start-up {start_up:.3} s): {}; pooled {:.0} M fuel per native CPU second",
            each.join(", "),
            fuel_sum as f64 / cpu_sum / 1e6
        );
    }
}

/// The five programs that burn the most fuel, in protocol seconds under `FUEL_PER_SECOND`.
fn print_heaviest(what: &str, programs: &[(String, String, u64)]) {
    let mut by_fuel: Vec<_> = programs.iter().map(|(id, _, f)| (*f, id)).collect();
    by_fuel.sort_by_key(|&(f, _)| std::cmp::Reverse(f));
    let top: Vec<String> = by_fuel
        .iter()
        .take(5)
        .map(|(f, id)| {
            format!(
                "{id} {:.0} M = {:.2} s",
                *f as f64 / 1e6,
                *f as f64 / FUEL_PER_SECOND as f64
            )
        })
        .collect();
    println!(
        "{what}, heaviest (fuel = protocol time): {}",
        top.join(", ")
    );
}
