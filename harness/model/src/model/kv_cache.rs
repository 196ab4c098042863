//! The state a decoder keeps between calls: per layer the keys and values of every position seen
//! so far, and per batch row where each cached key sits and whether it is real or padding.
//!
//! Positions are explicit per row, so rows of different lengths, padding in the middle (a shared
//! prefix followed by left-padded suffixes) and prefix sharing all reduce to masks.

use candle_core::{Result, Tensor};

#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per layer `(keys, values)`, each `[batch, kv_heads, seq, head_dim]`; `None` before the first call.
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    /// `[batch][seq]` absolute position of each cached key.
    pub(crate) positions: Vec<Vec<i64>>,
    /// `[batch][seq]` false for padding keys, which no query may see.
    pub(crate) valid: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            positions: vec![Vec::new(); batch],
            valid: vec![Vec::new(); batch],
        }
    }

    pub fn batch(&self) -> usize {
        self.positions.len()
    }

    /// Number of cached key slots per row (padding included).
    pub fn len(&self) -> usize {
        self.positions.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next position of each row: one past its last real key.
    pub fn next_positions(&self) -> Vec<i64> {
        self.positions
            .iter()
            .zip(&self.valid)
            .map(|(p, v)| {
                p.iter()
                    .zip(v)
                    .filter(|(_, &ok)| ok)
                    .map(|(&p, _)| p + 1)
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The first `n` key slots of every row (a shared prefix cut back to its common part).
    pub fn truncate(&self, n: usize) -> Result<Self> {
        if n > self.len() {
            candle_core::bail!("cannot cut a cache of {} slots to {n}", self.len());
        }
        let layers = self
            .layers
            .iter()
            .map(|kv| {
                kv.as_ref()
                    .map(|(k, v)| -> Result<(Tensor, Tensor)> {
                        Ok((k.narrow(2, 0, n)?, v.narrow(2, 0, n)?))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            positions: self.positions.iter().map(|p| p[..n].to_vec()).collect(),
            valid: self.valid.iter().map(|v| v[..n].to_vec()).collect(),
        })
    }

    /// Repeats a one-row cache `batch` times, so that a shared prefix is computed once.
    pub fn repeat_row(&self, batch: usize) -> Result<Self> {
        if self.batch() != 1 {
            candle_core::bail!(
                "only a one-row cache can be repeated (this one has {} rows)",
                self.batch()
            );
        }
        let layers = self
            .layers
            .iter()
            .map(|kv| {
                kv.as_ref()
                    .map(|(k, v)| -> Result<(Tensor, Tensor)> {
                        Ok((k.repeat((batch, 1, 1, 1))?, v.repeat((batch, 1, 1, 1))?))
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            positions: vec![self.positions[0].clone(); batch],
            valid: vec![self.valid[0].clone(); batch],
        })
    }

    /// Stacks one-row caches of possibly different lengths into one batch, each row left-padded
    /// with invalid slots: rows that continue different prefixes can then run together.
    pub fn stack_rows(rows: &[KvCache]) -> Result<Self> {
        let num_layers = rows.first().map_or(0, |r| r.layers.len());
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.batch() != 1) {
            candle_core::bail!(
                "only one-row caches can be stacked (cache {i} has {} rows)",
                r.batch()
            );
        }
        if rows.iter().any(|r| r.layers.len() != num_layers) {
            candle_core::bail!("caches of models with different layer counts cannot be stacked");
        }
        let width = rows.iter().map(KvCache::len).max().unwrap_or(0);
        let Some(template) = rows
            .iter()
            .find_map(|r| r.layers.iter().flatten().next().map(|(k, _)| k.clone()))
        else {
            return Ok(Self::new(num_layers, rows.len()));
        };
        let (_, heads, _, head_dim) = template.dims4()?;
        let pad = |t: Option<&Tensor>, len: usize| -> Result<Tensor> {
            let zeros = |n: usize| {
                Tensor::zeros((1, heads, n, head_dim), template.dtype(), template.device())
            };
            match t {
                None => zeros(width),
                Some(t) if len == width => Ok(t.clone()),
                Some(t) => Tensor::cat(&[&zeros(width - len)?, t], 2),
            }
        };
        let layers = (0..num_layers)
            .map(|layer| {
                let mut ks = Vec::with_capacity(rows.len());
                let mut vs = Vec::with_capacity(rows.len());
                for r in rows {
                    let kv = r.layers[layer].as_ref();
                    ks.push(pad(kv.map(|(k, _)| k), r.len())?);
                    vs.push(pad(kv.map(|(_, v)| v), r.len())?);
                }
                Ok(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)))
            })
            .collect::<Result<Vec<_>>>()?;
        let left = |r: &KvCache| width - r.len();
        Ok(Self {
            layers,
            positions: rows
                .iter()
                .map(|r| [vec![0; left(r)], r.positions[0].clone()].concat())
                .collect(),
            valid: rows
                .iter()
                .map(|r| [vec![false; left(r)], r.valid[0].clone()].concat())
                .collect(),
        })
    }

    /// Keeps only the given rows (finished generations leave the batch).
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.batch()) {
            candle_core::bail!("row {r} selected from a cache of {} rows", self.batch());
        }
        let device = self
            .layers
            .iter()
            .flatten()
            .next()
            .map(|(k, _)| k.device().clone());
        let layers = match device {
            None => self.layers.clone(),
            Some(device) => {
                let idx = Tensor::from_vec(
                    rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    rows.len(),
                    &device,
                )?;
                self.layers
                    .iter()
                    .map(|kv| {
                        kv.as_ref()
                            .map(|(k, v)| Ok((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?)))
                            .transpose()
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(Self {
            layers,
            positions: rows.iter().map(|&r| self.positions[r].clone()).collect(),
            valid: rows.iter().map(|&r| self.valid[r].clone()).collect(),
        })
    }

    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let kv = match self.layers[layer].take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.layers[layer] = Some(kv.clone());
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::KvCache;

    /// A one-row, one-layer cache whose keys and values hold `values` (one head, head_dim 1) at
    /// positions `start..`.
    fn row(values: &[f32], start: i64) -> KvCache {
        let mut cache = KvCache::new(1, 1);
        let n = values.len();
        let k = Tensor::from_vec(values.to_vec(), (1, 1, n, 1), &Device::Cpu).unwrap();
        let v = (k.clone() * 10.0).unwrap();
        cache.append(0, k, v).unwrap();
        cache.positions[0] = (start..start + n as i64).collect();
        cache.valid[0] = vec![true; n];
        cache
    }

    fn keys(cache: &KvCache) -> Vec<Vec<f32>> {
        let (k, _) = cache.layers[0].as_ref().unwrap();
        k.squeeze(3).unwrap().squeeze(1).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn stack_rows_left_pads_the_shorter_rows_with_invalid_slots() {
        let stacked = KvCache::stack_rows(&[row(&[1.0, 2.0, 3.0], 0), row(&[7.0], 5)]).unwrap();
        assert_eq!(stacked.batch(), 2);
        assert_eq!(
            keys(&stacked),
            vec![vec![1.0, 2.0, 3.0], vec![0.0, 0.0, 7.0]]
        );
        let (_, v) = stacked.layers[0].as_ref().unwrap();
        assert_eq!(
            v.squeeze(3)
                .unwrap()
                .squeeze(1)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            vec![vec![10.0, 20.0, 30.0], vec![0.0, 0.0, 70.0]]
        );
        assert_eq!(stacked.positions, vec![vec![0, 1, 2], vec![0, 0, 5]]);
        assert_eq!(
            stacked.valid,
            vec![vec![true, true, true], vec![false, false, true]]
        );
        assert_eq!(stacked.next_positions(), vec![3, 6]);
    }

    #[test]
    fn stack_rows_of_empty_caches_is_an_empty_batch() {
        let stacked = KvCache::stack_rows(&[KvCache::new(2, 1), KvCache::new(2, 1)]).unwrap();
        assert_eq!((stacked.batch(), stacked.len()), (2, 0));
    }

    #[test]
    fn select_rows_keeps_the_named_rows_in_the_given_order() {
        let stacked = KvCache::stack_rows(&[
            row(&[1.0, 2.0], 0),
            row(&[3.0, 4.0], 10),
            row(&[5.0, 6.0], 20),
        ])
        .unwrap();
        let picked = stacked.select_rows(&[2, 0]).unwrap();
        assert_eq!(keys(&picked), vec![vec![5.0, 6.0], vec![1.0, 2.0]]);
        assert_eq!(picked.positions, vec![vec![20, 21], vec![0, 1]]);
        assert_eq!(picked.next_positions(), vec![22, 2]);
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let two = KvCache::stack_rows(&[row(&[1.0], 0), row(&[2.0], 0)]).unwrap();
        let e = two.repeat_row(3).unwrap_err().to_string();
        assert!(e.contains("one-row cache"), "{e}");
        let e = KvCache::stack_rows(std::slice::from_ref(&two))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache 0 has 2 rows"), "{e}");
        let e = two.select_rows(&[2]).unwrap_err().to_string();
        assert!(e.contains("row 2"), "{e}");
        assert!(two.truncate(5).is_err());
    }
}
