//! Dispersal (random and cosine k-means) and the sentence encoder it clusters with: the library
//! against hand-computed values and sentence-transformers' own output, and the `trainer disperse`
//! / `trainer embed` commands end to end.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use dtm_trainer::data::{parse_record, Record};
use dtm_trainer::disperse::kmeans::{self, KMeans};
use dtm_trainer::disperse::{self, random, EmbedField, Method, Plan};
use dtm_trainer::embed::SentenceEncoder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

/// all-MiniLM-L6-v2 as `scripts/fetch-models.sh minilm` leaves it. Its absence fails the test
/// loudly: CI runs the set-up, so a missing encoder is a broken set-up, not a reason to skip.
fn minilm_dir() -> PathBuf {
    let cache = std::env::var_os("DTM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/dtm")
        });
    let dir = cache.join("models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "\n\n*** The sentence-encoder test needs {} — run `scripts/fetch-models.sh minilm` first (set DTM_CACHE to use another cache). ***\n",
        dir.display()
    );
    dir
}

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .expect("trainer runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "trainer failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "trainer should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sizes(assignment: &[usize], k: usize) -> Vec<usize> {
    let mut s = vec![0; k];
    for &a in assignment {
        s[a] += 1;
    }
    s
}

/// The partition as a set of sets of point indices (labels do not matter).
fn partition(assignment: &[usize]) -> BTreeSet<BTreeSet<usize>> {
    let k = assignment.iter().max().map_or(0, |m| m + 1);
    (0..k)
        .map(|j| {
            (0..assignment.len())
                .filter(|&i| assignment[i] == j)
                .collect()
        })
        .collect()
}

fn groups(groups: &[&[usize]]) -> BTreeSet<BTreeSet<usize>> {
    groups.iter().map(|g| g.iter().copied().collect()).collect()
}

fn at_angle(degrees: f64) -> Vec<f32> {
    let r = degrees.to_radians();
    vec![r.cos() as f32, r.sin() as f32]
}

fn record(instruction: &str, output: &str) -> Record {
    parse_record(&json!({"instruction": instruction, "output": output})).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Random dispersal

#[test]
fn random_sizes_differ_by_at_most_one_and_every_record_has_one_portion() {
    for n in 1..60 {
        for k in 1..=n.min(9) {
            let a = random::assign(n, k, 3).unwrap();
            assert_eq!(a.len(), n);
            assert!(a.iter().all(|&p| p < k));
            let s = sizes(&a, k);
            assert!(
                s.iter().max().unwrap() - s.iter().min().unwrap() <= 1,
                "n={n} k={k}: {s:?}"
            );
            assert_eq!(s.iter().sum::<usize>(), n);
        }
    }
}

#[test]
fn random_is_seeded_and_not_a_cut_of_the_file_order() {
    let a = random::assign(100, 4, 11).unwrap();
    assert_eq!(a, random::assign(100, 4, 11).unwrap());
    assert_ne!(a, random::assign(100, 4, 12).unwrap());
    // A permutation, not contiguous blocks: the first quarter is spread over several portions.
    let first_quarter: BTreeSet<usize> = a[..25].iter().copied().collect();
    assert!(first_quarter.len() > 1, "{a:?}");
    assert_eq!(sizes(&a, 4), [25, 25, 25, 25]);
}

#[test]
fn portion_count_must_fit_the_records() {
    for (n, k) in [(5, 0), (3, 4)] {
        let e = random::assign(n, k, 0).unwrap_err().to_string();
        assert!(e.contains(&format!("{n} records into {k} portions")), "{e}");
    }
    let points = vec![vec![1.0, 0.0]; 2];
    assert!(KMeans::new(3, 0).fit(&points).is_err());
}

// ---------------------------------------------------------------------------------------------
// Cosine k-means

/// Three tight bundles around the axes of 3-D space, lengths varied (k-means is on directions),
/// listed interleaved so that file order does not give the answer away.
fn three_bundles() -> (Vec<Vec<f32>>, BTreeSet<BTreeSet<usize>>) {
    let mut points = Vec::new();
    let mut truth: Vec<Vec<usize>> = vec![Vec::new(); 3];
    for i in 0..15 {
        let axis = (i * 7) % 3;
        let e = 0.05 * ((i % 5) as f32 - 2.0);
        let mut x = [e, -e * 0.5, e * 0.3];
        x[axis] = 1.0;
        let scale = 0.5 + i as f32;
        points.push(x.iter().map(|v| v * scale).collect());
        truth[axis].push(i);
    }
    let truth = truth.into_iter().map(|g| g.into_iter().collect()).collect();
    (points, truth)
}

#[test]
fn kmeans_recovers_hand_made_clusters() {
    let (points, truth) = three_bundles();
    for seed in 0..5 {
        let fit = KMeans::new(3, seed).fit(&points).unwrap();
        assert_eq!(partition(&fit.assignment), truth, "seed {seed}");
        assert!(fit.converged);
        for c in &fit.centroids {
            let norm: f32 = c.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-6);
        }
    }
}

#[test]
fn kmeans_inertia_is_the_hand_computed_value() {
    // Two groups on the unit circle: {0°, 60°} (mean direction 30°) and {180°, 200°} (190°).
    // Inertia Σ (1 − cos) = 2(1 − cos 30°) + 2(1 − cos 10°).
    let points = vec![
        at_angle(180.0),
        at_angle(0.0),
        at_angle(200.0),
        at_angle(60.0),
    ];
    let fit = KMeans::new(2, 0).fit(&points).unwrap();
    assert_eq!(partition(&fit.assignment), groups(&[&[1, 3], &[0, 2]]));
    let want = 2.0 * (1.0 - 30f64.to_radians().cos()) + 2.0 * (1.0 - 10f64.to_radians().cos());
    assert!(
        (fit.inertia - want).abs() < 1e-6,
        "{} vs {want}",
        fit.inertia
    );
    let a = fit.assignment[1];
    let want_centroid = at_angle(30.0);
    for (g, w) in fit.centroids[a].iter().zip(&want_centroid) {
        assert!((g - w).abs() < 1e-6, "{:?}", fit.centroids);
    }
    let b = fit.assignment[0];
    for (g, w) in fit.centroids[b].iter().zip(&at_angle(190.0)) {
        assert!((g - w).abs() < 1e-6, "{:?}", fit.centroids);
    }
}

#[test]
fn kmeans_plus_plus_seeding_is_determined_by_the_seed() {
    let (points, _) = three_bundles();
    let unit: Vec<Vec<f32>> = points
        .iter()
        .map(|x| {
            let n = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            x.iter().map(|v| v / n).collect()
        })
        .collect();
    let seeds = |s: u64| kmeans::seed_indices(&unit, 3, &mut ChaCha8Rng::seed_from_u64(s));
    let mut distinct = BTreeSet::new();
    for s in 0..20 {
        let chosen = seeds(s);
        assert_eq!(chosen, seeds(s), "seed {s}");
        assert_eq!(chosen.iter().collect::<BTreeSet<_>>().len(), 3);
        distinct.insert(chosen);
    }
    assert!(distinct.len() > 5, "{distinct:?}");
    assert_eq!(
        KMeans::new(3, 4).fit(&points).unwrap(),
        KMeans::new(3, 4).fit(&points).unwrap()
    );

    // A point at distance zero from every seed so far is never drawn while another is positive:
    // three copies of e1 and one e2 always give e2 plus one copy.
    let copies = vec![
        vec![1.0, 0.0],
        vec![1.0, 0.0],
        vec![1.0, 0.0],
        vec![0.0, 1.0],
    ];
    for s in 0..30 {
        let chosen = kmeans::seed_indices(&copies, 2, &mut ChaCha8Rng::seed_from_u64(s));
        assert!(chosen.contains(&3), "seed {s}: {chosen:?}");
        // Three seeds must use a second copy of e1 (all distances zero): still distinct points.
        let three = kmeans::seed_indices(&copies, 3, &mut ChaCha8Rng::seed_from_u64(s));
        assert_eq!(three.iter().collect::<BTreeSet<_>>().len(), 3);
    }
}

/// Four bundles on the circle, k = 3: the best merges the bundles at 180° and 200°; a seeding
/// that puts seeds in both of those ends merging 0° with 40°, a worse local optimum.
fn uneven_bundles() -> Vec<Vec<f32>> {
    [0.0, 40.0, 180.0, 200.0]
        .iter()
        .flat_map(|&a| [a - 2.0, a, a + 2.0])
        .map(at_angle)
        .collect()
}

#[test]
fn restarts_keep_the_best_inertia() {
    let points = uneven_bundles();
    // Hand-computed optimum: {0±2}, {40±2}, {180±2, 200±2}. Inside a bundle of three at
    // a−2°, a, a+2°, the mean direction is a: 2(1 − cos 2°). The merged bundle's mean direction
    // is 190°: 2(1 − cos 8°) + 2(1 − cos 10°) + 2(1 − cos 12°).
    let cos = |d: f64| d.to_radians().cos();
    let best = 2.0 * 2.0 * (1.0 - cos(2.0)) + 2.0 * (3.0 - cos(8.0) - cos(10.0) - cos(12.0));
    let (mut stuck_alone, mut stuck_with_restarts) = (0, 0);
    for seed in 0..20 {
        let fit = KMeans {
            restarts: 8,
            ..KMeans::new(3, seed)
        }
        .fit(&points)
        .unwrap();
        let min = fit
            .restart_inertias
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        assert_eq!(fit.restart_inertias.len(), 8);
        assert_eq!(fit.inertia, min, "seed {seed}");
        assert_eq!(
            fit.restart_inertias.iter().position(|&v| v == min).unwrap(),
            fit.best_restart
        );
        // The restarts draw from one stream: the first is what one restart alone finds.
        let one = KMeans {
            restarts: 1,
            ..KMeans::new(3, seed)
        }
        .fit(&points)
        .unwrap();
        assert_eq!(one.inertia, fit.restart_inertias[0]);
        assert!(one.inertia > best - 1e-6 && fit.inertia > best - 1e-6);
        stuck_alone += usize::from(one.inertia > best + 1e-4);
        stuck_with_restarts += usize::from(fit.inertia > best + 1e-4);
        if fit.inertia < best + 1e-4 {
            assert_eq!(
                partition(&fit.assignment),
                groups(&[&[0, 1, 2], &[3, 4, 5], &[6, 7, 8, 9, 10, 11]])
            );
        }
    }
    // The data has a local optimum that single runs fall into, and restarts escape it.
    assert!(stuck_alone > 0, "no single run got stuck");
    assert_eq!(stuck_with_restarts, 0);
}

#[test]
fn kmeans_rejects_bad_embeddings() {
    let e = KMeans::new(1, 0)
        .fit(&[vec![1.0, 0.0], vec![0.0, 0.0]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("record 1") && e.contains("zero"), "{e}");
    let e = KMeans::new(1, 0)
        .fit(&[vec![1.0, 0.0], vec![1.0]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("record 1") && e.contains("dimensions"), "{e}");
    let e = KMeans::new(1, 0)
        .fit(&[vec![f32::NAN, 0.0]])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not finite"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Plans: which text is embedded, and what assignments.json holds

#[test]
fn embedded_text_is_the_chosen_field() {
    let r = parse_record(&json!({"instruction": "Add", "input": "1 2", "output": "3"})).unwrap();
    assert_eq!(EmbedField::Instruction.text(&r), "Add\n\n1 2");
    assert_eq!(EmbedField::Response.text(&r), "3");
    assert_eq!(EmbedField::Both.text(&r), "Add\n\n1 2\n3");
}

#[test]
fn kmeans_plan_embeds_the_chosen_field_and_reports_the_fit() {
    let records: Vec<Record> = uneven_bundles()
        .iter()
        .enumerate()
        .map(|(i, _)| record(&format!("i{i}"), &format!("r{i}")))
        .collect();
    let mut plan = Plan::new(Method::KMeans, 3, 5);
    plan.embed = EmbedField::Both;
    let mut seen = Vec::new();
    let a = disperse::assign(&plan, &records, |texts| {
        seen = texts.to_vec();
        // The embedding of record i is point i of the hand-made set.
        Ok(texts
            .iter()
            .map(|t| {
                let i: usize = t[1..t.find('\n').unwrap()].parse().unwrap();
                uneven_bundles()[i].clone()
            })
            .collect())
    })
    .unwrap();
    assert_eq!(seen[4], "i4\nr4");
    let fit = KMeans::new(3, 5).fit(&uneven_bundles()).unwrap();
    assert_eq!(a.assignment, fit.assignment);
    assert_eq!(a.sizes, sizes(&fit.assignment, 3));
    let v = serde_json::to_value(&a).unwrap();
    assert_eq!(v["method"], "kmeans");
    assert_eq!(v["embed"], "both");
    assert_eq!(v["inertia"], json!(fit.inertia));
    assert_eq!(v["iterations"], json!(fit.iterations));
    assert_eq!(v["restarts"], 10);

    // Random never calls the encoder.
    let r = disperse::assign(&Plan::new(Method::Random, 3, 5), &records, |_| {
        panic!("random dispersal embedded texts")
    })
    .unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["method"], "random");
    assert!(v.get("inertia").is_none() && v.get("embed").is_none());
}

// ---------------------------------------------------------------------------------------------
// The sentence encoder against sentence-transformers

/// minilm_reference.json holds all-MiniLM-L6-v2 embeddings computed once with
/// sentence-transformers 6.2.0 (transformers 5.24.0, torch 2.15.0, CPU, float32) by
/// `HF_HUB_OFFLINE=1 /work/venv/bin/python trainer/tests/fixtures/minilm_reference.py`, i.e.
/// `SentenceTransformer(folder, device="cpu").encode(texts)` on the fetched folder, plus the
/// same without its Normalize module (`pooled`) and each text's token count after truncation.
fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(worst < tol, "{what}: largest difference {worst}");
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn encoder_matches_sentence_transformers() {
    let encoder = SentenceEncoder::load(&minilm_dir(), &Device::Cpu).unwrap();
    assert_eq!(encoder.spec().max_seq_length, 256);
    let reference = reference();
    let texts = reference["texts"].as_object().unwrap();
    let names: Vec<&String> = texts.keys().collect();
    let inputs: Vec<&str> = names
        .iter()
        .map(|n| texts[*n]["text"].as_str().unwrap())
        .collect();
    // All at once (padded batch, sorted by length) and one by one must both match.
    let batched = encoder.encode(&inputs, 64, |_, _| {}).unwrap();
    for (i, name) in names.iter().enumerate() {
        let want = floats(&texts[*name]["embedding"]);
        assert_close(&batched[i], &want, 1e-5, name);
        let alone = encoder.encode_one(inputs[i]).unwrap();
        assert_close(&alone, &want, 1e-5, name);
        assert_eq!(
            encoder.token_ids(inputs[i]).unwrap().len() as u64,
            texts[*name]["tokens"].as_u64().unwrap(),
            "{name}: tokens"
        );
        let norm = cosine(&batched[i], &batched[i]).sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{name}: norm {norm}");
    }
    // The long text is cut at max_seq_length.
    assert_eq!(
        encoder
            .token_ids(inputs[names.iter().position(|n| *n == "long").unwrap()])
            .unwrap()
            .len(),
        256
    );
    // Meaning shows: a paraphrase is much closer than an unrelated sentence.
    let at = |n: &str| &batched[names.iter().position(|m| *m == n).unwrap()];
    let (para, unrelated) = (
        cosine(at("short"), at("paraphrase")),
        cosine(at("short"), at("unrelated")),
    );
    let want = |n: &str| floats(&texts[n]["embedding"]);
    assert!((para - cosine(&want("short"), &want("paraphrase"))).abs() < 1e-5);
    assert!((unrelated - cosine(&want("short"), &want("unrelated"))).abs() < 1e-5);
    assert!(para > 0.6 && unrelated < 0.1, "{para} {unrelated}");
}

#[test]
fn pooling_without_normalize_matches_sentence_transformers() {
    // The same folder with Normalize dropped from modules.json: the mean-pooled vectors.
    let source = minilm_dir();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "modules.json" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let modules: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("modules.json")).unwrap())
            .unwrap();
    let two = &modules.as_array().unwrap()[..2];
    std::fs::write(
        dir.path().join("modules.json"),
        serde_json::to_string(two).unwrap(),
    )
    .unwrap();
    let encoder = SentenceEncoder::load(dir.path(), &Device::Cpu).unwrap();
    assert!(!encoder.spec().normalize);
    let reference = reference();
    for name in ["short", "long", "non_ascii"] {
        let text = reference["texts"][name]["text"].as_str().unwrap();
        let want = floats(&reference["texts"][name]["pooled"]);
        let got = encoder.encode_one(text).unwrap();
        assert_close(&got, &want, 1e-5, name);
    }
}

#[test]
fn embed_command_prints_the_reference_embedding() {
    let reference = reference();
    let short = &reference["texts"]["short"];
    let dir = minilm_dir();
    let out = ok(&trainer(&[
        "embed",
        "--encoder",
        dir.to_str().unwrap(),
        "--text",
        short["text"].as_str().unwrap(),
    ]));
    let printed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_close(
        &floats(&printed["embedding"]),
        &floats(&short["embedding"]),
        1e-5,
        "trainer embed",
    );
}

// ---------------------------------------------------------------------------------------------
// `trainer disperse` end to end

/// Records in both forms, with spacing, key order and escapes that re-serialising would change,
/// and a blank line (skipped).
const MIXED: &[&str] = &[
    r#"{"instruction": "Name a colour.",  "output": "Blue."}"#,
    r#"{"output":"4","instruction":"What is 2+2?"}"#,
    r#"{"messages": [{"role": "user", "content": "Caf\u00e9?"}, {"role": "assistant", "content": "Oui."}]}"#,
    r#"{"instruction": "Translate", "input": "hello", "output": "bonjour", "source": "x", "source_index": 3}"#,
    "",
    r#"{ "instruction" : "Say hi" , "output" : "hi" }"#,
    r#"{"instruction": "Count to three.", "output": "1, 2, 3", "extra": [1, 2.50, null]}"#,
    r#"{"instruction": "Emoji", "output": "😀"}"#,
];

fn write_input(dir: &Path, lines: &[&str]) -> PathBuf {
    let path = dir.join("data.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn read_portions(dir: &Path, k: usize) -> Vec<Vec<String>> {
    (1..=k)
        .map(|j| {
            let text = std::fs::read_to_string(dir.join(format!("portion-{j}.jsonl"))).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'));
            text.lines().map(str::to_owned).collect()
        })
        .collect()
}

fn read_assignments(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("assignments.json")).unwrap()).unwrap()
}

#[test]
fn random_dispersal_writes_the_original_lines_into_k_portions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_input(tmp.path(), MIXED);
    let out = tmp.path().join("out");
    let run = |k: &str, seed: &str| {
        ok(&trainer(&[
            "disperse",
            "--data",
            data.to_str().unwrap(),
            "--k",
            k,
            "--method",
            "random",
            "--seed",
            seed,
            "--output",
            out.to_str().unwrap(),
        ]))
    };
    run("3", "7");
    let records: Vec<&str> = MIXED.iter().copied().filter(|l| !l.is_empty()).collect();
    let portions = read_portions(&out, 3);
    let a = read_assignments(&out);
    let assignment: Vec<usize> = a["assignment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(assignment.len(), records.len());
    // Each portion is exactly its records' original lines, in file order.
    for (j, lines) in portions.iter().enumerate() {
        let want: Vec<&str> = records
            .iter()
            .zip(&assignment)
            .filter(|(_, &p)| p == j)
            .map(|(l, _)| *l)
            .collect();
        assert_eq!(lines, &want, "portion {}", j + 1);
    }
    let mut union: Vec<&String> = portions.iter().flatten().collect();
    union.sort();
    let mut all: Vec<String> = records.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(union, all.iter().collect::<Vec<_>>());
    assert_eq!(a["method"], "random");
    assert_eq!(a["seed"], 7);
    assert_eq!(a["k"], 3);
    assert_eq!(a["records"], 7);
    assert_eq!(
        a["sizes"],
        json!(portions.iter().map(Vec::len).collect::<Vec<_>>())
    );
    let s = sizes(&assignment, 3);
    assert!(
        s.iter().max().unwrap() - s.iter().min().unwrap() <= 1,
        "{s:?}"
    );
    assert!(a.get("inertia").is_none());

    // The same seed gives the same bytes; a smaller K removes the stale portion.
    let before = std::fs::read(out.join("assignments.json")).unwrap();
    run("3", "7");
    assert_eq!(std::fs::read(out.join("assignments.json")).unwrap(), before);
    run("2", "7");
    assert!(!out.join("portion-3.jsonl").exists());
    assert_eq!(read_assignments(&out)["k"], 2);
}

/// Instructions about cooking or astronomy crossed with responses about programming or
/// football: clustering the instruction and clustering the response give different splits.
fn crossed_topics() -> (Vec<String>, Vec<usize>, Vec<usize>) {
    let cooking = [
        "How long should I boil pasta so that it stays al dente?",
        "What is the best way to caramelise onions in a frying pan?",
        "How do I knead bread dough and let it rise properly?",
        "Which spices go well in a slow-cooked vegetable curry?",
    ];
    let astronomy = [
        "Why does the planet Mars look red in the night sky?",
        "How far away is the nearest star from our solar system?",
        "What causes a total solar eclipse of the Sun by the Moon?",
        "How do astronomers detect planets orbiting distant stars?",
    ];
    let programming = [
        "In Python, define the function with def and return the sorted list of integers.",
        "In Python, loop over the list with a for statement and print each variable.",
        "In Python, open the source file with a with statement and parse each line of code.",
        "In Python, catch the exception with try and except, then debug the function.",
    ];
    let football = [
        "In football, the striker scored a goal from a penalty kick past the goalkeeper.",
        "In football, the referee showed the defender a red card for a foul in the match.",
        "In football, the team won the league with a header from a corner kick.",
        "In football, the midfielder passed the ball and the winger crossed it to the striker.",
    ];
    let mut lines = Vec::new();
    let (mut by_instruction, mut by_response) = (Vec::new(), Vec::new());
    for i in 0..8 {
        for r in 0..2 {
            let (instruction, it) = if i % 2 == 0 {
                (cooking[i / 2], 0)
            } else {
                (astronomy[i / 2], 1)
            };
            let (pool, rt) = if (i / 2 + r) % 2 == 0 {
                (&programming, 0)
            } else {
                (&football, 1)
            };
            let response = pool[(i + r) % 4];
            lines.push(json!({"instruction": instruction, "output": response}).to_string());
            by_instruction.push(it);
            by_response.push(rt);
        }
    }
    (lines, by_instruction, by_response)
}

#[test]
fn kmeans_dispersal_clusters_the_chosen_field() {
    let tmp = tempfile::tempdir().unwrap();
    let (lines, by_instruction, by_response) = crossed_topics();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let data = write_input(tmp.path(), &refs);
    let encoder_dir = minilm_dir();
    let encoder = SentenceEncoder::load(&encoder_dir, &Device::Cpu).unwrap();
    for (field, truth) in [("instruction", &by_instruction), ("response", &by_response)] {
        let out = tmp.path().join(field);
        ok(&trainer(&[
            "disperse",
            "--data",
            data.to_str().unwrap(),
            "--k",
            "2",
            "--method",
            "kmeans",
            "--embed",
            field,
            "--encoder",
            encoder_dir.to_str().unwrap(),
            "--seed",
            "1",
            "--output",
            out.to_str().unwrap(),
        ]));
        let a = read_assignments(&out);
        let assignment: Vec<usize> = a["assignment"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(partition(&assignment), partition(truth), "{field}");
        assert_eq!(a["method"], "kmeans");
        assert_eq!(a["embed"], field);
        assert_eq!(a["encoder"], encoder_dir.to_str().unwrap());
        assert_eq!(a["converged"], true);
        assert!(a["iterations"].as_u64().unwrap() >= 1);
        assert_eq!(a["sizes"], json!(sizes(&assignment, 2)));

        // The reported inertia, recomputed here from the embeddings and the assignment:
        // Σ (1 − cos(x, mean direction of x's portion)).
        let records: Vec<Record> = lines
            .iter()
            .map(|l| parse_record(&serde_json::from_str(l).unwrap()).unwrap())
            .collect();
        let field = if field == "instruction" {
            EmbedField::Instruction
        } else {
            EmbedField::Response
        };
        let texts: Vec<String> = records.iter().map(|r| field.text(r)).collect();
        let x = encoder.encode(&texts, 8, |_, _| {}).unwrap();
        let mut inertia = 0f64;
        for j in 0..2 {
            let mut mean = vec![0f64; x[0].len()];
            for (v, _) in x.iter().zip(&assignment).filter(|(_, &p)| p == j) {
                for (m, e) in mean.iter_mut().zip(v) {
                    *m += f64::from(*e);
                }
            }
            let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
            for (v, _) in x.iter().zip(&assignment).filter(|(_, &p)| p == j) {
                let cos: f64 = v
                    .iter()
                    .zip(&mean)
                    .map(|(e, m)| f64::from(*e) * m / norm)
                    .sum();
                inertia += 1.0 - cos;
            }
        }
        let reported = a["inertia"].as_f64().unwrap();
        assert!((reported - inertia).abs() < 1e-4, "{reported} vs {inertia}");
    }
}

#[test]
fn bad_input_and_settings_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let bad = write_input(tmp.path(), &[MIXED[0], "{\"instruction\": \"x\"}"]);
    let e = failure(&trainer(&[
        "disperse",
        "--data",
        bad.to_str().unwrap(),
        "--k",
        "1",
        "--method",
        "random",
        "--output",
        out.to_str().unwrap(),
    ]));
    assert!(e.contains("data.jsonl:2") && e.contains("output"), "{e}");
    assert!(!out.exists(), "nothing is written on bad input");

    let data = write_input(tmp.path(), MIXED);
    let e = failure(&trainer(&[
        "disperse",
        "--data",
        data.to_str().unwrap(),
        "--k",
        "8",
        "--method",
        "random",
        "--output",
        out.to_str().unwrap(),
    ]));
    assert!(e.contains("7 records into 8 portions"), "{e}");
    let e = failure(&trainer(&[
        "disperse",
        "--data",
        data.to_str().unwrap(),
        "--method",
        "random",
        "--embed",
        "response",
        "--output",
        out.to_str().unwrap(),
    ]));
    assert!(e.contains("--embed"), "{e}");
    let e = failure(&trainer(&[
        "disperse",
        "--data",
        data.to_str().unwrap(),
        "--method",
        "spectral",
        "--output",
        out.to_str().unwrap(),
    ]));
    assert!(e.contains("random") && e.contains("kmeans"), "{e}");

    // Without --encoder the default folder is used; a cache without it names the fetch command.
    let out_run = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "disperse",
            "--data",
            data.to_str().unwrap(),
            "--k",
            "2",
            "--method",
            "kmeans",
            "--output",
            out.to_str().unwrap(),
        ])
        .env("DTM_CACHE", tmp.path().join("empty-cache"))
        .output()
        .unwrap();
    let e = failure(&out_run);
    assert!(e.contains("scripts/fetch-models.sh minilm"), "{e}");
    assert!(!out.exists());
}

#[test]
fn help_explains_the_outputs() {
    let help = ok(&trainer(&["disperse", "--help"]));
    for needle in [
        "portion-1.jsonl",
        "assignments.json",
        "random",
        "kmeans",
        "--embed",
        "--encoder",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
