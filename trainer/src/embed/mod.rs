//! Sentence embeddings from a sentence-transformers folder of the BERT family (e.g.
//! all-MiniLM-L6-v2), computed in candle the way sentence-transformers computes them: WordPiece
//! tokens truncated at the folder's `max_seq_length`, the BERT encoder, the folder's pooling, and
//! unit length when `modules.json` lists Normalize. Used to cluster instruction data.

mod folder;
mod pooling;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

pub use folder::FolderSpec;
pub use pooling::{normalize_rows, PoolMode, Pooling};

/// The folder `scripts/fetch-models.sh minilm` fills.
pub const DEFAULT_ENCODER: &str = "all-MiniLM-L6-v2";

/// Texts encoded per forward pass unless the caller says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{path}: {problem}")]
    Folder { path: PathBuf, problem: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EmbedError {
    pub(crate) fn folder(path: &Path, problem: impl Into<String>) -> Self {
        Self::Folder {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// `$DTM_CACHE/models/all-MiniLM-L6-v2`, `$DTM_CACHE` defaulting to `~/.cache/dtm`.
pub fn default_encoder_dir() -> PathBuf {
    let cache = std::env::var_os("DTM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/dtm")
        });
    cache.join("models").join(DEFAULT_ENCODER)
}

pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    spec: FolderSpec,
    pad_id: u32,
    device: Device,
}

impl SentenceEncoder {
    /// Loads a sentence-transformers folder (float32 weights from `model.safetensors`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        let spec = FolderSpec::read(dir)?;
        let config_path = spec.transformer_dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|e| EmbedError::folder(&config_path, format!("cannot read: {e}")))?;
        let config: BertConfig = serde_json::from_str(&config_text).map_err(|e| {
            EmbedError::folder(&config_path, format!("not a BERT configuration: {e}"))
        })?;
        let weights = spec.transformer_dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(EmbedError::folder(
                &weights,
                "missing (only safetensors weights are read)",
            ));
        }
        // SAFETY: the weights file is memory-mapped read-only and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        let model = BertModel::load(vb, &config)
            .map_err(|e| EmbedError::folder(&weights, format!("cannot load BERT weights: {e}")))?;

        let tokenizer_path = spec.transformer_dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| EmbedError::folder(&tokenizer_path, format!("cannot read: {e}")))?;
        // tokenizer.json may carry its own truncation and fixed padding (all-MiniLM-L6-v2's says
        // 128); sentence-transformers overrides both with max_seq_length and per-batch padding.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        Ok(Self {
            model,
            tokenizer,
            pad_id: config.pad_token_id as u32,
            spec,
            device: device.clone(),
        })
    }

    pub fn spec(&self) -> &FolderSpec {
        &self.spec
    }

    /// The token ids a text is embedded from (truncated, `[CLS]` and `[SEP]` included).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let text = self.prepare(text);
        let encoding = self
            .tokenizer
            .encode(text.as_ref(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn prepare<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.spec.do_lower_case {
            text.to_lowercase().into()
        } else {
            text.into()
        }
    }

    /// Embeds one text.
    pub fn encode_one(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        Ok(self.encode(&[text], 1, |_, _| {})?.remove(0))
    }

    /// Embeds texts in batches of `batch_size` (texts of similar length together, so padding is
    /// small), answering in the input order. `progress(done, total)` follows every batch.
    pub fn encode<S: AsRef<str>>(
        &self,
        texts: &[S],
        batch_size: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batch_size = batch_size.max(1);
        let mut ids = Vec::with_capacity(texts.len());
        for text in texts {
            ids.push(self.token_ids(text.as_ref())?);
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        let mut done = 0;
        for chunk in order.chunks(batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, vector) in chunk.iter().zip(self.encode_ids(&rows)?) {
                out[i] = vector;
            }
            done += chunk.len();
            progress(done, texts.len());
        }
        Ok(out)
    }

    /// One forward pass over a right-padded batch of token id rows.
    fn encode_ids(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut mask = Vec::with_capacity(rows.len() * width);
        for row in rows {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(self.pad_id, width - row.len()));
            mask.extend(std::iter::repeat_n(1f32, row.len()));
            mask.extend(std::iter::repeat_n(0f32, width - row.len()));
        }
        let shape = (rows.len(), width);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let type_ids = ids.zeros_like()?;
        let tokens = self.model.forward(&ids, &type_ids, Some(&mask))?;
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        let mut pooled = self.spec.pooling.forward(&tokens, &mask, &lengths)?;
        if self.spec.normalize {
            pooled = normalize_rows(&pooled)?;
        }
        Ok(pooled.to_vec2()?)
    }
}
