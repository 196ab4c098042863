use dtm_bench_common::testing::{data_dir, find_plugin};
use dtm_bench_humaneval::*;
use dtm_plugin_api::host::{aggregate, Plugin};
use dtm_plugin_api::*;

fn load() -> HumanEval {
    HumanEval::load(&data_dir(), &LoadOptions::default()).unwrap()
}

const PROMPT_0: &str = "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    \"\"\" Check if in given list of numbers, are any two numbers closer to each other than\n    given threshold.\n    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)\n    False\n    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n    True\n    \"\"\"\n";

const TEST_0: &str = "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False\n    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True\n    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False\n\n";

#[test]
fn count_and_golden_prompt() {
    let items = load().items();
    assert_eq!(items.len(), 164);
    assert_eq!(
        items[0].requests,
        [Request::GenerateUntil {
            context: PROMPT_0.into(),
            until: ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
                .map(String::from)
                .to_vec(),
            max_new_tokens: 512,
        }]
    );
}

#[test]
fn program_assembly() {
    let h = load();
    let completion = "    return False";
    let progs = h.programs(0, &[Response::Text(completion.into())]).unwrap();
    assert_eq!(
        progs,
        [format!(
            "{PROMPT_0}    return False\n{TEST_0}\ncheck(has_close_elements)"
        )]
    );
}

#[test]
fn pass_at_1_and_unavailable() {
    let h = load();
    let r = [Response::Text("x".into())];
    let pass = h.score(0, &r, &[Outcome::Passed]).unwrap();
    assert_eq!(pass.metrics["pass@1"], Some(1.0));
    for bad in [
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::MemoryExceeded,
        Outcome::Crashed,
    ] {
        assert_eq!(h.score(0, &r, &[bad]).unwrap().metrics["pass@1"], Some(0.0));
    }
    let un = h.score(1, &r, &[Outcome::Unavailable]).unwrap();
    assert_eq!(un.metrics["pass@1"], None);
    assert_eq!(un.extracted["status"], "unavailable");
    let a = aggregate(&[pass, un]);
    assert_eq!(a.overall["pass@1"].mean, None); // not 0.5, not 1.0
    assert_eq!(a.overall["pass@1"].unavailable, 1);
    assert!(h.score(0, &r, &[Outcome::Passed, Outcome::Passed]).is_err());
}

#[test]
fn through_the_abi() {
    let p = Plugin::open(find_plugin("dtm_bench_humaneval").unwrap()).unwrap();
    assert_eq!(p.describe().program_timeout_s, Some(3.0));
    let task = p.load(&data_dir(), &LoadOptions::default()).unwrap();
    assert_eq!(task.items().unwrap().len(), 164);
    let progs = task
        .programs(0, &[Response::Text("    return False".into())])
        .unwrap();
    assert!(progs[0].ends_with("\ncheck(has_close_elements)"));
    let s = task
        .score(0, &[Response::Text("".into())], &[Outcome::Unavailable])
        .unwrap();
    assert_eq!(s.metrics["pass@1"], None);
}
