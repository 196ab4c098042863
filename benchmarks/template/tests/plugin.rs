//! Load the built plugin through the harness's loader and score a perfect and a wrong run.

use dtm_plugin_api::host::{aggregate, Plugin};
use dtm_plugin_api::{LoadOptions, Request, Response};
use std::path::Path;

fn built_plugin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .iter()
        .map(|d| d.join("libdtm_bench_tiny_qa.so"))
        .find(|p| p.is_file())
        .expect("cargo test builds the cdylib")
}

#[test]
fn scores_through_the_abi() {
    let plugin = Plugin::open(built_plugin()).unwrap();
    assert_eq!(plugin.describe().name, "tiny_qa");
    let task = plugin
        .load(Path::new("/nonexistent"), &LoadOptions::default())
        .unwrap();
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
