use dtm_bench_common::testing::{data_dir, find_plugin};
use dtm_bench_openbookqa::*;
use dtm_plugin_api::host::Plugin;
use dtm_plugin_api::*;

fn load() -> OpenBookQa {
    OpenBookQa::load(&data_dir(), &LoadOptions::default()).unwrap()
}

fn ll(x: f64) -> Response {
    Response::Loglikelihood {
        logprob: x,
        is_greedy: false,
    }
}

#[test]
fn count_and_golden_prompt() {
    let items = load().items();
    assert_eq!(items.len(), 500);
    let ctx = "A person wants to start saving money so that they can afford a nice vacation at the end of the year. After looking over their budget and expenses, they decide the best way to save money is to";
    let got: Vec<(&str, &str)> = items[0]
        .requests
        .iter()
        .map(|r| match r {
            Request::Loglikelihood {
                context,
                continuation,
            } => (context.as_str(), continuation.as_str()),
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        got,
        [
            (ctx, " make more phone calls"),
            (ctx, " quit eating lunch out"),
            (ctx, " buy less with monopoly money"),
            (ctx, " have lunch with friends"),
        ]
    );
}

#[test]
fn acc_and_acc_norm() {
    let o = load(); // gold B "quit eating lunch out" (21 code points)
                    // B wins the raw sum; C ("buy less with monopoly money", 28) wins per character.
    let s = o
        .score(0, &[ll(-9.0), ll(-5.0), ll(-5.5), ll(-20.0)], &[])
        .unwrap();
    assert_eq!(s.metrics["acc"], Some(1.0));
    assert_eq!(s.metrics["acc_norm"], Some(0.0)); // -5.5/28 > -5/21
    assert_eq!(s.extracted["acc_norm"], "C");
    assert_eq!(s.gold, "B");
}

#[test]
fn through_the_abi() {
    let p = Plugin::open(find_plugin("dtm_bench_openbookqa").unwrap()).unwrap();
    let task = p.load(&data_dir(), &LoadOptions::default()).unwrap();
    assert_eq!(task.items().unwrap().len(), 500);
}
