//! The state a decoder keeps between calls: per layer the keys and values of every position seen
//! so far, and per batch row where each cached key sits and whether it is real or padding.
//!
//! Positions are explicit per row, so rows of different lengths, padding in the middle (a shared
//! prefix followed by left-padded suffixes) and prefix sharing all reduce to masks.
//!
//! Keys and values live in buffers that can hold more slots than are in use. A forward pass
//! writes its new keys in place after the cached ones when the buffer has room and no other cache
//! shares it; otherwise it first moves the cached keys into a new buffer (with the room asked for
//! by [`KvCache::reserve`]). Greedy generation reserves its token budget once, so a generated
//! token costs no copy of the cache. Copies of a cache (`clone`, [`KvCache::truncate`]) share the
//! buffers until one of them writes: copy on write, so that a cached prefix never changes under
//! its other users.

use std::sync::Arc;

use candle_core::{Result, Tensor};

/// One layer's keys and values.
#[derive(Clone, Debug)]
struct LayerKv {
    /// `[batch, kv_heads, capacity, head_dim]`, contiguous; slots `..len` are in use.
    k: Tensor,
    v: Tensor,
    len: usize,
    /// One count per cache holding these buffers: writing in place needs it to be 1.
    owners: Arc<()>,
}

impl LayerKv {
    /// The slots in use, `[batch, kv_heads, len, head_dim]` each (views, no copy).
    fn live(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }

    fn capacity(&self) -> usize {
        self.k.dims().get(2).copied().unwrap_or(0)
    }

    fn writable(&self, needed: usize) -> bool {
        Arc::strong_count(&self.owners) == 1 && self.capacity() >= needed
    }

    /// Moves the slots in use into new buffers of `capacity` slots, owned by this cache alone.
    fn reallocate(&mut self, capacity: usize) -> Result<()> {
        let (k, v) = self.live()?;
        self.k = with_room(&k, capacity - self.len)?;
        self.v = with_room(&v, capacity - self.len)?;
        self.owners = Arc::new(());
        Ok(())
    }

    /// Writes `k`, `v` (`[batch, kv_heads, new, head_dim]`) after the slots in use.
    fn append(&mut self, k: &Tensor, v: &Tensor, spare: usize) -> Result<()> {
        let needed = self.len + k.dim(2)?;
        if !self.writable(needed) {
            self.reallocate(needed + spare)?;
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok(())
    }
}

/// `t` (`[batch, heads, n, head_dim]`) followed by `room` zero slots, in a new contiguous buffer.
fn with_room(t: &Tensor, room: usize) -> Result<Tensor> {
    if room == 0 {
        return t.copy();
    }
    let (b, h, _, d) = t.dims4()?;
    let zeros = Tensor::zeros((b, h, room, d), t.dtype(), t.device())?;
    Tensor::cat(&[t, &zeros], 2)
}

#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per layer; `None` before the first call.
    layers: Vec<Option<LayerKv>>,
    /// `[batch][seq]` absolute position of each cached key.
    pub(crate) positions: Vec<Vec<i64>>,
    /// `[batch][seq]` false for padding keys, which no query may see.
    pub(crate) valid: Vec<Vec<bool>>,
    /// Free slots a new buffer is given beyond what it must hold (see [`KvCache::reserve`]).
    spare: usize,
}

impl KvCache {
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            positions: vec![Vec::new(); batch],
            valid: vec![Vec::new(); batch],
            spare: 0,
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

    /// Layer `layer`'s cached keys and values, `[batch, kv_heads, len, head_dim]` each (views);
    /// `None` before the first forward pass.
    pub fn layer(&self, layer: usize) -> Result<Option<(Tensor, Tensor)>> {
        self.layers[layer].as_ref().map(LayerKv::live).transpose()
    }

    /// Makes room for `additional` more slots per row, so that the next forward passes adding
    /// that many write in place; buffers allocated later keep that much room as well.
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        self.spare = additional;
        for layer in self.layers.iter_mut().flatten() {
            let needed = layer.len + additional;
            if !layer.writable(needed) {
                layer.reallocate(needed)?;
            }
        }
        Ok(())
    }

    /// Free slots per row that the next forward passes can write into without a copy.
    pub fn room(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                Some(l) if Arc::strong_count(&l.owners) == 1 => l.capacity() - l.len,
                Some(_) => 0,
                None => self.spare,
            })
            .min()
            .unwrap_or(0)
    }

    /// The first `n` key slots of every row (a shared prefix cut back to its common part). Shares
    /// the buffers until either cache writes.
    pub fn truncate(&self, n: usize) -> Result<Self> {
        if n > self.len() {
            candle_core::bail!("cannot cut a cache of {} slots to {n}", self.len());
        }
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|l| LayerKv {
                    len: n.min(l.len),
                    ..l.clone()
                })
            })
            .collect();
        Ok(Self {
            layers,
            positions: self.positions.iter().map(|p| p[..n].to_vec()).collect(),
            valid: self.valid.iter().map(|v| v[..n].to_vec()).collect(),
            spare: self.spare,
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
            .map(|l| {
                l.as_ref()
                    .map(|l| -> Result<LayerKv> {
                        let (k, v) = l.live()?;
                        Ok(LayerKv {
                            k: k.repeat((batch, 1, 1, 1))?,
                            v: v.repeat((batch, 1, 1, 1))?,
                            len: l.len,
                            owners: Arc::new(()),
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            positions: vec![self.positions[0].clone(); batch],
            valid: vec![self.valid[0].clone(); batch],
            spare: self.spare,
        })
    }

    /// Stacks one-row caches of possibly different lengths into one batch, each row left-padded
    /// with invalid slots: rows that continue different prefixes can then run together.
    pub fn stack_rows(rows: &[KvCache]) -> Result<Self> {
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.batch() != 1) {
            candle_core::bail!(
                "only one-row caches can be stacked (cache {i} has {} rows)",
                r.batch()
            );
        }
        let parts: Vec<(&KvCache, usize)> = rows.iter().map(|r| (r, 0)).collect();
        Self::gather_rows(&parts, 0)
    }

    /// A new batch made of row `row` of each `(cache, row)`, in order: each row's real slots
    /// (its padding dropped), left-padded with invalid slots to a common length, followed by
    /// `spare` free slots. This is how a running batch lets finished rows go and new ones in.
    pub fn gather_rows(parts: &[(&KvCache, usize)], spare: usize) -> Result<Self> {
        let num_layers = parts.first().map_or(0, |(c, _)| c.layers.len());
        if parts.iter().any(|(c, _)| c.layers.len() != num_layers) {
            candle_core::bail!("caches of models with different layer counts cannot be stacked");
        }
        if let Some((c, r)) = parts.iter().find(|(c, r)| *r >= c.batch()) {
            candle_core::bail!("row {r} selected from a cache of {} rows", c.batch());
        }
        // Per part: the slots it keeps.
        let kept: Vec<Vec<usize>> = parts
            .iter()
            .map(|(c, r)| {
                c.valid[*r]
                    .iter()
                    .enumerate()
                    .filter(|(_, &ok)| ok)
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        let width = kept.iter().map(Vec::len).max().unwrap_or(0);
        let template = parts
            .iter()
            .find_map(|(c, _)| c.layers.iter().flatten().next().map(|l| l.k.clone()));
        let layers = match template {
            None => vec![None; num_layers],
            Some(template) => {
                let (_, heads, _, head_dim) = template.dims4()?;
                let zeros = |n: usize| {
                    Tensor::zeros((1, heads, n, head_dim), template.dtype(), template.device())
                };
                // One row of one layer: left padding, the kept slots, the spare room.
                let row = |t: Option<&Tensor>, r: usize, slots: &[usize]| -> Result<Tensor> {
                    let mut pieces = Vec::with_capacity(3);
                    let pad = width - slots.len();
                    match t {
                        None => pieces.push(zeros(width)?),
                        Some(t) => {
                            if pad > 0 {
                                pieces.push(zeros(pad)?);
                            }
                            pieces.push(select_slots(&t.narrow(0, r, 1)?, slots)?);
                        }
                    }
                    if spare > 0 {
                        pieces.push(zeros(spare)?);
                    }
                    Tensor::cat(&pieces, 2)
                };
                (0..num_layers)
                    .map(|layer| {
                        let mut ks = Vec::with_capacity(parts.len());
                        let mut vs = Vec::with_capacity(parts.len());
                        for ((c, r), slots) in parts.iter().zip(&kept) {
                            let live = c.layers[layer].as_ref().map(LayerKv::live).transpose()?;
                            ks.push(row(live.as_ref().map(|(k, _)| k), *r, slots)?);
                            vs.push(row(live.as_ref().map(|(_, v)| v), *r, slots)?);
                        }
                        Ok(Some(LayerKv {
                            k: Tensor::cat(&ks, 0)?,
                            v: Tensor::cat(&vs, 0)?,
                            len: width,
                            owners: Arc::new(()),
                        }))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let rows = |field: &dyn Fn(&KvCache, usize, usize) -> i64| -> Vec<Vec<i64>> {
            parts
                .iter()
                .zip(&kept)
                .map(|((c, r), slots)| {
                    let mut out = vec![0; width - slots.len()];
                    out.extend(slots.iter().map(|&s| field(c, *r, s)));
                    out
                })
                .collect()
        };
        let positions = rows(&|c, r, s| c.positions[r][s]);
        let valid = kept
            .iter()
            .map(|slots| {
                let mut v = vec![false; width - slots.len()];
                v.extend(std::iter::repeat_n(true, slots.len()));
                v
            })
            .collect();
        Ok(Self {
            layers,
            positions,
            valid,
            spare,
        })
    }

    /// Keeps only the given rows (finished generations leave the batch); the room kept for new
    /// slots stays.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.batch()) {
            candle_core::bail!("row {r} selected from a cache of {} rows", self.batch());
        }
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref()
                    .map(|l| -> Result<LayerKv> {
                        let idx = Tensor::from_vec(
                            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                            rows.len(),
                            l.k.device(),
                        )?;
                        Ok(LayerKv {
                            k: l.k.index_select(&idx, 0)?,
                            v: l.v.index_select(&idx, 0)?,
                            len: l.len,
                            owners: Arc::new(()),
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            positions: rows.iter().map(|&r| self.positions[r].clone()).collect(),
            valid: rows.iter().map(|&r| self.valid[r].clone()).collect(),
            spare: self.spare,
        })
    }

    /// Writes a layer's new keys and values after the cached ones; returns all of them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let spare = self.spare;
        let slot = &mut self.layers[layer];
        match slot {
            Some(l) => l.append(&k, &v, spare)?,
            None if spare == 0 => {
                // Nothing to add to: keep the new tensors as they are.
                let len = k.dim(2)?;
                *slot = Some(LayerKv {
                    k: k.contiguous()?,
                    v: v.contiguous()?,
                    len,
                    owners: Arc::new(()),
                });
            }
            None => {
                // The reservation counts from an empty cache.
                let len = k.dim(2)?;
                let room = spare.saturating_sub(len);
                *slot = Some(LayerKv {
                    k: with_room(&k, room)?,
                    v: with_room(&v, room)?,
                    len,
                    owners: Arc::new(()),
                });
            }
        }
        slot.as_ref().expect("just written").live()
    }
}

/// The given slots (dim 2) of a one-row `[1, heads, len, head_dim]` tensor, as a new tensor.
fn select_slots(t: &Tensor, slots: &[usize]) -> Result<Tensor> {
    let Some(&first) = slots.first() else {
        return t.narrow(2, 0, 0);
    };
    if slots.last() == Some(&(first + slots.len() - 1)) {
        // One run of slots: a view.
        return t.narrow(2, first, slots.len());
    }
    let idx = Tensor::from_vec(
        slots.iter().map(|&s| s as u32).collect::<Vec<_>>(),
        slots.len(),
        t.device(),
    )?;
    t.contiguous()?.index_select(&idx, 2)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::KvCache;

    /// `[batch, 1 head, n, 2]` keys whose values say (row, slot): `100·row + slot` and its negative.
    fn keys(batch: usize, n: usize, base: f32) -> Tensor {
        let data: Vec<f32> = (0..batch)
            .flat_map(|r| (0..n).flat_map(move |s| [base + (100 * r + s) as f32, -(s as f32)]))
            .collect();
        Tensor::from_vec(data, (batch, 1, n, 2), &Device::Cpu).unwrap()
    }

    /// What a forward pass does: records the new slots' positions, then appends (values = keys).
    fn put(cache: &mut KvCache, k: Tensor) {
        let n = k.dim(2).unwrap();
        for (p, v) in cache.positions.iter_mut().zip(&mut cache.valid) {
            let start = p.len() as i64;
            p.extend(start..start + n as i64);
            v.extend(std::iter::repeat_n(true, n));
        }
        cache.append(0, k.clone(), k).unwrap();
    }

    fn live_keys(cache: &KvCache) -> Vec<Vec<Vec<f32>>> {
        let (k, _) = cache.layer(0).unwrap().unwrap();
        k.squeeze(1).unwrap().to_vec3().unwrap()
    }

    /// Appending to a cache with reserved room writes into the same buffer (no new allocation)
    /// and reads back exactly what concatenation gives; past the room, one copy makes new room.
    #[test]
    fn in_place_writes_equal_concatenation() {
        let mut cache = KvCache::new(1, 2);
        cache.reserve(6).unwrap();
        let mut reference: Option<Tensor> = None;
        let buffer = |c: &KvCache| c.layers[0].as_ref().unwrap().k.id();
        let mut first = None;
        for (step, n) in [3usize, 1, 2, 1].into_iter().enumerate() {
            let k = keys(2, n, 1000.0 * step as f32);
            let (got, _) = cache.append(0, k.clone(), (&k * 2.0).unwrap()).unwrap();
            let want = match reference.take() {
                None => k,
                Some(r) => Tensor::cat(&[&r, &k], 2).unwrap(),
            };
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            reference = Some(want);
            let id = *first.get_or_insert(buffer(&cache));
            if step < 3 {
                assert_eq!(buffer(&cache), id, "step {step} moved the buffer");
            } else {
                assert_ne!(buffer(&cache), id, "the 7th slot does not fit in 6");
            }
        }
        let layer = cache.layers[0].as_ref().unwrap();
        assert_eq!((layer.len, layer.capacity()), (7, 13));
        assert_eq!(cache.room(), 6);
    }

    #[test]
    fn copies_do_not_see_each_others_writes() {
        let mut a = KvCache::new(1, 1);
        a.reserve(4).unwrap();
        put(&mut a, keys(1, 2, 0.0));
        let mut b = a.truncate(1).unwrap();
        let c = a.clone();
        // b writes at slot 1, where a holds its second key.
        put(&mut b, keys(1, 1, 500.0));
        put(&mut a, keys(1, 1, 900.0));
        assert_eq!(live_keys(&b)[0], vec![vec![0.0, 0.0], vec![500.0, 0.0]]);
        assert_eq!(
            live_keys(&a)[0],
            vec![vec![0.0, 0.0], vec![1.0, -1.0], vec![900.0, 0.0]]
        );
        assert_eq!(live_keys(&c)[0], vec![vec![0.0, 0.0], vec![1.0, -1.0]]);
    }

    #[test]
    fn gather_rows_drops_padding_left_pads_and_keeps_room() {
        // Row 0: three real slots; row 1: one padding slot then two real ones.
        let mut batch = KvCache::new(1, 2);
        batch.positions = vec![vec![0, 1, 2], vec![0, 7, 8]];
        batch.valid = vec![vec![true; 3], vec![false, true, true]];
        batch.append(0, keys(2, 3, 0.0), keys(2, 3, 0.0)).unwrap();
        let mut single = KvCache::new(1, 1);
        single.positions = vec![vec![4]];
        single.valid = vec![vec![true]];
        single
            .append(0, keys(1, 1, 50.0), keys(1, 1, 50.0))
            .unwrap();

        let gathered = KvCache::gather_rows(&[(&batch, 1), (&single, 0), (&batch, 0)], 5).unwrap();
        assert_eq!(gathered.batch(), 3);
        assert_eq!(
            gathered.positions,
            vec![vec![0, 7, 8], vec![0, 0, 4], vec![0, 1, 2]]
        );
        assert_eq!(
            gathered.valid,
            vec![
                vec![false, true, true],
                vec![false, false, true],
                vec![true, true, true]
            ]
        );
        assert_eq!(
            live_keys(&gathered),
            vec![
                vec![vec![0.0, 0.0], vec![101.0, -1.0], vec![102.0, -2.0]],
                vec![vec![0.0, 0.0], vec![0.0, 0.0], vec![50.0, 0.0]],
                vec![vec![0.0, 0.0], vec![1.0, -1.0], vec![2.0, -2.0]],
            ]
        );
        assert_eq!(gathered.room(), 5);
        assert_eq!(gathered.next_positions(), vec![9, 5, 3]);
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let mut two = KvCache::new(1, 2);
        put(&mut two, keys(2, 1, 0.0));
        let e = two.repeat_row(3).unwrap_err().to_string();
        assert!(e.contains("one-row cache"), "{e}");
        let e = KvCache::stack_rows(std::slice::from_ref(&two))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache 0 has 2 rows"), "{e}");
        let e = two.select_rows(&[2]).unwrap_err().to_string();
        assert!(e.contains("row 2"), "{e}");
        let e = KvCache::gather_rows(&[(&two, 5)], 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 5"), "{e}");
        assert!(two.truncate(5).is_err());
    }

    #[test]
    fn select_rows_keeps_the_named_rows_and_their_room() {
        let mut cache = KvCache::new(1, 3);
        cache.positions = vec![vec![0, 1]; 3];
        cache.valid = vec![vec![true; 2]; 3];
        cache.reserve(5).unwrap();
        cache.append(0, keys(3, 2, 0.0), keys(3, 2, 0.0)).unwrap();
        let picked = cache.select_rows(&[2, 0]).unwrap();
        assert_eq!(
            live_keys(&picked),
            vec![
                vec![vec![200.0, 0.0], vec![201.0, -1.0]],
                vec![vec![0.0, 0.0], vec![1.0, -1.0]]
            ]
        );
        assert_eq!(picked.room(), 3);
    }
}
