//! Escape attempts. Each must end contained, with the host (this test process) alive and
//! the host untouched; none may count as a pass unless it is harmless by construction.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{expect, run, run_with};
use dtm_sandbox::{Limits, Status};

/// A short wall-clock limit (the safety net) with the default fuel budget behind it.
fn short(timeout_ms: u64) -> Limits {
    Limits {
        timeout: Duration::from_millis(timeout_ms),
        ..Limits::default()
    }
}

/// A host path that does not exist yet, unique to this test run.
fn host_marker(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir();
    let p = dir.join(format!("dtm-sandbox-escape-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// The sandbox still works after whatever the previous run did.
fn still_alive() {
    let o = run("print(6 * 7)");
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "42\n");
}

/// Runs `attempt` (Python statements) and requires that it raised: the program catches the
/// exception, prints `refused: <type>` and passes. A crash, a time-out, or an attempt that went
/// through all fail the test, so it cannot pass without the action having been tried and
/// refused. Returns the exception type.
#[track_caller]
fn refused(attempt: &str) -> String {
    let body: String = attempt.lines().map(|l| format!("    {l}\n")).collect();
    let program = format!(
        "try:\n{body}except BaseException as e:\n    print('refused:', type(e).__name__)\nelse:\n    print('went through')\n"
    );
    let o = run(&program);
    expect(&o, Status::Passed);
    let etype = o
        .stdout
        .trim()
        .strip_prefix("refused: ")
        .unwrap_or_else(|| panic!("not refused: {attempt}\n{o:#?}"));
    etype.to_owned()
}

#[test]
fn read_etc_passwd() {
    let e = refused("print(open('/etc/passwd').read())");
    assert!(
        matches!(
            e.as_str(),
            "FileNotFoundError" | "PermissionError" | "OSError"
        ),
        "{e}"
    );
    still_alive();
}

#[test]
fn list_root_shows_no_host_entries() {
    // No directory is preopened: `/` cannot even be listed (the standard library is embedded
    // in the interpreter and reached through its own, read-only file system).
    let e = refused("import os\nprint(sorted(os.listdir('/')))");
    assert_eq!(e, "FileNotFoundError");
    let o = run("import os\nfor d, subdirs, files in os.walk('/'):\n    print(d)\nprint('walked')");
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "walked\n", "os.walk('/') finds nothing: {o:#?}");
    still_alive();
}

#[test]
fn write_outside() {
    let marker = host_marker("write");
    let e = refused(&format!(
        "open({:?}, 'w').write('escaped')",
        marker.display().to_string()
    ));
    assert!(e.ends_with("Error"), "{e}");
    assert!(!marker.exists(), "guest created {}", marker.display());
    // Nor anywhere relative to the (non-existent) working directory.
    refused("open('dtm-sandbox-escape-rel.txt', 'w').write('x')");
    assert!(!PathBuf::from("dtm-sandbox-escape-rel.txt").exists());
    still_alive();
}

#[test]
fn dotdot_traversal() {
    refused("print(open('../../../../../../etc/passwd').read())");
    let o = run(
        "import os\nfor p in ['..', '../..', '/usr/local/lib/../../../..', '/../../etc']:\n    \
         try:\n        print(p, sorted(os.listdir(p)))\n    except OSError as e:\n        print(p, 'denied', e)\nprint('done')",
    );
    expect(&o, Status::Passed);
    assert_eq!(o.stdout.lines().count(), 5, "every path tried: {o:#?}");
    assert!(!o.stdout.contains("'passwd'"), "{o:#?}");
    assert!(!o.stdout.contains("'proc'"), "{o:#?}");
    still_alive();
}

#[test]
fn socket_connect_and_name_lookup() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    refused(&format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
         s.connect(('127.0.0.1', {port}))\ns.sendall(b'escaped')"
    ));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        listener.accept().is_err(),
        "guest connected to a host socket"
    );
    refused("import socket\nprint(socket.getaddrinfo('localhost', 80))");
    refused("import socket\nprint(socket.gethostbyname('example.com'))");
    refused("import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1/').read())");
    still_alive();
}

#[test]
fn os_system() {
    let marker = host_marker("system");
    refused(&format!(
        "import os\nos.system('touch {}')",
        marker.display()
    ));
    assert!(!marker.exists());
    still_alive();
}

#[test]
fn subprocess() {
    let marker = host_marker("subprocess");
    refused(&format!(
        "import subprocess\nsubprocess.run(['touch', '{}'])",
        marker.display()
    ));
    assert!(!marker.exists());
    refused("import subprocess\nprint(subprocess.check_output(['cat', '/etc/passwd']))");
    still_alive();
}

#[test]
fn os_fork() {
    refused("import os\npid = os.fork()");
    refused("import os\nos.execv('/bin/sh', ['sh', '-c', 'echo hi'])");
    still_alive();
}

#[test]
fn ctypes() {
    refused("import ctypes\nprint(ctypes.CDLL(None).getpid())");
    still_alive();
}

#[test]
fn environment_is_empty() {
    // SAFETY (edition 2021: set_var is safe): set before any guest reads it, and the
    // guest must not see it anyway.
    std::env::set_var("DTM_SANDBOX_CANARY", "canary-value-7f3a");
    let o = run("import os\nprint(dict(os.environ))");
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "{}\n");
    let o = run("import os\nprint(os.environ.get('HOME'), os.environ.get('PATH'), os.getenv('DTM_SANDBOX_CANARY'))");
    assert_eq!(o.stdout, "None None None\n", "{o:#?}");
    let o = run("import sys\nprint(sys.argv)");
    assert_eq!(o.stdout, "['-c']\n", "{o:#?}");
    still_alive();
}

#[test]
fn busy_loop_times_out() {
    let o = run_with("while True:\n    pass", &short(1000));
    expect(&o, Status::TimedOut);
    assert!(o.millis < 3000, "took {} ms", o.millis);
    still_alive();
}

#[test]
fn busy_loop_inside_except_base_exception_times_out() {
    let o = run_with(
        "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass",
        &short(1000),
    );
    expect(&o, Status::TimedOut);
    assert!(o.millis < 3000, "took {} ms", o.millis);
    still_alive();
}

#[test]
fn sleep_times_out() {
    // time.sleep blocks in the host (poll_oneoff), where epoch interruption cannot reach.
    let o = run_with("import time\ntime.sleep(100)", &short(1000));
    expect(&o, Status::TimedOut);
    assert!(o.millis < 3000, "took {} ms", o.millis);
    still_alive();
}

#[test]
fn ten_gib_allocation() {
    for program in [
        "x = bytearray(10 * 1024**3)",
        "x = b'x' * (10 * 1024**3)",
        "x = [0] * (10 * 1024**3 // 8)",
        "x = bytearray(1024**3)",
    ] {
        let o = run(program);
        assert!(
            matches!(o.status, Status::MemoryExceeded | Status::Failed),
            "{program}: {o:#?}"
        );
        assert_ne!(o.status, Status::Passed);
    }
    // One that really asks the engine for more than the cap.
    let o = run("x = bytearray(600 * 1024**2)");
    expect(&o, Status::MemoryExceeded);
    still_alive();
}

#[test]
fn memory_bomb_in_a_loop() {
    let o = run("chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))");
    expect(&o, Status::MemoryExceeded);
    // A smaller cap is enforced too.
    let o = run_with(
        "chunks = []\nwhile True:\n    chunks.append('x' * 10**5)",
        &Limits {
            memory_bytes: 128 << 20,
            ..Limits::default()
        },
    );
    expect(&o, Status::MemoryExceeded);
    // Swallowing MemoryError forever ends at the time limit.
    let o = run_with(
        "chunks = []\nwhile True:\n    try:\n        chunks.append(bytearray(10**6))\n    except MemoryError:\n        pass",
        &short(2000),
    );
    assert!(
        matches!(o.status, Status::TimedOut | Status::MemoryExceeded),
        "{o:#?}"
    );
    still_alive();
}

#[test]
fn print_flood_100_mb() {
    let limits = Limits::for_protocol_seconds(20.0);
    let o = run_with(
        "import sys\nchunk = 'x' * 10**6\nfor _ in range(100):\n    sys.stdout.write(chunk)\nprint('done')",
        &limits,
    );
    // It completes (output past the cap is dropped, not an error), truncated to the cap.
    expect(&o, Status::Passed);
    assert!(o.stdout_truncated);
    assert_eq!(o.stdout.len(), limits.stdout_cap);
    let o = run_with("print('y' * 10**8)", &limits);
    expect(&o, Status::Passed);
    assert!(o.stdout_truncated);
    assert_eq!(o.stdout.len(), limits.stdout_cap);
    // A never-ending flood ends at the time limit.
    let o = run_with("while True:\n    print('z' * 10**5)", &short(1500));
    expect(&o, Status::TimedOut);
    assert!(o.stdout_truncated);
    still_alive();
}

#[test]
fn stderr_flood_keeps_the_tail() {
    // 2.2 MB in 20k unbuffered writes (stderr), past the 1 MiB cap; a generous limit since
    // this is about capture, not speed.
    let o = run_with(
        "import sys\nfor i in range(20000):\n    sys.stderr.write('line %6d %s\\n' % (i, 'e' * 100))\nraise ValueError('end')",
        &Limits::for_protocol_seconds(20.0),
    );
    expect(&o, Status::Failed);
    assert!(o.stderr_truncated);
    assert!(o.stderr.len() <= Limits::default().stderr_cap);
    assert!(
        o.stderr.contains("ValueError: end"),
        "{}",
        &o.stderr[o.stderr.len().saturating_sub(500)..]
    );
    still_alive();
}

#[test]
fn recursion_past_the_limit() {
    let o = run("def f(n):\n    return f(n + 1)\nf(0)");
    expect(&o, Status::Failed);
    assert_eq!(o.error_type.as_deref(), Some("RecursionError"), "{o:#?}");
    // Raising the interpreter's limit moves the failure to the engine's stack limit.
    let o = run("import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)");
    assert_ne!(o.status, Status::Passed, "{o:#?}");
    let o = run("import sys\nsys.setrecursionlimit(10**8)\nx = []\nfor _ in range(10**6):\n    x = [x]\nprint(repr(x)[:10])");
    assert_ne!(o.status, Status::Passed, "{o:#?}");
    still_alive();
}

#[test]
fn sys_exit_zero_before_the_tests_is_not_a_pass() {
    let tests = "\ndef check(f):\n    assert f(2) == 4\ncheck(double)\n";
    let solution = "def double(x):\n    return x + 1\n";
    // Sanity: the tests reject this solution when they run.
    expect(&run(&format!("{solution}{tests}")), Status::Failed);
    for exit in [
        "import sys\nsys.exit(0)\n",
        "exit()\n",
        "quit(0)\n",
        "raise SystemExit(0)\n",
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit()\n",
    ] {
        let o = run(&format!("{solution}{exit}{tests}"));
        expect(&o, Status::Failed);
        assert!(
            matches!(o.error_type.as_deref(), Some("SystemExit" | "EarlyExit")),
            "{exit}: {o:#?}"
        );
    }
    // Exiting from inside the tests, or from an atexit handler, does not pass either.
    let o = run(&format!(
        "{solution}import atexit, os\natexit.register(lambda: os._exit(0)){tests}"
    ));
    expect(&o, Status::Failed);
    still_alive();
}

#[test]
fn forged_completion_record_is_not_a_pass() {
    // A program that prints something shaped like the driver's record, then leaves.
    let o = run(
        "import os, sys\nsys.stdout.write('\\n\\x1edtm-done:' + '0' * 32 + ':ok::\\n')\nsys.stdout.flush()\nos._exit(0)",
    );
    expect(&o, Status::Failed);
    // Patching the os module does not turn a failure into a pass.
    let o = run(
        "import os\nos._exit = lambda code: None\nos.write = lambda fd, b: len(b)\nassert 1 == 2",
    );
    expect(&o, Status::Failed);
    assert_eq!(o.error_type.as_deref(), Some("AssertionError"), "{o:#?}");
    // The nonce is neither in the program's globals, nor argv, nor the environment, nor
    // on stdin.
    let o = run(
        "import sys, os\nprint(sorted(k for k in globals() if not k.startswith('__')))\n\
         print(sys.argv, dict(os.environ), repr(sys.stdin.read()))",
    );
    expect(&o, Status::Passed);
    assert_eq!(o.stdout, "['os', 'sys']\n['-c'] {} ''\n");
    still_alive();
}
