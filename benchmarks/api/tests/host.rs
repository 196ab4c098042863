//! The ABI end to end: open real plugin libraries through `host::Plugin::open`.

use dtm_plugin_api::host::{Plugin, PluginError};
use dtm_plugin_api::{LoadOptions, Request, Response, ABI_VERSION};
use std::path::{Path, PathBuf};

/// The test plugins are dev-dependencies, so cargo has built their `.so` next to this binary.
fn plugin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        let p = dir.join(format!("lib{name}.so"));
        if p.is_file() {
            return p;
        }
    }
    panic!("lib{name}.so not built next to {}", deps.display());
}

#[test]
fn loads_describes_and_scores() {
    let p = Plugin::open(plugin("dtm_test_plugin_toy")).unwrap();
    assert_eq!(p.describe().name, "toy");
    let task = p.load(Path::new("data"), &LoadOptions::default()).unwrap();
    assert_eq!(task.info().flags["mode"], "x");
    let items = task.items().unwrap();
    assert_eq!(items.len(), 3);
    let s = task.score(0, &[Response::Text("yes".into())], &[]).unwrap();
    assert_eq!(s.metrics["acc"], Some(1.0));
    // Programs are not offered by a multiple-choice plugin: an error, not a crash.
    assert!(task.programs(0, &[]).is_err());
}

#[test]
fn limit_is_per_subtask_and_cap_applies() {
    let p = Plugin::open(plugin("dtm_test_plugin_toy")).unwrap();
    let opts = LoadOptions {
        limit: Some(1),
        max_new_tokens: Some(7),
        ..Default::default()
    };
    let task = p.load(Path::new("data"), &opts).unwrap();
    let items = task.items().unwrap();
    let ids: Vec<usize> = items.iter().map(|i| i.doc_id).collect();
    assert_eq!(ids, vec![0, 2]); // first of toy:a, first of toy:b
    assert!(matches!(
        items[0].requests[0],
        Request::GenerateUntil {
            max_new_tokens: 7,
            ..
        }
    ));
    assert_eq!(task.info().num_items, 2);
}

#[test]
fn bad_options_are_refused() {
    let p = Plugin::open(plugin("dtm_test_plugin_toy")).unwrap();
    let mut opts = LoadOptions::default();
    opts.flags.insert("nope".into(), "1".into());
    let e = p.load(Path::new("data"), &opts).err().unwrap().to_string();
    assert!(
        e.contains("unknown option \"nope\"") && e.contains("mode"),
        "{e}"
    );
    let opts = LoadOptions {
        num_fewshot: Some(3),
        ..Default::default()
    };
    let e = p.load(Path::new("data"), &opts).err().unwrap().to_string();
    assert!(e.contains("num_fewshot 3"), "{e}");
}

#[test]
fn wrong_abi_version_is_refused_naming_both() {
    let e = Plugin::open(plugin("dtm_test_plugin_bad_abi"))
        .err()
        .unwrap();
    assert!(matches!(e, PluginError::AbiMismatch { plugin: 9999, .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("9999") && msg.contains(&format!("ABI version {ABI_VERSION}")),
        "{msg}"
    );
}

#[test]
fn panics_become_errors() {
    let p = Plugin::open(plugin("dtm_test_plugin_toy")).unwrap();
    let e = p
        .load(Path::new("panic"), &LoadOptions::default())
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("plugin panicked: toy load panics on purpose"),
        "{msg}"
    );
    let task = p.load(Path::new("data"), &LoadOptions::default()).unwrap();
    let e = task
        .score(1, &[Response::Text("x".into())], &[])
        .unwrap_err();
    assert!(e.to_string().contains("toy score panics on purpose"), "{e}");
    // The task is still usable after a panic.
    assert!(task.score(0, &[Response::Text("x".into())], &[]).is_ok());
}

#[test]
fn plugin_errors_and_missing_files_are_clear() {
    let p = Plugin::open(plugin("dtm_test_plugin_toy")).unwrap();
    let e = p
        .load(Path::new("fail"), &LoadOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("fail/data.jsonl line 3"), "{e}");
    let e = Plugin::open("/nonexistent/libnothing.so").err().unwrap();
    assert!(matches!(e, PluginError::Open { .. }), "{e}");
}

#[test]
fn missing_symbols_are_clear() {
    // A real shared library that is not a plugin: serde's derive macro, a proc-macro library
    // cargo always builds beside this test (the API derives its types with it).
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let other = std::fs::read_dir(deps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libserde_derive") && n.ends_with(".so"))
        })
        .unwrap_or_else(|| panic!("no libserde_derive*.so in {}", deps.display()));
    let e = Plugin::open(&other).err().unwrap();
    assert!(
        matches!(
            e,
            PluginError::MissingSymbol {
                symbol: "dtm_plugin_abi_version",
                ..
            }
        ),
        "{e}"
    );
    // The loader's message does not repeat the path.
    let shown = other.display().to_string();
    assert_eq!(e.to_string().matches(&shown).count(), 1, "{e}");
}

#[test]
fn a_file_that_is_not_a_library_is_named_once() {
    let dir = std::env::temp_dir().join(format!("dtm-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("libfake.so");
    std::fs::write(&fake, "not a library").unwrap();
    let e = Plugin::open(&fake).err().unwrap();
    assert!(matches!(e, PluginError::Open { .. }), "{e}");
    let msg = e.to_string();
    assert_eq!(msg.matches(&fake.display().to_string()).count(), 1, "{msg}");
    assert!(msg.contains("cannot open as a plugin library"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
