//! `harness` as a hostile or careless user meets it (issue #10): changed inputs on resume,
//! reports across runs, two runs on one folder, broken checkpoints, bad flags, paths spelt
//! differently, plugins shadowing built-ins, closed pipes, exit codes, progress in logs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn harness(args: &[&str]) -> Output {
    Command::new(harness_bin()).args(args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "harness failed:\n{}", stderr(o));
}

/// The one error line of a failed run (warnings and progress lines aside).
fn error_line(o: &Output) -> String {
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "no panic: {err}"
    );
    err.lines()
        .rfind(|l| l.starts_with("error"))
        .unwrap_or_else(|| panic!("no error line in: {err}"))
        .to_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A scratch data folder with copies of `files` (relative to the shared data folder).
fn scratch_data(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        let to = dir.path().join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(data_dir().join(f), &to).unwrap();
    }
    dir
}

const GSM8K: [&str; 2] = [
    "gsm8k/grade_school_math/data/test.jsonl",
    "gsm8k/cot_exemplars.jsonl",
];

fn gsm8k_run(data: &Path, out: &Path) -> Output {
    harness(&[
        "score",
        "--model",
        p(&tiny_model("llama")),
        "--data-dir",
        p(data),
        "--tasks",
        "gsm8k",
        "--limit",
        "1",
        "--max-new-tokens",
        "2",
        "--output",
        p(out),
    ])
}

#[test]
fn resume_refuses_changed_data_and_plugins_naming_them() {
    let data = scratch_data(&GSM8K);
    let out = tempfile::tempdir().unwrap();
    ok(&gsm8k_run(data.path(), out.path()));
    // Same line count, one question's wording changed.
    let test = data.path().join(GSM8K[0]);
    let text = std::fs::read_to_string(&test)
        .unwrap()
        .replacen("Janet", "Jenny", 2);
    std::fs::write(&test, text).unwrap();
    let o = gsm8k_run(data.path(), out.path());
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let line = error_line(&o);
    assert!(
        line.contains("work on gsm8k")
            && line.contains("data_files.gsm8k/grade_school_math/data/test.jsonl (sha256 3730d312f6e3…, now sha256"),
        "{line}"
    );

    // A plugin library whose bytes changed (same name and version) is refused too.
    let out = tempfile::tempdir().unwrap();
    let plugins = tempfile::tempdir().unwrap();
    let lib = plugins.path().join(format!(
        "{}dtm_bench_arc_challenge{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    std::fs::copy(target_dir().join(lib.file_name().unwrap()), &lib).unwrap();
    let run = || {
        score(
            &tiny_model("llama"),
            out.path(),
            &[
                "--plugin",
                p(&lib),
                "--allow-shadowing",
                "--tasks",
                "arc_challenge",
                "--limit",
                "1",
            ],
        )
    };
    ok(&run());
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.extend_from_slice(b"rebuilt");
    std::fs::write(&lib, bytes).unwrap();
    let o = run();
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        error_line(&o).contains("plugin.sha256 (sha256 "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn reports_hold_every_finished_task_and_a_failed_task_erases_none() {
    let out = tempfile::tempdir().unwrap();
    let run = |tasks: &str, extra: &[&str]| {
        let mut args = vec!["--tasks", tasks, "--limit", "2", "--max-new-tokens", "2"];
        args.extend_from_slice(extra);
        score(&tiny_model("llama"), out.path(), &args)
    };
    ok(&run("arc_challenge", &[]));
    ok(&run("openbookqa", &[]));
    let tasks = |dir: &Path| -> Vec<String> {
        let r = read_json(&dir.join("results.json"));
        r["tasks"].as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(tasks(out.path()), ["arc_challenge", "openbookqa"]);
    assert_eq!(read_samples(out.path()).len(), 4);
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        md.contains("| arc_challenge |") && md.contains("| openbookqa |"),
        "{md}"
    );

    // A re-run in which a task fails keeps what is finished.
    let toy = target_dir().join(format!(
        "{}dtm_test_plugin_toy{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let o = run("toy,arc_challenge", &["--plugin", p(&toy)]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("1 of 2 tasks failed"), "{}", stderr(&o));
    assert_eq!(tasks(out.path()), ["arc_challenge", "openbookqa"]);
    assert_eq!(read_samples(out.path()).len(), 4);
}

#[test]
fn a_second_run_on_a_busy_folder_is_refused_and_a_killed_run_leaves_no_lock() {
    let out = tempfile::tempdir().unwrap();
    let args = ["--tasks", "mmlu", "--limit", "10", "--chunk-size", "1"];
    let mut first = Command::new(harness_bin())
        .args([
            "score",
            "--model",
            p(&tiny_model("llama")),
            "--output",
            p(out.path()),
        ])
        .args(["--data-dir", p(&data_dir())])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.path().join(".progress/mmlu").exists() {
        assert!(Instant::now() < deadline, "the first run never started");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended too soon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = score(&tiny_model("llama"), out.path(), &args);
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().unwrap(); // SIGKILL: no clean-up runs
    first.wait().unwrap();
    assert!(still_running, "the first run ended before the second tried");
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let line = error_line(&o);
    assert!(
        line.contains("is in use by another harness run (process ")
            && line.contains("another --output"),
        "{line}"
    );
    // The lock died with the killed process: the same command now resumes and finishes.
    ok(&score(&tiny_model("llama"), out.path(), &args));
    assert_eq!(read_samples(out.path()).len(), 57 * 10);
}

/// Tokens are counted per task: the second of two generation tasks reports what it generated,
/// not the running total.
#[test]
fn token_counts_are_per_task() {
    let (both, alone) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |tasks| {
        [
            "--tasks",
            tasks,
            "--limit",
            "2",
            "--max-new-tokens",
            "6",
            "--no-exec",
        ]
    };
    ok(&score(
        &tiny_model("llama"),
        both.path(),
        &args("gsm8k,humaneval"),
    ));
    ok(&score(
        &tiny_model("llama"),
        alone.path(),
        &args("humaneval"),
    ));
    let tokens = |dir: &Path, task: &str| {
        read_json(&dir.join("results.json"))["tasks"][task]["tokens"].clone()
    };
    let (a, b) = (
        tokens(both.path(), "humaneval"),
        tokens(alone.path(), "humaneval"),
    );
    assert!(a["generated"].as_u64().unwrap() > 0, "{a}");
    assert_eq!(a["generated"], b["generated"], "{a} vs {b}");
    assert_eq!(a["requested"], b["requested"], "{a} vs {b}");
    assert!(tokens(both.path(), "gsm8k")["generated"].as_u64().unwrap() > 0);
}

/// Code benchmarks without execution: every item scored "unavailable", and the run succeeds.
#[test]
fn no_exec_reports_pass_at_1_as_unavailable() {
    let out = tempfile::tempdir().unwrap();
    ok(&score(
        &tiny_model("llama"),
        out.path(),
        &[
            "--tasks",
            "humaneval,mbpp",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--no-exec",
        ],
    ));
    let r = read_json(&out.path().join("results.json"));
    for task in ["humaneval", "mbpp"] {
        let m = &r["tasks"][task]["metrics"]["pass@1"];
        assert!(m["value"].is_null(), "{task}: {m}");
        assert_eq!(m["unavailable"], 2, "{task}: {m}");
    }
    for s in read_samples(out.path()) {
        assert_eq!(s["outcomes"], serde_json::json!(["unavailable"]), "{s}");
    }
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(md.contains("| humaneval | pass@1 | unavailable |"), "{md}");
}

/// samples.jsonl says how each program ended: the exception's type and message and the end of
/// its stderr, as bigcode-evaluation-harness users expect.
#[test]
fn samples_record_how_programs_failed() {
    let out = tempfile::tempdir().unwrap();
    ok(&score(
        &tiny_model("llama"),
        out.path(),
        &[
            "--tasks",
            "humaneval",
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
        ],
    ));
    for s in read_samples(out.path()) {
        let e = &s["executions"][0];
        assert_eq!(e["status"], s["outcomes"][0], "{s}");
        if e["status"] == "failed" {
            let etype = e["error_type"].as_str().unwrap();
            assert!(etype.ends_with("Error"), "{e}");
            assert!(e["error_message"].is_string(), "{e}");
            assert!(e["stderr_tail"].as_str().unwrap().contains(etype), "{e}");
        }
        assert!(e["fuel"].as_u64().unwrap() > 0, "{e}");
    }
}

/// Writes NaN over the final norm of a copy of the tiny llama (a broken checkpoint).
fn nan_checkpoint() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("llama");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(tiny_model("llama")).unwrap() {
        let e = e.unwrap();
        std::fs::write(model.join(e.file_name()), std::fs::read(e.path()).unwrap()).unwrap();
    }
    let file = model.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header["model.norm.weight"];
    assert_eq!(t["dtype"], "F32");
    let (a, b) = (
        t["data_offsets"][0].as_u64().unwrap() as usize,
        t["data_offsets"][1].as_u64().unwrap() as usize,
    );
    for chunk in bytes[8 + n + a..8 + n + b].chunks_mut(4) {
        chunk.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&file, bytes).unwrap();
    (dir, model)
}

#[test]
fn non_finite_logits_fail_the_run_naming_the_model() {
    let (_keep, model) = nan_checkpoint();
    for task in ["arc_challenge", "gsm8k"] {
        let out = tempfile::tempdir().unwrap();
        let o = score(
            &model,
            out.path(),
            &["--tasks", task, "--limit", "1", "--max-new-tokens", "2"],
        );
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "error: {task}: {}: the model produced non-finite logits",
                model.display()
            )),
            "{err}"
        );
        assert!(!err.contains("malformed JSON"), "{err}");
    }
}

#[test]
fn bad_flag_values_are_refused_at_parse_time() {
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("p.py");
    std::fs::write(&prog, "print(1)\n").unwrap();
    for t in ["nan", "inf", "1e20", "0", "-1"] {
        let o = harness(&["exec", p(&prog), &format!("--timeout={t}")]);
        assert_eq!(code(&o), 2, "exec --timeout {t}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("error: invalid value"),
            "{}",
            stderr(&o)
        );
    }
    let out = dir.path().join("out");
    let model = tiny_model("llama");
    let base = [
        "score",
        "--model",
        p(&model),
        "--output",
        p(&out),
        "--tasks",
        "arc_challenge",
    ];
    for bad in [
        &["--timeout", "inf"][..],
        &["--timeout", "nan"],
        &["--jobs", "100000"],
        &["--memory-mb", "0"],
        &["--max-length", "0"],
        &["--limit", "0"],
        &["--max-new-tokens", "0"],
        &["--batch-size", "0"],
        &["--chunk-size", "0"],
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(bad);
        let o = harness(&args);
        assert_eq!(code(&o), 2, "{bad:?}: {}", stderr(&o));
        assert!(!out.exists(), "{bad:?} left {}", out.display());
    }
    for (tasks, want) in [
        ("arc_challenge,arc_challenge", "names `arc_challenge` twice"),
        ("mmlu,mmlu:astronomy", "both `mmlu` and `mmlu:astronomy`"),
    ] {
        let mut args = base.to_vec();
        args[6] = tasks;
        let o = harness(&args);
        assert_eq!(code(&o), 2, "{tasks}: {}", stderr(&o));
        assert!(error_line(&o).contains(want), "{}", stderr(&o));
    }
    // The help names every choice of --device.
    let help = String::from_utf8_lossy(&harness(&["score", "--help"]).stdout).into_owned();
    assert!(
        help.contains("--device <DEVICE>") && help.contains("Where the model runs"),
        "{help}"
    );
    assert!(help.contains("Exit status: 0 success"), "{help}");
}

/// The data folder spelt with a trailing slash, relatively from elsewhere, or absolutely is the
/// same folder: resuming works and recomputes nothing.
#[test]
fn paths_spelt_differently_resume() {
    let out = tempfile::tempdir().unwrap();
    let data = data_dir().canonicalize().unwrap();
    let run = |cwd: &Path, data_arg: &str, out_arg: &str| {
        Command::new(harness_bin())
            .current_dir(cwd)
            .args([
                "score",
                "--model",
                p(&tiny_model("llama")),
                "--tasks",
                "openbookqa",
                "--limit",
                "2",
            ])
            .args(["--data-dir", data_arg, "--output", out_arg])
            .output()
            .unwrap()
    };
    ok(&run(
        Path::new("/"),
        &format!("{}/", data.display()),
        p(out.path()),
    ));
    let parent = data.parent().unwrap();
    let o = run(parent, "data", &format!("{}/", out.path().display()));
    ok(&o);
    let r = read_json(&out.path().join("results.json"));
    assert_eq!(
        r["tasks"]["openbookqa"]["items_computed"],
        0,
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_plugin_named_like_a_builtin_needs_allow_shadowing() {
    let plugins = tempfile::tempdir().unwrap();
    let name = format!(
        "{}dtm_bench_openbookqa{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let copy = plugins.path().join(&name);
    std::fs::copy(target_dir().join(&name), &copy).unwrap();
    let out = tempfile::tempdir().unwrap();
    let args = [
        "--plugin",
        p(&copy),
        "--tasks",
        "openbookqa",
        "--limit",
        "1",
    ];
    let o = score(&tiny_model("llama"), out.path(), &args);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        error_line(&o).contains("defines `openbookqa`, the name of the built-in plugin")
            && error_line(&o).contains("--allow-shadowing"),
        "{}",
        stderr(&o)
    );
    let mut with = args.to_vec();
    with.push("--allow-shadowing");
    ok(&score(&tiny_model("llama"), out.path(), &with));
    let r = read_json(&out.path().join("results.json"));
    assert_eq!(r["tasks"]["openbookqa"]["plugin"]["path"], p(&copy));
}

#[test]
fn error_lines_do_not_repeat_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, "not a library").unwrap();
    let out = dir.path().join("out");
    let o = score(
        &tiny_model("llama"),
        &out,
        &["--plugin", p(&fake), "--tasks", "arc_challenge"],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let line = error_line(&o);
    for piece in line.split(": ") {
        if piece.len() > 8 {
            assert_eq!(
                line.matches(piece).count(),
                1,
                "`{piece}` repeats in: {line}"
            );
        }
    }
    let o = harness(&["exec", p(dir.path())]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let line = error_line(&o);
    assert_eq!(line.matches("Is a directory").count(), 1, "{line}");
}

#[test]
fn exec_honours_a_coding_declaration() {
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("latin1.py");
    let mut bytes = b"# -*- coding: latin-1 -*-\nname = 'Jos".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"'\nassert len(name) == 4\nprint(name.encode('utf-8').hex())\n");
    std::fs::write(&prog, bytes).unwrap();
    let o = harness(&["exec", p(&prog)]);
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "passed", "{v}");
    assert_eq!(v["stdout"], "4a6f73c3a9\n");
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let mut child = Command::new(harness_bin())
        .args(["logprobs", "--model", p(&tiny_model("llama")), "--text"])
        .arg("The capital of France is Paris, and the capital of Italy is Rome.")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is written
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

#[test]
fn exit_codes_say_what_kind_of_failure_it_was() {
    let out = tempfile::tempdir().unwrap();
    // Usage: an unknown flag, an unknown task.
    assert_eq!(code(&harness(&["score", "--no-such-flag"])), 2);
    let o = score(
        &tiny_model("llama"),
        out.path(),
        &["--tasks", "no_such_task"],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // Usage: an option the benchmark does not have, adapters that do not pair with the models.
    let o = score(
        &tiny_model("llama"),
        out.path(),
        &[
            "--tasks",
            "arc_challenge",
            "--option",
            "arc_challenge.nope=1",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = score(
        &tiny_model("llama"),
        out.path(),
        &[
            "--tasks",
            "arc_challenge",
            "--adapter",
            "a",
            "--adapter",
            "b",
        ],
    );
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // Bad input: a YAML task file that cannot be used.
    let tasks = tempfile::tempdir().unwrap();
    std::fs::write(
        tasks.path().join("t.yaml"),
        "task: t
output_type: nonsense
",
    )
    .unwrap();
    let o = score(
        &tiny_model("llama"),
        out.path(),
        &["--include-path", p(tasks.path()), "--tasks", "t"],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(error_line(&o).contains("t.yaml"), "{}", stderr(&o));
    // Bad input: a checkpoint that does not exist.
    let o = score(
        Path::new("/nonexistent/model"),
        out.path(),
        &["--tasks", "arc_challenge"],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    // Some tasks failed, the others' results written.
    let toy = target_dir().join(format!(
        "{}dtm_test_plugin_toy{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let o = score(
        &tiny_model("llama"),
        out.path(),
        &[
            "--plugin",
            p(&toy),
            "--tasks",
            "toy,openbookqa",
            "--limit",
            "2",
        ],
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(out.path().join("results.json").exists());
}

/// Off a terminal (a log file), progress is plain lines: the task, then its advance, and
/// "resuming" after a kill; results.md opens with what was run.
#[test]
fn progress_is_logged_as_lines_and_results_md_has_a_header() {
    let out = tempfile::tempdir().unwrap();
    let args = ["--tasks", "openbookqa", "--limit", "3", "--chunk-size", "1"];
    let o = score(&tiny_model("llama"), out.path(), &args);
    ok(&o);
    let err = stderr(&o);
    assert!(err.contains("openbookqa: 3 items\n"), "{err}");
    assert!(err.contains("openbookqa: 3/3 items (100%)"), "{err}");
    // Forget the last chunk and the report, as a kill after two chunks would.
    let dir = out.path().join(".progress/openbookqa");
    std::fs::remove_file(dir.join("00000002-1.jsonl")).unwrap();
    std::fs::remove_file(dir.join("report.json")).unwrap();
    let o = score(&tiny_model("llama"), out.path(), &args);
    ok(&o);
    assert!(
        stderr(&o).contains("openbookqa: resuming, 2/3 items already done"),
        "{}",
        stderr(&o)
    );
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    let r = read_json(&out.path().join("results.json"));
    assert!(
        md.contains(&format!("`{}`", r["model"]["path"].as_str().unwrap())),
        "{md}"
    );
    assert!(md.contains(r["model"]["sha256"].as_str().unwrap()), "{md}");
    assert!(md.contains("limit 3"), "{md}");
    let acc = r["tasks"]["openbookqa"]["metrics"]["acc"]["value"]
        .as_f64()
        .unwrap();
    assert!(
        md.contains(&format!("| openbookqa | acc | {acc:.4} |")),
        "{md}"
    );
}
