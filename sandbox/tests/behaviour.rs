//! What an outcome reports, and the isolation between runs.

mod common;

use std::time::Duration;

use common::{expect, run, run_with, sandbox};
use dtm_sandbox::{Limit, Limits, Sandbox, SandboxConfig, SandboxError, Status, FUEL_PER_SECOND};

#[test]
fn pass_captures_stdout_and_stderr() {
    let o = run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nassert 1 + 1 == 2");
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "out\n");
    assert_eq!(o.stderr, "err\n");
    assert!(!o.stdout_truncated && !o.stderr_truncated);
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.error_type, None);
    assert_eq!(o.error_message, None);
}

#[test]
fn output_without_trailing_newline_is_kept_exactly() {
    let o = run("import sys\nsys.stdout.write('no newline')");
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "no newline");
    let o = run("");
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "");
}

#[test]
fn failed_assert_reports_type_message_and_traceback() {
    let o = run("def f():\n    return 1\nassert f() == 2, 'f is wrong'");
    expect(&o, Status::Failed);
    assert_eq!(o.error_type.as_deref(), Some("AssertionError"));
    assert_eq!(o.error_message.as_deref(), Some("f is wrong"));
    assert_eq!(o.exit_code, Some(1));
    assert!(o.stderr.contains("Traceback"), "{}", o.stderr);
    assert!(
        o.stderr.contains("AssertionError: f is wrong"),
        "{}",
        o.stderr
    );
    // The driver's own frame is not shown.
    assert!(!o.stderr.contains("_dtm_main"), "{}", o.stderr);
}

#[test]
fn other_exceptions() {
    let o = run("raise ValueError('bad value')");
    expect(&o, Status::Failed);
    assert_eq!(o.error_type.as_deref(), Some("ValueError"));
    assert_eq!(o.error_message.as_deref(), Some("bad value"));

    let o = run("def f(:\n    pass");
    expect(&o, Status::Failed);
    assert_eq!(o.error_type.as_deref(), Some("SyntaxError"));

    let o = run("class MyErr(Exception):\n    pass\nraise MyErr('x\\ny: z')");
    expect(&o, Status::Failed);
    assert_eq!(o.error_type.as_deref(), Some("MyErr"));
    assert_eq!(o.error_message.as_deref(), Some("x\ny: z"));

    let o = run("print(undefined_name)");
    assert_eq!(o.error_type.as_deref(), Some("NameError"));
}

#[test]
fn main_guard_and_stdlib_work() {
    let o = run(
        "import math, re, json, itertools, collections, functools, heapq, hashlib, string\n\
         from typing import List\n\
         from dataclasses import dataclass\n\
         @dataclass\nclass P:\n    x: int\n\
         if __name__ == '__main__':\n    print(math.gcd(12, 18), P(3), json.dumps({'a': [1]}), hashlib.sha256(b'').hexdigest()[:8])",
    );
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "6 P(x=3) {\"a\": [1]} e3b0c442\n");
}

#[test]
fn unicode_in_program_and_output() {
    let o = run("s = 'héllo wörld ✓'\nprint(s.upper())");
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "HÉLLO WÖRLD ✓\n");
}

#[test]
fn no_state_leaks_between_runs() {
    let first = "import builtins, sys\nbuiltins.LEAK = 1\nsys.modules['leak_mod'] = sys\n\
                 import os\ntry:\n    open('/tmp/leak.txt', 'w').write('x')\nexcept OSError:\n    pass";
    run(first);
    let o = run(
        "import builtins, sys, os\nprint(hasattr(builtins, 'LEAK'), 'leak_mod' in sys.modules, os.path.exists('/tmp/leak.txt'))",
    );
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "False False False\n");
}

#[test]
fn stdout_cap_marks_truncation() {
    let limits = Limits {
        stdout_cap: 10,
        stderr_cap: 5,
        ..Limits::default()
    };
    let o = run_with(
        "import sys\nprint('0123456789abcdef')\nsys.stderr.write('vwxyz12345')",
        &limits,
    );
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "0123456789");
    assert!(o.stdout_truncated);
    assert_eq!(o.stderr, "12345");
    assert!(o.stderr_truncated);
    // Exactly at the cap: not truncated.
    let o = run_with("import sys\nsys.stdout.write('0123456789')", &limits);
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "0123456789");
    assert!(!o.stdout_truncated);
}

#[test]
fn run_many_keeps_order() {
    let programs: Vec<String> = (0..12)
        .map(|i| {
            if i % 3 == 0 {
                format!("raise ValueError('{i}')")
            } else {
                format!("print({i})")
            }
        })
        .collect();
    let out = sandbox().run_many(&programs, &Limits::default(), 2);
    assert_eq!(out.len(), 12);
    for (i, o) in out.iter().enumerate() {
        if i % 3 == 0 {
            expect(o, Status::Failed);
            assert_eq!(o.error_message.as_deref(), Some(i.to_string().as_str()));
        } else {
            expect(o, Status::Passed);
            assert_eq!(o.stdout, format!("{i}\n"));
        }
    }
    assert!(sandbox()
        .run_many::<String>(&[], &Limits::default(), 2)
        .is_empty());
}

#[test]
fn outcome_json_shape() {
    let o = run("print('hi')");
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["status"], "passed");
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(v["stderr"], "");
    assert!(v["millis"].is_u64());
    assert!(v["fuel_used"].is_u64());
    assert!(v["limit"].is_null());
    let o = run_with(
        "while True: pass",
        &Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    );
    let v = serde_json::to_value(&o).unwrap();
    assert_eq!(v["status"], "timed_out");
    assert_eq!(v["limit"], "wall");
}

#[test]
fn missing_interpreter_is_a_clear_error() {
    let err = Sandbox::new(SandboxConfig {
        python_wasm: Some("/nonexistent/dir/python-3.12.0.wasm".into()),
        ..SandboxConfig::default()
    })
    .err()
    .expect("must fail");
    assert!(matches!(err, SandboxError::WasmNotFound { .. }));
    let msg = err.to_string();
    assert!(msg.contains("scripts/fetch-python-wasm.sh"), "{msg}");
    assert!(msg.contains("/nonexistent/dir/python-3.12.0.wasm"), "{msg}");
}

#[test]
fn unpinned_interpreter_is_refused() {
    let dir = std::env::temp_dir().join(format!("dtm-sandbox-unpinned-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("python.wasm");
    std::fs::write(&fake, b"\0asm\x01\0\0\0").unwrap();
    let err = Sandbox::new(SandboxConfig {
        python_wasm: Some(fake.clone()),
        cache_dir: Some(dir.clone()),
        ..SandboxConfig::default()
    })
    .err()
    .expect("must fail");
    assert!(
        matches!(err, SandboxError::WasmHashMismatch { .. }),
        "{err}"
    );
    // The message tells a user what to run, not a Rust API to call (issue #10, point 8).
    let msg = err.to_string();
    assert!(
        msg.contains("re-run") && !msg.contains("allow_unpinned_wasm"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compiled_module_is_cached() {
    let s = sandbox();
    let dir = s.wasm_path().parent().unwrap().to_path_buf();
    let cached: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("python-3.12.0-e5dc5a398b07b54e-wasmtime48-") && n.ends_with(".cwasm")
        })
        .collect();
    let _ = cached;
    // The artefact goes to the cache directory (where the interpreter itself may or may not
    // be: DTM_PYTHON_WASM can point elsewhere), and this test's sandbox used the default one.
    let cache = dtm_sandbox::default_cache_dir();
    let artefacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("python-3.12.0-e5dc5a398b07b54e-wasmtime48-") && n.ends_with(".cwasm")
        })
        .collect();
    assert!(
        !artefacts.is_empty(),
        "no compiled module cached in {} (interpreter at {})",
        cache.display(),
        s.wasm_path().display()
    );
    let _ = dir;
}

fn unmetered() -> Limits {
    Limits {
        fuel: None,
        timeout: Duration::from_secs(120),
        ..Limits::default()
    }
}

/// Fuel counts work, not time: the same program burns the same fuel on every run, however
/// loaded the machine; a budget just above that passes it and one just below ends it by fuel,
/// with a wall-clock limit far away.
#[test]
fn fuel_is_a_deterministic_work_budget() {
    let program = "s = 0\nfor i in range(300000):\n    s += i % 7\nprint(s)";
    let runs: Vec<_> = (0..3).map(|_| run_with(program, &unmetered())).collect();
    for o in &runs {
        expect(o, Status::Passed);
        assert_eq!(o.limit, None);
    }
    let used = runs[0].fuel_used.expect("fuel is metered");
    assert!(
        runs.iter().all(|o| o.fuel_used == Some(used)),
        "{:?}",
        runs.iter().map(|o| o.fuel_used).collect::<Vec<_>>()
    );
    let budget = |fuel: u64| Limits {
        fuel: Some(fuel),
        ..unmetered()
    };
    let o = run_with(program, &budget(used + used / 100));
    expect(&o, Status::Passed);
    let o = run_with(program, &budget(used - used / 10));
    expect(&o, Status::TimedOut);
    assert_eq!(o.limit, Some(Limit::Fuel), "{o:#?}");
    assert_eq!(o.error_type.as_deref(), Some("OutOfFuel"));
    assert!(
        o.millis < 60_000,
        "ended by fuel, not the wall clock: {o:#?}"
    );
}

/// A protocol's "N seconds" is N seconds' worth of fuel, with ten times N of wall time behind it.
#[test]
fn protocol_seconds_map_to_fuel_and_a_wall_clock_net() {
    let l = Limits::for_protocol_seconds(3.0);
    assert_eq!(l.fuel, Some(3 * FUEL_PER_SECOND));
    assert_eq!(l.timeout, Duration::from_secs(30));
    assert_eq!(Limits::default(), l);
    // A busy loop ends by fuel, after about that much CPU; the limit says so.
    let o = run_with("while True:\n    pass", &Limits::for_protocol_seconds(0.2));
    expect(&o, Status::TimedOut);
    assert_eq!(o.limit, Some(Limit::Fuel), "{o:#?}");
    assert!(o.fuel_used.unwrap() >= FUEL_PER_SECOND / 5);
}

/// Blocked in the host (`time.sleep`), a program burns no fuel: the wall clock ends it, and the
/// outcome says which limit did.
#[test]
fn the_wall_clock_ends_programs_that_burn_no_fuel() {
    let o = run_with(
        "import time\ntime.sleep(100)",
        &Limits::for_protocol_seconds(0.1),
    );
    expect(&o, Status::TimedOut);
    assert_eq!(o.limit, Some(Limit::Wall), "{o:#?}");
    assert!(o.millis < 5_000, "{o:#?}");
    let o = run_with("x = bytearray(600 * 1024**2)", &Limits::default());
    expect(&o, Status::MemoryExceeded);
    assert_eq!(o.limit, Some(Limit::Memory), "{o:#?}");
}

/// Every run starts from the same random seed: `random` and hash order repeat.
#[test]
fn runs_are_reproducible() {
    let program = "import random\nprint(random.random(), hash('dtm'), list({'a', 'b', 'c', 'd'}))";
    let a = run(program);
    let b = run(program);
    expect(&a, Status::Passed);
    assert_eq!(a.stdout, b.stdout);
}

/// A program's bytes are decoded by Python, honouring its coding declaration.
#[test]
fn source_bytes_honour_the_coding_declaration() {
    let mut program = b"# -*- coding: latin-1 -*-\ns = '".to_vec();
    program.push(0xe9); // é in Latin-1, not valid UTF-8
    program.extend_from_slice(b"'\nassert s == '\\u00e9', ascii(s)\nprint(len(s))\n");
    assert!(std::str::from_utf8(&program).is_err());
    let o = sandbox().run_source(&program, &Limits::default());
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "1\n");
}
