//! `tokenizer.json` and `tokenizer_config.json` for a tokenizer that came without them (rebuilt
//! from GGUF metadata), such that both transformers and our own reader tokenise as the source did.

use serde_json::{json, Value};

use crate::tokenizer::TextTokenizer;

/// The serialised tokenizer. When BOS is added but the tokenizer's own post-processor does not
/// add it (GGUF states it in metadata), a post-processor that does is added, so that every reader
/// of the folder adds BOS, not only those that honour `add_bos_token`.
pub fn tokenizer_json(tokenizer: &TextTokenizer) -> Result<String, String> {
    let text = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| format!("cannot serialise the tokenizer: {e}"))?;
    let mut json: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if let (true, Some(bos)) = (tokenizer.adds_bos(), tokenizer.bos_token_id()) {
        if json["post_processor"].is_null() {
            let token = tokenizer
                .id_to_token(bos)
                .ok_or_else(|| format!("the BOS id {bos} is not in the vocabulary"))?;
            json["post_processor"] = json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {token.clone(): {"id": token, "ids": [bos], "tokens": [token]}},
            });
        }
    }
    let text = serde_json::to_string_pretty(&json).expect("JSON serialises");
    // Whatever we write must parse again.
    TextTokenizer::from_json(&text, "tokenizer.json").map_err(|e| e.problem)?;
    Ok(text)
}

/// `tokenizer_config.json`: the special tokens by text and whether BOS is added.
pub fn tokenizer_config_json(
    tokenizer: &TextTokenizer,
    max_length: usize,
    pad_token_id: Option<u32>,
    chat_template: Option<&str>,
) -> Value {
    let text = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut c = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": tokenizer.adds_bos(),
        "add_eos_token": false,
        "bos_token": text(tokenizer.bos_token_id()),
        "eos_token": text(tokenizer.eos_token_ids().first().copied()),
        "clean_up_tokenization_spaces": false,
        "model_max_length": max_length,
    });
    if let Some(pad) = text(pad_token_id) {
        c["pad_token"] = json!(pad);
    }
    if let Some(template) = chat_template {
        c["chat_template"] = json!(template);
    }
    c
}
