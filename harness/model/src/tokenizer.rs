//! Text ↔ token ids, with the special-token facts the request rules need (BOS, EOS, whether BOS
//! is added).

use tokenizers::Tokenizer;

use crate::error::{LoadError, RuntimeError};

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl TextTokenizer {
    pub fn new(
        inner: Tokenizer,
        bos_token_id: Option<u32>,
        eos_token_ids: Vec<u32>,
        add_bos: bool,
    ) -> Self {
        Self {
            inner,
            bos_token_id,
            eos_token_ids,
            add_bos,
        }
    }

    /// Parses a `tokenizer.json`.
    pub fn from_json(text: &str, file: &str) -> Result<Tokenizer, LoadError> {
        text.parse::<Tokenizer>()
            .map_err(|e| LoadError::new(file, format!("not a valid tokenizer.json: {e}")))
    }

    /// Token ids of `text` alone: no BOS, no post-processor.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, RuntimeError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// What the model sees for a document: `encode`, with BOS in front when the tokenizer adds one.
    pub fn encode_document(&self, text: &str) -> Result<Vec<u32>, RuntimeError> {
        let mut ids = self.bos_prefix();
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// `[bos]` when the tokenizer's configuration adds BOS, else empty.
    pub fn bos_prefix(&self) -> Vec<u32> {
        match (self.add_bos, self.bos_token_id) {
            (true, Some(b)) => vec![b],
            _ => Vec::new(),
        }
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, RuntimeError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| RuntimeError::Tokenizer(e.to_string()))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Largest id the tokenizer can produce, plus one.
    pub fn vocab_size(&self) -> usize {
        let added = self
            .inner
            .get_added_tokens_decoder()
            .keys()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        self.inner.get_vocab_size(true).max(added)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}
