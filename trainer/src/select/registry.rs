//! Every selection method `trainer select` knows, in one explicit list.
//!
//! A method scores each record with one or more of Deita's prompts; with several, the record's
//! score is their product (Deita's "evol score", complexity × quality).

use super::{complexity, quality};
use crate::data::Record;

/// One prompt a method asks the scorer.
pub struct Part {
    /// The key of this part's score in `scores.jsonl` when a method has several parts.
    pub name: &'static str,
    pub prompt: fn(&Record) -> String,
}

pub const COMPLEXITY: Part = Part {
    name: "complexity",
    prompt: complexity::record_prompt,
};

pub const QUALITY: Part = Part {
    name: "quality",
    prompt: quality::record_prompt,
};

pub struct Method {
    pub name: &'static str,
    pub about: &'static str,
    pub parts: &'static [Part],
}

impl Method {
    /// A record's score from its parts' scores.
    pub fn combine(&self, parts: &[f64]) -> f64 {
        parts.iter().product()
    }
}

pub const PAPER: &str = "Liu et al., 2024, What Makes Good Data for Alignment? (Deita), https://arxiv.org/abs/2312.15685";

pub const METHODS: &[Method] = &[
    Method {
        name: "deita-complexity",
        about: "Deita complexity of the instruction (the paper's Deita baseline)",
        parts: &[COMPLEXITY],
    },
    Method {
        name: "deita-quality",
        about: "Deita quality of the response to the instruction",
        parts: &[QUALITY],
    },
    Method {
        name: "deita-evol",
        about:
            "complexity × quality (Deita's evol score, the default order of its diversity filter)",
        parts: &[COMPLEXITY, QUALITY],
    },
];

pub fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        let mut names = names();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METHODS.len());
        for m in METHODS {
            assert_eq!(find(m.name).unwrap().name, m.name);
        }
        assert!(find("deita").is_none());
    }

    #[test]
    fn evol_score_is_the_product() {
        let evol = find("deita-evol").unwrap();
        assert_eq!(evol.combine(&[2.5, 4.0]), 10.0);
        assert_eq!(find("deita-complexity").unwrap().combine(&[2.5]), 2.5);
    }
}
