//! Records → token sequences with a loss mask (PROTOCOL.md §4).
//!
//! `tokens = tokens(prompt) ++ tokens(output) ++ [EOS]`, where the prompt is the Alpaca template
//! up to and including `### Response:` (with BOS in front when the tokenizer adds one). The loss
//! covers the output tokens and the EOS only.

use dtm_model::error::RuntimeError;
use dtm_model::tokenizer::TextTokenizer;

use super::Record;

/// The Alpaca no-input template (PROTOCOL.md §4); the response is glued straight after it.
pub const ALPACA_PROMPT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

pub fn prompt(record: &Record) -> String {
    ALPACA_PROMPT.replace("{instruction}", &record.full_instruction())
}

/// One training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// Tokens at indices `target_start..` are targets (predicted from the position before).
    pub target_start: usize,
    /// Index of the record in the input file.
    pub record: usize,
}

impl Example {
    pub fn target_tokens(&self) -> usize {
        self.tokens.len() - self.target_start
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TokenizeOptions {
    /// Sequences longer than this are cut at the end.
    pub max_len: usize,
    /// Append EOS to the response (the released code does not).
    pub append_eos: bool,
}

/// The examples, and how many records were dropped because truncation left no response token.
pub fn tokenize(
    records: &[Record],
    tokenizer: &TextTokenizer,
    options: TokenizeOptions,
) -> Result<(Vec<Example>, usize), RuntimeError> {
    let eos = match (options.append_eos, tokenizer.eos_token_ids().first()) {
        (false, _) => None,
        (true, Some(&e)) => Some(e),
        (true, None) => {
            return Err(RuntimeError::Request(
                "the tokenizer has no EOS token to append (use --no-eos)".into(),
            ))
        }
    };
    let mut examples = Vec::with_capacity(records.len());
    let mut dropped = 0;
    for (i, record) in records.iter().enumerate() {
        let mut tokens = tokenizer.encode_document(&prompt(record))?;
        let target_start = tokens.len();
        tokens.extend(tokenizer.encode(&record.output)?);
        tokens.extend(eos);
        tokens.truncate(options.max_len);
        if tokens.len() <= target_start || target_start == 0 {
            dropped += 1;
            continue;
        }
        examples.push(Example {
            tokens,
            target_start,
            record: i,
        });
    }
    Ok((examples, dropped))
}
