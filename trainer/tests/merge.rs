//! `trainer merge`: every method against values computed by hand, the streaming pipeline
//! (sharding, dtypes, refusals, atomic output, adapters, Fisher files), and the binary against
//! mergekit's own outputs on the same inputs and configs (fixtures/merge, made by make.py there).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use dtm_model::adapter::{AdapterConfig, PeftAdapter};
use dtm_trainer::merge::params::{layer_position, Conditional, Setting, Value};
use dtm_trainer::merge::registry::{self, Space};
use dtm_trainer::merge::{
    dare, fisher, linear, merge, task_arithmetic, ties, MergeError, MergeSpec, ModelInput,
    ModelRef, OutDtype, Rescale,
};

const L0: &str = "model.layers.0.mlp.up_proj.weight";
const L1: &str = "model.layers.1.mlp.up_proj.weight";
const NORM: &str = "model.norm.weight";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/merge")
}

fn close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "entry {i}: got {g}, want {w}\n got  {got:?}\n want {want:?}"
        );
    }
}

// ---------------------------------------------------------------- the formulas, by hand

#[test]
fn linear_is_a_weighted_average_or_sum() {
    let (a, b) = ([1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]);
    let mut out = vec![f32::NAN; 4];
    linear::linear(&mut out, &[&a, &b], &[1.0, 3.0], true).unwrap();
    // (1·a + 3·b) / 4
    close(&out, &[2.5, 2.0, 1.5, 1.0], 1e-6);
    linear::linear(&mut out, &[&a, &b], &[1.0, 3.0], false).unwrap();
    close(&out, &[10.0, 8.0, 6.0, 4.0], 1e-6);
    // One model: itself.
    linear::linear(&mut out, &[&a], &[0.3], true).unwrap();
    close(&out, &a, 1e-6);
    let err = linear::linear(&mut out, &[&a, &b], &[1.0, -1.0], true).unwrap_err();
    assert!(err.contains("sum to 0"), "{err}");
}

#[test]
fn task_arithmetic_adds_lambda_times_the_weighted_sum() {
    let base = [1.0, 2.0, 3.0, 4.0];
    let (d1, d2) = ([1.0, 0.0, 0.0, -4.0], [-1.0, 0.0, 2.0, 0.0]);
    let mut out = vec![0.0; 4];
    // θ0 + 2·(1·δ1 + 0.5·δ2) = θ0 + 2·[0.5, 0, 1, -4]
    task_arithmetic::combine(&mut out, &base, &[&d1, &d2], &[1.0, 0.5], false, 2.0);
    close(&out, &[2.0, 2.0, 5.0, -4.0], 1e-6);
    // Normalised: the sum divided by 1.5 first.
    task_arithmetic::combine(&mut out, &base, &[&d1, &d2], &[1.0, 0.5], true, 1.0);
    close(
        &out,
        &[1.0 + 0.5 / 1.5, 2.0, 3.0 + 1.0 / 1.5, 4.0 - 4.0 / 1.5],
        1e-6,
    );
    // Weights summing to (almost) 0 are not divided by (mergekit's rule).
    task_arithmetic::combine(&mut out, &base, &[&d1, &d2], &[1.0, -1.0], true, 1.0);
    close(&out, &[3.0, 2.0, 1.0, 0.0], 1e-6);
    // All-zero task vectors give the base.
    task_arithmetic::combine(&mut out, &base, &[&[0.0; 4]], &[1.0], false, 1.0);
    close(&out, &base, 0.0);
}

#[test]
fn ties_trim_keeps_the_top_density_fraction_by_magnitude() {
    let mut d = vec![0.5, -3.0, 2.0, -1.0, 0.25, 4.0];
    // ⌊0.5·6⌋ = 3 largest |δ|: 4, -3, 2.
    ties::trim(&mut d, 0.5, Rescale::None);
    close(&d, &[0.0, -3.0, 2.0, 0.0, 0.0, 4.0], 0.0);

    // Equal magnitudes at the threshold: the first ones in index order are kept.
    let mut d = vec![1.0, -1.0, 1.0, 2.0, -1.0];
    // ⌊0.6·5⌋ = 3: 2 and the first two of the four |1|s.
    ties::trim(&mut d, 0.6, Rescale::None);
    close(&d, &[1.0, -1.0, 0.0, 2.0, 0.0], 0.0);

    // Density 1 keeps everything and does not rescale.
    let mut d = vec![0.5, -3.0];
    ties::trim(&mut d, 1.0, Rescale::L1);
    close(&d, &[0.5, -3.0], 0.0);

    // L1 rescaling: |δ|₁ = 10.75 before, 9 after.
    let mut d = vec![0.5, -3.0, 2.0, -1.0, 0.25, 4.0];
    ties::trim(&mut d, 0.5, Rescale::L1);
    let s = 10.75 / 9.0;
    close(&d, &[0.0, -3.0 * s, 2.0 * s, 0.0, 0.0, 4.0 * s], 1e-6);

    // Density rescaling divides the survivors by the density.
    let mut d = vec![0.5, -3.0, 2.0, -1.0];
    ties::trim(&mut d, 0.5, Rescale::Density);
    close(&d, &[0.0, -6.0, 4.0, 0.0], 0.0);

    // ⌊density·n⌋ = 0 keeps nothing.
    let mut d = vec![0.5, -3.0];
    ties::trim(&mut d, 0.4, Rescale::None);
    close(&d, &[0.0, 0.0], 0.0);

    // Equal magnitudes spread over many parallel chunks: still the first ones in index order.
    // k = 150 000 of 300 000: the 100 000 twos, then the first 50 000 of the -1s.
    let mut d: Vec<f32> = (0..300_000).map(|i| [2.0, -1.0, 0.5][i % 3]).collect();
    ties::trim(&mut d, 0.5, Rescale::None);
    for (i, x) in d.iter().enumerate() {
        let want = match i % 3 {
            0 => 2.0,
            1 if i / 3 < 50_000 => -1.0,
            _ => 0.0,
        };
        assert_eq!(*x, want, "entry {i}");
    }

    // A larger tensor: exactly k survive, and they are the k largest.
    let mut d: Vec<f32> = (0..100_000)
        .map(|i| ((i * 7919) % 100_003) as f32 - 50_000.0)
        .collect();
    let mut mags: Vec<f32> = d.iter().map(|x| x.abs()).collect();
    mags.sort_by(|a, b| b.total_cmp(a));
    ties::trim(&mut d, 0.2, Rescale::None);
    let kept: Vec<f32> = d.iter().filter(|x| **x != 0.0).map(|x| x.abs()).collect();
    assert_eq!(kept.len(), 20_000);
    assert!(kept.iter().all(|x| *x >= mags[19_999]));
}

#[test]
fn ties_elects_the_sign_of_the_weighted_sum_and_averages_agreeing_entries() {
    let base = [10.0, 10.0, 10.0, 10.0];
    let (d1, d2) = ([1.0, -2.0, 0.0, 3.0], [-1.0, 1.0, 0.0, -1.0]);
    let mut out = vec![0.0; 4];
    // Weights 1, 1: Σ = [0, -1, 0, 2]; a zero sum elects +. Entry 0: only δ1 agrees → 1;
    // entry 1: δ1 → -2; entry 2: nobody (all zero) → 0; entry 3: δ1 → 3.
    ties::consensus(&mut out, &base, &[&d1, &d2], &[1.0, 1.0], true, 1.0);
    close(&out, &[11.0, 8.0, 10.0, 13.0], 1e-6);
    // Weights 1, 3: Σ wδ = [-2, 1, 0, 0] → signs -, +, +, +. Entry 0: δ2 (3·-1 = -3, divided
    // by 3) → -1; entry 1: δ2 (3/3) → 1; entry 2: 0; entry 3: the zero sum elects +, δ1 → 3.
    ties::consensus(&mut out, &base, &[&d1, &d2], &[1.0, 3.0], true, 1.0);
    close(&out, &[9.0, 11.0, 10.0, 13.0], 1e-6);
    // Without normalisation the agreeing weighted entries are summed; λ scales.
    ties::consensus(&mut out, &base, &[&d1, &d2], &[1.0, 3.0], false, 0.5);
    close(&out, &[8.5, 11.5, 10.0, 11.5], 1e-6);
    // Both agree on entry 0 here: (2·1 + 1·3) / (2 + 1).
    ties::consensus(
        &mut out[..1],
        &base[..1],
        &[&[1.0], &[3.0]],
        &[2.0, 1.0],
        true,
        1.0,
    );
    close(&out[..1], &[10.0 + 5.0 / 3.0], 1e-6);
    // One model: its own task vector.
    let mut one = vec![0.0; 4];
    ties::consensus(&mut one, &base, &[&d1], &[0.7], true, 1.0);
    close(&one, &[11.0, 8.0, 10.0, 13.0], 1e-6);
    // All-zero task vectors: the base.
    ties::consensus(
        &mut one,
        &base,
        &[&[0.0; 4], &[0.0; 4]],
        &[1.0, 1.0],
        true,
        1.0,
    );
    close(&one, &base, 0.0);
}

#[test]
fn dare_drops_with_probability_one_minus_density_and_rescales() {
    let delta: Vec<f32> = (0..200_000).map(|i| 1.0 + (i % 7) as f32).collect();
    let key = dare::stream_key(42, 0, L0);

    let mut a = delta.clone();
    dare::drop_entries(&mut a, 0.3, Rescale::Density, key);
    // Every entry is dropped or scaled by exactly 1/density.
    for (x, d) in a.iter().zip(&delta) {
        assert!(*x == 0.0 || (*x - d / 0.3).abs() < 1e-5, "{x} from {d}");
    }
    let kept = a.iter().filter(|x| **x != 0.0).count() as f64 / delta.len() as f64;
    assert!((kept - 0.3).abs() < 0.005, "kept {kept}");

    // The same seed, model and tensor give the same drops, also on one thread; another seed,
    // model or tensor does not.
    let mut b = delta.clone();
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| dare::drop_entries(&mut b, 0.3, Rescale::Density, key));
    assert_eq!(a, b);
    for other in [
        dare::stream_key(43, 0, L0),
        dare::stream_key(42, 1, L0),
        dare::stream_key(42, 0, L1),
    ] {
        let mut c = delta.clone();
        dare::drop_entries(&mut c, 0.3, Rescale::Density, other);
        assert_ne!(a, c);
    }

    // L1 rescaling keeps the L1 norm; no rescaling keeps survivors as they are.
    let mut l1 = delta.clone();
    dare::drop_entries(&mut l1, 0.3, Rescale::L1, key);
    let norm = |v: &[f32]| v.iter().map(|x| x.abs() as f64).sum::<f64>();
    assert!((norm(&l1) / norm(&delta) - 1.0).abs() < 1e-6);
    let mut none = delta.clone();
    dare::drop_entries(&mut none, 0.3, Rescale::None, key);
    for ((n, x), d) in none.iter().zip(&a).zip(&delta) {
        assert!((*x == 0.0 && *n == 0.0) || n == d);
    }
    // Density 1 drops nothing.
    let mut all = delta.clone();
    dare::drop_entries(&mut all, 1.0, Rescale::Density, key);
    assert_eq!(all, delta);
}

#[test]
fn fisher_weights_each_entry_by_the_floored_fisher() {
    let (m1, m2) = ([2.0, 2.0, 3.0, 0.0], [0.0, 2.0, 5.0, 4.0]);
    let (f1, f2) = ([1.0, 0.0, 1.0, 1.0], [3.0, 0.0, 1.0, 0.0]);
    let mut out = vec![0.0; 4];
    fisher::fisher(&mut out, &[&m1, &m2], &[&f1, &f2], &[1.0, 1.0], 1e-6).unwrap();
    // (1·2 + 3·0)/4; both floored → mean; equal F → mean; (1·0 + 1e-6·4)/(1 + 1e-6).
    close(&out, &[0.5, 2.0, 4.0, 4e-6 / (1.0 + 1e-6)], 1e-9);
    // Weights multiply the Fisher: (1·1·2 + 2·3·0) / (1 + 6).
    fisher::fisher(&mut out, &[&m1, &m2], &[&f1, &f2], &[1.0, 2.0], 1e-6).unwrap();
    close(&out[..1], &[2.0 / 7.0], 1e-7);
    assert!(fisher::fisher(&mut out, &[&m1], &[&f1], &[-1.0], 1e-6).is_err());
}

// ---------------------------------------------------------------- parameters and registry

#[test]
fn settings_follow_mergekit_gradients_filters_and_precedence() {
    // Layer positions: i / (layers - 1); outside the layers 0.
    assert_eq!(layer_position(L0, Some(3)), 0.0);
    assert_eq!(
        layer_position("model.layers.2.mlp.up_proj.weight", Some(3)),
        1.0
    );
    assert_eq!(layer_position("model.layers.1.x", Some(5)), 0.25);
    assert_eq!(layer_position(NORM, Some(3)), 0.0);
    assert_eq!(layer_position("model.layers.0.x", Some(1)), 1.0);

    let g = Setting::Gradient(vec![0.0, 1.0, 3.0]);
    assert_eq!(g.evaluate("x", 0.0), Some(Value::Number(0.0)));
    assert_eq!(g.evaluate("x", 0.75), Some(Value::Number(2.0)));
    assert_eq!(g.evaluate("x", 1.0), Some(Value::Number(3.0)));

    let c = Setting::Conditional(vec![
        Conditional {
            filter: Some("mlp".into()),
            value: Setting::number(0.7),
        },
        Conditional {
            filter: Some("self_attn".into()),
            value: Setting::Gradient(vec![0.0, 1.0]),
        },
    ]);
    assert_eq!(c.evaluate(L0, 0.0), Some(Value::Number(0.7)));
    assert_eq!(c.evaluate("a.self_attn.q", 0.5), Some(Value::Number(0.5)));
    assert_eq!(c.evaluate(NORM, 0.0), None);

    // A model's own setting wins over the global one, which wins over the default.
    let ties = registry::find("ties").unwrap();
    let global = BTreeMap::from([
        ("density".to_owned(), Setting::number(0.5)),
        ("weight".to_owned(), Setting::number(2.0)),
    ]);
    let own = BTreeMap::from([("density".to_owned(), c)]);
    let none = BTreeMap::new();
    let p = ties.resolve(&global, &[&own, &none], L0, 0.0).unwrap();
    assert_eq!(p.densities, vec![0.7, 0.5]);
    assert_eq!(p.weights, vec![2.0, 2.0]);
    assert!(p.normalize, "TIES normalises by default");
    assert_eq!(p.lambda, 1.0);
    assert_eq!(p.rescale, Rescale::None);
    // The conditional matches no filter for the norm, so the global density applies.
    let p = ties.resolve(&global, &[&own, &none], NORM, 0.0).unwrap();
    assert_eq!(p.densities, vec![0.5, 0.5]);
}

#[test]
fn the_registry_lists_six_methods_with_mergekits_defaults() {
    let names = registry::names();
    assert_eq!(
        names,
        [
            "linear",
            "task_arithmetic",
            "ties",
            "dare_linear",
            "dare_ties",
            "fisher"
        ]
    );
    let defaults = |m: &str| {
        let method = registry::find(m).unwrap();
        let w = BTreeMap::from([("weight".to_owned(), Setting::number(1.0))]);
        let fisher = BTreeMap::from([("fisher".to_owned(), Setting::text("f"))]);
        let model = if m == "fisher" { fisher } else { w };
        method
            .resolve(&BTreeMap::new(), &[&model], L0, 0.0)
            .unwrap()
    };
    // mergekit: linear and TIES normalise; task arithmetic and both DAREs do not.
    assert!(defaults("linear").normalize);
    assert!(!defaults("task_arithmetic").normalize);
    assert!(defaults("ties").normalize);
    assert!(!defaults("dare_linear").normalize);
    assert!(!defaults("dare_ties").normalize);
    // DARE rescales by 1/density by default (the paper); TIES does not rescale.
    assert_eq!(defaults("dare_linear").rescale, Rescale::Density);
    assert_eq!(defaults("dare_ties").rescale, Rescale::Density);
    assert_eq!(defaults("ties").rescale, Rescale::None);
    assert_eq!(defaults("fisher").floor, 1e-6);
    for m in registry::METHODS {
        assert!(m.paper.starts_with("https://arxiv.org/abs/"), "{}", m.name);
        let mut params = m.param_names();
        params.sort();
        params.dedup();
        assert_eq!(
            params.len(),
            m.params.len(),
            "{} repeats a parameter",
            m.name
        );
        assert_eq!(
            m.needs_base(),
            !matches!(m.name, "linear" | "fisher"),
            "{}",
            m.name
        );
        assert_eq!(m.space == Space::Weights, !m.needs_base());
    }
}

#[test]
fn settings_a_method_does_not_have_are_refused_by_name() {
    let linear = registry::find("linear").unwrap();
    let w = BTreeMap::from([("weight".to_owned(), Setting::number(1.0))]);
    let bad = BTreeMap::from([("desnity".to_owned(), Setting::number(0.5))]);
    let err = linear.check(&bad, &[&w]).unwrap_err();
    assert!(
        err.contains("desnity") && err.contains("weight, normalize"),
        "{err}"
    );
    // A global parameter given for one model.
    let ties = registry::find("ties").unwrap();
    let own = BTreeMap::from([
        ("weight".to_owned(), Setting::number(1.0)),
        ("lambda".to_owned(), Setting::number(0.5)),
    ]);
    let err = ties.check(&BTreeMap::new(), &[&own]).unwrap_err();
    assert!(err.contains("lambda is a global parameter"), "{err}");
    // A missing required weight, and a value of the wrong kind.
    let err = ties
        .check(&BTreeMap::new(), &[&BTreeMap::new()])
        .unwrap_err();
    assert!(err.contains("has no weight"), "{err}");
    let text = BTreeMap::from([("normalize".to_owned(), Setting::text("maybe"))]);
    let err = ties.check(&text, &[&w]).unwrap_err();
    assert!(err.contains("normalize") && err.contains("maybe"), "{err}");
    // A density outside (0, 1].
    let dense = BTreeMap::from([("density".to_owned(), Setting::number(1.5))]);
    let err = ties.resolve(&dense, &[&w], L0, 0.0).unwrap_err();
    assert!(err.contains("density 1.5"), "{err}");
}

// ---------------------------------------------------------------- the pipeline

/// A toy checkpoint folder: three tensors (two layers and a norm), config.json, tokenizer.json.
fn write_model(dir: &Path, tensors: &[(&str, &[usize], &[f32])], dtype: DType) {
    std::fs::create_dir_all(dir).unwrap();
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(name, shape, values)| {
            let t = Tensor::from_vec(values.to_vec(), *shape, &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .unwrap();
            (name.to_string(), t)
        })
        .collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "dtype": "float32"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), r#"{"toy": true}"#).unwrap();
}

/// Base, m1 and m2 of the hand-computed pipeline tests (task vectors in the comments).
fn toy_models(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (base, m1, m2) = (root.join("base"), root.join("m1"), root.join("m2"));
    write_model(
        &base,
        &[
            (L0, &[2, 2], &[1.0, 2.0, 3.0, 4.0]),
            (L1, &[2, 2], &[0.0, 0.0, 0.0, 0.0]),
            (NORM, &[2], &[1.0, 1.0]),
        ],
        DType::F32,
    );
    write_model(
        &m1,
        &[
            (L0, &[2, 2], &[2.0, 2.0, 3.0, 0.0]),  // δ = [1, 0, 0, -4]
            (L1, &[2, 2], &[1.0, -1.0, 0.5, 0.0]), // δ = itself
            (NORM, &[2], &[1.0, 1.0]),             // δ = 0
        ],
        DType::F32,
    );
    write_model(
        &m2,
        &[
            (L0, &[2, 2], &[0.0, 2.0, 5.0, 4.0]),  // δ = [-1, 0, 2, 0]
            (L1, &[2, 2], &[-2.0, 2.0, 0.5, 0.0]), // δ = itself
            (NORM, &[2], &[1.5, 1.0]),             // δ = [0.5, 0]
        ],
        DType::F32,
    );
    (base, m1, m2)
}

/// Every tensor of a checkpoint folder (single file or sharded), as f32, with its dtype.
fn read_model(dir: &Path) -> BTreeMap<String, (String, Vec<f32>)> {
    let files = dtm_model::checkpoint::hf::weight_files(dir).unwrap();
    let mut out = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let dtypes: HashMap<String, String> = st
            .iter()
            .map(|(n, v)| (n.to_owned(), format!("{:?}", v.dtype())))
            .collect();
        for (name, t) in candle_core::safetensors::load(&f, &Device::Cpu).unwrap() {
            let v = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .unwrap();
            let dtype = dtypes[&name].clone();
            assert!(out.insert(name, (dtype, v)).is_none());
        }
    }
    out
}

fn spec(method: &str, base: Option<&Path>, models: &[(&Path, f64)], output: &Path) -> MergeSpec {
    let mut spec = MergeSpec::new(registry::find(method).unwrap(), output.to_owned());
    spec.base = base.map(ModelRef::folder);
    let base_ref = spec.base.clone();
    spec.models = models
        .iter()
        .map(|(p, w)| ModelInput {
            model: ModelRef::parse(p.to_str().unwrap(), base_ref.as_ref()).unwrap(),
            params: BTreeMap::from([("weight".to_owned(), Setting::number(*w))]),
        })
        .collect();
    spec
}

fn run(spec: &MergeSpec) -> Result<dtm_trainer::merge::MergeReport, MergeError> {
    merge(spec, &mut |_| {})
}

#[test]
fn pipeline_merges_each_tensor_as_computed_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let (base, m1, m2) = toy_models(dir.path());

    // Linear, weights 1 and 3: (m1 + 3·m2) / 4; the base takes no part.
    let out = dir.path().join("linear");
    run(&spec(
        "linear",
        Some(&base),
        &[(&m1, 1.0), (&m2, 3.0)],
        &out,
    ))
    .unwrap();
    let got = read_model(&out);
    close(&got[L0].1, &[0.5, 2.0, 4.5, 3.0], 1e-6);
    close(&got[L1].1, &[-1.25, 1.25, 0.5, 0.0], 1e-6);
    close(&got[NORM].1, &[1.375, 1.0], 1e-6);

    // Task arithmetic, weights 1 and 0.5, λ = 2: θ0 + 2·(δ1 + 0.5·δ2).
    let out = dir.path().join("ta");
    let mut s = spec(
        "task_arithmetic",
        Some(&base),
        &[(&m1, 1.0), (&m2, 0.5)],
        &out,
    );
    s.params.insert("lambda".into(), Setting::number(2.0));
    run(&s).unwrap();
    let got = read_model(&out);
    close(&got[L0].1, &[2.0, 2.0, 5.0, -4.0], 1e-6);
    close(&got[L1].1, &[0.0, 0.0, 1.5, 0.0], 1e-6);
    close(&got[NORM].1, &[1.5, 1.0], 1e-6);

    // TIES, density 0.5 (2 of 4 entries, 1 of 2), weights 1 and 1, normalised:
    // L0: δ1 → [1,0,0,-4], δ2 → [-1,0,2,0]; Σ = [0,0,2,-4] → signs +,+,+,-:
    //     [1+1, 2, 3+2, 4-4]. L1: δ1 → [1,-1,0,0], δ2 → [-2,2,0,0]; Σ = [-1,1,0,0]:
    //     [-2, 2, 0, 0]. Norm: δ1 = 0 (all zero), δ2 → [0.5, 0]: [1.5, 1].
    let out = dir.path().join("ties");
    let mut s = spec("ties", Some(&base), &[(&m1, 1.0), (&m2, 1.0)], &out);
    s.params.insert("density".into(), Setting::number(0.5));
    run(&s).unwrap();
    let got = read_model(&out);
    close(&got[L0].1, &[2.0, 2.0, 5.0, 0.0], 1e-6);
    close(&got[L1].1, &[-2.0, 2.0, 0.0, 0.0], 1e-6);
    close(&got[NORM].1, &[1.5, 1.0], 1e-6);

    // dare_linear at density 1 drops nothing: task arithmetic.
    let out = dir.path().join("dare1");
    run(&spec(
        "dare_linear",
        Some(&base),
        &[(&m1, 1.0), (&m2, 0.5)],
        &out,
    ))
    .unwrap();
    close(&read_model(&out)[L0].1, &[1.5, 2.0, 4.0, 0.0], 1e-6);

    // The base listed among the models has no task vector: left out, as mergekit does.
    let out = dir.path().join("with-base");
    let report = run(&spec(
        "ties",
        Some(&base),
        &[(&base, 1.0), (&m1, 1.0)],
        &out,
    ))
    .unwrap();
    assert_eq!(report.models, 1);
    assert_eq!(report.skipped.len(), 1);
    close(&read_model(&out)[L0].1, &[2.0, 2.0, 3.0, 0.0], 1e-6);

    // Config and tokenizer come from the base, and the report counts the bytes.
    assert!(out.join("tokenizer.json").is_file() && out.join("config.json").is_file());
    assert_eq!(report.bytes_read, 2 * (4 + 4 + 2) * 4);
    assert!(report.peak_rss.unwrap() > 0);

    // mergekit's tokenizer_source: the tokenizer from that model, config.json still the base's.
    std::fs::write(m2.join("tokenizer.json"), r#"{"m2": true}"#).unwrap();
    std::fs::write(m2.join("config.json"), r#"{"m2": true}"#).unwrap();
    let out = dir.path().join("tokenizer-source");
    let mut s = spec("ties", Some(&base), &[(&m1, 1.0), (&m2, 1.0)], &out);
    s.tokenizer_source = Some(ModelRef::folder(&m2));
    run(&s).unwrap();
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(out.join("tokenizer.json")), r#"{"m2": true}"#);
    assert!(read(out.join("config.json")).contains("LlamaForCausalLM"));
}

#[test]
fn dare_merges_are_reproducible_from_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let (base, m1, m2) = toy_models(dir.path());
    let run_with = |seed: u64, name: &str| {
        let out = dir.path().join(name);
        let mut s = spec("dare_ties", Some(&base), &[(&m1, 1.0), (&m2, 1.0)], &out);
        s.params.insert("density".into(), Setting::number(0.5));
        s.seed = seed;
        run(&s).unwrap();
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let a = run_with(7, "a");
    assert_eq!(a, run_with(7, "b"));
    let differs = (0..20).any(|seed| run_with(100 + seed, "c") != a);
    assert!(differs, "no seed changed the drops");

    // dare_linear, density 0.5, weights 1: every entry is θ0 + Σ over the surviving models of
    // δᵢ/0.5, for some subset of survivors.
    let out = dir.path().join("linear");
    let mut s = spec("dare_linear", Some(&base), &[(&m1, 1.0), (&m2, 1.0)], &out);
    s.params.insert("density".into(), Setting::number(0.5));
    run(&s).unwrap();
    let got = read_model(&out);
    let (b, d1, d2) = (
        [1.0f32, 2.0, 3.0, 4.0],
        [1.0f32, 0.0, 0.0, -4.0],
        [-1.0f32, 0.0, 2.0, 0.0],
    );
    for j in 0..4 {
        let options = [0.0, 2.0 * d1[j], 2.0 * d2[j], 2.0 * (d1[j] + d2[j])];
        let change = got[L0].1[j] - b[j];
        assert!(
            options.iter().any(|o| (o - change).abs() < 1e-6),
            "entry {j}: {change}"
        );
    }
}

#[test]
fn outputs_past_the_shard_size_are_sharded_with_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let (base, m1, m2) = toy_models(dir.path());
    let whole = dir.path().join("whole");
    run(&spec(
        "linear",
        Some(&base),
        &[(&m1, 1.0), (&m2, 1.0)],
        &whole,
    ))
    .unwrap();
    let sharded = dir.path().join("sharded");
    let mut s = spec("linear", Some(&base), &[(&m1, 1.0), (&m2, 1.0)], &sharded);
    s.shard_size = 24; // 16-byte L0 alone; 16-byte L1 and the 8-byte norm together
    let report = run(&s).unwrap();
    assert_eq!(report.shards, 2);
    assert!(!sharded.join("model.safetensors").exists());
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sharded.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["metadata"]["total_size"], 40);
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), 3);
    for f in map.values() {
        assert!(sharded.join(f.as_str().unwrap()).is_file());
    }
    assert_eq!(
        map[L0].as_str().unwrap(),
        "model-00001-of-00002.safetensors"
    );
    assert_eq!(read_model(&sharded), read_model(&whole));
    // A sharded checkpoint is also read as an input.
    let again = dir.path().join("again");
    run(&spec("linear", None, &[(&sharded, 1.0)], &again)).unwrap();
    assert_eq!(read_model(&again), read_model(&whole));
}

#[test]
fn the_output_dtype_is_written_and_recorded_in_config() {
    let dir = tempfile::tempdir().unwrap();
    let (base, m1, m2) = toy_models(dir.path());
    let out = dir.path().join("bf16");
    let mut s = spec("linear", Some(&base), &[(&m1, 1.0), (&m2, 3.0)], &out);
    s.out_dtype = Some(OutDtype::BF16);
    run(&s).unwrap();
    let got = read_model(&out);
    assert!(got.values().all(|(dtype, _)| dtype == "BF16"));
    // 0.5, 2, 4.5, 3 and -1.25, 1.25 are exact in bfloat16.
    close(&got[L0].1, &[0.5, 2.0, 4.5, 3.0], 0.0);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    // bf16 inputs stay bf16 when no dtype is asked for.
    let b1 = dir.path().join("b1");
    write_model(&b1, &[(NORM, &[2], &[1.5, -2.0])], DType::BF16);
    let out = dir.path().join("bf16-in");
    run(&spec("linear", None, &[(&b1, 1.0)], &out)).unwrap();
    assert_eq!(read_model(&out)[NORM], ("BF16".to_owned(), vec![1.5, -2.0]));
}

#[test]
fn models_that_disagree_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (base, m1, _) = toy_models(dir.path());
    let shape = dir.path().join("shape");
    write_model(
        &shape,
        &[
            (L0, &[4], &[1.0, 2.0, 3.0, 4.0]),
            (L1, &[2, 2], &[0.0; 4]),
            (NORM, &[2], &[1.0, 1.0]),
        ],
        DType::F32,
    );
    let missing = dir.path().join("missing");
    write_model(
        &missing,
        &[(L0, &[2, 2], &[0.0; 4]), (L1, &[2, 2], &[0.0; 4])],
        DType::F32,
    );
    let extra = dir.path().join("extra");
    write_model(
        &extra,
        &[
            (L0, &[2, 2], &[0.0; 4]),
            (L1, &[2, 2], &[0.0; 4]),
            (NORM, &[2], &[1.0, 1.0]),
            ("lm_head.weight", &[2], &[1.0, 1.0]),
        ],
        DType::F32,
    );
    let bf16 = dir.path().join("bf16");
    write_model(
        &bf16,
        &[
            (L0, &[2, 2], &[0.0; 4]),
            (L1, &[2, 2], &[0.0; 4]),
            (NORM, &[2], &[1.0, 1.0]),
        ],
        DType::BF16,
    );
    for (bad, tensor, what) in [
        (&shape, L0, "shape"),
        (&missing, NORM, "but not in"),
        (&extra, "lm_head.weight", "but not in"),
        (&bf16, L0, "dtype"),
    ] {
        let out = dir.path().join("out");
        let err = run(&spec("ties", Some(&base), &[(&m1, 1.0), (bad, 1.0)], &out)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(tensor) && text.contains(what),
            "{bad:?}: {text}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn nothing_is_half_written_and_existing_outputs_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (base, m1, m2) = toy_models(dir.path());
    // Weights summing to 0 cannot be normalised: the merge fails on its first tensor.
    let out = dir.path().join("out");
    let err = run(&spec("linear", None, &[(&m1, 1.0), (&m2, -1.0)], &out)).unwrap_err();
    assert!(err.to_string().contains(L0), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".merge"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // An existing output is refused unless overwriting; an input as output always.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep"), "x").unwrap();
    let err = run(&spec("linear", None, &[(&m1, 1.0)], &out)).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert!(out.join("keep").exists());
    let mut s = spec("linear", None, &[(&m1, 1.0)], &out);
    s.overwrite = true;
    run(&s).unwrap();
    assert!(!out.join("keep").exists() && out.join("model.safetensors").exists());
    let mut s = spec("linear", None, &[(&m1, 1.0), (&m2, 1.0)], &m2);
    s.overwrite = true;
    let err = run(&s).unwrap_err();
    assert!(
        err.to_string().contains("is one of the merge's inputs"),
        "{err}"
    );
    assert!(m2.join("model.safetensors").exists());

    // Task-vector methods need a base.
    let err = run(&spec("ties", None, &[(&m1, 1.0)], &dir.path().join("x"))).unwrap_err();
    assert!(err.to_string().contains("needs a base model"), "{err}");
    let _ = base;
}

/// A PEFT adapter on the toy base: r = 1, α = 2 (scale 2), adapting layer 0's up_proj.
fn write_adapter(dir: &Path, a: [f32; 2], b: [f32; 2]) {
    let config = AdapterConfig::lora(1, 2.0, 0.0, &["up_proj".to_owned()], "base");
    let a = Tensor::from_vec(a.to_vec(), (1, 2), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(b.to_vec(), (2, 1), &Device::Cpu).unwrap();
    let adapter = PeftAdapter {
        config,
        weights: BTreeMap::from([("model.layers.0.mlp.up_proj".to_owned(), (a, b))]),
    };
    adapter.save(dir).unwrap();
}

#[test]
fn adapters_are_merged_in_delta_w_space() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _, _) = toy_models(dir.path());
    let (a1, a2) = (dir.path().join("a1"), dir.path().join("a2"));
    // ΔW₁ = 2·[1, 0.5]ᵀ[1, 2] = [[2, 4], [1, 2]]; ΔW₂ = 2·[2, -1]ᵀ[0, 1] = [[0, 4], [0, -2]].
    write_adapter(&a1, [1.0, 2.0], [1.0, 0.5]);
    write_adapter(&a2, [0.0, 1.0], [2.0, -1.0]);

    let out = dir.path().join("ta");
    run(&spec(
        "task_arithmetic",
        Some(&base),
        &[(&a1, 1.0), (&a2, 1.0)],
        &out,
    ))
    .unwrap();
    let got = read_model(&out);
    close(&got[L0].1, &[3.0, 10.0, 4.0, 4.0], 1e-6);
    close(&got[L1].1, &[0.0; 4], 0.0);
    close(&got[NORM].1, &[1.0, 1.0], 0.0);

    // Linear: θ0 + (ΔW₁ + ΔW₂)/2; the same through mergekit's FOLDER+ADAPTER syntax.
    let out = dir.path().join("linear");
    run(&spec(
        "linear",
        Some(&base),
        &[(&a1, 1.0), (&a2, 1.0)],
        &out,
    ))
    .unwrap();
    close(&read_model(&out)[L0].1, &[2.0, 6.0, 3.5, 4.0], 1e-6);
    let joined = format!("{}+{}", base.display(), a1.display());
    let out = dir.path().join("joined");
    let mut s = spec("linear", None, &[], &out);
    s.models = vec![ModelInput {
        model: ModelRef::parse(&joined, None).unwrap(),
        params: BTreeMap::from([("weight".to_owned(), Setting::number(1.0))]),
    }];
    run(&s).unwrap();
    close(&read_model(&out)[L0].1, &[3.0, 6.0, 4.0, 6.0], 1e-6);

    // An adapter without a base, and one that does not fit the base, are refused.
    let err = ModelRef::parse(a1.to_str().unwrap(), None).unwrap_err();
    assert!(err.to_string().contains("base"), "{err}");
    let small = dir.path().join("small");
    write_model(&small, &[(L0, &[1, 2], &[1.0, 2.0])], DType::F32);
    let err = run(&spec(
        "linear",
        Some(&small),
        &[(&a1, 1.0)],
        &dir.path().join("y"),
    ))
    .unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
}

#[test]
fn lora_factors_average_a_and_b_separately() {
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2) = (dir.path().join("a1"), dir.path().join("a2"));
    write_adapter(&a1, [1.0, 2.0], [1.0, 0.5]);
    write_adapter(&a2, [0.0, 1.0], [2.0, -1.0]);
    let out = dir.path().join("merged");
    dtm_trainer::merge::lora_factors::merge_factors(
        &[a1.clone(), a2.clone()],
        &[1.0, 1.0],
        true,
        &out,
        false,
    )
    .unwrap();
    let merged = PeftAdapter::load(&out, &Device::Cpu).unwrap();
    let (a, b) = &merged.weights["model.layers.0.mlp.up_proj"];
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    close(&flat(a), &[0.5, 1.5], 1e-6);
    close(&flat(b), &[1.5, -0.25], 1e-6);
    assert_eq!(merged.config.r, 1);
    // Weights 1 and 3: A = ([1,2] + 3·[0,1]) / 4.
    let out = dir.path().join("weighted");
    dtm_trainer::merge::lora_factors::merge_factors(&[a1, a2], &[1.0, 3.0], true, &out, false)
        .unwrap();
    let merged = PeftAdapter::load(&out, &Device::Cpu).unwrap();
    close(
        &flat(&merged.weights["model.layers.0.mlp.up_proj"].0),
        &[0.25, 1.25],
        1e-6,
    );
}

#[test]
fn fisher_files_weight_each_entry_and_must_match_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (_, m1, m2) = toy_models(dir.path());
    let (f1, f2) = (dir.path().join("f1"), dir.path().join("f2"));
    write_model(
        &f1,
        &[
            (L0, &[2, 2], &[1.0, 0.0, 1.0, 1.0]),
            (L1, &[2, 2], &[1.0; 4]),
            (NORM, &[2], &[1.0, 1.0]),
        ],
        DType::F32,
    );
    write_model(
        &f2,
        &[
            (L0, &[2, 2], &[3.0, 0.0, 1.0, 0.0]),
            (L1, &[2, 2], &[1.0; 4]),
            (NORM, &[2], &[3.0, 1.0]),
        ],
        DType::F32,
    );
    let with_fisher = |files: [&Path; 2], out: &Path| {
        let mut s = spec("fisher", None, &[(&m1, 1.0), (&m2, 1.0)], out);
        for (m, f) in s.models.iter_mut().zip(files) {
            let file = f.join("model.safetensors");
            m.params
                .insert("fisher".into(), Setting::text(file.to_str().unwrap()));
        }
        run(&s)
    };
    let out = dir.path().join("out");
    with_fisher([&f1, &f2], &out).unwrap();
    let got = read_model(&out);
    // m1 L0 = [2,2,3,0], m2 L0 = [0,2,5,4] (see fisher_weights_each_entry_by_the_floored_fisher).
    close(&got[L0].1, &[0.5, 2.0, 4.0, 4e-6 / (1.0 + 1e-6)], 1e-6);
    close(&got[L1].1, &[-0.5, 0.5, 0.5, 0.0], 1e-6);
    close(&got[NORM].1, &[(1.0 + 3.0 * 1.5) / 4.0, 1.0], 1e-6);

    // The same through the binary's --fisher.
    let cli = dir.path().join("cli");
    let file = |f: &Path| f.join("model.safetensors").to_str().unwrap().to_owned();
    ok(&trainer(
        &[
            "merge",
            "--method",
            "fisher",
            "--models",
            m1.to_str().unwrap(),
            m2.to_str().unwrap(),
            "--fisher",
            &format!("{},{}", file(&f1), file(&f2)),
            "--output",
            cli.to_str().unwrap(),
        ],
        dir.path(),
    ));
    assert_eq!(read_model(&cli), got);

    let wrong = dir.path().join("wrong");
    write_model(
        &wrong,
        &[
            (L0, &[4], &[1.0; 4]),
            (L1, &[2, 2], &[1.0; 4]),
            (NORM, &[2], &[1.0; 2]),
        ],
        DType::F32,
    );
    let err = with_fisher([&f1, &wrong], &dir.path().join("out2")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(L0) && text.contains("Fisher"), "{text}");

    // Fisher files of the adapted matrices only (what `trainer fisher` writes): a tensor no file
    // covers is the weights' mean; one covered by some files but not all is refused, naming the
    // file that lacks it; a Fisher tensor the models lack is refused.
    let (p1, p2) = (dir.path().join("p1"), dir.path().join("p2"));
    write_model(&p1, &[(L0, &[2, 2], &[1.0, 0.0, 1.0, 1.0])], DType::F32);
    write_model(&p2, &[(L0, &[2, 2], &[3.0, 0.0, 1.0, 0.0])], DType::F32);
    let partial = dir.path().join("partial");
    let report = with_fisher([&p1, &p2], &partial).unwrap();
    assert_eq!(report.without_fisher, 2);
    let got = read_model(&partial);
    close(&got[L0].1, &[0.5, 2.0, 4.0, 4e-6 / (1.0 + 1e-6)], 1e-6);
    let (a, b) = (read_model(&m1), read_model(&m2));
    for name in [L1, NORM] {
        let mean: Vec<f32> = a[name]
            .1
            .iter()
            .zip(&b[name].1)
            .map(|(x, y)| (x + y) / 2.0)
            .collect();
        close(&got[name].1, &mean, 1e-6);
    }
    let err = with_fisher([&f1, &p2], &dir.path().join("out3")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(L1) && text.contains("p2"), "{text}");
    let extra = dir.path().join("extra");
    write_model(
        &extra,
        &[
            (L0, &[2, 2], &[1.0; 4]),
            ("model.other.weight", &[2], &[1.0; 2]),
        ],
        DType::F32,
    );
    let err = with_fisher([&extra, &extra], &dir.path().join("out4")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("model.other.weight") && text.contains("not in the models"),
        "{text}"
    );
}

// ---------------------------------------------------------------- the binary and mergekit

fn trainer(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Our output against mergekit's for the same config: f32 to a few ulps, bf16 exactly.
fn same_as_mergekit(ours: &Path, fixture: &str) {
    let want = candle_core::safetensors::load(
        fixtures()
            .join("mergekit")
            .join(format!("{fixture}.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let got = read_model(ours);
    let want_names: Vec<&String> = want
        .keys()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want_names,
        "{fixture}: tensor names"
    );
    for (name, t) in &want {
        let dtype = format!("{:?}", t.dtype()).to_uppercase();
        let w = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        let (got_dtype, g) = &got[name];
        assert_eq!(*got_dtype, dtype, "{fixture}: {name}");
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{fixture}: {name}[{i}]: ours {a}, mergekit {b}"
            );
        }
    }
}

#[test]
fn mergekit_configs_give_mergekits_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs: Vec<_> = std::fs::read_dir(fixtures().join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    configs.sort();
    assert!(configs.len() >= 8);
    for config in configs {
        let name = config.file_stem().unwrap().to_str().unwrap().to_owned();
        let out = dir.path().join(&name);
        let stdout = ok(&trainer(
            &[
                "merge",
                "--config",
                config.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--quiet",
            ],
            &fixtures(),
        ));
        assert!(stdout.contains("peak memory (VmHWM)"), "{stdout}");
        same_as_mergekit(&out, &name);
    }
}

#[test]
fn command_line_flags_give_mergekits_results() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 4] = [
        (
            "linear_bf16",
            &[
                "--method",
                "linear",
                "--models",
                "m1",
                "m2",
                "--weights",
                "0.25,0.25",
                "--normalize",
                "false",
                "--dtype",
                "bfloat16",
            ],
        ),
        (
            "linear",
            &[
                "--method",
                "linear",
                "--models",
                "m1",
                "m2",
                "m3",
                "--weights",
                "1,2,0.5",
            ],
        ),
        (
            "task_arithmetic",
            &[
                "--method",
                "task_arithmetic",
                "--base",
                "base",
                "--models",
                "m1",
                "m2",
                "m3",
                "--weights",
                "0.5,0.3,0.7",
                "--lambda",
                "0.8",
            ],
        ),
        (
            // Bare adapter folders apply to --base.
            "lora_task_arithmetic",
            &[
                "--method",
                "task_arithmetic",
                "--base",
                "base",
                "--models",
                "a1",
                "a2",
                "--weights",
                "1,0.5",
            ],
        ),
    ];
    for (fixture, args) in cases {
        let out = dir.path().join(fixture);
        let mut all = vec!["merge", "--quiet", "--output", out.to_str().unwrap()];
        all.extend_from_slice(args);
        ok(&trainer(&all, &fixtures()));
        same_as_mergekit(&out, fixture);
    }
    // TIES through flags, against the hand-computed toy merge.
    let (base, m1, m2) = toy_models(dir.path());
    let out = dir.path().join("ties");
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    ok(&trainer(
        &[
            "merge",
            "--method",
            "ties",
            "--base",
            &p(&base),
            "--models",
            &p(&m1),
            &p(&m2),
            "--density",
            "0.5",
            "--output",
            &p(&out),
            "--quiet",
            "--dtype",
            "bfloat16",
        ],
        dir.path(),
    ));
    let got = read_model(&out);
    close(&got[L0].1, &[2.0, 2.0, 5.0, 0.0], 0.0);
    assert_eq!(got[L0].0, "BF16");
}

#[test]
fn the_binary_seeds_dare_and_writes_lora_factors() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let dare = |seed: &str, name: &str| {
        let out = dir.path().join(name);
        ok(&trainer(
            &[
                "merge",
                "--method",
                "dare_linear",
                "--base",
                "base",
                "--models",
                "m1",
                "m2",
                "m3",
                "--density",
                "0.4",
                "--seed",
                seed,
                "--quiet",
                "--output",
                out.to_str().unwrap(),
            ],
            &f,
        ));
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    assert_eq!(dare("5", "a"), dare("5", "b"));
    assert_ne!(dare("5", "a2"), dare("6", "c"));

    let out = dir.path().join("factors");
    let stdout = ok(&trainer(
        &[
            "merge",
            "--method",
            "linear",
            "--lora-factors",
            "--models",
            "a1",
            "a2",
            "--output",
            out.to_str().unwrap(),
        ],
        &f,
    ));
    assert!(
        stdout.contains("averaged the A and B factors of 2 adapters"),
        "{stdout}"
    );
    let merged = PeftAdapter::load(&out, &Device::Cpu).unwrap();
    let a1 = PeftAdapter::load(&f.join("a1"), &Device::Cpu).unwrap();
    let a2 = PeftAdapter::load(&f.join("a2"), &Device::Cpu).unwrap();
    for (module, (a, b)) in &merged.weights {
        let mean = |x: &Tensor, y: &Tensor| ((x + y).unwrap() / 2.0).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        close(
            &flat(a),
            &flat(&mean(&a1.weights[module].0, &a2.weights[module].0)),
            1e-6,
        );
        close(
            &flat(b),
            &flat(&mean(&a1.weights[module].1, &a2.weights[module].1)),
            1e-6,
        );
    }
    let err = failed(&trainer(
        &[
            "merge",
            "--method",
            "ties",
            "--lora-factors",
            "--models",
            "a1",
            "--output",
            "x",
        ],
        &f,
    ));
    assert!(err.contains("--method linear"), "{err}");
}

#[test]
fn bad_configs_are_reported_with_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let merge_config = |config: &Path| {
        failed(&trainer(
            &[
                "merge",
                "--config",
                config.to_str().unwrap(),
                "--output",
                dir.path().join("out").to_str().unwrap(),
            ],
            &fixtures(),
        ))
    };
    let c = write(
        "typo.yml",
        "merge_method: ties\nbase_model: base\nmodles:\n  - model: m1\n",
    );
    let err = merge_config(&c);
    assert!(
        err.contains("typo.yml") && err.contains("line 3") && err.contains("modles"),
        "{err}"
    );

    let c = write("broken.yml", "merge_method: ties\nmodels: [\n");
    let err = merge_config(&c);
    assert!(err.contains("broken.yml") && err.contains("line"), "{err}");

    let c = write("slerp.yml", "merge_method: slerp\nmodels:\n  - model: m1\n");
    let err = merge_config(&c);
    assert!(
        err.contains("slerp") && err.contains("ties, dare_linear"),
        "{err}"
    );

    let c = write(
        "slices.yml",
        "merge_method: linear\nslices:\n  - sources: []\nmodels:\n  - model: m1\n",
    );
    let err = merge_config(&c);
    assert!(err.contains("`slices`"), "{err}");

    let c = write(
        "noweight.yml",
        "merge_method: ties\nbase_model: base\nmodels:\n  - model: m1\n    parameters: {density: 0.5}\n",
    );
    let err = merge_config(&c);
    assert!(
        err.contains("noweight.yml") && err.contains("no weight"),
        "{err}"
    );

    let c = write(
        "nofolder.yml",
        "merge_method: linear\nmodels:\n  - model: org/hub-model\n    parameters: {weight: 1}\n",
    );
    let err = merge_config(&c);
    assert!(
        err.contains("models[0]") && err.contains("nothing is downloaded"),
        "{err}"
    );

    let c = write(
        "union.yml",
        "merge_method: linear\nmodels:\n  - model: m1\n    parameters: {weight: 1}\ntokenizer_source: union\n",
    );
    let err = merge_config(&c);
    assert!(
        err.contains("union") && err.contains("not implemented"),
        "{err}"
    );

    // mergekit averages a base missing from `models` for linear, which needs a weight for it.
    let c = write(
        "linear-base.yml",
        "merge_method: linear\nbase_model: base\nmodels:\n  - model: m1\n    parameters: {weight: 1}\n",
    );
    let err = merge_config(&c);
    assert!(err.contains("no weight for it"), "{err}");
    // With a top-level weight it takes part: (m1 + base) / 2.
    let c = write(
        "linear-base-weight.yml",
        "merge_method: linear\nbase_model: base\nmodels:\n  - model: m1\nparameters: {weight: 1}\n",
    );
    let out = dir.path().join("lb");
    ok(&trainer(
        &[
            "merge",
            "--config",
            c.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        &fixtures(),
    ));
    let got = read_model(&out);
    let base = read_model(&fixtures().join("base"));
    let m1 = read_model(&fixtures().join("m1"));
    let name = "model.layers.1.mlp.down_proj.weight";
    let want: Vec<f32> = base[name]
        .1
        .iter()
        .zip(&m1[name].1)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    close(&got[name].1, &want, 1e-6);

    // Command-line mistakes.
    let err = failed(&trainer(
        &[
            "merge",
            "--method",
            "ties",
            "--base",
            "base",
            "--models",
            "m1",
            "m2",
            "--weights",
            "1",
            "--output",
            "x",
        ],
        &fixtures(),
    ));
    assert!(
        err.contains("--weights gives 1 weights for 2 models"),
        "{err}"
    );
    let err = failed(&trainer(
        &[
            "merge",
            "--method",
            "linear",
            "--models",
            "m1",
            "--density",
            "0.5",
            "--output",
            "x",
        ],
        &fixtures(),
    ));
    assert!(err.contains("linear has no parameter \"density\""), "{err}");
}

#[test]
fn memory_stays_at_a_few_tensors_whatever_the_model_size() {
    // Two models of 48 one-megabyte tensors: 96 MB read. Streaming holds the inputs and output
    // of one tensor at a time (and hands read pages back), so the peak stays far below that.
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..512 * 512).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let names: Vec<String> = (0..48).map(|i| format!("model.layers.{i}.w")).collect();
    let tensors: Vec<(&str, &[usize], &[f32])> = names
        .iter()
        .map(|n| (n.as_str(), &[512usize, 512][..], &values[..]))
        .collect();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_model(&a, &tensors, DType::F32);
    write_model(&b, &tensors, DType::F32);
    let out = dir.path().join("out");
    let stdout = ok(&trainer(
        &[
            "merge",
            "--method",
            "linear",
            "--models",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        dir.path(),
    ));
    let peak: f64 = stdout
        .split("peak memory (VmHWM) ")
        .nth(1)
        .and_then(|r| r.split(" MiB").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {stdout}"));
    assert!(stdout.contains("read 0.101 GB"), "{stdout}");
    assert!(peak < 40.0, "peak {peak} MiB for 96 MiB of input");
    assert_eq!(read_model(&out)["model.layers.47.w"].1, values);
}

#[test]
fn help_lists_every_method_with_its_paper() {
    let out = ok(&trainer(&["merge", "--help"], &fixtures()));
    for m in registry::METHODS {
        assert!(out.contains(m.name) && out.contains(m.paper), "{}", m.name);
    }
}
