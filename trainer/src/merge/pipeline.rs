//! The streaming merge: check that the inputs agree, plan the output, then for each tensor read
//! it from every input, apply the method's formula and write the result before the next one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::inputs::{is_float, Adapter, ModelRef, TensorFiles};
use super::params::{self, Setting, Value};
use super::registry::{Job, Space};
use super::writer::{self, Planned, ShardedWriter, Staging};
use super::{MergeError, MergeSpec};

/// How far a merge has come (before tensor `done`, of `total`).
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    pub tensor: &'a str,
}

/// What a merge did, for the closing message and the benchmark.
#[derive(Debug, Clone)]
pub struct MergeReport {
    pub method: &'static str,
    pub models: usize,
    pub tensors: usize,
    pub shards: usize,
    /// Tensor bytes read from every input (models, base, Fisher files; adapters not counted).
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    /// The process's peak resident size (VmHWM), where the system reports it.
    pub peak_rss: Option<u64>,
    /// Models given that take no part (the base, listed again, in a task-vector merge).
    pub skipped: Vec<String>,
    /// Fisher averaging: tensors no Fisher file covers, merged by the weights alone.
    pub without_fisher: usize,
}

impl MergeReport {
    /// GB (10⁹ bytes) of input read per second.
    pub fn read_gb_per_s(&self) -> f64 {
        self.bytes_read as f64 / 1e9 / self.seconds.max(1e-9)
    }
}

/// A model opened for reading: its checkpoint (shared with every input of the same folder) and
/// its adapter.
struct Source {
    reference: ModelRef,
    files: Arc<TensorFiles>,
    adapter: Option<Adapter>,
}

impl Source {
    /// θ: the checkpoint's tensor plus the adapter's ΔW where it adapts this weight.
    fn weights(&self, name: &str, out: &mut Vec<f32>, read: &mut u64) -> Result<(), MergeError> {
        *read += self.files.read_f32(name, out)? as u64;
        if let Some(delta) = self.adapter_delta(name)? {
            out.iter_mut().zip(delta).for_each(|(w, d)| *w += d);
        }
        Ok(())
    }

    fn adapter_delta(&self, name: &str) -> Result<Option<Vec<f32>>, MergeError> {
        match &self.adapter {
            Some(a) => a.delta(name),
            None => Ok(None),
        }
    }

    /// δ = θ − θ₀. For an adapter on the base's own checkpoint that is ΔW exactly (no
    /// round trip through θ₀ + ΔW).
    fn delta(
        &self,
        name: &str,
        base: &Source,
        base_values: &[f32],
        out: &mut Vec<f32>,
        read: &mut u64,
    ) -> Result<(), MergeError> {
        if Arc::ptr_eq(&self.files, &base.files) && base.adapter.is_none() {
            out.clear();
            match self.adapter_delta(name)? {
                Some(d) => out.extend_from_slice(&d),
                None => out.resize(base_values.len(), 0.0),
            }
            return Ok(());
        }
        self.weights(name, out, read)?;
        out.iter_mut().zip(base_values).for_each(|(x, b)| *x -= b);
        Ok(())
    }
}

/// Opens each checkpoint folder once, however many inputs use it.
#[derive(Default)]
struct Opened(Vec<(PathBuf, Arc<TensorFiles>)>);

impl Opened {
    fn files(&mut self, folder: &Path) -> Result<Arc<TensorFiles>, MergeError> {
        let key = folder
            .canonicalize()
            .map_err(|e| MergeError::input(folder, format!("cannot open: {e}")))?;
        if let Some((_, f)) = self.0.iter().find(|(k, _)| *k == key) {
            return Ok(f.clone());
        }
        let f = Arc::new(TensorFiles::open(folder)?);
        self.0.push((key, f.clone()));
        Ok(f)
    }

    fn source(&mut self, reference: &ModelRef) -> Result<Source, MergeError> {
        Ok(Source {
            reference: reference.clone(),
            files: self.files(&reference.folder)?,
            adapter: reference
                .adapter
                .as_deref()
                .map(Adapter::load)
                .transpose()?,
        })
    }
}

/// Buffers reused from tensor to tensor: a fresh allocation per tensor would fault in fresh
/// pages every time.
#[derive(Default)]
struct Pool(Vec<Vec<f32>>);

impl Pool {
    fn take(&mut self) -> Vec<f32> {
        self.0.pop().unwrap_or_default()
    }

    fn give(&mut self, v: Vec<f32>) {
        self.0.push(v);
    }
}

/// Runs a merge; `progress` is called before each tensor and once at the end.
pub fn merge(
    spec: &MergeSpec,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<MergeReport, MergeError> {
    let started = Instant::now();
    let method = spec.method;
    if spec.models.is_empty() {
        return Err(MergeError::Spec("no models to merge".into()));
    }
    if method.needs_base() && spec.base.is_none() {
        return Err(MergeError::Spec(format!(
            "{} works on task vectors and needs a base model (--base / base_model)",
            method.name
        )));
    }
    // A model that is the base itself has no task vector; mergekit leaves it out, so do we.
    let (models, skipped): (Vec<_>, Vec<_>) = spec
        .models
        .iter()
        .partition(|m| !(method.needs_base() && Some(&m.model) == spec.base.as_ref()));
    if models.is_empty() {
        return Err(MergeError::Spec(
            "every model given is the base model: nothing to merge".into(),
        ));
    }
    let settings: Vec<&BTreeMap<String, Setting>> = models.iter().map(|m| &m.params).collect();
    method
        .check(&spec.params, &settings)
        .map_err(MergeError::Spec)?;

    let mut opened = Opened::default();
    let base = spec.base.as_ref().map(|b| opened.source(b)).transpose()?;
    let sources = models
        .iter()
        .map(|m| opened.source(&m.model))
        .collect::<Result<Vec<_>, _>>()?;
    let reference = base.as_ref().unwrap_or(&sources[0]).files.clone();
    for s in base.iter().chain(&sources) {
        agree(&reference, &s.files)?;
        if let Some(a) = &s.adapter {
            a.check_against(&s.files)?;
        }
    }
    let fishers = fisher_files(spec, &models, &reference)?;

    let config_donor = spec.base.as_ref().unwrap_or(&models[0].model);
    let tokenizer_donor = spec.tokenizer_source.as_ref().unwrap_or(config_donor);
    check_output(&spec.output, base.iter().chain(&sources), &fishers)?;
    let uses_layers = spec
        .params
        .values()
        .chain(settings.iter().flat_map(|m| m.values()))
        .any(Setting::uses_layers);
    let layers = if uses_layers {
        Some(layer_count(&config_donor.folder)?)
    } else {
        None
    };

    let names: Vec<String> = reference.names().to_vec();
    let plan = names
        .iter()
        .map(|name| {
            let e = reference.entry(name).expect("listed");
            if !is_float(e.dtype) {
                return Err(MergeError::tensor(
                    name,
                    format!(
                        "dtype {:?} is not a floating-point type; only F32, F16 and BF16 tensors can be merged",
                        e.dtype
                    ),
                ));
            }
            Ok(Planned {
                name: name.clone(),
                dtype: spec.out_dtype.map_or(e.dtype, |d| d.dtype()),
                shape: e.shape.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let staging = Staging::new(&spec.output, spec.overwrite)?;
    let mut writer = ShardedWriter::new(staging.path(), plan, spec.shard_size);
    let shards = writer.shard_count();
    let mut pool = Pool::default();
    let mut read = 0u64;
    let mut without_fisher = 0;
    let total = names.len();
    for (i, name) in names.iter().enumerate() {
        progress(Progress {
            done: i,
            total,
            tensor: name,
        });
        let t = params::layer_position(name, layers);
        let tensor_params = method
            .resolve(&spec.params, &settings, name, t)
            .map_err(|e| MergeError::tensor(name, e))?;
        let base_values = match (method.space, &base) {
            (Space::Deltas, Some(b)) => {
                let mut v = pool.take();
                b.weights(name, &mut v, &mut read)?;
                Some(v)
            }
            _ => None,
        };
        let mut inputs = Vec::with_capacity(sources.len());
        for s in &sources {
            let mut v = pool.take();
            match (&base, &base_values) {
                (Some(b), Some(bv)) => s.delta(name, b, bv, &mut v, &mut read)?,
                _ => s.weights(name, &mut v, &mut read)?,
            }
            inputs.push(v);
        }
        let mut fisher_values = Vec::with_capacity(fishers.len());
        if fisher_coverage(name, &fishers)? {
            for f in &fishers {
                let mut v = pool.take();
                read += f.read_f32(name, &mut v)? as u64;
                fisher_values.push(v);
            }
        } else if !fishers.is_empty() {
            without_fisher += 1;
        }
        let mut out = pool.take();
        out.resize(inputs[0].len(), 0.0);
        let mut job = Job {
            tensor: name,
            base: base_values,
            inputs,
            fishers: fisher_values,
            params: &tensor_params,
            seed: spec.seed,
            out,
        };
        (method.kernel)(&mut job).map_err(|e| MergeError::tensor(name, e))?;
        writer.write_next(&job.out)?;
        for v in job
            .base
            .into_iter()
            .chain(job.inputs)
            .chain(job.fishers)
            .chain([job.out])
        {
            pool.give(v);
        }
    }
    progress(Progress {
        done: total,
        total,
        tensor: "",
    });
    let written = writer.finish()?;
    writer::copy_side_files(
        &config_donor.folder,
        &tokenizer_donor.folder,
        staging.path(),
        spec.out_dtype,
    )?;
    staging.commit()?;
    Ok(MergeReport {
        method: method.name,
        models: models.len(),
        tensors: total,
        shards,
        bytes_read: read,
        bytes_written: written,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss: peak_rss(),
        skipped: skipped.iter().map(|m| m.model.to_string()).collect(),
        without_fisher,
    })
}

/// Refuses two inputs whose tensors differ in name, shape or dtype, naming the first tensor that
/// differs.
fn agree(reference: &TensorFiles, other: &TensorFiles) -> Result<(), MergeError> {
    if std::ptr::eq(reference, other) {
        return Ok(());
    }
    let (a, b) = (reference.path.display(), other.path.display());
    for name in reference.names() {
        let r = reference.entry(name).expect("listed");
        let Some(o) = other.entry(name) else {
            return Err(MergeError::tensor(name, format!("in {a} but not in {b}")));
        };
        if r.shape != o.shape {
            return Err(MergeError::tensor(
                name,
                format!("shape {:?} in {a} but {:?} in {b}", r.shape, o.shape),
            ));
        }
        if r.dtype != o.dtype {
            return Err(MergeError::tensor(
                name,
                format!("dtype {:?} in {a} but {:?} in {b}", r.dtype, o.dtype),
            ));
        }
    }
    if let Some(extra) = other.names().iter().find(|n| reference.entry(n).is_none()) {
        return Err(MergeError::tensor(extra, format!("in {b} but not in {a}")));
    }
    Ok(())
}

/// The models' Fisher files (Fisher averaging only), checked against the models' tensors.
fn fisher_files(
    spec: &MergeSpec,
    models: &[&super::ModelInput],
    reference: &TensorFiles,
) -> Result<Vec<TensorFiles>, MergeError> {
    if spec.method.param("fisher").is_none() {
        return Ok(Vec::new());
    }
    models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let path = match m.params.get("fisher").or_else(|| spec.params.get("fisher")) {
                Some(Setting::Value(Value::Text(p))) => PathBuf::from(p),
                _ => {
                    return Err(MergeError::Spec(format!(
                        "model {} ({}) has no Fisher file",
                        i + 1,
                        m.model
                    )))
                }
            };
            let f = TensorFiles::open(&path)?;
            fisher_matches(reference, &f)?;
            Ok(f)
        })
        .collect()
}

/// A Fisher file holds some of the models' tensors (`trainer fisher` writes the adapted matrices
/// only), each with the model's shape; a tensor the models lack is refused.
fn fisher_matches(reference: &TensorFiles, fisher: &TensorFiles) -> Result<(), MergeError> {
    let (a, b) = (reference.path.display(), fisher.path.display());
    for name in fisher.names() {
        let f = fisher.entry(name).expect("listed");
        let problem = match reference.entry(name) {
            None => format!("in the Fisher file {b} but not in the models ({a})"),
            Some(r) if r.shape != f.shape => format!(
                "shape {:?} in the Fisher file {b} but {:?} in {a}",
                f.shape, r.shape
            ),
            Some(_) if !is_float(f.dtype) => {
                format!("dtype {:?} in {b} is not a floating-point type", f.dtype)
            }
            Some(_) => continue,
        };
        return Err(MergeError::tensor(name, problem));
    }
    Ok(())
}

/// Whether the Fisher files weigh `tensor`: all of them hold it, or none does — a tensor none
/// covers (e.g. one LoRA left frozen, equal in every model) is averaged by the weights alone,
/// which is the Fisher formula with every F at the same value. Some but not all is refused: the
/// models' Fisher values would not be comparable.
fn fisher_coverage(tensor: &str, fishers: &[TensorFiles]) -> Result<bool, MergeError> {
    let holding = fishers.iter().filter(|f| f.entry(tensor).is_some()).count();
    if holding == 0 || holding == fishers.len() {
        return Ok(holding > 0);
    }
    let lacking = fishers
        .iter()
        .find(|f| f.entry(tensor).is_none())
        .expect("some file lacks it");
    Err(MergeError::tensor(
        tensor,
        format!(
            "in {holding} of {} Fisher files but not in {}",
            fishers.len(),
            lacking.path.display()
        ),
    ))
}

/// Refuses an output that is one of the inputs.
fn check_output<'a>(
    output: &Path,
    sources: impl Iterator<Item = &'a Source>,
    fishers: &[TensorFiles],
) -> Result<(), MergeError> {
    let Ok(out) = output.canonicalize() else {
        return Ok(());
    };
    for s in sources {
        let paths = [Some(&s.reference.folder), s.reference.adapter.as_ref()];
        if paths
            .into_iter()
            .flatten()
            .any(|p| p.canonicalize().is_ok_and(|p| p == out))
        {
            return Err(MergeError::output(output, "is one of the merge's inputs"));
        }
    }
    if fishers
        .iter()
        .any(|f| f.path.canonicalize().is_ok_and(|p| p == out))
    {
        return Err(MergeError::output(output, "is one of the merge's inputs"));
    }
    Ok(())
}

/// `num_hidden_layers` from a checkpoint's config.json (for settings that vary by layer).
fn layer_count(folder: &Path) -> Result<usize, MergeError> {
    let path = folder.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| MergeError::input(&path, format!("cannot read: {e}")))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| MergeError::input(&path, format!("not valid JSON: {e}")))?;
    config
        .get("num_hidden_layers")
        .or_else(|| config.get("text_config")?.get("num_hidden_layers"))
        .and_then(serde_json::Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| {
            MergeError::input(
                &path,
                "no num_hidden_layers, which settings that vary by layer need",
            )
        })
}

/// The peak resident size of this process (Linux's VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
