use dtm_bench_common::testing::{data_dir, find_plugin};
use dtm_bench_gsm8k::*;
use dtm_plugin_api::host::Plugin;
use dtm_plugin_api::*;

fn load() -> Gsm8k {
    Gsm8k::load(&data_dir(), &LoadOptions::default()).unwrap()
}

/// Written by hand from PROTOCOL.md §3 and the 8 exemplars in `gsm8k/cot_exemplars.jsonl`.
const GOLDEN_FIRST: &str = "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?\nA: There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.\n\n\
Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\nA: There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n\n\
Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?\nA: Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.\n\n\
Q: Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?\nA: Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8.\n\n\
Q: Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?\nA: Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.\n\n\
Q: There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?\nA: There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.\n\n\
Q: Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?\nA: Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.\n\n\
Q: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\nA: Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.\n\n\
Q: Janet\u{2019}s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?\nA:";

#[test]
fn count_and_golden_prompt() {
    let items = load().items();
    assert_eq!(items.len(), 1319);
    match &items[0].requests[..] {
        [Request::GenerateUntil {
            context,
            until,
            max_new_tokens,
        }] => {
            assert_eq!(context, GOLDEN_FIRST);
            assert_eq!(until, &["Q:", "</s>", "<|im_end|>"]);
            assert_eq!(*max_new_tokens, 256);
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn fewer_shots() {
    let g = Gsm8k::load(
        &data_dir(),
        &LoadOptions {
            num_fewshot: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    let Request::GenerateUntil { context, .. } = &g.items()[0].requests[0] else {
        panic!()
    };
    assert!(context.starts_with("Q: Janet\u{2019}s ducks"));
}

#[test]
fn extraction_hard_cases() {
    assert_eq!(extract_strict("so 3 + 4 = 7. The answer is 7."), "7");
    assert_eq!(extract_strict("The answer is 1,234."), "1,234");
    assert_eq!(extract_strict("The answer is -5."), "-5");
    assert_eq!(extract_strict("The answer is 2.5."), "2.5");
    assert_eq!(extract_strict("The answer is 7"), "[invalid]"); // no final period
    assert_eq!(extract_strict("The answer is $7."), "[invalid]"); // `$` is not in the class
    assert_eq!(
        extract_flexible("She pays $1,200.50 in total."),
        "$1,200.50"
    );
    assert_eq!(extract_flexible("first 12 then -3"), "-3");
    assert_eq!(extract_flexible("x is 5"), "5");
    assert_eq!(extract_flexible("no digits"), "[invalid]");
    assert_eq!(normalise("$1,200."), "1200");
    assert_eq!(normalise("2.50"), "2.50");
    assert_eq!(gold("a\n#### 1,000"), "1,000");
}

fn score(g: &Gsm8k, text: &str) -> ItemScore {
    g.score(0, &[Response::Text(text.into())], &[]).unwrap()
}

#[test]
fn strict_vs_flexible() {
    let g = load(); // doc 0 gold = 18
    let s = score(&g, "She makes 9 * 2 = $18. The answer is 18.");
    assert_eq!(s.metrics["exact_match_strict"], Some(1.0));
    assert_eq!(s.metrics["exact_match_flexible"], Some(1.0));
    let s = score(&g, "So she makes $18 every day.");
    assert_eq!(s.metrics["exact_match_strict"], Some(0.0));
    assert_eq!(s.metrics["exact_match_flexible"], Some(1.0)); // "$18" normalises to "18"
    let s = score(&g, "She makes 18 dollars\n");
    assert_eq!(s.metrics["exact_match_flexible"], Some(1.0));
    let s = score(&g, "The answer is 18.00.");
    assert_eq!(s.metrics["exact_match_strict"], Some(0.0)); // "18.00" != "18"
    assert_eq!(s.gold, "18");
}

#[test]
fn through_the_abi() {
    let so = find_plugin("dtm_bench_gsm8k").expect("plugin .so built by cargo test");
    let p = Plugin::open(so).unwrap();
    assert_eq!(p.describe().name, "gsm8k");
    let task = p.load(&data_dir(), &LoadOptions::default()).unwrap();
    let items = task.items().unwrap();
    assert_eq!(items, load().items());
    let s = task
        .score(0, &[Response::Text("The answer is 18.".into())], &[])
        .unwrap();
    assert_eq!(s.metrics["exact_match_strict"], Some(1.0));
    let e = p
        .load(
            std::path::Path::new("/nonexistent"),
            &LoadOptions::default(),
        )
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("/nonexistent/gsm8k/grade_school_math/data/test.jsonl"),
        "{e}"
    );
}

/// An empty or cut test file is an error naming the file and the protocol's 1,319 questions,
/// not a run of "0 items".
#[test]
fn empty_or_short_test_file_is_refused() {
    let dir = dtm_bench_common::testing::scratch_copy(&[
        "gsm8k/grade_school_math/data/test.jsonl",
        "gsm8k/cot_exemplars.jsonl",
    ]);
    let test = dir.join("gsm8k/grade_school_math/data/test.jsonl");
    let full = std::fs::read_to_string(&test).unwrap();
    std::fs::write(&test, "").unwrap();
    let e = Gsm8k::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(
        e.contains("test.jsonl: no questions, the protocol's set has 1319"),
        "{e}"
    );
    let two: String = full.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&test, two).unwrap();
    let e = Gsm8k::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(
        e.contains("test.jsonl: 2 questions, the protocol's set has 1319"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
