//! Reference solutions of HumanEval and MBPP run through the sandbox.
//!
//! Time limit here is 10 s of protocol time rather than the 3 s default: these tests check
//! correctness of the interpreter and the driver first. They also check the calibration of
//! `FUEL_PER_SECOND`: every reference solution that passes uses at most three quarters of the
//! protocol's 3 s budget (fuel is deterministic, so this does not depend on the machine).

mod common;

use common::{humaneval, mbpp_test_split, sandbox};
use dtm_sandbox::{Limits, Outcome, Status};

const JOBS: usize = 2;

fn limits() -> Limits {
    Limits::for_protocol_seconds(10.0)
}

/// The reference solutions among `runs` that passed but used more than three quarters of the
/// protocol's default budget (3 s of fuel), named with their share of it.
fn without_margin<'a>(runs: impl Iterator<Item = (String, &'a Outcome)>) -> Vec<String> {
    let budget = Limits::default()
        .fuel
        .expect("the default limits are metered");
    runs.filter(|(_, o)| o.status == Status::Passed)
        .filter_map(|(id, o)| {
            let used = o.fuel_used.expect("a run that passed was metered");
            (used > budget / 4 * 3)
                .then(|| format!("{id}: {:.0}%", 100.0 * used as f64 / budget as f64))
        })
        .collect()
}

#[test]
fn humaneval_canonical_solutions_all_pass() {
    let tasks = humaneval();
    assert_eq!(tasks.len(), 164);
    let programs: Vec<String> = tasks
        .iter()
        .map(|t| t.program(&t.canonical_solution))
        .collect();
    let outcomes = sandbox().run_many(&programs, &limits(), JOBS);
    let failures: Vec<String> = tasks
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.status != Status::Passed)
        .map(|(t, o)| {
            format!(
                "{}: {} {:?} {:?}\n{}",
                t.task_id, o.status, o.error_type, o.error_message, o.stderr
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 164 canonical solutions did not pass:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let heavy = without_margin(tasks.iter().map(|t| t.task_id.clone()).zip(&outcomes));
    assert!(heavy.is_empty(), "need most of the 3 s budget: {heavy:?}");
}

#[test]
fn humaneval_return_none_stubs_all_fail() {
    let tasks = humaneval();
    let programs: Vec<String> = tasks
        .iter()
        .map(|t| t.program("    return None\n"))
        .collect();
    let outcomes = sandbox().run_many(&programs, &limits(), JOBS);
    let passed: Vec<&str> = tasks
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.status == Status::Passed)
        .map(|(t, _)| t.task_id.as_str())
        .collect();
    assert!(passed.is_empty(), "stubs that passed: {passed:?}");
    // They fail because the tests ran and rejected them, not for some other reason.
    for (t, o) in tasks.iter().zip(&outcomes) {
        assert_eq!(o.status, Status::Failed, "{}: {o:#?}", t.task_id);
        assert!(o.error_type.is_some(), "{}: {o:#?}", t.task_id);
    }
}

/// MBPP test-split items whose reference program also fails under native CPython
/// (3.11.7 and 3.12.1 checked), with the reason. See sandbox/README.md.
const MBPP_NATIVE_FAILURES: &[(u64, &str)] = &[(
    367,
    "test_setup_code builds a tree with Node(...) before `code` defines class Node: NameError",
)];

#[test]
fn mbpp_reference_solutions_pass() {
    let items = mbpp_test_split();
    assert_eq!(items.len(), 500);
    let programs: Vec<&str> = items.iter().map(|(_, p)| p.as_str()).collect();
    let outcomes = sandbox().run_many(&programs, &limits(), JOBS);
    let mut unexpected = Vec::new();
    let mut expected_failures = Vec::new();
    for ((id, _), o) in items.iter().zip(&outcomes) {
        let known = MBPP_NATIVE_FAILURES.iter().any(|(k, _)| k == id);
        match (o.status == Status::Passed, known) {
            (true, false) => {}
            (false, true) => expected_failures.push(*id),
            (true, true) => unexpected.push(format!("{id}: passes but is listed as failing")),
            (false, false) => unexpected.push(format!(
                "{id}: {} {:?} {:?}\n{}",
                o.status, o.error_type, o.error_message, o.stderr
            )),
        }
    }
    assert!(
        unexpected.is_empty(),
        "MBPP mismatches:\n{}",
        unexpected.join("\n")
    );
    assert_eq!(expected_failures.len(), MBPP_NATIVE_FAILURES.len());
    // Task 123 (quadratic trial division) is the heaviest by far: ~2.1 s of the 3 s.
    let heavy = without_margin(
        items
            .iter()
            .map(|(id, _)| format!("MBPP/{id}"))
            .zip(&outcomes),
    );
    assert!(heavy.is_empty(), "need most of the 3 s budget: {heavy:?}");
}
