//! Helpers shared by every benchmark plugin, written once: data readers whose errors name the
//! file and line, the few-shot prompt assembly of PROTOCOL.md §2, multiple-choice scoring
//! (acc / acc_norm), pass@k, and test utilities.

pub mod arc_format;
pub mod code;
pub mod data;
pub mod mc;
pub mod prompt;
pub mod testing;

pub use dtm_plugin_api as api;

/// Python's `str.strip()`: Rust's Unicode whitespace plus the ASCII separators U+001C..U+001F,
/// which Python also counts as whitespace.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The response at `i` as text (for generation requests).
pub fn text_response(responses: &[api::Response], i: usize) -> Result<&str, String> {
    match responses.get(i) {
        Some(api::Response::Text(t)) => Ok(t),
        Some(other) => Err(format!("response {i}: expected text, got {other:?}")),
        None => Err(format!("response {i}: missing ({} given)", responses.len())),
    }
}

/// Look up an item by `doc_id` in a task's document list.
pub fn doc<T>(docs: &[T], doc_id: usize) -> Result<&T, String> {
    docs.get(doc_id)
        .ok_or_else(|| format!("unknown doc_id {doc_id} (task has {})", docs.len()))
}

#[cfg(test)]
mod tests {
    /// The helpers are released with the API they wrap: same version, whose major is the ABI.
    #[test]
    fn versioned_with_the_abi() {
        assert_eq!(
            env!("CARGO_PKG_VERSION_MAJOR").parse::<u32>().unwrap(),
            crate::api::ABI_VERSION
        );
    }

    #[test]
    fn py_strip_matches_python() {
        assert_eq!(super::py_strip(" \t\u{1f}a b\u{a0}\n"), "a b");
    }
}
