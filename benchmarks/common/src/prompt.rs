//! Few-shot prompt assembly (PROTOCOL.md §2):
//! `description + Σ_shots (text + target_delimiter + target + "\n\n") + text(doc)`.

/// One solved example.
pub struct Shot<'a> {
    pub text: &'a str,
    pub target: &'a str,
}

/// The default delimiter between a prompt and its target / a choice.
pub const TARGET_DELIMITER: &str = " ";
/// The delimiter after each shot.
pub const FEWSHOT_DELIMITER: &str = "\n\n";

/// Build the context of one test item.
pub fn context(
    description: &str,
    shots: &[Shot],
    target_delimiter: &str,
    doc_text: &str,
) -> String {
    let mut s = String::from(description);
    for shot in shots {
        s.push_str(shot.text);
        s.push_str(target_delimiter);
        s.push_str(shot.target);
        s.push_str(FEWSHOT_DELIMITER);
    }
    s.push_str(doc_text);
    s
}

/// A greedy generation request for `context`, stopped by any of `until` or after `max_new_tokens`.
pub fn generate(context: String, until: &[&str], max_new_tokens: usize) -> dtm_plugin_api::Request {
    dtm_plugin_api::Request::GenerateUntil {
        context,
        until: until.iter().map(|s| s.to_string()).collect(),
        max_new_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_in_order() {
        let shots = [
            Shot {
                text: "Q: 1\nA:",
                target: "a",
            },
            Shot {
                text: "Q: 2\nA:",
                target: "b",
            },
        ];
        assert_eq!(
            context("D\n\n", &shots, " ", "Q: 3\nA:"),
            "D\n\nQ: 1\nA: a\n\nQ: 2\nA: b\n\nQ: 3\nA:"
        );
    }
}
