//! A YAML document as a tree whose every value remembers its file and line, so that an error can
//! point at the field that caused it.

use std::path::Path;

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, YamlDataOwned};

use crate::error::{Origin, Result, YamlError};

#[derive(Clone, Debug)]
pub struct Node {
    pub origin: Origin,
    pub value: Value,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in file order, each with the line it is written on.
    Map(Vec<(String, Node)>),
    /// `!tag value`, e.g. lm-eval's `!function utils.process_docs`.
    Tagged(String, Box<Node>),
}

impl Node {
    /// A short name of the value's kind for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Tagged(..) => "a tagged value",
        }
    }

    pub fn as_map(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value as JSON (tags are refused by the caller before this is used).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(v) => J::Array(v.iter().map(Node::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Value::Tagged(_, n) => n.to_json(),
        }
    }
}

/// Parse one YAML file into a [`Node`] tree.
pub fn parse(path: &Path, text: &str) -> Result<Node> {
    let docs = MarkedYamlOwned::load_from_str(text).map_err(|e| {
        YamlError::file(
            path,
            Some(e.marker().line()),
            format!("malformed YAML: {}", e.info()),
        )
    })?;
    let mut docs = docs.into_iter();
    let Some(doc) = docs.next() else {
        return Err(YamlError::file(path, None, "empty YAML file"));
    };
    if docs.next().is_some() {
        return Err(YamlError::file(
            path,
            None,
            "more than one YAML document (`---`); a task file holds one",
        ));
    }
    convert(path, doc)
}

fn convert(path: &Path, n: MarkedYamlOwned) -> Result<Node> {
    let origin = Origin::new(path, n.span.start.line());
    let value = match n.data {
        YamlDataOwned::Value(s) => match s {
            ScalarOwned::Null => Value::Null,
            ScalarOwned::Boolean(b) => Value::Bool(b),
            ScalarOwned::Integer(i) => Value::Int(i),
            ScalarOwned::FloatingPoint(f) => Value::Float(f.into_inner()),
            ScalarOwned::String(s) => Value::Str(s),
        },
        YamlDataOwned::Representation(s, _, _) => Value::Str(s),
        YamlDataOwned::Sequence(v) => Value::Seq(
            v.into_iter()
                .map(|n| convert(path, n))
                .collect::<Result<_>>()?,
        ),
        YamlDataOwned::Mapping(m) => {
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                let key = convert(path, k)?;
                let name = match key.value {
                    Value::Str(s) => s,
                    Value::Int(i) => i.to_string(),
                    Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                    _ => {
                        return Err(YamlError::file(
                            path,
                            Some(key.origin.line),
                            format!("a mapping key must be a string, not {}", key.kind()),
                        ))
                    }
                };
                let mut value = convert(path, v)?;
                // A field's line is the line of its key (a block value starts below it).
                if matches!(value.value, Value::Map(_) | Value::Seq(_)) {
                    value.origin = key.origin.clone();
                }
                out.push((name, value));
            }
            Value::Map(out)
        }
        YamlDataOwned::Tagged(tag, inner) => Value::Tagged(
            format!("{}{}", tag.handle, tag.suffix),
            Box::new(convert(path, *inner)?),
        ),
        YamlDataOwned::Alias(_) => {
            return Err(YamlError::file(
                path,
                Some(origin.line),
                "YAML aliases (`*name`) are not supported",
            ))
        }
        YamlDataOwned::BadValue => {
            return Err(YamlError::file(
                path,
                Some(origin.line),
                "a value YAML cannot read",
            ))
        }
    };
    Ok(Node { origin, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_the_keys() {
        let n = parse(
            Path::new("t.yaml"),
            "task: a\nmetric_list:\n  - metric: acc\ndoc_to_choice: !function utils.x\n",
        )
        .unwrap();
        let m = n.as_map().unwrap();
        assert_eq!(m[0].0, "task");
        assert_eq!(m[0].1.origin.line, 1);
        assert_eq!(m[1].1.origin.line, 2);
        let Value::Seq(items) = &m[1].1.value else {
            panic!()
        };
        assert_eq!(items[0].origin.line, 3);
        assert!(matches!(&m[2].1.value, Value::Tagged(t, _) if t == "!function"));
        assert_eq!(m[2].1.origin.line, 4);
        let e = parse(Path::new("t.yaml"), "a: [1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.yaml:"), "{e}");
    }
}
