//! How scoring requests are laid out in forward passes.
//!
//! A forward pass costs about the same whether it carries 10 tokens or 300 (every weight is read
//! once per pass), so requests are packed: several questions share a pass, several short
//! sequences share a row, and each sequence sees only its own tokens (see `Segments`). Within a
//! pass:
//!
//! - the *trunk*, the tokens every request of the pass starts with (a few-shot preamble), comes
//!   from the prefix cache, computed once for all passes that share it;
//! - each *unit* (the requests that share their whole context: the choices of one question) is
//!   laid out as its context's remaining tokens, then each request's own tokens, each in a
//!   segment that sees the context but not the other requests;
//! - units fill rows of up to [`ROW_TOKENS`] tokens (a longer unit gets a row of its own), up to
//!   the batch size in rows.
//!
//! Sorted by tokens, neighbouring requests share the longest prefixes. A pass takes the next unit
//! unless that would cut its trunk so far that the tokens neighbours share beyond the trunk
//! (computed once per unit instead of once) exceed a quarter of the pass: a pass ends where a
//! new few-shot preamble starts.

use super::loglikelihood::ScoreRequest;
use super::prefix_cache::common_prefix_len;

/// Tokens a row is filled to before a new row is started.
pub const ROW_TOKENS: usize = 256;

/// One forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    /// Leading tokens shared by every request of the pass, taken from the prefix cache.
    pub trunk: usize,
    /// A request whose first `trunk` tokens are the trunk.
    pub trunk_of: usize,
    pub tokens: Vec<Vec<u32>>,
    pub positions: Vec<Vec<i64>>,
    pub valid: Vec<Vec<bool>>,
    pub segment: Vec<Vec<u32>>,
    pub parent: Vec<Vec<u32>>,
    /// `(request, row, slot)`: the slot of the request's first scored position.
    pub placements: Vec<(usize, usize, usize)>,
}

impl Pass {
    /// Real (not padding) tokens of the pass.
    pub fn forwarded(&self) -> usize {
        self.valid.iter().flatten().filter(|&&v| v).count()
    }

    pub fn padding(&self) -> usize {
        self.valid.iter().flatten().filter(|&&v| !v).count()
    }
}

/// The input position of a request's first scored prediction (its input is `tokens[..len-1]`).
fn first_scored(r: &ScoreRequest) -> usize {
    r.tokens.len() - 1 - r.scored
}

/// The requests (indices) sharing their whole context, neighbours in sorted order.
struct Unit {
    requests: Vec<usize>,
    /// Input tokens before the first scored position, the same for every request of the unit.
    context: usize,
}

impl Unit {
    /// Tokens the unit adds to a row past a trunk of `trunk` tokens.
    fn len(&self, requests: &[ScoreRequest], trunk: usize) -> usize {
        let own: usize = self.requests.iter().map(|&i| requests[i].scored).sum();
        self.context - trunk + own
    }
}

/// Lays out `requests` in passes of at most `rows` rows; `reuse` false shares nothing: no trunk,
/// no shared context, every request's every token computed (still several to a row).
pub fn plan(requests: &[ScoreRequest], rows: usize, reuse: bool) -> Vec<Pass> {
    let rows = rows.max(1);
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| requests[a].tokens.cmp(&requests[b].tokens));
    let context = |i: usize| &requests[i].tokens[..first_scored(&requests[i])];
    let mut units: Vec<Unit> = Vec::new();
    for &i in &order {
        match units.last_mut() {
            // Requests sharing a context join its unit while their own tokens fit a row (with
            // reuse off every request is computed whole, on its own).
            Some(u)
                if reuse
                    && context(u.requests[0]) == context(i)
                    && u.len(requests, u.context) + requests[i].scored <= ROW_TOKENS =>
            {
                u.requests.push(i)
            }
            _ => units.push(Unit {
                requests: vec![i],
                context: first_scored(&requests[i]),
            }),
        }
    }
    // Tokens shared by unit k and unit k + 1 (within both contexts).
    let shared: Vec<usize> = units
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0].requests[0], w[1].requests[0]);
            common_prefix_len(context(a), context(b))
        })
        .collect();

    let mut passes = Vec::new();
    let mut start = 0;
    while start < units.len() {
        let mut end = start + 1;
        let mut layout = pack(
            requests,
            &units[start..end],
            trunk(&units[start..end], &shared[start..], reuse),
            rows,
        )
        .expect("a single unit always fits");
        while end < units.len() {
            let candidate = &units[start..=end];
            let t = trunk(candidate, &shared[start..], reuse);
            let rework: usize = shared[start..end]
                .iter()
                .map(|&s| s.saturating_sub(t))
                .sum();
            let work: usize = candidate.iter().map(|u| u.len(requests, t)).sum();
            if reuse && 4 * rework > work {
                break;
            }
            match pack(requests, candidate, t, rows) {
                Some(l) => layout = l,
                None => break,
            }
            end += 1;
        }
        passes.push(lay_out(requests, &units[start..end], layout));
        start = end;
    }
    passes
}

/// The trunk of a run of units: what all their contexts share (no more than the shortest).
fn trunk(units: &[Unit], shared: &[usize], reuse: bool) -> usize {
    if !reuse {
        return 0;
    }
    let shortest = units.iter().map(|u| u.context).min().unwrap_or(0);
    shared[..units.len() - 1]
        .iter()
        .copied()
        .chain([shortest])
        .min()
        .unwrap_or(0)
}

/// Which units go in which row (first fit, in order), or `None` past `rows` rows.
struct Layout {
    trunk: usize,
    rows: Vec<Vec<usize>>,
}

fn pack(requests: &[ScoreRequest], units: &[Unit], trunk: usize, rows: usize) -> Option<Layout> {
    let mut filled: Vec<(usize, Vec<usize>)> = Vec::new();
    for (k, u) in units.iter().enumerate() {
        let len = u.len(requests, trunk);
        let count = filled.len();
        match filled.iter_mut().find(|(used, _)| used + len <= ROW_TOKENS) {
            Some((used, members)) => {
                *used += len;
                members.push(k);
            }
            None if count < rows => filled.push((len, vec![k])),
            None => return None,
        }
    }
    Some(Layout {
        trunk,
        rows: filled.into_iter().map(|(_, m)| m).collect(),
    })
}

fn lay_out(requests: &[ScoreRequest], units: &[Unit], layout: Layout) -> Pass {
    let trunk = layout.trunk;
    let n = layout.rows.len();
    let mut pass = Pass {
        trunk,
        trunk_of: units[0].requests[0],
        tokens: vec![Vec::new(); n],
        positions: vec![Vec::new(); n],
        valid: vec![Vec::new(); n],
        segment: vec![Vec::new(); n],
        parent: vec![vec![0]; n],
        placements: Vec::new(),
    };
    for (row, members) in layout.rows.iter().enumerate() {
        for &k in members {
            let unit = &units[k];
            let first = unit.requests[0];
            // The context's remaining tokens, in a segment of their own when requests share it.
            let own_parent = if unit.requests.len() > 1 && unit.context > trunk {
                let seg = pass.parent[row].len() as u32;
                pass.parent[row].push(0);
                let tokens = &requests[first].tokens[trunk..unit.context];
                push(&mut pass, row, tokens, trunk, seg);
                seg
            } else {
                0
            };
            for &i in &unit.requests {
                let r = &requests[i];
                let seg = pass.parent[row].len() as u32;
                pass.parent[row].push(own_parent);
                // A request alone in its unit carries its context's remaining tokens itself.
                let from = if own_parent == 0 && unit.requests.len() == 1 {
                    trunk
                } else {
                    unit.context
                };
                let slot = pass.tokens[row].len() + (unit.context - from);
                push(
                    &mut pass,
                    row,
                    &r.tokens[from..r.tokens.len() - 1],
                    from,
                    seg,
                );
                pass.placements.push((i, row, slot));
            }
        }
    }
    let width = pass.tokens.iter().map(Vec::len).max().unwrap_or(0);
    for row in 0..n {
        let pad = width - pass.tokens[row].len();
        pass.tokens[row].extend(std::iter::repeat_n(0, pad));
        pass.positions[row].extend(std::iter::repeat_n(trunk as i64, pad));
        pass.valid[row].extend(std::iter::repeat_n(false, pad));
        pass.segment[row].extend(std::iter::repeat_n(0, pad));
    }
    pass
}

/// Appends `tokens` (input positions from `from`) to a row, in segment `seg`.
fn push(pass: &mut Pass, row: usize, tokens: &[u32], from: usize, seg: u32) {
    pass.tokens[row].extend_from_slice(tokens);
    pass.positions[row].extend((from..from + tokens.len()).map(|p| p as i64));
    pass.valid[row].extend(std::iter::repeat_n(true, tokens.len()));
    pass.segment[row].extend(std::iter::repeat_n(seg, tokens.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tokens: &[u32], scored: usize) -> ScoreRequest {
        ScoreRequest {
            tokens: tokens.to_vec(),
            scored,
        }
    }

    /// Two questions of two choices after a shared preamble [1, 2, 3], laid out by hand.
    #[test]
    fn choices_share_their_question_and_questions_share_the_preamble() {
        let requests = [
            req(&[1, 2, 3, 10, 11, 20], 1),     // question A, choice " 20"
            req(&[1, 2, 3, 10, 11, 21, 22], 2), // question A, choice " 21 22"
            req(&[1, 2, 3, 12, 30], 1),         // question B, choice " 30"
            req(&[1, 2, 3, 12, 31], 1),         // question B, choice " 31"
        ];
        let passes = plan(&requests, 8, true);
        assert_eq!(passes.len(), 1);
        let p = &passes[0];
        assert_eq!(p.trunk, 3);
        assert_eq!(p.tokens.len(), 1, "both questions fit one row");
        // A's context past the trunk is [10] (its last context token 11 is scored input):
        // segment 1; A's choices (inputs [11] and [11, 21]) segments 2 and 3 under it. B's
        // context past the trunk is empty (input [12] is its first scored position), so its
        // choices hang from the trunk: segments 4 and 5.
        assert_eq!(p.tokens[0], vec![10, 11, 11, 21, 12, 12]);
        assert_eq!(p.positions[0], vec![3, 4, 4, 5, 3, 3]);
        assert_eq!(p.segment[0], vec![1, 2, 3, 3, 4, 5]);
        assert_eq!(p.parent[0], vec![0, 0, 1, 1, 0, 0]);
        assert!(p.valid[0].iter().all(|&v| v));
        let mut placed = p.placements.clone();
        placed.sort();
        assert_eq!(placed, vec![(0, 0, 1), (1, 0, 2), (2, 0, 4), (3, 0, 5)]);
        assert_eq!(p.forwarded(), 6);

        // Without reuse nothing is shared: every request is computed whole, on its own.
        let p = &plan(&requests, 8, false)[0];
        assert_eq!(p.trunk, 0);
        assert_eq!(p.forwarded(), 5 + 6 + 4 + 4);
        assert_eq!(
            p.parent[0],
            vec![0; 5],
            "four requests, each its own segment"
        );
    }

    #[test]
    fn rows_fill_up_then_passes() {
        // Twelve unrelated 100-token requests: two fit a row, two rows a pass.
        let requests: Vec<ScoreRequest> = (0..12u32)
            .map(|i| req(&(0..101).map(|t| 1000 * i + t).collect::<Vec<_>>(), 100))
            .collect();
        let passes = plan(&requests, 2, true);
        assert_eq!(passes.len(), 3);
        for p in &passes {
            assert_eq!(p.tokens.len(), 2);
            assert_eq!(p.tokens[0].len(), 200);
            assert_eq!(p.padding(), 0);
        }
        // A request longer than a row gets a row of its own.
        let long = [req(&(0..600).collect::<Vec<_>>(), 599), req(&[5, 6, 7], 1)];
        let passes = plan(&long, 4, true);
        assert_eq!(passes.len(), 1);
        assert_eq!(passes[0].tokens.len(), 2);
        assert_eq!(passes[0].padding(), 599 - 2);
    }

    #[test]
    fn a_new_preamble_starts_a_new_pass() {
        // Two subjects, each a 50-token preamble before three two-token questions with two
        // one-token choices: a pass mixing subjects would compute each preamble once per
        // question.
        let preamble = |s: u32| (0..50).map(|t| 100 * s + t).collect::<Vec<u32>>();
        let mut requests = Vec::new();
        for s in 0..2 {
            for q in 0..3 {
                for c in 0..2 {
                    let mut t = preamble(s);
                    t.extend([9000 + q, 9050 + q, 9100 + c]);
                    requests.push(req(&t, 1));
                }
            }
        }
        let passes = plan(&requests, 8, true);
        assert_eq!(passes.len(), 2);
        for p in &passes {
            assert_eq!(p.trunk, 50);
            // Per question: its first token, then its last token once per choice.
            assert_eq!(p.forwarded(), 3 * 3);
            assert_eq!(p.placements.len(), 6);
        }
    }

    #[test]
    fn a_long_context_keeps_its_choices_in_one_unit() {
        // MMLU-like: a 600-token context (longer than a row) and four one-token choices, two
        // such questions: one pass, each question's context computed once.
        let mut requests = Vec::new();
        for q in 0..2u32 {
            for c in 0..4u32 {
                let mut t: Vec<u32> = (0..550).collect();
                t.extend((0..50).map(|i| 10_000 * (q + 1) + i));
                t.push(90_000 + c);
                requests.push(req(&t, 1));
            }
        }
        let passes = plan(&requests, 8, true);
        assert_eq!(passes.len(), 1);
        assert_eq!(passes[0].trunk, 550);
        // Per question: 49 context tokens past the trunk, then its last token once per choice.
        assert_eq!(passes[0].forwarded(), 2 * (49 + 4));
    }

    #[test]
    fn requests_without_context_are_not_one_unit() {
        // Rolling windows score every token: their contexts are all empty.
        let requests: Vec<ScoreRequest> = (0..6u32)
            .map(|i| req(&(0..201).map(|t| 1000 * i + t).collect::<Vec<_>>(), 200))
            .collect();
        let passes = plan(&requests, 8, true);
        assert_eq!(passes.len(), 1);
        assert_eq!(passes[0].tokens.len(), 6, "a row each");
    }
}
