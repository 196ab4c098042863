//! Deita's complexity scorer prompt (Liu et al., 2024): the scorer reads only the instruction.

use crate::data::Record;

/// The prompt of Deita's official complexity scorer, verbatim (`hkust-nlp/deita`,
/// `src/deita/selection/scorer/llama_scorer.py`): note the two spaces before the second `\n` and
/// the trailing space, after which the scorer predicts a bare digit.
pub fn prompt(instruction: &str) -> String {
    format!(
        "You are a helpful assistant. Please identify the complexity score of the following user query. \n##Query: {instruction}  \n##Complexity: "
    )
}

/// The complexity prompt of a record: its instruction with Alpaca's `input` appended, as the
/// SFT template shows it.
pub fn record_prompt(record: &Record) -> String {
    prompt(&record.full_instruction())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_is_inserted_as_is() {
        // Braces in the instruction are text, not placeholders (Python's str.format does not
        // re-read substituted values either).
        assert_eq!(
            prompt("Sum {a} and 2."),
            "You are a helpful assistant. Please identify the complexity score of the following \
             user query. \n##Query: Sum {a} and 2.  \n##Complexity: "
        );
    }
}
