use dtm_bench_common::testing::{data_dir, find_plugin};
use dtm_bench_race::*;
use dtm_plugin_api::host::Plugin;
use dtm_plugin_api::*;

fn load(flags: &[(&str, &str)]) -> Race {
    let mut o = LoadOptions::default();
    for (k, v) in flags {
        o.flags.insert(k.to_string(), v.to_string());
    }
    Race::load(&data_dir(), &o).unwrap()
}

/// The article text of one upstream file (read directly, not through the plugin).
fn article_of(file: &str) -> String {
    let p = data_dir().join("race/RACE/test/high").join(file);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["article"].as_str().unwrap().to_string()
}

fn request(item: &Item, i: usize) -> (String, String) {
    match &item.requests[i] {
        Request::Loglikelihood {
            context,
            continuation,
        } => (context.clone(), continuation.clone()),
        r => panic!("{r:?}"),
    }
}

#[test]
fn counts() {
    assert_eq!(load(&[]).items().len(), 1045);
    assert_eq!(load(&[("mode", "every_question")]).items().len(), 3498);
    assert_eq!(load(&[("split", "middle")]).items().len(), 362);
    let mid = load(&[("split", "middle"), ("mode", "every_question")]).items();
    assert_eq!(mid.len(), 1436);
    assert_eq!(mid[0].subtask, "race:middle:every_question");
}

#[test]
fn golden_first_prompt() {
    // 10001.txt: four cloze questions (blanks filled by the answers), then the last question.
    let golden = format!(
        "Article: {}\n\n\
From Para.1 we learn that lying is very   common  .\n\
According to the passage, a lie works when   someone gives the liar cooperation  .\n\
Lying is complex because   people are for it as well as against it  .\n\
The examples of kids lying in the passage show   lying is a sign of intelligent development  .\n\
What will the writer most likely talk about if he continues the passage?",
        article_of("10001.txt")
    );
    let items = load(&[]).items();
    assert_eq!(items[0].subtask, "race");
    assert_eq!(items[0].requests.len(), 4);
    assert_eq!(
        request(&items[0], 0),
        (golden.clone(), " How to become clever liars.".to_string())
    );
    assert_eq!(request(&items[0], 3).1, " How to tell truth from lies.");
}

#[test]
fn question_answer_form_and_every_question_mode() {
    // 10065.txt (5th file): a plain question, a cloze question, then the last question.
    let golden = format!(
        "Article: {}\n\n\
Question: What will be tested in the new SAT?\n\
Answer: The proper meaning of the words in the passages.\n\
The new SAT could be more difficult for international students because  they have different cultural backgrounds  .\n\
What's the main idea of the text?",
        article_of("10065.txt")
    );
    let items = load(&[]).items();
    assert_eq!(request(&items[4], 0).0, golden);
    let every = load(&[("mode", "every_question")]).items();
    assert_eq!(
        request(&every[0], 0).0,
        format!(
            "Article: {}\n\nFrom Para.1 we learn that lying is very   _  .",
            article_of("10001.txt")
        )
    );
}

#[test]
fn scoring() {
    let r = load(&[]);
    let ll = |x| Response::Loglikelihood {
        logprob: x,
        is_greedy: true,
    };
    // 10001.txt's last answer is D.
    let s = r
        .score(0, &[ll(-4.0), ll(-3.0), ll(-5.0), ll(-1.0)], &[])
        .unwrap();
    assert_eq!(s.metrics["acc"], Some(1.0));
    assert_eq!(s.gold, "D");
}

#[test]
fn through_the_abi() {
    let p = Plugin::open(find_plugin("dtm_bench_race").unwrap()).unwrap();
    let mut o = LoadOptions::default();
    o.flags.insert("mode".into(), "every_question".into());
    let task = p.load(&data_dir(), &o).unwrap();
    assert_eq!(task.info().flags["split"], "high");
    assert_eq!(task.items().unwrap().len(), 3498);
    o.flags.insert("split".into(), "low".into());
    assert!(p.load(&data_dir(), &o).is_err());
}
