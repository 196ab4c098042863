//! Shared helpers for the integration tests. These tests need the CPython WASI build;
//! when it is missing they fail (loudly, with the fetch instruction), they never skip.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use dtm_sandbox::{Limits, Outcome, Sandbox, SandboxConfig, Status};

/// One sandbox per test binary (compiling/loading the module once).
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| match Sandbox::new(SandboxConfig::default()) {
        Ok(s) => s,
        Err(e) => panic!(
            "\n\nthis test needs the CPython WASI interpreter and could not load it:\n  {e}\n\
             fix: run scripts/fetch-python-wasm.sh from the workspace root (needs pip and network once)\n\n"
        ),
    })
}

pub fn run(program: &str) -> Outcome {
    sandbox().run(program, &Limits::default())
}

pub fn run_with(program: &str, limits: &Limits) -> Outcome {
    sandbox().run(program, limits)
}

/// Asserts the run ended with `status`, printing the outcome otherwise.
#[track_caller]
pub fn expect(o: &Outcome, status: Status) {
    assert_eq!(o.status, status, "unexpected outcome: {o:#?}");
}

/// `$DTM_DATA_DIR`, else `<workspace>/../shared/data`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DTM_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

fn read_data(rel: &str) -> String {
    let path = data_dir().join(rel);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (set DTM_DATA_DIR to the shared data directory)",
            path.display()
        )
    });
    if rel.ends_with(".gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .unwrap_or_else(|e| panic!("gunzip {}: {e}", path.display()));
        s
    } else {
        String::from_utf8(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

fn jsonl(rel: &str) -> Vec<serde_json::Value> {
    read_data(rel)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("bad JSON line"))
        .collect()
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("field {k} missing"))
}

pub struct HumanEvalTask {
    pub task_id: String,
    pub prompt: String,
    pub entry_point: String,
    pub canonical_solution: String,
    pub test: String,
}

impl HumanEvalTask {
    /// prompt + completion + "\n" + test + "\n" + "check(entry_point)".
    pub fn program(&self, completion: &str) -> String {
        format!(
            "{}{}\n{}\ncheck({})",
            self.prompt, completion, self.test, self.entry_point
        )
    }
}

pub fn humaneval() -> Vec<HumanEvalTask> {
    jsonl("humaneval/data/HumanEval.jsonl.gz")
        .iter()
        .map(|v| HumanEvalTask {
            task_id: s(v, "task_id").into(),
            prompt: s(v, "prompt").into(),
            entry_point: s(v, "entry_point").into(),
            canonical_solution: s(v, "canonical_solution").into(),
            test: s(v, "test").into(),
        })
        .collect()
}

/// (task_id, program) for the MBPP test split (task ids 11..=510):
/// test_setup_code + "\n" + code + "\n" + one assert per line.
pub fn mbpp_test_split() -> Vec<(u64, String)> {
    jsonl("mbpp/mbpp.jsonl")
        .iter()
        .filter_map(|v| {
            let id = v["task_id"].as_u64()?;
            if !(11..=510).contains(&id) {
                return None;
            }
            let tests: Vec<&str> = v["test_list"]
                .as_array()?
                .iter()
                .filter_map(|t| t.as_str())
                .collect();
            let program = format!(
                "{}\n{}\n{}\n",
                s(v, "test_setup_code"),
                s(v, "code"),
                tests.join("\n")
            );
            Some((id, program))
        })
        .collect()
}
