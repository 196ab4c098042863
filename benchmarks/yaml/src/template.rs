//! Rendering `doc_to_text` / `doc_to_target` / `doc_to_choice` / `description` the way lm-eval
//! does: a value naming a column is that field, anything else is a Jinja template (strict about
//! undefined names, keeping a trailing newline, with a `regex_replace` filter and Python's string
//! methods), printed as Python prints values.

use std::collections::BTreeSet;

use minijinja::value::{Value as JValue, ValueKind};
use minijinja::{Environment, Error as JError, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value};

use crate::config::{ChoiceSpec, TargetSpec, Template};
use crate::pyfmt::{float_repr, literal_eval, py_repr, py_str, str_repr};

/// A document: one record of a split.
pub type Doc = Map<String, Value>;

/// What `doc_to_target` gives for one document.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// An index into the choices.
    Index(usize),
    Text(String),
    /// Several acceptable targets.
    List(Vec<Value>),
}

pub struct Renderer {
    env: Environment<'static>,
    /// The columns of the evaluated split (lm-eval's `features`): a value naming one is a field.
    features: BTreeSet<String>,
}

fn json_to_jinja(v: &Value) -> JValue {
    match v {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => JValue::from(i),
            (_, Some(u)) => JValue::from(u),
            _ => JValue::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => JValue::from(s.as_str()),
        Value::Array(items) => JValue::from(items.iter().map(json_to_jinja).collect::<Vec<_>>()),
        Value::Object(m) => JValue::from(
            m.iter()
                .map(|(k, v)| (k.clone(), json_to_jinja(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
    }
}

/// Python's `repr` of a template value.
fn jinja_repr(v: &JValue) -> Result<String, JError> {
    Ok(match v.kind() {
        ValueKind::Undefined => {
            return Err(JError::new(
                ErrorKind::UndefinedError,
                "undefined value printed",
            ))
        }
        ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => {
            if v.is_integer() {
                v.to_string()
            } else {
                float_repr(f64::try_from(v.clone()).unwrap_or(f64::NAN))
            }
        }
        ValueKind::String => str_repr(v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items = v
                .try_iter()?
                .map(|x| jinja_repr(&x))
                .collect::<Result<Vec<_>, _>>()?;
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let mut parts = Vec::new();
            for k in v.try_iter()? {
                let item = v.get_item(&k)?;
                parts.push(format!("{}: {}", jinja_repr(&k)?, jinja_repr(&item)?));
            }
            format!("{{{}}}", parts.join(", "))
        }
        _ => v.to_string(),
    })
}

/// Python's `str` of a template value (what `{{ x }}` prints).
fn jinja_str(v: &JValue) -> Result<String, JError> {
    match v.as_str() {
        Some(s) if v.kind() == ValueKind::String => Ok(s.to_string()),
        _ => jinja_repr(v),
    }
}

/// Python's `re.sub` replacement syntax (`\1`, `\g<1>`, `\g<name>`) in `regex`'s (`${1}`).
fn python_replacement(repl: &str) -> String {
    let mut out = String::new();
    let mut chars = repl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut n = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        n.push(d);
                        chars.next();
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some('g') => {
                    chars.next();
                    let mut name = String::new();
                    if chars.peek() == Some(&'<') {
                        chars.next();
                        for d in chars.by_ref() {
                            if d == '>' {
                                break;
                            }
                            name.push(d);
                        }
                    }
                    out.push_str(&format!("${{{name}}}"));
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('t') => {
                    chars.next();
                    out.push('\t');
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// lm-eval's custom Jinja filter: `re.sub(pattern, repl, string, count)`.
fn regex_replace(
    s: String,
    pattern: String,
    repl: String,
    count: Option<usize>,
) -> Result<String, JError> {
    let re = regex::Regex::new(&pattern).map_err(|e| {
        JError::new(
            ErrorKind::InvalidOperation,
            format!("regex_replace: bad pattern {pattern:?}: {e}"),
        )
    })?;
    let repl = python_replacement(&repl);
    Ok(re
        .replacen(&s, count.unwrap_or(0), repl.as_str())
        .into_owned())
}

impl Renderer {
    pub fn new(features: BTreeSet<String>) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .expect("valid syntax"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("regex_replace", regex_replace);
        env.set_formatter(|out, _state, value| {
            let s = jinja_str(value)?;
            out.write_str(&s).map_err(JError::from)
        });
        Renderer { env, features }
    }

    pub fn features(&self) -> &BTreeSet<String> {
        &self.features
    }

    fn is_field(&self, t: &Template) -> bool {
        self.features.contains(&t.source)
    }

    /// Render `t` as a Jinja template over `doc`.
    pub fn render(&self, t: &Template, doc: &Doc) -> Result<String, String> {
        let ctx = JValue::from(
            doc.iter()
                .map(|(k, v)| (k.clone(), json_to_jinja(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        );
        self.env.render_str(&t.source, ctx).map_err(|e| {
            let mut msg = format!(
                "{} ({}:{}): {e}",
                t.field,
                t.origin.file.display(),
                t.origin.line
            );
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            msg
        })
    }

    /// `description`: a field's value or the rendered template (lm-eval's `resolve_field`).
    pub fn description(&self, t: &Template, doc: &Doc) -> Result<String, String> {
        if self.is_field(t) {
            return Ok(doc.get(&t.source).map(py_str).unwrap_or_default());
        }
        self.render(t, doc)
    }

    /// `doc_to_text`. A result lm-eval would turn into an integer (multiple-input tasks) is refused.
    pub fn text(&self, t: &Template, doc: &Doc, has_choices: bool) -> Result<String, String> {
        if self.is_field(t) {
            return match doc.get(&t.source) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v @ Value::Number(_)) if has_choices => Err(format!(
                    "doc_to_text field {:?} is a number ({}): lm-eval's multiple-input tasks are not supported",
                    t.source,
                    py_repr(v)
                )),
                Some(v) => Ok(py_str(v)),
                None => Ok("None".into()),
            };
        }
        let s = self.render(t, doc)?;
        if has_choices && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "doc_to_text renders to the integer {s}: lm-eval's multiple-input tasks are not supported"
            ));
        }
        Ok(s)
    }

    /// `doc_to_target` with lm-eval's reading of the result: a field keeps its type; a rendered
    /// integer indexes the choices (when there are choices); a rendered list literal is a list.
    pub fn target(
        &self,
        spec: &TargetSpec,
        doc: &Doc,
        has_choices: bool,
    ) -> Result<Target, String> {
        let t = match spec {
            TargetSpec::Index(i) => return Ok(Target::Index(*i)),
            TargetSpec::List(v) => return Ok(Target::List(v.clone())),
            TargetSpec::Template(t) => t,
        };
        if self.is_field(t) {
            return Ok(match doc.get(&t.source).unwrap_or(&Value::Null) {
                Value::Number(n) if n.as_u64().is_some() => {
                    Target::Index(n.as_u64().unwrap_or(0) as usize)
                }
                // Python's bool is an int.
                Value::Bool(b) => Target::Index(*b as usize),
                Value::Array(v) => Target::List(v.clone()),
                Value::String(s) => Target::Text(s.clone()),
                other => Target::Text(py_str(other)),
            });
        }
        let s = self.render(t, doc)?;
        if has_choices && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Target::Index)
                .map_err(|e| format!("doc_to_target {s:?}: {e}"));
        }
        if s.len() >= 2 && s.starts_with('[') && s.ends_with(']') {
            if let Ok(Value::Array(v)) = literal_eval(&s) {
                return Ok(Target::List(v));
            }
        }
        Ok(Target::Text(s))
    }

    /// `doc_to_choice`: a field holding a list, a template rendering a list literal, or a list.
    pub fn choices(&self, spec: &ChoiceSpec, doc: &Doc) -> Result<Vec<String>, String> {
        let t = match spec {
            ChoiceSpec::List(v) => return Ok(v.clone()),
            ChoiceSpec::Template(t) => t,
        };
        let value = if self.is_field(t) {
            doc.get(&t.source).cloned().unwrap_or(Value::Null)
        } else {
            let s = self.render(t, doc)?;
            literal_eval(&s).map_err(|e| {
                format!("doc_to_choice renders {s:?}, which is not a list literal: {e}")
            })?
        };
        let Value::Array(items) = value else {
            return Err(format!(
                "doc_to_choice gives {}, not a list",
                py_repr(&value)
            ));
        };
        items
            .into_iter()
            .map(|c| match c {
                Value::String(s) => Ok(s),
                other => Err(format!(
                    "doc_to_choice: choice {} is not a string",
                    py_repr(&other)
                )),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Origin;
    use serde_json::json;
    use std::path::Path;

    fn t(src: &str) -> Template {
        Template {
            source: src.into(),
            origin: Origin::new(Path::new("t.yaml"), 3),
            field: "doc_to_text",
        }
    }

    fn doc(v: Value) -> Doc {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn fields_templates_and_python_printing() {
        let d = doc(
            json!({"q": "What?", "n": 2, "x": 1.0, "opts": ["a", "it's"], "flag": true, "label": "1"}),
        );
        let r = Renderer::new(d.keys().cloned().collect());
        assert_eq!(r.text(&t("q"), &d, false).unwrap(), "What?");
        for (src, want) in [
            ("{{q}}", "What?"),
            ("{{n}}", "2"),
            ("{{x}}", "1.0"),
            ("{{flag}}", "True"),
            ("{{opts}}", "['a', \"it's\"]"),
            ("{{none_of_it is defined}}", "False"),
            ("{{ q ~ '\\n' }}\n", "What?\n\n"),
            ("{{ q + '!' }}", "What?!"),
        ] {
            assert_eq!(r.render(&t(src), &d), Ok(want.to_string()), "{src}");
        }
        // Python string methods and lm-eval's regex_replace filter.
        assert_eq!(
            r.render(
                &t("{{ q.lower().strip('?') }}|{{ q | regex_replace('(W)hat', '\\\\1ho') }}"),
                &d
            )
            .unwrap(),
            "what|Who?"
        );
        // Strict: an unknown name is an error naming the field, file and line.
        let e = r.render(&t("{{ missing }}"), &d).unwrap_err();
        assert!(e.starts_with("doc_to_text (t.yaml:3)"), "{e}");
        // Targets: a rendered integer indexes the choices only when there are choices.
        let tt = |s: &str| TargetSpec::Template(t(s));
        assert_eq!(
            r.target(&tt("{{label}}"), &d, true).unwrap(),
            Target::Index(1)
        );
        assert_eq!(
            r.target(&tt("{{label}}"), &d, false).unwrap(),
            Target::Text("1".into())
        );
        assert_eq!(
            r.target(&tt("label"), &d, true).unwrap(),
            Target::Text("1".into())
        );
        assert_eq!(r.target(&tt("n"), &d, false).unwrap(), Target::Index(2));
        assert_eq!(
            r.target(&tt("{{opts}}"), &d, false).unwrap(),
            Target::List(vec![json!("a"), json!("it's")])
        );
        assert_eq!(
            r.target(&tt("[not a list"), &d, false).unwrap(),
            Target::Text("[not a list".into())
        );
        // Choices: a field, a rendered list literal, a constant list.
        let ct = |s: &str| ChoiceSpec::Template(t(s));
        assert_eq!(r.choices(&ct("opts"), &d).unwrap(), vec!["a", "it's"]);
        assert_eq!(r.choices(&ct("{{opts}}"), &d).unwrap(), vec!["a", "it's"]);
        assert_eq!(
            r.choices(&ct("{{[q, 'no']}}"), &d).unwrap(),
            vec!["What?", "no"]
        );
        assert!(r
            .choices(&ct("{{q}}"), &d)
            .unwrap_err()
            .contains("not a list literal"));
        assert!(r
            .text(&t("{{n}}"), &d, true)
            .unwrap_err()
            .contains("multiple-input"));
    }
}
