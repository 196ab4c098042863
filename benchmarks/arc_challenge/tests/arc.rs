use dtm_bench_arc_challenge::*;
use dtm_bench_common::testing::{data_dir, find_plugin};
use dtm_plugin_api::host::Plugin;
use dtm_plugin_api::*;

fn load() -> Arc {
    Arc::load(&data_dir(), &LoadOptions::default()).unwrap()
}

fn ll(x: f64) -> Response {
    Response::Loglikelihood {
        logprob: x,
        is_greedy: false,
    }
}

fn pairs(item: &Item) -> Vec<(String, String)> {
    item.requests
        .iter()
        .map(|r| match r {
            Request::Loglikelihood {
                context,
                continuation,
            } => (context.clone(), continuation.clone()),
            _ => panic!(),
        })
        .collect()
}

#[test]
fn count_and_golden_prompt() {
    let items = load().items();
    assert_eq!(items.len(), 1172);
    let ctx = "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:";
    assert_eq!(
        pairs(&items[0]),
        [
            (
                ctx.to_string(),
                " Planetary density will decrease.".to_string()
            ),
            (
                ctx.to_string(),
                " Planetary years will become longer.".to_string()
            ),
            (
                ctx.to_string(),
                " Planetary days will become shorter.".to_string()
            ),
            (
                ctx.to_string(),
                " Planetary gravity will become stronger.".to_string()
            ),
        ]
    );
    // Items with 3 or 5 choices, and numeric labels.
    assert_eq!(items[121].requests.len(), 3);
    assert!(items.iter().any(|i| i.requests.len() == 5));
}

#[test]
fn numeric_labels_and_acc_vs_acc_norm() {
    let a = load();
    // Item 44 has labels 1-4 and answerKey "2" -> gold index 1.
    let s = a
        .score(44, &[ll(-1.0), ll(-9.0), ll(-9.0), ll(-9.0)], &[])
        .unwrap();
    assert_eq!(s.gold, "2");
    assert_eq!(s.metrics["acc"], Some(0.0));
    assert_eq!(s.extracted["acc"], "1");
    // Item 0 (gold C = "Planetary days will become shorter.", 35 code points):
    // A (32 chars) wins on the raw sum, C wins per character.
    let s = a
        .score(0, &[ll(-10.0), ll(-30.0), ll(-10.5), ll(-30.0)], &[])
        .unwrap();
    assert_eq!(s.metrics["acc"], Some(0.0));
    assert_eq!(s.metrics["acc_norm"], Some(1.0));
    assert_eq!(s.extracted["acc_norm"], "C");
}

#[test]
fn through_the_abi() {
    let p = Plugin::open(find_plugin("dtm_bench_arc_challenge").unwrap()).unwrap();
    assert_eq!(p.describe().headline_metric, "acc");
    let task = p.load(&data_dir(), &LoadOptions::default()).unwrap();
    assert_eq!(task.items().unwrap(), load().items());
}

/// An empty test file is an error naming it and the protocol's 1,172 questions.
#[test]
fn empty_test_file_is_refused() {
    let dir = dtm_bench_common::testing::scratch_copy(&[TEST_FILE]);
    std::fs::write(dir.join(TEST_FILE), "").unwrap();
    let e = Arc::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(
        e.contains("ARC-Challenge-Test.jsonl: no questions, the protocol's set has 1172"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
