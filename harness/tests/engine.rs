//! Engine behaviour that the reference fixtures do not cover: generation rows that continue
//! different shared prefixes in one batch.

mod common;

use candle_core::{DType, Device};

use dtm_harness::checkpoint;
use dtm_harness::engine::{Engine, EngineOptions, GenerateRequest};

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
