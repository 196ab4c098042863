//! Whether two models' tokenizers are the same for an ensemble: every id names the same token
//! (vocabulary and added tokens, with their special flag) and the same BOS, EOS and add-BOS rule.
//! The engine encodes text once and hands the ids to every member, so this is what makes
//! averaging their distributions id by id meaningful.

use std::collections::BTreeMap;

use crate::tokenizer::TextTokenizer;

/// The first difference between `a` and `b` in words (`None` when they are the same), naming
/// what `a` has before what `b` has.
pub fn difference(a: &TextTokenizer, b: &TextTokenizer) -> Option<String> {
    if a.bos_token_id() != b.bos_token_id() {
        return Some(format!(
            "BOS id {:?} vs {:?}",
            a.bos_token_id(),
            b.bos_token_id()
        ));
    }
    if a.eos_token_ids() != b.eos_token_ids() {
        return Some(format!(
            "EOS ids {:?} vs {:?}",
            a.eos_token_ids(),
            b.eos_token_ids()
        ));
    }
    if a.adds_bos() != b.adds_bos() {
        return Some(format!(
            "BOS added to documents: {} vs {}",
            a.adds_bos(),
            b.adds_bos()
        ));
    }
    let (va, vb) = (by_id(a), by_id(b));
    if let Some(id) = first_differing_id(&va, &vb) {
        let show = |v: &BTreeMap<u32, String>| {
            v.get(&id)
                .map_or_else(|| "absent".to_string(), |t| format!("{t:?}"))
        };
        return Some(format!("token id {id}: {} vs {}", show(&va), show(&vb)));
    }
    let (sa, sb) = (special_ids(a), special_ids(b));
    if sa != sb {
        let id = sa
            .symmetric_difference(&sb)
            .next()
            .expect("the sets differ");
        let which = |s: &std::collections::BTreeSet<u32>| {
            if s.contains(id) {
                "special"
            } else {
                "not special"
            }
        };
        return Some(format!("token id {id}: {} vs {}", which(&sa), which(&sb)));
    }
    None
}

/// Every id the tokenizer knows (added tokens included) with its token.
fn by_id(t: &TextTokenizer) -> BTreeMap<u32, String> {
    t.inner()
        .get_vocab(true)
        .into_iter()
        .map(|(token, id)| (id, token))
        .collect()
}

fn first_differing_id(a: &BTreeMap<u32, String>, b: &BTreeMap<u32, String>) -> Option<u32> {
    a.keys()
        .chain(b.keys())
        .filter(|id| a.get(id) != b.get(id))
        .min()
        .copied()
}

/// Ids of the added tokens marked special (skipped when decoding, never split).
fn special_ids(t: &TextTokenizer) -> std::collections::BTreeSet<u32> {
    t.inner()
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, token)| token.special)
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::difference;
    use crate::tokenizer::TextTokenizer;

    fn word_level(vocab: &str) -> TextTokenizer {
        let json = format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
               "pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,
               "model":{{"type":"WordLevel","vocab":{vocab},"unk_token":"a"}}}}"#
        );
        let inner = TextTokenizer::from_json(&json, "test").unwrap();
        TextTokenizer::new(inner, Some(0), vec![1], false)
    }

    #[test]
    fn the_first_differing_id_is_named_with_both_tokens() {
        let ab = word_level(r#"{"a":0,"b":1}"#);
        assert_eq!(difference(&ab, &word_level(r#"{"a":0,"b":1}"#)), None);
        assert_eq!(
            difference(&ab, &word_level(r#"{"b":0,"a":1}"#)).as_deref(),
            Some(r#"token id 0: "a" vs "b""#)
        );
        assert_eq!(
            difference(&ab, &word_level(r#"{"a":0,"b":1,"c":2}"#)).as_deref(),
            Some(r#"token id 2: absent vs "c""#)
        );
    }
}
