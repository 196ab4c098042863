//! Parameter settings as mergekit's configs write them, and how one tensor's value is found.
//!
//! A setting is a value, a gradient (numbers interpolated over the layers) or a list of
//! `{filter, value}` entries (the first whose filter occurs in the tensor's name applies). A
//! model's own setting wins over the global one, which wins over the method's default.

use std::collections::BTreeMap;

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Number(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// One `{filter, value}` entry of a conditional setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditional {
    /// A substring of tensor names; `None` or `"*"` matches every tensor.
    pub filter: Option<String>,
    pub value: Setting,
}

/// A parameter as given for a whole merge or for one model.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    Value(Value),
    /// Numbers over the layers: entry 0 at the first layer, the last entry at the last layer,
    /// linear in between. Tensors outside the layers (embeddings, final norm, head) take the
    /// value at the first layer, as mergekit does.
    Gradient(Vec<f64>),
    Conditional(Vec<Conditional>),
}

impl Setting {
    pub fn number(x: f64) -> Self {
        Self::Value(Value::Number(x))
    }

    pub fn bool(b: bool) -> Self {
        Self::Value(Value::Bool(b))
    }

    pub fn text(s: impl Into<String>) -> Self {
        Self::Value(Value::Text(s.into()))
    }

    /// The value for `tensor` at layer position `t` (0 at the first layer, 1 at the last), or
    /// `None` when no conditional entry matches the tensor.
    pub fn evaluate(&self, tensor: &str, t: f64) -> Option<Value> {
        match self {
            Setting::Value(v) => Some(v.clone()),
            Setting::Gradient(points) => Some(Value::Number(interpolate(points, t))),
            Setting::Conditional(entries) => entries
                .iter()
                .find(|c| match c.filter.as_deref() {
                    None | Some("*") => true,
                    Some(f) => tensor.contains(f),
                })
                .and_then(|c| c.value.evaluate(tensor, t)),
        }
    }

    /// Whether the value depends on the layer (the config then needs `num_hidden_layers`).
    pub fn uses_layers(&self) -> bool {
        match self {
            Setting::Value(_) => false,
            Setting::Gradient(_) => true,
            Setting::Conditional(entries) => entries.iter().any(|c| c.value.uses_layers()),
        }
    }
}

fn interpolate(points: &[f64], t: f64) -> f64 {
    match points.len() {
        0 => f64::NAN,
        1 => points[0],
        n => {
            let scaled = t.clamp(0.0, 1.0) * (n - 1) as f64;
            let i0 = scaled.floor() as usize;
            let i1 = (i0 + 1).min(n - 1);
            let frac = scaled - i0 as f64;
            (1.0 - frac) * points[i0] + frac * points[i1]
        }
    }
}

/// Where a tensor sits among the layers: `i / (layers - 1)` for `…layers.i.…` (1 when there is
/// one layer), 0 for tensors outside the layers.
pub fn layer_position(tensor: &str, layers: Option<usize>) -> f64 {
    let Some(index) = layer_index(tensor) else {
        return 0.0;
    };
    match layers {
        Some(n) if n > 1 => index as f64 / (n - 1) as f64,
        _ => 1.0,
    }
}

/// The `i` of `….layers.i.…` in a tensor name.
pub fn layer_index(tensor: &str) -> Option<usize> {
    let mut parts = tensor.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" {
            if let Some(i) = parts.clone().next().and_then(|n| n.parse().ok()) {
                return Some(i);
            }
        }
    }
    None
}

/// Looks a parameter up for one tensor: the model's own setting, else the global one.
pub fn lookup(
    name: &str,
    model: Option<&BTreeMap<String, Setting>>,
    global: &BTreeMap<String, Setting>,
    tensor: &str,
    t: f64,
) -> Option<Value> {
    model
        .and_then(|m| m.get(name))
        .and_then(|s| s.evaluate(tensor, t))
        .or_else(|| global.get(name).and_then(|s| s.evaluate(tensor, t)))
}
