//! Engine behaviour that the reference fixtures do not cover: generation rows that continue
//! different shared prefixes in one batch, scoring requests packed into shared forward passes.

mod common;

use candle_core::{DType, Device};

use dtm_harness::checkpoint;
use dtm_harness::engine::{
    Engine, EngineOptions, GenerateRequest, LoglikelihoodRequest, LoglikelihoodResult,
};
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
