//! sentence-transformers' Pooling module: token embeddings of a right-padded batch → one vector
//! per text, by the modes a folder's pooling `config.json` names, concatenated in its order.

use std::path::Path;

use candle_core::{DType, IndexOp, Tensor, D};
use serde::Deserialize;
use serde_json::Value;

use super::EmbedError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// The first token (`[CLS]`).
    Cls,
    /// The element-wise maximum over the text's tokens.
    Max,
    /// The mean over the text's tokens.
    Mean,
    /// The sum over the text's tokens divided by the square root of their number.
    MeanSqrtLen,
    /// The mean weighted by position (1, 2, …), as in SGPT.
    WeightedMean,
    /// The text's last token.
    LastToken,
}

impl PoolMode {
    /// Legacy boolean keys, in the order sentence-transformers concatenates them.
    const LEGACY_KEYS: [(&'static str, PoolMode); 6] = [
        ("pooling_mode_cls_token", PoolMode::Cls),
        ("pooling_mode_max_tokens", PoolMode::Max),
        ("pooling_mode_mean_tokens", PoolMode::Mean),
        ("pooling_mode_mean_sqrt_len_tokens", PoolMode::MeanSqrtLen),
        ("pooling_mode_weightedmean_tokens", PoolMode::WeightedMean),
        ("pooling_mode_lasttoken", PoolMode::LastToken),
    ];

    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "cls" => Self::Cls,
            "max" => Self::Max,
            "mean" => Self::Mean,
            "mean_sqrt_len_tokens" => Self::MeanSqrtLen,
            "weightedmean" => Self::WeightedMean,
            "lasttoken" => Self::LastToken,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    pub modes: Vec<PoolMode>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    /// Newer folders: one mode name or a list of them.
    pooling_mode: Option<Value>,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

impl Pooling {
    pub fn mean() -> Self {
        Self {
            modes: vec![PoolMode::Mean],
        }
    }

    /// Reads a pooling `config.json`, in either the current form (`pooling_mode`) or the legacy
    /// one (`pooling_mode_*_tokens` booleans; none set means mean, as sentence-transformers does).
    pub fn read(path: &Path) -> Result<Self, EmbedError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EmbedError::folder(path, format!("cannot read: {e}")))?;
        let config: PoolingConfig = serde_json::from_str(&text)
            .map_err(|e| EmbedError::folder(path, format!("not valid: {e}")))?;
        let bad = |problem: String| EmbedError::folder(path, problem);
        let modes = match &config.pooling_mode {
            Some(Value::String(name)) => vec![name.as_str()],
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| {
                    n.as_str()
                        .ok_or_else(|| bad(format!("pooling mode {n} is not a string")))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(bad(format!("pooling_mode {other} is not a mode name"))),
            None => {
                let mut modes = Vec::new();
                for (key, mode) in PoolMode::LEGACY_KEYS {
                    if config.rest.get(key).and_then(Value::as_bool) == Some(true) {
                        modes.push(mode);
                    }
                }
                if modes.is_empty() {
                    modes.push(PoolMode::Mean);
                }
                return Ok(Self { modes });
            }
        };
        let modes = modes
            .into_iter()
            .map(|name| {
                PoolMode::from_name(name)
                    .ok_or_else(|| bad(format!("unknown pooling mode {name:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if modes.is_empty() {
            return Err(bad("pooling_mode names no mode".into()));
        }
        Ok(Self { modes })
    }

    /// Pools `tokens` `[batch, seq, hidden]` (f32) of a right-padded batch; `mask` `[batch, seq]`
    /// (f32, 1 for real tokens, 0 for padding); `lengths` the real tokens of each row.
    pub fn forward(
        &self,
        tokens: &Tensor,
        mask: &Tensor,
        lengths: &[usize],
    ) -> candle_core::Result<Tensor> {
        let (batch, seq, hidden) = tokens.dims3()?;
        let mask3 = mask.unsqueeze(D::Minus1)?; // [batch, seq, 1]
        let count = mask3.sum(1)?.clamp(1e-9, f64::INFINITY)?; // [batch, 1]
        let mut parts = Vec::with_capacity(self.modes.len());
        for mode in &self.modes {
            parts.push(match mode {
                PoolMode::Cls => tokens.i((.., 0, ..))?,
                PoolMode::Max => {
                    let neg =
                        Tensor::full(f32::NEG_INFINITY, (batch, seq, hidden), tokens.device())?;
                    mask3
                        .broadcast_as((batch, seq, hidden))?
                        .ne(0f32)?
                        .where_cond(tokens, &neg)?
                        .max(1)?
                }
                PoolMode::Mean => tokens
                    .broadcast_mul(&mask3)?
                    .sum(1)?
                    .broadcast_div(&count)?,
                PoolMode::MeanSqrtLen => tokens
                    .broadcast_mul(&mask3)?
                    .sum(1)?
                    .broadcast_div(&count.sqrt()?)?,
                PoolMode::WeightedMean => {
                    let positions = Tensor::arange(1u32, seq as u32 + 1, tokens.device())?
                        .to_dtype(DType::F32)?
                        .reshape((1, seq, 1))?;
                    let weights = mask3.broadcast_mul(&positions)?;
                    let total = weights.sum(1)?.clamp(1e-9, f64::INFINITY)?;
                    tokens
                        .broadcast_mul(&weights)?
                        .sum(1)?
                        .broadcast_div(&total)?
                }
                PoolMode::LastToken => {
                    let rows = lengths
                        .iter()
                        .enumerate()
                        .map(|(b, &len)| tokens.i((b, len.max(1) - 1, ..)))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Tensor::stack(&rows, 0)?
                }
            });
        }
        Tensor::cat(&parts, D::Minus1)
    }
}

/// Divides each row by its L2 norm (at least 1e-12), as torch's `F.normalize` does.
pub fn normalize_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two texts, three positions, two dimensions; the second text has one real token + padding.
    fn batch() -> (Tensor, Tensor, Vec<usize>) {
        let tokens = Tensor::new(
            &[
                [[1f32, -2.], [3., 4.], [5., 0.]],
                [[2f32, 6.], [100., 100.], [-100., 100.]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1f32, 1., 1.], [1., 0., 0.]], &Device::Cpu).unwrap();
        (tokens, mask, vec![3, 1])
    }

    fn pool(modes: Vec<PoolMode>) -> Vec<Vec<f32>> {
        let (t, m, l) = batch();
        Pooling { modes }
            .forward(&t, &m, &l)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn each_mode_by_hand() {
        use PoolMode::*;
        assert_eq!(pool(vec![Cls]), [[1., -2.], [2., 6.]]);
        assert_eq!(pool(vec![Max]), [[5., 4.], [2., 6.]]);
        assert_eq!(pool(vec![Mean]), [[3., 2. / 3.], [2., 6.]]);
        let s3 = 3f32.sqrt();
        let got = pool(vec![MeanSqrtLen]);
        for (g, w) in got.iter().flatten().zip([9. / s3, 2. / s3, 2., 6.]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        // Weights 1, 2, 3: (1·1 + 2·3 + 3·5)/6, (1·-2 + 2·4 + 0)/6.
        let got = pool(vec![WeightedMean]);
        for (g, w) in got.iter().flatten().zip([22. / 6., 6. / 6., 2., 6.]) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        assert_eq!(pool(vec![LastToken]), [[5., 0.], [2., 6.]]);
        assert_eq!(
            pool(vec![Cls, Mean]),
            [[1., -2., 3., 2. / 3.], [2., 6., 2., 6.]]
        );
    }

    #[test]
    fn normalises_rows() {
        let x = Tensor::new(&[[3f32, 4.], [0., 0.]], &Device::Cpu).unwrap();
        let n: Vec<Vec<f32>> = normalize_rows(&x).unwrap().to_vec2().unwrap();
        assert_eq!(n, [[0.6, 0.8], [0., 0.]]);
    }

    #[test]
    fn reads_both_config_forms() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let read = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Pooling::read(&p)
        };
        use PoolMode::*;
        assert_eq!(
            read(r#"{"pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#)
                .unwrap()
                .modes,
            [Cls, Mean]
        );
        assert_eq!(
            read(r#"{"word_embedding_dimension": 8}"#).unwrap().modes,
            [Mean]
        );
        assert_eq!(
            read(r#"{"pooling_mode": "lasttoken"}"#).unwrap().modes,
            [LastToken]
        );
        assert_eq!(
            read(r#"{"pooling_mode": ["max", "mean"]}"#).unwrap().modes,
            [Max, Mean]
        );
        let e = read(r#"{"pooling_mode": "median"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json") && e.contains("median"), "{e}");
    }
}
