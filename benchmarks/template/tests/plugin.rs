//! Load the built plugin through the harness's loader and score a perfect and a wrong run.

use dtm_plugin_api::host::{aggregate, Plugin};
use dtm_plugin_api::{LoadOptions, Request, Response};
use std::path::Path;

/// The library cargo built from this package: its name follows the package name, so renaming
/// the package in Cargo.toml needs no change here.
fn built_plugin() -> std::path::PathBuf {
    let lib = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        env!("CARGO_PKG_NAME").replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .iter()
        .map(|d| d.join(&lib))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("cargo test builds {lib}"))
}

fn data_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

#[test]
fn scores_through_the_abi() {
    let plugin = Plugin::open(built_plugin()).unwrap();
    assert_eq!(plugin.describe().name, "tiny_qa");
    let task = plugin.load(&data_dir(), &LoadOptions::default()).unwrap();
    assert_eq!(task.info().data_files, vec!["tiny_qa/questions.jsonl"]);
    let items = task.items().unwrap();
    assert_eq!(items.len(), 5);
    let Request::Loglikelihood {
        context,
        continuation,
    } = &items[0].requests[1]
    else {
        panic!()
    };
    assert_eq!(
        context,
        "Question: What is the boiling point of water at sea level in degrees Celsius?\nAnswer:"
    );
    assert_eq!(continuation, " 100");
    // A fake model that always prefers the second choice: right on 3 of 5 questions.
    let scores: Vec<_> = items
        .iter()
        .map(|it| {
            let responses: Vec<Response> = (0..it.requests.len())
                .map(|i| Response::Loglikelihood {
                    logprob: if i == 1 { -1.0 } else { -5.0 },
                    is_greedy: i == 1,
                })
                .collect();
            task.score(it.doc_id, &responses, &[]).unwrap()
        })
        .collect();
    assert_eq!(aggregate(&scores).overall["acc"].mean, Some(0.6));
}

#[test]
fn a_missing_data_file_is_an_error_not_a_fallback() {
    let plugin = Plugin::open(built_plugin()).unwrap();
    let e = plugin
        .load(Path::new("/nonexistent"), &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/nonexistent/tiny_qa/questions.jsonl"), "{e}");
}
