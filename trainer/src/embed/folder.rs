//! What a sentence-transformers folder says about itself: which modules run in which order
//! (`modules.json`), how the Transformer's output is pooled (`<pooling dir>/config.json`) and how
//! many tokens a text keeps (`sentence_bert_config.json`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::pooling::Pooling;
use super::EmbedError;

/// The pipeline a folder describes: Transformer → Pooling → (Normalize).
#[derive(Debug, Clone, PartialEq)]
pub struct FolderSpec {
    /// The folder holding `config.json`, `model.safetensors` and `tokenizer.json`.
    pub transformer_dir: PathBuf,
    pub pooling: Pooling,
    /// Whether `modules.json` ends with a Normalize module (unit-length embeddings).
    pub normalize: bool,
    /// Tokens kept per text, `[CLS]` and `[SEP]` included; longer texts are truncated.
    pub max_seq_length: usize,
    /// sentence-transformers lowercases the text itself when this is set.
    pub do_lower_case: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize)]
struct BertSize {
    max_position_embeddings: usize,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EmbedError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EmbedError::folder(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| EmbedError::folder(path, format!("not valid: {e}")))
}

/// The last component of a module's Python type, e.g. `Pooling` for
/// `sentence_transformers.models.Pooling`.
fn short_type(kind: &str) -> &str {
    kind.rsplit('.').next().unwrap_or(kind)
}

impl FolderSpec {
    pub fn read(dir: &Path) -> Result<Self, EmbedError> {
        if !dir.is_dir() {
            return Err(EmbedError::folder(dir, "is not a folder"));
        }
        let modules_path = dir.join("modules.json");
        let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
        let kinds: Vec<&str> = modules.iter().map(|m| short_type(&m.kind)).collect();
        let (transformer, pooling, normalize) = match kinds.as_slice() {
            ["Transformer", "Pooling"] => (&modules[0], &modules[1], false),
            ["Transformer", "Pooling", "Normalize"] => (&modules[0], &modules[1], true),
            _ => {
                return Err(EmbedError::folder(
                    &modules_path,
                    format!(
                        "modules {kinds:?} are not supported (Transformer, Pooling and an \
                         optional Normalize are)"
                    ),
                ))
            }
        };
        let transformer_dir = dir.join(&transformer.path);
        let pooling = Pooling::read(&dir.join(&pooling.path).join("config.json"))?;

        let st_config_path = transformer_dir.join("sentence_bert_config.json");
        let st_config = if st_config_path.exists() {
            read_json(&st_config_path)?
        } else {
            SentenceBertConfig {
                max_seq_length: None,
                do_lower_case: false,
            }
        };
        let size: BertSize = read_json(&transformer_dir.join("config.json"))?;
        // sentence-transformers never feeds more positions than the model has.
        let max_seq_length = st_config
            .max_seq_length
            .unwrap_or(size.max_position_embeddings)
            .min(size.max_position_embeddings);
        if max_seq_length < 2 {
            return Err(EmbedError::folder(
                &st_config_path,
                format!("max_seq_length {max_seq_length} leaves no room for [CLS] and [SEP]"),
            ));
        }
        Ok(Self {
            transformer_dir,
            pooling,
            normalize,
            max_seq_length,
            do_lower_case: st_config.do_lower_case,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn folder(modules: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "modules.json", modules);
        write(
            dir.path(),
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 4, "pooling_mode_mean_tokens": true}"#,
        );
        write(
            dir.path(),
            "config.json",
            r#"{"max_position_embeddings": 128}"#,
        );
        dir
    }

    const THREE: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]"#;

    #[test]
    fn reads_modules_and_caps_the_length_at_the_positions() {
        let dir = folder(THREE);
        write(
            dir.path(),
            "sentence_bert_config.json",
            r#"{"max_seq_length": 256, "do_lower_case": true}"#,
        );
        let spec = FolderSpec::read(dir.path()).unwrap();
        assert!(spec.normalize && spec.do_lower_case);
        assert_eq!(spec.max_seq_length, 128);
        assert_eq!(spec.pooling, Pooling::mean());
    }

    #[test]
    fn without_normalize_or_sentence_config() {
        let two: serde_json::Value = serde_json::from_str(THREE).unwrap();
        let two = serde_json::to_string(&two.as_array().unwrap()[..2]).unwrap();
        let dir = folder(&two);
        let spec = FolderSpec::read(dir.path()).unwrap();
        assert!(!spec.normalize && !spec.do_lower_case);
        assert_eq!(spec.max_seq_length, 128);
    }

    #[test]
    fn unsupported_modules_are_named() {
        let dir = folder(
            r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#,
        );
        let e = FolderSpec::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("modules.json") && e.contains("Dense"), "{e}");
    }
}
