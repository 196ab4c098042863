//! Ensembles (`--model A --model B --ensemble logprobs|logits`): a model with itself is the model;
//! two different models combine as computed by hand from each model's own logits; greedy
//! generation follows the combined distribution; different tokenizers are refused.

mod common;

use candle_core::{DType, Device};

use dtm_harness::checkpoint::{self, LoadedModel};
use dtm_harness::engine::tokenize::encode_pair;
use dtm_harness::engine::{
    Engine, EngineOptions, Ensemble, EnsembleError, EnsembleMode, GenerateRequest,
    LoglikelihoodRequest,
};
use dtm_harness::model::Batch;
use dtm_harness::tokenizer::TextTokenizer;

const MODES: [EnsembleMode; 2] = [EnsembleMode::Logprobs, EnsembleMode::Logits];

fn load(name: &str) -> LoadedModel {
    checkpoint::load(&common::tiny_model(name), DType::F32, &Device::Cpu).unwrap()
}

/// Choices sharing a question (one batch, the question computed once) and a lone pair.
fn requests() -> Vec<LoglikelihoodRequest> {
    let q = "Question: Which city is the capital of France?\nAnswer:";
    [
        (q, " Paris"),
        (q, " London, the capital of England"),
        (q, " Berlin"),
        ("The quick brown fox", " jumps over the lazy dog."),
    ]
    .iter()
    .map(|(c, x)| LoglikelihoodRequest {
        context: c.to_string(),
        continuation: x.to_string(),
    })
    .collect()
}

fn prompts() -> Vec<GenerateRequest> {
    ["Q: Where is Rome?\nA:", "Once upon a time, there was a"]
        .iter()
        .map(|p| GenerateRequest {
            context: p.to_string(),
            until: Vec::new(),
            max_new_tokens: 8,
        })
        .collect()
}

fn options(batch_size: usize, prefix_cache_entries: usize) -> EngineOptions {
    EngineOptions {
        batch_size,
        prefix_cache_entries,
        ..EngineOptions::default()
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn the_ensemble_of_a_model_with_itself_is_the_model() {
    let model = load("llama");
    let mut alone = Engine::new(&model, options(4, 8));
    let single = alone.loglikelihood(&requests()).unwrap();
    let single_gen = alone.generate_until(&prompts()).unwrap();
    let doc = "Rolling windows score every token of a document.".to_string();
    let single_roll = alone
        .loglikelihood_rolling(std::slice::from_ref(&doc))
        .unwrap();
    let single_inspect = alone.inspect("The capital of France is Paris.", 5).unwrap();
    for mode in MODES {
        let twice = Ensemble::new(vec![&model, &model], mode).unwrap();
        let mut engine = Engine::new(twice, options(4, 8));
        let both = engine.loglikelihood(&requests()).unwrap();
        for (s, e) in single.iter().zip(&both) {
            assert!(
                close(s.logprob, e.logprob, 1e-6),
                "{mode:?}: {s:?} vs {e:?}"
            );
            assert_eq!(s.is_greedy, e.is_greedy, "{mode:?}");
            assert_eq!(s.continuation_ids, e.continuation_ids);
            for (a, b) in s.token_logprobs.iter().zip(&e.token_logprobs) {
                assert!(close(*a, *b, 1e-6), "{mode:?}: {a} vs {b}");
            }
        }
        let generated = engine.generate_until(&prompts()).unwrap();
        assert_eq!(
            generated, single_gen,
            "{mode:?}: the same greedy generations"
        );
        let roll = engine
            .loglikelihood_rolling(std::slice::from_ref(&doc))
            .unwrap();
        assert!(
            close(roll[0].logprob, single_roll[0].logprob, 1e-6),
            "{mode:?}"
        );
        let inspect = engine
            .inspect("The capital of France is Paris.", 5)
            .unwrap();
        for (a, b) in single_inspect.tokens.iter().zip(&inspect.tokens) {
            assert_eq!(a.logprob.is_some(), b.logprob.is_some());
            if let (Some(x), Some(y)) = (a.logprob, b.logprob) {
                assert!(close(x, y, 1e-6), "{mode:?}: {x} vs {y}");
            }
            let ids = |t: &[(u32, f64)]| t.iter().map(|p| p.0).collect::<Vec<_>>();
            assert_eq!(ids(&a.top5), ids(&b.top5), "{mode:?}");
        }
        // The question of the three choices went through each member once, not once per choice.
        assert!(
            engine.stats().forwarded + 20 < engine.stats().requested,
            "{:?}",
            engine.stats()
        );
    }
}

/// Every position's logits of `ids` under one model alone (no cache reuse, batch of one).
fn all_logits(model: &LoadedModel, ids: &[u32]) -> Vec<Vec<f64>> {
    let n = ids.len();
    let mut cache = model.decoder.new_cache(1);
    let hidden = model
        .decoder
        .forward(
            &Batch {
                tokens: &[ids.to_vec()],
                positions: &[(0..n as i64).collect()],
                valid: &[vec![true; n]],
            },
            &mut cache,
        )
        .unwrap();
    let at: Vec<(usize, usize)> = (0..n).map(|p| (0, p)).collect();
    model
        .decoder
        .logits_at(&hidden, &at)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap()
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

fn mean_rows(rows: &[Vec<f64>]) -> Vec<f64> {
    (0..rows[0].len())
        .map(|v| rows.iter().map(|r| r[v]).sum::<f64>() / rows.len() as f64)
        .collect()
}

/// The combined next-token log-scores after `ids`, by hand from each member's own logits:
/// the mean of their log-softmax (`logprobs`), or the log-softmax of their mean logits (`logits`).
fn by_hand(members: &[&LoadedModel], ids: &[u32], mode: EnsembleMode) -> Vec<Vec<f64>> {
    let logits: Vec<Vec<Vec<f64>>> = members.iter().map(|m| all_logits(m, ids)).collect();
    (0..ids.len())
        .map(|p| {
            let rows: Vec<Vec<f64>> = logits.iter().map(|l| l[p].clone()).collect();
            match mode {
                EnsembleMode::Logprobs => {
                    mean_rows(&rows.iter().map(|r| log_softmax(r)).collect::<Vec<_>>())
                }
                EnsembleMode::Logits => log_softmax(&mean_rows(&rows)),
            }
        })
        .collect()
}

fn argmax(row: &[f64]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn two_models_combine_as_computed_by_hand_from_each_models_logits() {
    // Same tokenizer, different architectures and weights.
    let (llama, qwen) = (load("llama"), load("qwen2"));
    let members = [&llama, &qwen];
    let tokenizer = &llama.tokenizer;
    let mut per_mode = Vec::new();
    for mode in MODES {
        let ensemble = Ensemble::new(members.to_vec(), mode).unwrap();
        // Batched with prefix reuse, and one request at a time without: the same values.
        let batched = Engine::new(ensemble.clone(), options(4, 8))
            .loglikelihood(&requests())
            .unwrap();
        let alone = Engine::new(ensemble, options(1, 0))
            .loglikelihood(&requests())
            .unwrap();
        let mut checked = 0;
        for ((r, got), one) in requests().iter().zip(&batched).zip(&alone) {
            let pair = encode_pair(tokenizer, &r.context, &r.continuation).unwrap();
            let mut ids = pair.context.clone();
            ids.extend(&pair.continuation);
            let hand = by_hand(&members, &ids, mode);
            let mut greedy = true;
            for (k, &target) in pair.continuation.iter().enumerate() {
                let row = &hand[pair.context.len() - 1 + k];
                let want = row[target as usize];
                assert!(
                    close(got.token_logprobs[k], want, 1e-4),
                    "{mode:?} {r:?} token {k}: engine {} vs by hand {want}",
                    got.token_logprobs[k]
                );
                assert!(close(one.token_logprobs[k], got.token_logprobs[k], 1e-5));
                greedy &= argmax(row) == target;
                checked += 1;
            }
            assert_eq!(got.is_greedy, greedy, "{mode:?} {r:?}");
        }
        assert!(checked > 10);
        per_mode.push(batched);
    }

    // The check can fail: the members disagree, and the two modes give different numbers (the
    // mean of log-softmax is not renormalised; the log-softmax of mean logits is).
    let own = |m: &LoadedModel| {
        Engine::new(m, options(4, 8))
            .loglikelihood(&requests())
            .unwrap()
    };
    let (a, b) = (own(&llama), own(&qwen));
    let spread = |x: &[dtm_harness::engine::LoglikelihoodResult],
                  y: &[dtm_harness::engine::LoglikelihoodResult]| {
        x.iter()
            .zip(y)
            .flat_map(|(p, q)| p.token_logprobs.iter().zip(&q.token_logprobs))
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f64::max)
    };
    assert!(spread(&a, &b) > 1e-2, "the two models differ");
    assert!(spread(&a, &per_mode[0]) > 1e-3 && spread(&b, &per_mode[0]) > 1e-3);
    assert!(
        spread(&per_mode[0], &per_mode[1]) > 1e-3,
        "the two modes differ"
    );
    // In logprobs mode a sequence's log-probability is the mean of the members' own.
    for ((x, y), e) in a.iter().zip(&b).zip(&per_mode[0]) {
        assert!(close(e.logprob, (x.logprob + y.logprob) / 2.0, 1e-4));
    }
}

#[test]
fn greedy_generation_takes_the_argmax_of_the_combined_distribution_at_each_step() {
    let (llama, qwen, gemma) = (load("llama"), load("qwen2"), load("gemma3"));
    let members = [&llama, &qwen, &gemma];
    let tokenizer = &llama.tokenizer;
    let mut disagreements = 0;
    for mode in MODES {
        let ensemble = Ensemble::new(members.to_vec(), mode).unwrap();
        // Both prompts in one batch, each continuing its own prompt.
        let generated = Engine::new(ensemble, options(2, 8))
            .generate_until(&prompts())
            .unwrap();
        for (request, g) in prompts().iter().zip(&generated) {
            assert_eq!(g.ids.len(), request.max_new_tokens, "no EOS expected");
            let mut ids = tokenizer.encode_document(&request.context).unwrap();
            for &next in &g.ids {
                let hand = by_hand(&members, &ids, mode);
                let last = hand.last().unwrap();
                assert_eq!(next, argmax(last), "{mode:?}: step after {ids:?}");
                for m in members {
                    let own = all_logits(m, &ids);
                    disagreements += usize::from(argmax(own.last().unwrap()) != next);
                }
                ids.push(next);
            }
        }
    }
    // The combined choice is not simply one member's choice.
    assert!(disagreements > 0);
}

/// A copy of `model` whose tokenizer is `tokenizer`.
fn with_tokenizer(model: &LoadedModel, tokenizer: TextTokenizer) -> LoadedModel {
    LoadedModel {
        path: "edited".into(),
        adapter: None,
        decoder: model.decoder.clone(),
        tokenizer,
    }
}

#[test]
fn models_with_different_tokenizers_are_refused_naming_both() {
    let model = load("llama");
    let t = &model.tokenizer;
    // A tokenizer.json in which two tokens swap ids (every merge still finds its tokens).
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("llama-edited");
    std::fs::create_dir(&edited).unwrap();
    for entry in std::fs::read_dir(common::tiny_model("llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), edited.join(entry.file_name())).unwrap();
    }
    let json_path = edited.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let token_of = |id: u64| {
        vocab
            .iter()
            .find(|(_, v)| v.as_u64() == Some(id))
            .map(|(k, _)| k.clone())
            .unwrap()
    };
    let (a, b) = (token_of(1000), token_of(1001));
    vocab.insert(a.clone(), 1001.into());
    vocab.insert(b.clone(), 1000.into());
    std::fs::write(&json_path, serde_json::to_string(&json).unwrap()).unwrap();
    let other = checkpoint::load(&edited, DType::F32, &Device::Cpu).unwrap();
    for mode in MODES {
        let err = Ensemble::new(vec![&model, &other], mode).err().unwrap();
        assert!(matches!(err, EnsembleError::Tokenizers { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&model.path.display().to_string()), "{msg}");
        assert!(msg.contains(&edited.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("token id 1000: {a:?} vs {b:?}")),
            "{msg}"
        );
    }

    // Same vocabulary, different special tokens or BOS rule.
    let variants = [
        (
            TextTokenizer::new(
                t.inner().clone(),
                Some(0),
                t.eos_token_ids().to_vec(),
                t.adds_bos(),
            ),
            "BOS",
        ),
        (
            TextTokenizer::new(t.inner().clone(), t.bos_token_id(), vec![0], t.adds_bos()),
            "EOS",
        ),
        (
            TextTokenizer::new(
                t.inner().clone(),
                t.bos_token_id(),
                t.eos_token_ids().to_vec(),
                !t.adds_bos(),
            ),
            "BOS added",
        ),
    ];
    for (tokenizer, what) in variants {
        let other = with_tokenizer(&model, tokenizer);
        let msg = Ensemble::new(vec![&model, &other], EnsembleMode::Logits)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains(what) && msg.contains("edited"), "{msg}");
    }
    // The same tokenizer loaded from another folder is accepted.
    let qwen = load("qwen2");
    assert!(Ensemble::new(vec![&model, &qwen], EnsembleMode::Logprobs).is_ok());
}
