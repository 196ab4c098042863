//! The dispersal methods, in one explicit list: the CLI's choices and the names written into
//! `assignments.json` both come from here.

use serde::{Serialize, Serializer};

use super::DisperseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Random,
    KMeans,
}

pub struct MethodInfo {
    pub method: Method,
    /// The name on the command line and in `assignments.json`.
    pub name: &'static str,
    /// Whether the method clusters sentence embeddings (and so needs an encoder).
    pub needs_embeddings: bool,
    pub summary: &'static str,
}

pub const METHODS: &[MethodInfo] = &[
    MethodInfo {
        method: Method::Random,
        name: "random",
        needs_embeddings: false,
        summary: "a seeded permutation cut into K near-equal portions (the paper's main result)",
    },
    MethodInfo {
        method: Method::KMeans,
        name: "kmeans",
        needs_embeddings: true,
        summary: "cosine k-means (k-means++ seeding, restarts) on sentence embeddings",
    },
];

impl Method {
    pub fn info(self) -> &'static MethodInfo {
        METHODS
            .iter()
            .find(|m| m.method == self)
            .expect("every method is listed in METHODS")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn from_name(name: &str) -> Result<Self, DisperseError> {
        METHODS
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.method)
            .ok_or_else(|| DisperseError::UnknownMethod {
                name: name.to_owned(),
                known: names().join(", "),
            })
    }
}

pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

impl Serialize for Method {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for info in METHODS {
            assert_eq!(Method::from_name(info.name).unwrap(), info.method);
            assert_eq!(info.method.name(), info.name);
        }
        let e = Method::from_name("spectral").unwrap_err().to_string();
        assert!(
            e.contains("spectral") && e.contains("random, kmeans"),
            "{e}"
        );
    }
}
