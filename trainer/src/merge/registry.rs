//! The merge methods: one explicit list. Each entry names its paper, says whether it works on
//! full weights or on task vectors (and so needs a base model), declares its parameters as data
//! (scope, kind, default — mergekit's defaults) and points at its formula.

use std::collections::BTreeMap;

use super::params::{self, Setting, Value};
use super::rescale::Rescale;
use super::{dare, fisher, linear, task_arithmetic, ties};

/// Whether a parameter is set once for the merge or per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    /// Per model; a global setting applies to every model that has none of its own.
    PerModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    Bool,
    /// `none`, `density` or `l1`; mergekit's `true` / `false` mean `l1` / `none`.
    Rescale,
    /// A file, fixed for the whole merge (not per tensor).
    Path,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Default {
    /// Must be given (for every model but the base, when per model).
    Required,
    Number(f64),
    Bool(bool),
    Rescale(Rescale),
}

#[derive(Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub scope: Scope,
    pub kind: Kind,
    pub default: Default,
    pub help: &'static str,
}

/// What a method's formula is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The models' weights θᵢ; no base model takes part.
    Weights,
    /// Task vectors δᵢ = θᵢ − θ₀ against the base θ₀; the result is θ₀ plus the merged vector.
    Deltas,
}

/// The inputs of one output tensor, as a method's formula receives them. Buffers come from
/// the merge's pool and go back to it, so a formula may overwrite its inputs.
pub struct Job<'a> {
    pub tensor: &'a str,
    /// θ₀ (for [`Space::Deltas`]).
    pub base: Option<Vec<f32>>,
    /// θᵢ or δᵢ, one per model, in the order of the merge's models.
    pub inputs: Vec<Vec<f32>>,
    /// The models' diagonal Fisher values for this tensor (Fisher averaging only).
    pub fishers: Vec<Vec<f32>>,
    pub params: &'a TensorParams,
    /// The merge's seed (DARE).
    pub seed: u64,
    /// Where the merged tensor goes (as long as the inputs, contents unspecified).
    pub out: Vec<f32>,
}

impl Job<'_> {
    pub(crate) fn inputs(&self) -> Vec<&[f32]> {
        self.inputs.iter().map(Vec::as_slice).collect()
    }

    pub(crate) fn base(&self) -> Result<&[f32], String> {
        self.base
            .as_deref()
            .ok_or_else(|| "this method needs the base tensor".to_owned())
    }
}

/// A formula: fills `job.out`, or says why this tensor cannot be merged.
pub type Kernel = fn(&mut Job<'_>) -> Result<(), String>;

pub struct MethodInfo {
    pub name: &'static str,
    pub title: &'static str,
    pub paper: &'static str,
    pub summary: &'static str,
    pub space: Space,
    pub params: &'static [ParamDef],
    pub kernel: Kernel,
}

impl std::fmt::Debug for MethodInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

const WEIGHT: ParamDef = ParamDef {
    name: "weight",
    scope: Scope::PerModel,
    kind: Kind::Number,
    default: Default::Required,
    help: "the model's weight",
};
const DENSITY: ParamDef = ParamDef {
    name: "density",
    scope: Scope::PerModel,
    kind: Kind::Number,
    default: Default::Number(1.0),
    help: "fraction of each task vector kept, in (0, 1]",
};
const LAMBDA: ParamDef = ParamDef {
    name: "lambda",
    scope: Scope::Global,
    kind: Kind::Number,
    default: Default::Number(1.0),
    help: "scale of the merged task vector",
};
const INT8_MASK: ParamDef = ParamDef {
    name: "int8_mask",
    scope: Scope::Global,
    kind: Kind::Bool,
    default: Default::Bool(false),
    help: "accepted for mergekit configs; only saves memory there, changes nothing here",
};

const fn normalize(default: bool, help: &'static str) -> ParamDef {
    ParamDef {
        name: "normalize",
        scope: Scope::Global,
        kind: Kind::Bool,
        default: Default::Bool(default),
        help,
    }
}

const fn rescale(default: Rescale) -> ParamDef {
    ParamDef {
        name: "rescale",
        scope: Scope::Global,
        kind: Kind::Rescale,
        default: Default::Rescale(default),
        help: "survivors of sparsification: none, density (× 1/density) or l1 (keep the L1 norm)",
    }
}

const NORMALIZE_SUM: &str = "divide the weighted sum of task vectors by the sum of the weights";
const NORMALIZE_AGREEING: &str =
    "divide each entry by the sum of the weights of the models that agree with the elected sign";

/// Every method, in the order `--help` lists them.
pub static METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "linear",
        title: "Linear (model soup)",
        paper: "https://arxiv.org/abs/2203.05482",
        summary: "Σ wᵢθᵢ, divided by Σ wᵢ unless normalize is false",
        space: Space::Weights,
        params: &[WEIGHT, normalize(true, "divide by the sum of the weights")],
        kernel: linear::kernel,
    },
    MethodInfo {
        name: "task_arithmetic",
        title: "Task Arithmetic",
        paper: "https://arxiv.org/abs/2212.04089",
        summary: "θ₀ + λ·Σ wᵢδᵢ",
        space: Space::Deltas,
        params: &[WEIGHT, normalize(false, NORMALIZE_SUM), LAMBDA, INT8_MASK],
        kernel: task_arithmetic::kernel,
    },
    MethodInfo {
        name: "ties",
        title: "TIES",
        paper: "https://arxiv.org/abs/2306.01708",
        summary: "trim each δᵢ to its top-density entries by magnitude, elect the sign of Σ wᵢδᵢ, \
                  average the agreeing entries weighted by w; θ₀ + λ·result",
        space: Space::Deltas,
        params: &[
            WEIGHT,
            DENSITY,
            normalize(true, NORMALIZE_AGREEING),
            rescale(Rescale::None),
            LAMBDA,
            INT8_MASK,
        ],
        kernel: ties::kernel,
    },
    MethodInfo {
        name: "dare_linear",
        title: "DARE (linear)",
        paper: "https://arxiv.org/abs/2311.03099",
        summary: "drop each entry of δᵢ with probability 1 − density, rescale the survivors, \
                  then task arithmetic",
        space: Space::Deltas,
        params: &[
            WEIGHT,
            DENSITY,
            normalize(false, NORMALIZE_SUM),
            rescale(Rescale::Density),
            LAMBDA,
            INT8_MASK,
        ],
        kernel: dare::kernel_linear,
    },
    MethodInfo {
        name: "dare_ties",
        title: "DARE (TIES)",
        paper: "https://arxiv.org/abs/2311.03099",
        summary: "DARE's random drop, then TIES' sign election",
        space: Space::Deltas,
        params: &[
            WEIGHT,
            DENSITY,
            normalize(false, NORMALIZE_AGREEING),
            rescale(Rescale::Density),
            LAMBDA,
            INT8_MASK,
        ],
        kernel: dare::kernel_ties,
    },
    MethodInfo {
        name: "fisher",
        title: "Fisher averaging",
        paper: "https://arxiv.org/abs/2111.09832",
        summary: "Σ wᵢFᵢθᵢ / Σ wᵢFᵢ per entry, F floored (not in mergekit)",
        space: Space::Weights,
        params: &[
            ParamDef {
                default: Default::Number(1.0),
                ..WEIGHT
            },
            ParamDef {
                name: "fisher",
                scope: Scope::PerModel,
                kind: Kind::Path,
                default: Default::Required,
                help:
                    "safetensors file of the model's diagonal Fisher, same tensor names and shapes",
            },
            ParamDef {
                name: "floor",
                scope: Scope::Global,
                kind: Kind::Number,
                default: Default::Number(1e-6),
                help: "Fisher values below this count as this",
            },
        ],
        kernel: fisher::kernel,
    },
];

/// The method called `name`.
pub fn find(name: &str) -> Option<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name)
}

/// The names of all methods, for messages.
pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// A method's parameters resolved for one tensor. Fields a method does not declare keep neutral
/// values (weight 1, density 1, no rescaling) that its formula does not read.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorParams {
    pub weights: Vec<f64>,
    pub densities: Vec<f64>,
    pub normalize: bool,
    pub lambda: f64,
    pub rescale: Rescale,
    pub floor: f64,
}

impl MethodInfo {
    pub fn param(&self, name: &str) -> Option<&'static ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }

    pub fn param_names(&self) -> Vec<&'static str> {
        self.params.iter().map(|p| p.name).collect()
    }

    /// Whether the formula works on task vectors against a base model.
    pub fn needs_base(&self) -> bool {
        self.space == Space::Deltas
    }

    /// Checks settings before any weights are read: every name is a parameter of this method,
    /// given at a scope it has, with values of its kind; each model has the required ones (a
    /// conditional setting that matches no tensor is caught per tensor later).
    pub fn check(
        &self,
        global: &BTreeMap<String, Setting>,
        models: &[&BTreeMap<String, Setting>],
    ) -> Result<(), String> {
        let unknown = |name: &str| {
            format!(
                "{} has no parameter {name:?} (its parameters: {})",
                self.name,
                self.param_names().join(", ")
            )
        };
        for (name, setting) in global {
            let def = self.param(name).ok_or_else(|| unknown(name))?;
            if def.kind == Kind::Path {
                return Err(format!(
                    "{name} is given per model (one file for each model), not globally"
                ));
            }
            check_kind(def, setting).map_err(|e| format!("parameter {name}: {e}"))?;
        }
        for (i, settings) in models.iter().enumerate() {
            for (name, setting) in settings.iter() {
                let def = self.param(name).ok_or_else(|| unknown(name))?;
                if def.scope == Scope::Global {
                    return Err(format!(
                        "{name} is a global parameter of {}; it cannot be set for model {}",
                        self.name,
                        i + 1
                    ));
                }
                check_kind(def, setting)
                    .map_err(|e| format!("model {}: parameter {name}: {e}", i + 1))?;
            }
            for def in self.params {
                if def.scope == Scope::PerModel
                    && def.default == Default::Required
                    && !settings.contains_key(def.name)
                    && !global.contains_key(def.name)
                {
                    return Err(format!(
                        "model {} has no {} (required by {})",
                        i + 1,
                        def.name,
                        self.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The parameters for one tensor (`t`: its layer position, see [`params::layer_position`]).
    pub fn resolve(
        &self,
        global: &BTreeMap<String, Setting>,
        models: &[&BTreeMap<String, Setting>],
        tensor: &str,
        t: f64,
    ) -> Result<TensorParams, String> {
        let global_value = |name: &str| -> Result<Value, String> {
            let def = self.param(name).expect("declared");
            match params::lookup(name, None, global, tensor, t) {
                Some(v) => Ok(v),
                None => default_value(def).ok_or_else(|| format!("no value for {name}")),
            }
        };
        let per_model = |name: &str| -> Result<Vec<f64>, String> {
            let Some(def) = self.param(name) else {
                return Ok(vec![1.0; models.len()]);
            };
            models
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let v = params::lookup(name, Some(m), global, tensor, t)
                        .or_else(|| default_value(def))
                        .ok_or_else(|| format!("model {} has no {name} for this tensor", i + 1))?;
                    as_number(&v).map_err(|e| format!("model {}: {name}: {e}", i + 1))
                })
                .collect()
        };
        let normalize = match self.param("normalize") {
            Some(_) => as_bool(&global_value("normalize")?)?,
            None => false,
        };
        let lambda = match self.param("lambda") {
            Some(_) => as_number(&global_value("lambda")?)?,
            None => 1.0,
        };
        let rescale = match self.param("rescale") {
            Some(_) => as_rescale(&global_value("rescale")?)?,
            None => Rescale::None,
        };
        let floor = match self.param("floor") {
            Some(_) => as_number(&global_value("floor")?)?,
            None => 0.0,
        };
        let densities = per_model("density")?;
        if self.param("density").is_some() {
            if let Some(d) = densities.iter().find(|d| !(**d > 0.0 && **d <= 1.0)) {
                return Err(format!("density {d} is not in (0, 1]"));
            }
        }
        Ok(TensorParams {
            weights: per_model("weight")?,
            densities,
            normalize,
            lambda,
            rescale,
            floor,
        })
    }
}

fn default_value(def: &ParamDef) -> Option<Value> {
    match def.default {
        Default::Required => None,
        Default::Number(x) => Some(Value::Number(x)),
        Default::Bool(b) => Some(Value::Bool(b)),
        Default::Rescale(r) => Some(Value::Text(r.to_string())),
    }
}

fn check_kind(def: &ParamDef, setting: &Setting) -> Result<(), String> {
    match setting {
        Setting::Value(v) => match def.kind {
            Kind::Number => as_number(v).map(|_| ()),
            Kind::Bool => as_bool(v).map(|_| ()),
            Kind::Rescale => as_rescale(v).map(|_| ()),
            Kind::Path => match v {
                Value::Text(_) => Ok(()),
                other => Err(format!("{other} is not a file path")),
            },
        },
        Setting::Gradient(_) => match def.kind {
            Kind::Number => Ok(()),
            _ => Err("a gradient (list of numbers) only fits a numeric parameter".into()),
        },
        Setting::Conditional(entries) => {
            if def.kind == Kind::Path {
                return Err("a file path cannot depend on the tensor".into());
            }
            entries.iter().try_for_each(|c| check_kind(def, &c.value))
        }
    }
}

/// Numbers as Python reads them: `true` is 1.
fn as_number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(x) if x.is_finite() => Ok(*x),
        Value::Number(x) => Err(format!("{x} is not a finite number")),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::Text(s) => Err(format!("{s:?} is not a number")),
    }
}

/// Booleans as Python reads them: a number is true unless 0.
fn as_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(x) => Ok(*x != 0.0),
        Value::Text(s) => match s.as_str() {
            "true" | "True" => Ok(true),
            "false" | "False" => Ok(false),
            _ => Err(format!("{s:?} is not true or false")),
        },
    }
}

fn as_rescale(v: &Value) -> Result<Rescale, String> {
    match v {
        Value::Bool(true) => Ok(Rescale::L1),
        Value::Bool(false) => Ok(Rescale::None),
        Value::Text(s) => s.parse(),
        Value::Number(x) => Err(format!(
            "{x} is not a rescaling (none, density, l1, or true/false as in mergekit)"
        )),
    }
}

/// The `--help` text listing the methods and their parameters.
pub fn help_text() -> String {
    let mut out = String::from("Methods:\n");
    for m in METHODS {
        out.push_str(&format!("  {:<16} {} — {}\n", m.name, m.title, m.summary));
        out.push_str(&format!(
            "  {:<16} {}; paper: {}\n",
            "",
            match m.space {
                Space::Weights => "averages full weights",
                Space::Deltas => "needs a base model",
            },
            m.paper
        ));
        for p in m.params {
            let default = match p.default {
                Default::Required => "required".to_string(),
                Default::Number(x) => format!("default {x}"),
                Default::Bool(b) => format!("default {b}"),
                Default::Rescale(r) => format!("default {r}"),
            };
            let scope = match p.scope {
                Scope::Global => "global",
                Scope::PerModel => "per model",
            };
            out.push_str(&format!(
                "  {:<18} {} ({scope}, {default}): {}\n",
                "", p.name, p.help
            ));
        }
    }
    out
}
