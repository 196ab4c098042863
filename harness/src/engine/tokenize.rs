//! lm-eval's tokenisation rules for (context, continuation) pairs (PROTOCOL.md §1).

use crate::error::RuntimeError;
use crate::tokenizer::TextTokenizer;

/// The ids of a pair: the model reads `context ++ continuation` and scores the continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Trailing whitespace of the context moves to the continuation; the continuation's ids are the
/// tail of the whole encoding after as many ids as the context alone encodes to (so a BPE merge
/// across the boundary is scored the way lm-eval scores it); BOS is prepended when the tokenizer
/// adds one; an empty context becomes BOS (EOS when there is no BOS).
pub fn encode_pair(
    tokenizer: &TextTokenizer,
    context: &str,
    continuation: &str,
) -> Result<EncodedPair, RuntimeError> {
    if context.is_empty() {
        let start = tokenizer
            .bos_token_id()
            .or_else(|| tokenizer.eos_token_ids().first().copied())
            .ok_or_else(|| {
                RuntimeError::Request(
                    "empty context, and the tokenizer has neither BOS nor EOS to stand for it"
                        .into(),
                )
            })?;
        return Ok(EncodedPair {
            context: vec![start],
            continuation: tokenizer.encode(continuation)?,
        });
    }
    let kept = context.trim_end();
    let moved = &context[kept.len()..];
    let whole = tokenizer.encode_document(&format!("{kept}{moved}{continuation}"))?;
    let context_ids = tokenizer.encode_document(kept)?;
    let n = context_ids.len().min(whole.len());
    Ok(EncodedPair {
        context: context_ids,
        continuation: whole[n..].to_vec(),
    })
}
