//! YAML tasks written by the test, loaded and scored; prompts, choices, filtered answers and
//! metrics checked against values worked out by hand.

use std::path::Path;

use dtm_plugin_api::{LoadOptions, Request, Response};
use dtm_yaml_tasks::{discover, YamlTask, DEFAULT_FEWSHOT_SEED};

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn only(dir: &Path) -> YamlTask {
    let mut tasks = discover(&[dir.to_owned()]).unwrap();
    assert_eq!(tasks.len(), 1);
    tasks.remove(0)
}

fn ll(x: f64, greedy: bool) -> Response {
    Response::Loglikelihood {
        logprob: x,
        is_greedy: greedy,
    }
}

fn contexts(items: &[dtm_plugin_api::Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| match &i.requests[0] {
            Request::Loglikelihood { context, .. } | Request::GenerateUntil { context, .. } => {
                context.clone()
            }
            Request::LoglikelihoodRolling { text } => text.clone(),
        })
        .collect()
}

const CAPITALS: &str = r#"{"country": "France", "options": ["Paris", "Lyon"], "label": 0}
{"country": "Japan", "options": ["Osaka", "Tokyo"], "label": 1}
{"country": "Peru", "options": ["Lima", "Cusco"], "label": 0}
"#;

#[test]
fn multiple_choice_with_include_shots_and_templates() {
    let dir = tempfile::tempdir().unwrap();
    // The base sits in another folder: its data path resolves against its own folder.
    write(dir.path(), "base/_common.yaml", "dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: data/train.jsonl\n    test: data/test.jsonl\noutput_type: multiple_choice\ntarget_delimiter: \" \"\n");
    write(dir.path(), "base/data/train.jsonl", CAPITALS);
    write(dir.path(), "base/data/test.jsonl", "{\"country\": \"Italy\", \"options\": [\"Milan\", \"Rome\"], \"label\": 1}\n{\"country\": \"Chile\", \"options\": [\"Santiago\", \"Arica\"], \"label\": 0}\n");
    write(
        dir.path(),
        "tasks/capitals.yaml",
        r#"include: ../base/_common.yaml
task: capitals
tag: geography
test_split: test
fewshot_split: train
num_fewshot: 2
fewshot_config:
  sampler: first_n
description: "Capitals of {{ 'countries' }}.\n\n"
doc_to_text: "Q: What is the capital of {{country}}?\nA:"
doc_to_choice: "{{options}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
  - metric: exact_match
metadata:
  version: 2.0
"#,
    );
    let task = only(dir.path());
    assert_eq!(task.config.tags, vec!["geography"]);
    let d = task.describe();
    assert_eq!(d.name, "capitals");
    assert_eq!(d.version, "2.0");
    assert_eq!(d.headline_metric, "acc,none");
    let names: Vec<&str> = d.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["acc,none", "acc_norm,none", "exact_match,none"]);

    let loaded = task
        .load(&LoadOptions::default(), DEFAULT_FEWSHOT_SEED)
        .unwrap();
    let items = loaded.items();
    assert_eq!(items.len(), 2);
    // description + 2 first shots (text + " " + gold choice + "\n\n") + text.
    let shots = "Capitals of countries.\n\nQ: What is the capital of France?\nA: Paris\n\nQ: What is the capital of Japan?\nA: Tokyo\n\n";
    assert_eq!(
        items[0].requests,
        vec![
            Request::Loglikelihood {
                context: format!("{shots}Q: What is the capital of Italy?\nA:"),
                continuation: " Milan".into()
            },
            Request::Loglikelihood {
                context: format!("{shots}Q: What is the capital of Italy?\nA:"),
                continuation: " Rome".into()
            },
        ]
    );
    assert_eq!(loaded.info().num_fewshot, 2);
    assert_eq!(
        loaded.info().data_files,
        vec!["../base/data/test.jsonl", "../base/data/train.jsonl"]
    );

    // Item 0 (gold Rome, index 1): "Milan" -2.0 beats "Rome" -3.0 in total, but per character
    // Rome is -0.75 against Milan's -0.4: acc 0, acc_norm 0; the gold is greedy: exact_match 1.
    let s = loaded.score(0, &[ll(-2.0, false), ll(-3.0, true)]).unwrap();
    assert_eq!(s.metrics["acc,none"], Some(0.0));
    assert_eq!(s.metrics["acc_norm,none"], Some(0.0));
    assert_eq!(s.metrics["exact_match,none"], Some(1.0));
    assert_eq!(s.gold, "Rome");
    // Item 1 (gold Santiago): Santiago -4.0 (8 chars: -0.5) vs Arica -3.0 (5 chars: -0.6):
    // acc 0, acc_norm 1.
    let s = loaded
        .score(1, &[ll(-4.0, false), ll(-3.0, false)])
        .unwrap();
    assert_eq!(s.metrics["acc,none"], Some(0.0));
    assert_eq!(s.metrics["acc_norm,none"], Some(1.0));
    assert_eq!(s.extracted["acc"], "Arica");

    // --num-fewshot and --limit.
    let opts = LoadOptions {
        num_fewshot: Some(0),
        limit: Some(1),
        ..Default::default()
    };
    let loaded = task.load(&opts, DEFAULT_FEWSHOT_SEED).unwrap();
    assert_eq!(
        contexts(loaded.items()),
        ["Capitals of countries.\n\nQ: What is the capital of Italy?\nA:"]
    );
    let opts = LoadOptions {
        num_fewshot: Some(4),
        ..Default::default()
    };
    let e = task
        .load(&opts, DEFAULT_FEWSHOT_SEED)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("4 shots asked for, but the few-shot split has 3"),
        "{e}"
    );
}

#[test]
fn the_default_sampler_draws_as_python_random_does_and_excludes_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let docs: String = (0..6)
        .map(|i| format!("{{\"q\": \"q{i}\", \"a\": \"a{i}\"}}\n"))
        .collect();
    write(dir.path(), "d.jsonl", &docs);
    write(
        dir.path(),
        "t.yaml",
        "task: draws\ndataset_path: json\ndataset_kwargs:\n  data_files: d.jsonl\ntest_split: train\nfewshot_split: train\nnum_fewshot: 2\ndoc_to_text: q\ndoc_to_target: a\nfewshot_delimiter: \"|\"\ntarget_delimiter: \"=\"\n",
    );
    let task = only(dir.path());
    let loaded = task.load(&LoadOptions::default(), 1234).unwrap();
    // CPython: r = random.Random(1234); for each doc i in order, s = r.sample(docs, 3), the
    // shots are [x for x in s if x != doc_i][:2] -> [[3,4],[0,4],[5,0],[2,1],[0,5],[4,3]].
    let expected = [[3, 4], [0, 4], [5, 0], [2, 1], [0, 5], [4, 3]];
    let want: Vec<String> = expected
        .iter()
        .enumerate()
        .map(|(i, [a, b])| format!("q{a}=a{a}|q{b}=a{b}|q{i}"))
        .collect();
    assert_eq!(contexts(loaded.items()), want);
    // Generation defaults: until the few-shot delimiter, lm-eval's 256 tokens.
    assert!(matches!(&loaded.items()[0].requests[0],
        Request::GenerateUntil { until, max_new_tokens: 256, .. } if until == &["|"]));
    // Another seed, other shots.
    let other = task.load(&LoadOptions::default(), 7).unwrap();
    assert_ne!(contexts(other.items()), want);
}

#[test]
fn generation_filters_and_exact_match_options() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "d.csv",
        "question,answer\nTwo plus two?,4\nCapital of France?,Paris\n",
    );
    write(
        dir.path(),
        "gen.yaml",
        r#"task: gen
dataset_path: csv
dataset_kwargs:
  data_files:
    test: d.csv
test_split: test
output_type: generate_until
doc_to_text: "Q: {{question}}\nA:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\n\n", "Q:"]
  max_gen_toks: 32
  do_sample: false
  temperature: 0.0
filter_list:
  - name: strict
    filter:
      - function: regex
        regex_pattern: "The answer is (\\w+)"
      - function: take_first
  - name: flexible
    filter:
      - function: regex
        regex_pattern: "(\\w+)"
        group_select: -1
      - function: lowercase
      - function: take_first
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
    regexes_to_ignore: ["^the "]
"#,
    );
    let task = only(dir.path());
    let names: Vec<String> = task
        .describe()
        .metrics
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["exact_match,strict", "exact_match,flexible"]);
    let opts = LoadOptions {
        max_new_tokens: Some(8),
        ..Default::default()
    };
    let loaded = task.load(&opts, 0).unwrap();
    assert_eq!(
        loaded.items()[0].requests,
        vec![Request::GenerateUntil {
            context: "Q: Two plus two?\nA:".into(),
            until: vec!["\n\n".into(), "Q:".into()],
            max_new_tokens: 8,
        }]
    );
    // The CSV's `answer` column is integers-and-text, so text: "4".
    let text = |s: &str| vec![Response::Text(s.into())];
    let s = loaded
        .score(0, &text(" I think 3. The answer is 4"))
        .unwrap();
    assert_eq!(s.extracted["strict"], "4");
    assert_eq!(s.extracted["flexible"], "4");
    assert_eq!(s.metrics["exact_match,strict"], Some(1.0));
    assert_eq!(s.gold, "4");
    // Strict finds no "The answer is": the fallback; flexible takes the last word, lowercased.
    let s = loaded.score(1, &text(" It is PARIS.")).unwrap();
    assert_eq!(s.extracted["strict"], "[invalid]");
    assert_eq!(s.metrics["exact_match,strict"], Some(0.0));
    assert_eq!(s.extracted["flexible"], "paris");
    assert_eq!(s.metrics["exact_match,flexible"], Some(1.0));
}

#[test]
fn rolling_and_loglikelihood_tasks() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "d.jsonl",
        "{\"page\": \"a b  c\"}\n{\"page\": \"é\"}\n",
    );
    write(
        dir.path(),
        "ppl.yaml",
        "task: ppl\ndataset_path: json\ndataset_kwargs:\n  data_files: d.jsonl\ntest_split: train\noutput_type: loglikelihood_rolling\ndoc_to_target: \"{{page}}\"\n",
    );
    write(
        dir.path(),
        "ll.yaml",
        "task: ll\ndataset_path: json\ndataset_kwargs:\n  data_files: d.jsonl\ntest_split: train\noutput_type: loglikelihood\ndoc_to_text: \"Text:\"\ndoc_to_target: \"{{' ' + page}}\"\nmetric_list:\n  - metric: acc\n",
    );
    let tasks = discover(&[dir.path().to_owned()]).unwrap();
    let ll_task = tasks.iter().find(|t| t.name() == "ll").unwrap();
    let loaded = ll_task.load(&LoadOptions::default(), 0).unwrap();
    // lm-eval adds no delimiter to a loglikelihood target.
    assert_eq!(
        loaded.items()[0].requests,
        vec![Request::Loglikelihood {
            context: "Text:".into(),
            continuation: " a b  c".into()
        }]
    );
    assert_eq!(
        loaded.score(0, &[ll(-1.0, true)]).unwrap().metrics["acc,none"],
        Some(1.0)
    );

    let ppl = tasks.iter().find(|t| t.name() == "ppl").unwrap();
    assert_eq!(ppl.describe().headline_metric, "word_perplexity,none");
    let loaded = ppl.load(&LoadOptions::default(), 0).unwrap();
    assert_eq!(contexts(loaded.items()), ["a b  c", "é"]);
    let rolling = |x: f64| vec![Response::Rolling { logprob: x }];
    let scores = vec![
        loaded.score(0, &rolling(-6.0)).unwrap(),
        loaded.score(1, &rolling(-2.0)).unwrap(),
    ];
    // "a b  c": 3 words, 6 bytes; "é": 1 word, 2 bytes. Totals: -8 over 4 words, 8 bytes.
    let a = loaded.aggregate(&scores);
    let v = |m: &str| a.overall[m].mean.unwrap();
    assert!((v("word_perplexity,none") - 2f64.exp()).abs() < 1e-12);
    assert!((v("byte_perplexity,none") - 1f64.exp()).abs() < 1e-12);
    assert!((v("bits_per_byte,none") - 1.0 / 2f64.ln()).abs() < 1e-12);
}

/// Every refusal names the file, the line and the field.
#[test]
fn anything_outside_the_subset_is_refused_with_file_line_and_field() {
    let head =
        "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files: d.jsonl\ntest_split: train\n";
    let cases: &[(&str, &str, &str)] = &[
        (
            "doc_to_text: !function utils.doc_to_text\n",
            "t.yaml:6",
            "!function utils.doc_to_text",
        ),
        ("process_docs: x\n", "t.yaml:6: process_docs", "Python"),
        (
            "metric_list:\n  - metric: bleu\n",
            "t.yaml:7: metric_list.metric",
            "\"bleu\" is not supported",
        ),
        (
            "metric_list:\n  - metric: exact_match\n    aggregation: median\n",
            "t.yaml:8: metric_list.aggregation",
            "median",
        ),
        (
            "generation_kwargs:\n  do_sample: true\n",
            "t.yaml:7: generation_kwargs.do_sample",
            "sampling",
        ),
        (
            "generation_kwargs:\n  temperature: 0.7\n",
            "t.yaml:7: generation_kwargs.temperature",
            "sampling",
        ),
        (
            "generation_kwargs:\n  top_p: 0.9\n",
            "t.yaml:7: generation_kwargs.top_p",
            "not supported",
        ),
        (
            "fewshot_config:\n  sampler: balanced\n",
            "t.yaml:7: fewshot_config.sampler",
            "balanced",
        ),
        (
            "filter_list:\n  - name: f\n    filter:\n      - function: majority_vote\n",
            "t.yaml:9: filter_list.filter.function",
            "majority_vote",
        ),
        ("use_prompt: p\n", "t.yaml:6: use_prompt", "not supported"),
        (
            "output_type: multiple_choice\ndoc_to_target: a\n",
            "t.yaml:6: doc_to_choice",
            "needs doc_to_choice",
        ),
    ];
    for (extra, location, words) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "d.jsonl", "{\"a\": 1}\n");
        write(dir.path(), "t.yaml", &format!("{head}{extra}"));
        let e = discover(&[dir.path().to_owned()])
            .err()
            .unwrap()
            .to_string();
        let e = e.replace(&format!("{}/", dir.path().display()), "");
        assert!(
            e.starts_with(location) && e.contains(words),
            "{extra:?}: {e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "t.yaml",
        "task: t\ndataset_path: cais/mmlu\ntest_split: test\n",
    );
    let e = discover(&[dir.path().to_owned()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("t.yaml:2: dataset_path") && e.contains("hub"),
        "{e}"
    );
    // Two files, one name.
    write(dir.path(), "d.jsonl", "{\"a\": 1}\n");
    for f in ["a.yaml", "b.yaml"] {
        write(dir.path(), f, head);
    }
    std::fs::remove_file(dir.path().join("t.yaml")).unwrap();
    let e = discover(&[dir.path().to_owned()])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("b.yaml:1: task") && e.contains("a.yaml"), "{e}");
    // A document the templates cannot handle is named at load.
    write(dir.path(), "d.jsonl", "{\"a\": 1}\n{\"b\": 2}\n");
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    write(
        dir.path(),
        "a.yaml",
        &format!("{head}doc_to_text: \"{{{{a + 1}}}}\"\n"),
    );
    let e = only(dir.path())
        .load(&LoadOptions::default(), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("t: train document 1") && e.contains("doc_to_text"),
        "{e}"
    );
}
