//! Deita's quality scorer prompt (Liu et al., 2024): the scorer reads the instruction and the
//! response.

use crate::data::Record;

/// The prompt of Deita's official quality scorer, verbatim (`hkust-nlp/deita`,
/// `src/deita/selection/scorer/llama_scorer.py`), including the space before ` #Question#:` and
/// before the final `\n`, and the trailing space after which the scorer predicts a bare digit.
pub fn prompt(instruction: &str, response: &str) -> String {
    format!(
        "You are a helpful assistant. Please identify the quality score of the Response corresponding to the Question. \n #Question#:\n{instruction}\n#Response#:\n{response} \n##Quality: "
    )
}

/// The quality prompt of a record: the instruction (with Alpaca's `input`) and its output.
pub fn record_prompt(record: &Record) -> String {
    prompt(&record.full_instruction(), &record.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_and_response_in_their_places() {
        assert_eq!(
            prompt("Q?", "A {x}."),
            "You are a helpful assistant. Please identify the quality score of the Response \
             corresponding to the Question. \n #Question#:\nQ?\n#Response#:\nA {x}. \n##Quality: "
        );
    }
}
