//! What an outcome reports, and the isolation between runs.

mod common;

use std::time::Duration;

use common::{expect, run, run_with, sandbox};
use dtm_sandbox::{Limits, Sandbox, SandboxConfig, SandboxError, Status};

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

/// Every run starts from the same pre-initialised interpreter snapshot, and what a program does
/// to that interpreter (preloaded modules, interpreter settings, the import system, the
/// environment, the garbage collector) is gone for the next one.
#[test]
fn the_snapshot_is_never_written_back() {
    let vandal = "import sys, os, math, json, typing, functools, gc, builtins\n\
                  math.pi = 3\njson.dumps = lambda *a, **k: 'forged'\ntyping.List = None\n\
                  builtins.len = lambda x: -1\nsys.setrecursionlimit(60)\nsys.path.insert(0, '/evil')\n\
                  os.environ['LEAK'] = '1'\nsys.modules['collections'] = None\nsys.meta_path.clear()\n\
                  gc.unfreeze()\nsys.argv.append('leak')\nprint('vandalised')";
    let o = run(vandal);
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "vandalised\n");
    let o = run(
        "import sys, os, math, json, typing, gc\nimport collections, csv\n\
         print(math.pi, json.dumps([1]), typing.List is not None, len('ab'), sys.getrecursionlimit())\n\
         print('/evil' in sys.path, dict(os.environ), collections.Counter('aab')['a'], sys.argv, gc.get_freeze_count() > 0)",
    );
    expect(&o, Status::Passed);
    assert_eq!(
        o.stdout,
        "3.141592653589793 [1] True 2 1000\nFalse {} 2 ['-c'] True\n"
    );
}

/// The interpreter is pre-initialised: the common modules are already imported when the
/// program starts, the rest of the standard library is imported on demand (with its import-time
/// behaviour, e.g. `this` printing the Zen), and there is nothing else to import.
#[test]
fn standard_library_is_preloaded_or_imported_on_demand() {
    let o = run(
        "import sys\nprint('typing' in sys.modules, 'heapq' in sys.modules, 'csv' in sys.modules)\n\
         import csv, difflib, xml.etree.ElementTree as ET, email.mime.text, zoneinfo\n\
         print('csv' in sys.modules, ET.fromstring('<a><b/></a>')[0].tag, difflib.SequenceMatcher(None, 'ab', 'ac').ratio())",
    );
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "True True False\nTrue b 0.5\n");
    let o = run("import this");
    expect(&o, Status::Passed);
    assert!(
        o.stdout.starts_with("The Zen of Python, by Tim Peters"),
        "{o:#?}"
    );
    let o = run("import numpy");
    expect(&o, Status::Failed);
    assert_eq!(
        o.error_type.as_deref(),
        Some("ModuleNotFoundError"),
        "{o:#?}"
    );
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
    let o = run_with(
        "while True: pass",
        &Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    );
    assert_eq!(serde_json::to_value(&o).unwrap()["status"], "timed_out");
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
fn a_file_that_is_not_a_guest_component_is_refused() {
    let dir = std::env::temp_dir().join(format!("dtm-sandbox-not-a-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A valid, empty core module: WebAssembly, but not a component exporting `wasi:cli/run`.
    let fake = dir.join("python.wasm");
    std::fs::write(&fake, b"\0asm\x01\0\0\0").unwrap();
    let err = Sandbox::new(SandboxConfig {
        python_wasm: Some(fake.clone()),
        cache_dir: Some(dir.clone()),
    })
    .err()
    .expect("must fail");
    assert!(matches!(err, SandboxError::NotAGuest { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&fake.display().to_string()), "{msg}");
    assert!(msg.contains("scripts/fetch-python-wasm.sh"), "{msg}");
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
            n.starts_with("dtm-python-guest-")
                && n.contains("-wasmtime48-")
                && n.ends_with(".cwasm")
        })
        .collect();
    // Only when the wasm lives in the cache dir (the default set-up) is the artefact next
    // to it.
    if std::env::var_os("DTM_PYTHON_WASM").is_none() {
        assert!(
            !cached.is_empty(),
            "no compiled module cached in {}",
            dir.display()
        );
    }
}
