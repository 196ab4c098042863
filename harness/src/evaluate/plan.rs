//! `harness score --plan`: what scoring a set of items will cost, counted in tokens without
//! running a model (only its tokenizer), so that a pipeline can estimate hours before it starts.
//!
//! `requested` counts every request's tokens on its own (what a naive evaluator forwards).
//! `forwarded_min` counts the distinct token prefixes of a task's requests: the engine reuses a
//! shared prefix (few-shot preamble, the question before its choices) whenever it meets it again
//! in a batch or its prefix cache, so this is the least it can forward, and close to what it
//! does. Generation requests add up to `max_new_tokens` each (`generated_max`): greedy decoding
//! may stop earlier at a stop string or EOS.

use std::path::Path;

use serde::Serialize;

use dtm_plugin_api::{Item, Request};

use super::error::EvalError;
use crate::checkpoint::open_tokenizer;
use crate::engine::tokenize::encode_pair;
use crate::error::RuntimeError;
use crate::tokenizer::TextTokenizer;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct TaskPlan {
    pub items: usize,
    pub requests: usize,
    pub requested: usize,
    pub forwarded_min: usize,
    pub generate_requests: usize,
    pub generated_max: usize,
}

/// Token counts of scoring `items` with a model of `tokenizer` and context length `max_length`.
pub fn plan(
    tokenizer: &TextTokenizer,
    max_length: usize,
    items: &[Item],
) -> Result<TaskPlan, RuntimeError> {
    let mut sequences: Vec<Vec<u32>> = Vec::new();
    let mut out = TaskPlan {
        items: items.len(),
        ..TaskPlan::default()
    };
    for request in items.iter().flat_map(|i| &i.requests) {
        out.requests += 1;
        let tokens = match request {
            Request::Loglikelihood {
                context,
                continuation,
            } => {
                // As the engine reads it: the last max_length + 1 tokens, of which the last is
                // only a target (never forwarded).
                let pair = encode_pair(tokenizer, context, continuation)?;
                let mut t = pair.context;
                t.extend(pair.continuation);
                let keep = t.len().min(max_length + 1);
                let mut t = t.split_off(t.len() - keep);
                t.pop();
                t
            }
            Request::GenerateUntil {
                context,
                max_new_tokens,
                ..
            } => {
                // As the engine prompts: BOS for an empty context, cut from the left to leave
                // room for the generation.
                out.generate_requests += 1;
                out.generated_max += max_new_tokens;
                let mut t = tokenizer.encode_document(context)?;
                if t.is_empty() {
                    t.extend(
                        tokenizer
                            .bos_token_id()
                            .or_else(|| tokenizer.eos_token_ids().first().copied()),
                    );
                }
                let room = max_length.saturating_sub(*max_new_tokens).max(1);
                if t.len() > room {
                    t.drain(..t.len() - room);
                }
                t
            }
            // Rolling windows never share a prefix with anything else: all of it is forwarded.
            Request::LoglikelihoodRolling { text } => tokenizer.encode_document(text)?,
        };
        out.requested += tokens.len();
        sequences.push(tokens);
    }
    out.forwarded_min = distinct_prefix_tokens(sequences);
    Ok(out)
}

/// The plans of several tasks as one JSON object, `{"model", "max_length", "tasks": {NAME:
/// TaskPlan}, "total": TaskPlan}`: what `harness score --plan` prints.
pub fn report(
    model: &Path,
    max_length: Option<usize>,
    tasks: &[(&str, &[Item])],
) -> Result<serde_json::Value, EvalError> {
    let (tokenizer, config) = open_tokenizer(model)?;
    let max_length = max_length.unwrap_or(config.max_position_embeddings).max(2);
    let mut total = TaskPlan::default();
    let mut by_task = serde_json::Map::new();
    for (name, items) in tasks {
        let p = plan(&tokenizer, max_length, items)?;
        total.items += p.items;
        total.requests += p.requests;
        total.requested += p.requested;
        total.forwarded_min += p.forwarded_min;
        total.generate_requests += p.generate_requests;
        total.generated_max += p.generated_max;
        by_task.insert(name.to_string(), serde_json::json!(p));
    }
    Ok(serde_json::json!({
        "model": model.display().to_string(),
        "max_length": max_length,
        "tasks": by_task,
        "total": total,
    }))
}

/// The number of nodes of the token trie of `sequences`: each sequence costs its length minus
/// the longest prefix it shares with a sequence before it in sorted order.
fn distinct_prefix_tokens(mut sequences: Vec<Vec<u32>>) -> usize {
    sequences.sort_unstable();
    let mut total = 0;
    let mut previous: &[u32] = &[];
    for s in &sequences {
        let shared = s.iter().zip(previous).take_while(|(a, b)| a == b).count();
        total += s.len() - shared;
        previous = s;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_prefixes_count_trie_nodes() {
        // [1,2,3], [1,2,4], [1,5], [7]: trie nodes 1, 1-2, 1-2-3, 1-2-4, 1-5, 7 = 6
        let s = vec![vec![1, 2, 4], vec![7], vec![1, 2, 3], vec![1, 5]];
        assert_eq!(distinct_prefix_tokens(s), 6);
        // A repeated sequence costs nothing the second time.
        assert_eq!(distinct_prefix_tokens(vec![vec![1, 2], vec![1, 2]]), 2);
        assert_eq!(distinct_prefix_tokens(vec![]), 0);
    }
}
