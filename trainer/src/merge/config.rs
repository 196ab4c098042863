//! mergekit's YAML configuration, for the methods this crate implements, so that a mergekit
//! user's config runs unchanged:
//!
//! ```yaml
//! merge_method: ties
//! base_model: ./base
//! models:
//!   - model: ./math
//!     parameters: {weight: 1.0, density: 0.5}
//!   - model: ./code
//!     parameters:
//!       weight: [0.2, 0.8]            # a gradient over the layers
//!       density: [{filter: mlp, value: 0.7}, {value: 0.5}]
//! parameters: {normalize: true, lambda: 1.0}
//! dtype: bfloat16
//! ```
//!
//! As in mergekit: a model's own parameters win over the top-level ones; a base model missing
//! from `models` still takes part (linear then needs a top-level `weight` for it); `out_dtype`,
//! else `dtype`, is the dtype written (we always compute in f32); `FOLDER+ADAPTER` applies a
//! LoRA adapter; `tokenizer_source` may be `base` or a model. Extensions: a bare adapter folder
//! applies to `base_model`, and `merge_method: fisher` takes `fisher: FILE` per model. What is
//! not implemented (slices, modules, tokenizer merging, chat templates, other methods) is
//! refused by name rather than ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::inputs::ModelRef;
use super::params::{Conditional, Setting, Value};
use super::registry::{self, Space};
use super::{MergeError, MergeSpec, ModelInput};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    merge_method: String,
    #[serde(default)]
    base_model: Option<String>,
    #[serde(default)]
    models: Option<Vec<RawModel>>,
    #[serde(default)]
    parameters: Option<BTreeMap<String, RawSetting>>,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    out_dtype: Option<String>,
    #[serde(default)]
    tokenizer_source: Option<String>,
    // mergekit features not implemented here: parsed only to be refused by name.
    #[serde(default)]
    slices: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    modules: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    tokenizer: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    chat_template: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: String,
    #[serde(default)]
    parameters: Option<BTreeMap<String, RawSetting>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawValue {
    Bool(bool),
    Number(f64),
    Text(String),
    Gradient(Vec<f64>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConditional {
    #[serde(default)]
    filter: Option<String>,
    value: RawValue,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSetting {
    Plain(RawValue),
    Conditional(Vec<RawConditional>),
}

impl From<RawValue> for Setting {
    fn from(v: RawValue) -> Self {
        match v {
            RawValue::Bool(b) => Setting::Value(Value::Bool(b)),
            RawValue::Number(x) => Setting::Value(Value::Number(x)),
            RawValue::Text(s) => Setting::Value(Value::Text(s)),
            RawValue::Gradient(g) => Setting::Gradient(g),
        }
    }
}

impl From<RawSetting> for Setting {
    fn from(s: RawSetting) -> Self {
        match s {
            RawSetting::Plain(v) => v.into(),
            RawSetting::Conditional(entries) => Setting::Conditional(
                entries
                    .into_iter()
                    .map(|c| Conditional {
                        filter: c.filter,
                        value: c.value.into(),
                    })
                    .collect(),
            ),
        }
    }
}

fn settings(raw: Option<BTreeMap<String, RawSetting>>) -> BTreeMap<String, Setting> {
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect()
}

/// Reads a mergekit config into a merge writing to `output` (seed, shard size and overwrite
/// keep their defaults; the caller sets them).
pub fn read(file: &Path, output: PathBuf) -> Result<MergeSpec, MergeError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| MergeError::input(file, format!("cannot read: {e}")))?;
    parse(&text, file, output)
}

/// Like [`read`], from the config's text (`file` names it in messages).
pub fn parse(text: &str, file: &Path, output: PathBuf) -> Result<MergeSpec, MergeError> {
    let fail = |problem: String| MergeError::Config {
        file: file.to_owned(),
        problem,
    };
    let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| {
        fail(match e.location() {
            Some(l) => format!(
                "line {}, column {}: {}",
                l.line(),
                l.column(),
                strip_location(&e.to_string())
            ),
            None => e.to_string(),
        })
    })?;
    for (key, present) in [
        ("slices", raw.slices.is_some()),
        ("modules", raw.modules.is_some()),
        ("tokenizer", raw.tokenizer.is_some()),
        ("chat_template", raw.chat_template.is_some()),
    ] {
        if present {
            return Err(fail(format!(
                "`{key}` is a mergekit feature this merge does not implement (it merges whole \
                 models listed under `models`, keeping one model's tokenizer)"
            )));
        }
    }
    let method = registry::find(&raw.merge_method).ok_or_else(|| {
        fail(format!(
            "merge_method {:?} is not implemented here (methods: {})",
            raw.merge_method,
            registry::names().join(", ")
        ))
    })?;
    let located = |e: MergeError, what: String| match e {
        MergeError::Input { path, problem } => {
            fail(format!("{what}: {}: {problem}", path.display()))
        }
        other => other,
    };
    let base = raw
        .base_model
        .as_deref()
        .map(|b| ModelRef::parse(b, None))
        .transpose()
        .map_err(|e| located(e, "base_model".into()))?;
    let raw_models = raw
        .models
        .ok_or_else(|| fail("no `models` to merge".into()))?;
    if raw_models.is_empty() {
        return Err(fail("`models` is empty".into()));
    }
    let mut models = Vec::new();
    for (i, m) in raw_models.into_iter().enumerate() {
        let model = ModelRef::parse(&m.model, base.as_ref())
            .map_err(|e| located(e, format!("models[{i}]")))?;
        models.push(ModelInput {
            model,
            params: settings(m.parameters),
        });
    }
    let params = settings(raw.parameters);

    // mergekit merges the base model with the others when it is not listed. For a method on
    // full weights that means averaging it (with the top-level weight: mergekit has no other
    // place to find one); a base that only carries adapters stays out.
    if let (Some(base), Space::Weights) = (&base, method.space) {
        let listed = models.iter().any(|m| m.model == *base);
        let only_adapters = models
            .iter()
            .all(|m| m.model.adapter.is_some() && m.model.folder == base.folder);
        if !listed && !only_adapters {
            if !params.contains_key("weight") {
                return Err(fail(format!(
                    "{}: base_model {} is not among `models`, so mergekit would average it too \
                     but finds no weight for it; list it under `models` with a weight, give a \
                     top-level `weight`, or drop base_model",
                    method.name, base
                )));
            }
            models.push(ModelInput {
                model: base.clone(),
                params: BTreeMap::new(),
            });
        }
    }

    let out_dtype = raw
        .out_dtype
        .as_deref()
        .or(raw.dtype.as_deref())
        .map(str::parse)
        .transpose()
        .map_err(fail)?;
    let tokenizer_source =
        match raw.tokenizer_source.as_deref() {
            None => None,
            Some("base") => Some(base.clone().ok_or_else(|| {
                fail("tokenizer_source: base, but there is no base_model".into())
            })?),
            Some("union") => return Err(fail(
                "tokenizer_source: union (merging vocabularies) is not implemented; use `base` \
                 or a model"
                    .into(),
            )),
            Some(m) => Some(
                ModelRef::parse(m, base.as_ref())
                    .map_err(|e| located(e, "tokenizer_source".into()))?,
            ),
        };
    let mut spec = MergeSpec::new(method, output);
    spec.base = base;
    spec.models = models;
    spec.params = params;
    spec.out_dtype = out_dtype;
    spec.tokenizer_source = tokenizer_source;
    let settings: Vec<_> = spec.models.iter().map(|m| &m.params).collect();
    method.check(&spec.params, &settings).map_err(fail)?;
    Ok(spec)
}

/// serde_yaml_ng appends " at line L column C"; the message says where first instead.
fn strip_location(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}
