//! Deita's diversity filter (the "Repr Filter", score-first and diversity-aware): walk the
//! candidates from the highest score down and keep one only when its cosine similarity to every
//! record kept so far is at most a threshold (Deita's default 0.9), until enough are kept.
//!
//! Deita compares candidates one at a time by default (batch size 1); that greedy walk is what
//! this does. Its batched variant also drops a candidate close to an earlier candidate of the
//! same batch even when that one was dropped itself, which is an artefact of batching, not the
//! method. The embeddings come from a file (one vector per record) so that any encoder can be
//! used: Deita embeds with the last hidden state of a causal LM; `trainer embed`'s sentence
//! encoder is another choice.

use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use super::SelectError;

/// Unit-length vectors, one per record, row after row.
pub struct Embeddings {
    dim: usize,
    rows: Vec<f32>,
}

impl Embeddings {
    /// Normalises each vector; a zero, non-finite or ragged vector is refused.
    pub fn from_vectors(vectors: &[Vec<f64>]) -> Result<Self, String> {
        let dim = vectors.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err("no vectors (or empty ones)".into());
        }
        let mut rows = Vec::with_capacity(vectors.len() * dim);
        for (i, v) in vectors.iter().enumerate() {
            rows.extend(unit(v, dim).map_err(|p| format!("vector {i}: {p}"))?);
        }
        Ok(Self { dim, rows })
    }

    pub fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.rows[i * self.dim..(i + 1) * self.dim]
    }

    /// Cosine similarity of records `a` and `b`.
    pub fn cosine(&self, a: usize, b: usize) -> f32 {
        dot(self.row(a), self.row(b))
    }
}

fn unit(v: &[f64], dim: usize) -> Result<Vec<f32>, String> {
    if v.len() != dim {
        return Err(format!("has {} numbers, the first vector {dim}", v.len()));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err("holds a number that is not finite".into());
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Err("is all zeros (no direction to compare)".into());
    }
    Ok(v.iter().map(|x| (x / norm) as f32).collect())
}

/// Reads `path`: JSONL, line i the embedding of record i, either a JSON array of numbers or an
/// object with an `embedding` array (what `trainer embed` prints). Blank lines are skipped, as in
/// the data file, and there must be exactly `records` vectors.
pub fn read_embeddings(path: &Path, records: usize) -> Result<Embeddings, SelectError> {
    let err = |line: Option<usize>, problem: String| SelectError::Embeddings {
        file: path.to_owned(),
        line,
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| err(None, format!("cannot open: {e}")))?;
    let mut vectors: Vec<Vec<f64>> = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = |p: String| err(Some(i + 1), p);
        let line = line.map_err(|e| at(format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(&line).map_err(|e| at(format!("not valid JSON: {e}")))?;
        let array = match &value {
            Value::Array(a) => a,
            Value::Object(o) => match o.get("embedding") {
                Some(Value::Array(a)) => a,
                _ => return Err(at("an object without an `embedding` list".into())),
            },
            _ => {
                return Err(at(
                    "neither a list of numbers nor {\"embedding\": [...]}".into()
                ))
            }
        };
        let v = array
            .iter()
            .map(Value::as_f64)
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| at("the embedding holds something that is not a number".into()))?;
        let dim = vectors.first().map_or(v.len(), Vec::len);
        unit(&v, dim).map_err(|p| at(format!("the embedding {p}")))?;
        vectors.push(v);
    }
    if vectors.len() != records {
        return Err(err(
            None,
            format!(
                "holds {} embeddings but the data has {records} records (one per record, in file order)",
                vectors.len()
            ),
        ));
    }
    Embeddings::from_vectors(&vectors).map_err(|p| err(None, p))
}

/// Keeps, of `candidates` (best first), each one whose cosine similarity to all those kept before
/// it is at most `threshold`, stopping once `limit` are kept. Returns the kept ones in walk order.
pub fn repr_filter(
    embeddings: &Embeddings,
    candidates: &[usize],
    threshold: f64,
    limit: Option<usize>,
) -> Vec<usize> {
    let threshold = threshold as f32;
    let mut kept: Vec<usize> = Vec::new();
    for &c in candidates {
        if limit.is_some_and(|l| kept.len() >= l) {
            break;
        }
        if kept.iter().all(|&k| embeddings.cosine(c, k) <= threshold) {
            kept.push(c);
        }
    }
    kept
}

/// A dot product the compiler vectorises (eight independent sums).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn angle(deg: f64) -> Vec<f64> {
        let r = deg.to_radians();
        vec![3.0 * r.cos(), 3.0 * r.sin(), 0.0]
    }

    #[test]
    fn greedy_walk_keeps_what_is_not_too_close_to_the_kept() {
        // cos 20° = 0.940, cos 30° = 0.866: with threshold 0.9, vectors 20° apart are duplicates,
        // 30° apart are not.
        let e =
            Embeddings::from_vectors(&[angle(0.0), angle(20.0), angle(30.0), angle(50.0)]).unwrap();
        assert!((e.cosine(0, 2) - 30f32.to_radians().cos()).abs() < 1e-6);
        // 0 kept; 1 is 20° from 0: dropped; 2 is 30° from 0: kept; 3 is 20° from 2: dropped
        // even though it is 50° from 0.
        assert_eq!(repr_filter(&e, &[0, 1, 2, 3], 0.9, None), vec![0, 2]);
        // Walk order matters: starting from 1, both 0 and 2 are within 20°, 3 is 30° from 1.
        assert_eq!(repr_filter(&e, &[1, 0, 2, 3], 0.9, None), vec![1, 3]);
        // The limit stops the walk; a threshold of 1 keeps everything.
        assert_eq!(repr_filter(&e, &[3, 2, 1, 0], 1.0, Some(3)), vec![3, 2, 1]);
    }

    #[test]
    fn embeddings_file_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        std::fs::write(&p, "[1, 0]\n{\"embedding\": [0, 2]}\n\n[0, 0]\n").unwrap();
        let e = read_embeddings(&p, 3).err().unwrap().to_string();
        assert!(e.contains("e.jsonl:4") && e.contains("all zeros"), "{e}");
        std::fs::write(&p, "[1, 0]\n[1, 0, 2]\n").unwrap();
        let e = read_embeddings(&p, 2).err().unwrap().to_string();
        assert!(e.contains("e.jsonl:2") && e.contains("3 numbers"), "{e}");
        std::fs::write(&p, "[1, 0]\n{\"embedding\": [0, 2]}\n").unwrap();
        let e = read_embeddings(&p, 3).err().unwrap().to_string();
        assert!(
            e.contains("holds 2 embeddings") && e.contains("3 records"),
            "{e}"
        );
        let ok = read_embeddings(&p, 2).unwrap();
        assert_eq!(ok.len(), 2);
        assert!(ok.cosine(0, 1).abs() < 1e-7);
    }
}
