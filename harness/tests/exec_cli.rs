//! `harness exec`: one Python file through the sandbox, its outcome as one JSON object.

use std::process::Command;

fn exec(program: &str, extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("item.py");
    std::fs::write(&file, program).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .arg("exec")
        .arg(&file)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn exec_reports_each_way_a_program_ends() {
    let passed = exec("print('hi')\nassert 1 + 1 == 2\n", &[]);
    assert_eq!(passed["status"], "passed");
    assert_eq!(passed["stdout"], "hi\n");
    assert!(passed["millis"].is_u64() && passed["stderr"].is_string());

    let failed = exec("def f():\n    return None\nassert f() == 3\n", &[]);
    assert_eq!(failed["status"], "failed");
    assert!(failed["stderr"]
        .as_str()
        .unwrap()
        .contains("AssertionError"));

    assert_eq!(
        exec("import sys\nsys.exit(0)\nassert False\n", &[])["status"],
        "failed"
    );
    assert_eq!(
        exec("while True:\n    pass\n", &["--timeout", "0.5"])["status"],
        "timed_out"
    );
    assert_eq!(
        exec("x = [0] * (300 * 1024 * 1024)\n", &["--memory-mb", "64"])["status"],
        "memory_exceeded"
    );
}
