//! Engine behaviour that the reference fixtures do not cover: generation rows that continue
//! different shared prefixes in one batch, scoring requests packed into shared forward passes,
//! broken checkpoints, degenerate requests, truncation.

mod common;

use candle_core::{DType, Device};

use dtm_harness::checkpoint;
use dtm_harness::engine::{
    Engine, EngineOptions, Ensemble, EnsembleMode, GenerateRequest, LoglikelihoodRequest,
    LoglikelihoodResult,
};
use dtm_harness::error::RuntimeError;
use dtm_harness::model::{Batch, Segments};

#[test]
fn generation_batches_mixing_preambles_reuse_each_and_change_nothing() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let preambles = [
        "The following are questions about geography, with answers.\n\nQ: Where is Paris?\nA: In France.\n\n",
        "Translate each sentence into French, carefully and literally.\n\nEnglish: good morning\nFrench: bonjour\n\n",
    ];
    let requests: Vec<GenerateRequest> = [
        "Q: Where is Rome?\nA:",
        "Q: Where is Oslo?\nA:",
        "English: thank you\nFrench:",
        "English: the cat\nFrench:",
    ]
    .iter()
    .enumerate()
    .map(|(i, q)| GenerateRequest {
        context: format!("{}{q}", preambles[i / 2]),
        until: Vec::new(),
        max_new_tokens: 8,
    })
    .collect();
    let run = |batch_size, prefix_cache_entries| {
        let mut engine = Engine::new(
            &model,
            EngineOptions {
                batch_size,
                prefix_cache_entries,
                ..EngineOptions::default()
            },
        );
        let ids: Vec<Vec<u32>> = engine
            .generate_until(&requests)
            .unwrap()
            .into_iter()
            .map(|g| g.ids)
            .collect();
        (ids, engine.stats().clone())
    };
    let (alone, _) = run(1, 0);
    let (mixed, stats) = run(4, 8);
    assert_eq!(
        mixed, alone,
        "a batch mixing two preambles generates what each prompt alone does"
    );
    // Each preamble was run through the model once, not once per row.
    assert!(stats.forwarded + 40 < stats.requested, "{stats:?}");
}

/// NaN weights make NaN logits; every request type fails naming the model instead of returning
/// NaN scores (which plugins would read as JSON null) or garbage text.
#[test]
fn non_finite_logits_fail_naming_the_model() {
    let (_dir, path) = common::nan_checkpoint();
    let model = checkpoint::load(&path, DType::F32, &Device::Cpu).unwrap();
    let mut engine = Engine::new(&model, EngineOptions::default());
    let check = |e: RuntimeError| {
        assert!(matches!(e, RuntimeError::NonFiniteLogits { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("non-finite"),
            "{msg}"
        );
    };
    check(
        engine
            .loglikelihood(&[LoglikelihoodRequest {
                context: "The sky is".into(),
                continuation: " blue".into(),
            }])
            .unwrap_err(),
    );
    check(
        engine
            .generate_until(&[GenerateRequest {
                context: "The sky is".into(),
                until: vec![],
                max_new_tokens: 4,
            }])
            .unwrap_err(),
    );
    check(engine.inspect("The sky is", 5).unwrap_err());
}

/// In an ensemble the check runs on every member's logits before they are combined, and names
/// the broken member, not the first one: in either combination mode, for scoring and generation.
#[test]
fn non_finite_logits_of_an_ensemble_member_name_that_member() {
    let good_path = common::tiny_model("llama");
    let good = checkpoint::load(&good_path, DType::F32, &Device::Cpu).unwrap();
    let (_dir, path) = common::nan_checkpoint();
    let broken = checkpoint::load(&path, DType::F32, &Device::Cpu).unwrap();
    for mode in [EnsembleMode::Logprobs, EnsembleMode::Logits] {
        let ensemble = Ensemble::new(vec![&good, &broken], mode).unwrap();
        let mut engine = Engine::new(ensemble, EngineOptions::default());
        let check = |e: RuntimeError| {
            let msg = e.to_string();
            assert!(matches!(e, RuntimeError::NonFiniteLogits { .. }), "{msg}");
            assert!(
                msg.starts_with(&format!("{}: ", path.display())),
                "{mode:?}: {msg}"
            );
        };
        check(
            engine
                .loglikelihood(&[LoglikelihoodRequest {
                    context: "The sky is".into(),
                    continuation: " blue".into(),
                }])
                .unwrap_err(),
        );
        check(
            engine
                .generate_until(&[GenerateRequest {
                    context: "The sky is".into(),
                    until: vec![],
                    max_new_tokens: 2,
                }])
                .unwrap_err(),
        );
    }
    // The good member alone still scores.
    let mut engine = Engine::new(&good, EngineOptions::default());
    let r = engine
        .loglikelihood(&[LoglikelihoodRequest {
            context: "The sky is".into(),
            continuation: " blue".into(),
        }])
        .unwrap();
    assert!(r[0].logprob.is_finite() && r[0].logprob < 0.0, "{r:?}");
    assert_ne!(good_path, path);
}

/// With neither BOS nor EOS an empty prompt has nothing to start from: an error, not an
/// underflow; and rolling loglikelihood (which needs a start token) is not required by a batch
/// of no documents.
#[test]
fn empty_prompt_without_special_tokens_is_an_error() {
    let (_dir, path) = common::no_special_tokens_checkpoint();
    let model = checkpoint::load(&path, DType::F32, &Device::Cpu).unwrap();
    assert!(model.tokenizer.bos_token_id().is_none() && model.tokenizer.eos_token_ids().is_empty());
    let mut engine = Engine::new(&model, EngineOptions::default());
    let e = engine
        .generate_until(&[GenerateRequest {
            context: String::new(),
            until: vec![],
            max_new_tokens: 3,
        }])
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither BOS nor EOS"), "{e}");
    assert!(engine.loglikelihood_rolling(&[]).unwrap().is_empty());
    assert!(engine.loglikelihood_rolling(&["text".into()]).is_err());
}

/// A budget of zero new tokens generates nothing; one generates exactly one token.
#[test]
fn max_new_tokens_is_an_exact_budget() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let mut engine = Engine::new(&model, EngineOptions::default());
    let request = |n| GenerateRequest {
        context: "Once upon a time".into(),
        until: vec![],
        max_new_tokens: n,
    };
    let out = engine.generate_until(&[request(0), request(1)]).unwrap();
    assert_eq!(out[0].ids.len(), 0);
    assert_eq!(out[0].text, "");
    assert_eq!(out[1].ids.len(), 1);
}

/// Inputs longer than the maximum length are cut from the left: the last `max_length` tokens of
/// context + continuation are what the model reads, so the continuation's score equals that of a
/// request whose context is already cut to those tokens.
#[test]
fn long_inputs_are_truncated_from_the_left() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let tok = &model.tokenizer;
    let context =
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";
    let continuation = " fifteen";
    let ctx_ids = tok.encode(context).unwrap();
    let cont_ids = tok.encode(continuation).unwrap();
    assert!(
        ctx_ids.len() > 10 && cont_ids.len() == 1,
        "{ctx_ids:?} {cont_ids:?}"
    );
    let max = 8;
    let mut short = Engine::new(
        &model,
        EngineOptions {
            max_length: Some(max),
            ..EngineOptions::default()
        },
    );
    let cut = short
        .loglikelihood(&[LoglikelihoodRequest {
            context: context.into(),
            continuation: continuation.into(),
        }])
        .unwrap()
        .remove(0);
    // lm-eval keeps the last max_length + 1 tokens; the first of them is input only. The same
    // window, scored by a model with room to spare, gives the same log-probability.
    let mut window: Vec<u32> = ctx_ids.clone();
    window.extend(&cont_ids);
    let window = window[window.len() - (max + 1)..].to_vec();
    let mut full = Engine::new(&model, EngineOptions::default());
    let report = full.inspect(&tok.decode(&window[..window.len() - 1]).unwrap(), 5);
    let report = report.unwrap();
    assert_eq!(report.ids, window[..window.len() - 1]);
    let direct = full
        .loglikelihood(&[LoglikelihoodRequest {
            context: tok.decode(&window[..window.len() - 1]).unwrap(),
            continuation: continuation.into(),
        }])
        .unwrap()
        .remove(0);
    assert!(
        (cut.logprob - direct.logprob).abs() < 1e-4,
        "{} vs {}",
        cut.logprob,
        direct.logprob
    );
    let uncut = full
        .loglikelihood(&[LoglikelihoodRequest {
            context: context.into(),
            continuation: continuation.into(),
        }])
        .unwrap()
        .remove(0);
    assert!(
        (cut.logprob - uncut.logprob).abs() > 1e-3,
        "the cut must change the score"
    );

    // Generation keeps room for its budget: the prompt is cut to max_length - max_new_tokens.
    let g = short
        .generate_until(&[GenerateRequest {
            context: context.into(),
            until: vec![],
            max_new_tokens: 3,
        }])
        .unwrap()
        .remove(0);
    let g_cut = full
        .generate_until(&[GenerateRequest {
            context: tok.decode(&ctx_ids[ctx_ids.len() - (max - 3)..]).unwrap(),
            until: vec![],
            max_new_tokens: 3,
        }])
        .unwrap()
        .remove(0);
    assert_eq!(g.ids, g_cut.ids);
}

/// A stop string that begins in one token and ends in the next cuts the text before it, and
/// generation stops at the token that completes it.
#[test]
fn stop_strings_that_straddle_tokens_cut_the_text() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let tok = &model.tokenizer;
    let mut engine = Engine::new(&model, EngineOptions::default());
    let free = engine
        .generate_until(&[GenerateRequest {
            context: "The weather today is".into(),
            until: vec![],
            max_new_tokens: 12,
        }])
        .unwrap()
        .remove(0);
    // Find a boundary between tokens k-1 and k where both sides have text.
    let (k, before, next) = (1..free.ids.len())
        .find_map(|k| {
            let before = tok.decode(&free.ids[..k]).unwrap();
            let upto = tok.decode(&free.ids[..=k]).unwrap();
            let next = upto.strip_prefix(before.as_str())?.to_owned();
            (!before.is_empty() && !next.is_empty()).then_some((k, before, next))
        })
        .expect("a boundary between two non-empty tokens");
    let last = before.chars().last().unwrap();
    let first = next.chars().next().unwrap();
    let stop = format!("{last}{first}");
    let cut = free.text.find(&stop).unwrap();
    assert!(
        cut < before.len(),
        "the stop string spans the boundary at {k}"
    );
    let stopped = engine
        .generate_until(&[GenerateRequest {
            context: "The weather today is".into(),
            until: vec![stop.clone()],
            max_new_tokens: 12,
        }])
        .unwrap()
        .remove(0);
    assert_eq!(stopped.text, free.text[..cut], "stop {stop:?}");
    let completes = (1..=free.ids.len())
        .find(|&n| tok.decode(&free.ids[..n]).unwrap().contains(&stop))
        .unwrap();
    assert_eq!(stopped.ids, free.ids[..completes], "stop {stop:?}");
}

/// The decoder's public entry points refuse a malformed batch with an error naming the problem
/// (unknown token id, rows of different lengths) instead of panicking or reading out of bounds;
/// the training pass checks the same.
#[test]
fn malformed_batches_are_errors_not_panics() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let decoder = &model.decoder;
    let vocab = decoder.config().vocab_size as u32;
    let run = |tokens: Vec<Vec<u32>>, positions: Vec<Vec<i64>>| {
        let valid: Vec<Vec<bool>> = positions.iter().map(|p| vec![true; p.len()]).collect();
        let batch = Batch {
            tokens: &tokens,
            positions: &positions,
            valid: &valid,
        };
        let mut cache = decoder.new_cache(tokens.len());
        // candle appends a backtrace when RUST_BACKTRACE is set: the first line is the message.
        let first = |e: candle_core::Error| e.to_string().lines().next().unwrap().to_owned();
        let cached = first(decoder.forward(&batch, &mut cache).unwrap_err());
        let train = first(decoder.forward_train(&batch, None).unwrap_err());
        assert_eq!(cached, train);
        cached
    };
    let e = run(vec![vec![1, vocab]], vec![vec![0, 1]]);
    assert!(
        e.contains(&format!(
            "token id {vocab} in batch row 0 is outside the vocabulary"
        )),
        "{e}"
    );
    let e = run(vec![vec![1, 2], vec![3]], vec![vec![0, 1], vec![0]]);
    assert!(e.contains("batch row 1 has 1 tokens"), "{e}");
    let e = run(vec![vec![1, 2]], vec![vec![0]]);
    assert!(e.contains("batch row 0 has 2 tokens, 1 positions"), "{e}");
}

/// Scoring packs questions into shared forward passes (several sequences per row, each seeing
/// only its own tokens); every request must still get what it gets scored alone.
#[test]
fn packed_scoring_equals_scoring_each_request_alone() {
    let preamble = "The following are questions about the world, with answers.\n\nQ: What is ice?\nA: Frozen water.\n\n";
    let mut requests = Vec::new();
    for q in ["What is the sun?", "What is rain?", "Where do fish live?"] {
        for c in [
            " A star.",
            " Water falling from clouds.",
            " In the sea, mostly.",
        ] {
            requests.push(LoglikelihoodRequest {
                context: format!("{preamble}Q: {q}\nA:"),
                continuation: c.to_owned(),
            });
        }
    }
    for (context, continuation) in [
        ("Paris is the capital of", " France"),
        ("Paris is the capital of", " Spain"),
        ("One, two, three,", " four"),
        ("", "A whole document scored from its first token on."),
    ] {
        requests.push(LoglikelihoodRequest {
            context: context.to_owned(),
            continuation: continuation.to_owned(),
        });
    }
    for name in ["llama", "qwen2", "gemma3"] {
        let model = checkpoint::load(&common::tiny_model(name), DType::F32, &Device::Cpu).unwrap();
        let engine = |batch_size, prefix_cache_entries| {
            Engine::new(
                &model,
                EngineOptions {
                    batch_size,
                    prefix_cache_entries,
                    ..EngineOptions::default()
                },
            )
        };
        let alone: Vec<LoglikelihoodResult> = requests
            .iter()
            .map(|r| {
                engine(1, 0)
                    .loglikelihood(std::slice::from_ref(r))
                    .unwrap()
                    .remove(0)
            })
            .collect();
        for (batch_size, entries) in [(1, 8), (3, 8), (64, 8), (64, 0)] {
            let mut e = engine(batch_size, entries);
            let packed = e.loglikelihood(&requests).unwrap();
            for (i, (p, a)) in packed.iter().zip(&alone).enumerate() {
                assert_eq!(p.continuation_ids, a.continuation_ids);
                assert_eq!(p.is_greedy, a.is_greedy, "{name} request {i}");
                for (x, y) in p.token_logprobs.iter().zip(&a.token_logprobs) {
                    assert!(
                        (x - y).abs() <= 1e-5,
                        "{name}, batch {batch_size}, cache {entries}, request {i}: {x} vs {y}"
                    );
                }
            }
            let stats = e.stats();
            if entries > 0 {
                // The preamble and each question are computed once, not once per choice.
                assert!(stats.forwarded * 2 < stats.requested, "{name}: {stats:?}");
            } else {
                // Reuse off: every token of every request is computed.
                assert_eq!(stats.forwarded, stats.requested, "{name}: {stats:?}");
            }
        }
    }
}

#[test]
fn malformed_segments_are_refused() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let tokens = vec![vec![1u32, 2, 3]];
    let positions = vec![vec![0i64, 1, 2]];
    let valid = vec![vec![true; 3]];
    let batch = Batch {
        tokens: &tokens,
        positions: &positions,
        valid: &valid,
    };
    for (of, parent, says) in [
        (vec![0u32, 1, 2], vec![0u32, 0, 2], "segment 2 has parent 2"),
        (vec![0, 1, 3], vec![0, 0, 1], "segment 3 has no parent"),
        (vec![0, 1], vec![0, 0], "3 tokens but 2 segment ids"),
    ] {
        let mut cache = model.decoder.new_cache(1);
        let err = model
            .decoder
            .forward_segmented(
                &batch,
                &Segments {
                    of_token: &[of],
                    parent: &[parent],
                },
                &mut cache,
            )
            .unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
}

fn generate(
    model: &checkpoint::LoadedModel,
    requests: &[GenerateRequest],
    batch_size: usize,
    prefix_cache_entries: usize,
) -> (
    Vec<dtm_harness::engine::Generation>,
    dtm_harness::engine::Stats,
) {
    let mut engine = Engine::new(
        model,
        EngineOptions {
            batch_size,
            prefix_cache_entries,
            ..EngineOptions::default()
        },
    );
    let out = engine.generate_until(requests).unwrap();
    (out, engine.stats().clone())
}

/// Requests of different lengths, budgets and stop strings, so that rows finish at different
/// steps and waiting requests join running batches: whatever the batch size, the order of the
/// requests and prefix reuse, every generation is what the request generates on its own.
#[test]
fn continuous_batching_generates_what_each_request_alone_does() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let contexts = [
        "The weather today is",
        "Once upon a time, in a land far away, there lived a",
        "Q: What is two plus two?\nA:",
        "Q: What is the capital of France?\nA:",
        "Q: What is the capital of France?\nA: Paris.\n\nQ: And of Italy?\nA:",
        "def add(a, b):",
        "1, 2, 3,",
    ];
    let mut requests: Vec<GenerateRequest> = contexts
        .iter()
        .enumerate()
        .map(|(i, c)| GenerateRequest {
            context: c.to_string(),
            until: Vec::new(),
            max_new_tokens: 3 + 3 * i,
        })
        .collect();
    // Stop strings taken from what two of the prompts generate alone, so that they end early.
    for i in [1, 4] {
        let (alone, _) = generate(&model, &requests[i..=i], 1, 0);
        let text = &alone[0].text;
        let cut = text
            .char_indices()
            .map(|(at, _)| at)
            .find(|&at| at >= text.len() / 2 && at > 0)
            .expect("a generation of several characters");
        let end = text[cut..]
            .char_indices()
            .nth(2)
            .map_or(text.len(), |(at, _)| cut + at);
        requests[i].until = vec![text[cut..end].to_string()];
    }
    let alone: Vec<_> = requests
        .iter()
        .map(|r| generate(&model, std::slice::from_ref(r), 1, 0).0.remove(0))
        .collect();
    assert!(
        alone[1].ids.len() < requests[1].max_new_tokens
            && alone[4].ids.len() < requests[4].max_new_tokens,
        "the stop strings end those generations early"
    );
    let n = requests.len();
    let orders: [Vec<usize>; 3] = [
        (0..n).collect(),
        (0..n).rev().collect(),
        vec![3, 0, 6, 2, 5, 1, 4],
    ];
    for order in &orders {
        let shuffled: Vec<GenerateRequest> = order.iter().map(|&i| requests[i].clone()).collect();
        for batch_size in [1, 2, 3, 8] {
            for prefix_cache in [0, 8] {
                let (got, _) = generate(&model, &shuffled, batch_size, prefix_cache);
                for (g, &i) in got.iter().zip(order) {
                    assert_eq!(
                        g, &alone[i],
                        "request {i}, order {order:?}, batch {batch_size}, prefix cache {prefix_cache}"
                    );
                }
            }
        }
    }
}

/// One long request and eight short ones at batch size 2: the short ones pass through the
/// second row while the long one runs, so decoding takes as many steps as the long one needs.
/// Fixed batches would take four more (the long row's batch, then four batches of short ones).
#[test]
fn a_finished_row_is_replaced_by_a_waiting_request() {
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let request = |max_new_tokens| GenerateRequest {
        context: "The same prompt for every request, so that the order stays as given:".into(),
        until: Vec::new(),
        max_new_tokens,
    };
    // Identical prompts keep their order (the sort is stable): the long request comes first.
    let mut requests = vec![request(20)];
    requests.extend((0..8).map(|_| request(2)));
    let (out, stats) = generate(&model, &requests, 2, 8);
    assert!(
        out.iter()
            .zip(&requests)
            .all(|(g, r)| g.ids.len() == r.max_new_tokens),
        "no generation ends before its budget (EOS would change the count below): {out:?}"
    );
    // The first token of each request comes from its prefill; each later one is a step.
    assert_eq!(stats.generated, 19 + 8);
    assert_eq!(stats.decode_steps, 19, "{stats:?}");
}

/// Decoding one token at a time into a cache with room reserved (written in place) gives the
/// hidden states of a cache that is copied into a new buffer at every step (what concatenating
/// does), bit for bit, and both match running the whole sequence at once.
#[test]
fn in_place_cache_equals_a_copied_cache() {
    use dtm_harness::model::Batch;
    let model = checkpoint::load(&common::tiny_model("llama"), DType::F32, &Device::Cpu).unwrap();
    let decoder = &model.decoder;
    let tokens: Vec<u32> = model
        .tokenizer
        .encode_document("A sentence of a dozen tokens or so, to decode one at a time.")
        .unwrap();
    let step = |cache: &mut dtm_harness::model::KvCache, i: usize| -> Vec<f32> {
        decoder
            .forward(
                &Batch {
                    tokens: &[vec![tokens[i]]],
                    positions: &[vec![i as i64]],
                    valid: &[vec![true]],
                },
                cache,
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut in_place = decoder.new_cache(1);
    in_place.reserve(tokens.len()).unwrap();
    let mut copied = decoder.new_cache(1);
    let whole: Vec<Vec<f32>> = decoder
        .forward(
            &Batch {
                tokens: std::slice::from_ref(&tokens),
                positions: &[(0..tokens.len() as i64).collect()],
                valid: &[vec![true; tokens.len()]],
            },
            &mut decoder.new_cache(1),
        )
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (i, want) in whole.iter().enumerate() {
        let a = step(&mut in_place, i);
        assert_eq!(copied.room(), 0, "without a reservation every step copies");
        let b = step(&mut copied, i);
        assert_eq!(a, b, "token {i}");
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-5, "token {i}: {x} vs {y}");
        }
    }
    assert_eq!(
        in_place.room(),
        0,
        "the reserved room is used up, nothing more"
    );
}
