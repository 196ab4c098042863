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
