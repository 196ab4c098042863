//! `trainer merge …`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{ArgAction, Args};
use dtm_trainer::merge::{
    self, config, inputs, lora_factors, registry, MergeReport, MergeSpec, ModelInput, ModelRef,
    OutDtype, Progress, Rescale, Setting,
};
use indicatif::{ProgressBar, ProgressStyle};

const METHOD_OPTIONS: [&str; 11] = [
    "method",
    "base",
    "models",
    "weights",
    "density",
    "lambda",
    "normalize",
    "rescale",
    "fisher",
    "dtype",
    "lora_factors",
];

#[derive(Args)]
#[command(
    about = "Merge models: linear, task arithmetic, TIES, DARE (linear/TIES) or Fisher averaging",
    long_about = "Merge models with linear averaging, task arithmetic, TIES, DARE (linear or TIES) \
        or Fisher averaging, with mergekit's semantics and defaults, or run a mergekit YAML config \
        (--config).\n\n\
        Inputs are Hugging Face folders (sharded or not), PEFT adapter folders applied to --base \
        (merged in ΔW = s·B·A space), or FOLDER+ADAPTER. All inputs must have the same tensor \
        names, shapes and dtypes. The output is a Hugging Face folder (config and tokenizer from \
        the base, else the first model) written tensor by tensor: memory stays at a few copies of \
        the largest tensor whatever the model's size. The peak is printed at the end.",
    after_long_help = registry::help_text()
)]
pub struct MergeArgs {
    /// The merge method.
    #[arg(long, value_parser = registry::names(), required_unless_present = "config")]
    method: Option<String>,
    /// A mergekit YAML config (merge_method, base_model, models[].parameters, parameters, dtype,
    /// tokenizer_source) instead of the method options.
    #[arg(long, conflicts_with_all = METHOD_OPTIONS)]
    config: Option<PathBuf>,
    /// The base model: origin of task vectors, the model that PEFT adapters among --models apply
    /// to, and the donor of config.json and tokenizer. Linear and Fisher do not average it.
    #[arg(long)]
    base: Option<String>,
    /// The models: HF folders, PEFT adapter folders (applied to --base) or FOLDER+ADAPTER.
    #[arg(long, num_args = 1.., required_unless_present = "config")]
    models: Vec<String>,
    /// One weight per model, comma-separated (default 1 each; linear normalises them).
    #[arg(long, value_delimiter = ',')]
    weights: Vec<f64>,
    /// Fraction of each task vector kept (TIES, DARE), in (0, 1]; default 1.
    #[arg(long)]
    density: Option<f64>,
    /// Scale of the merged task vector (task arithmetic, TIES, DARE); default 1.
    #[arg(long)]
    lambda: Option<f64>,
    /// Divide by the sum of the weights (default per method as in mergekit: linear and TIES
    /// true, task arithmetic and DARE false).
    #[arg(long, action = ArgAction::Set, value_name = "true|false")]
    normalize: Option<bool>,
    /// Survivors of sparsification: none, density (× 1/density, the DARE paper; DARE's
    /// default) or l1 (keep the L1 norm, as current mergekit's DARE does).
    #[arg(long)]
    rescale: Option<Rescale>,
    /// Seed of DARE's random drops (the same seed gives the same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One Fisher file per model, comma-separated (fisher): safetensors of diagonal Fisher
    /// values with the model's tensor names and shapes.
    #[arg(long, value_delimiter = ',')]
    fisher: Vec<String>,
    /// The dtype written: float32, bfloat16 or float16 (default: the inputs' dtype). The merge
    /// itself always computes in float32.
    #[arg(long)]
    dtype: Option<OutDtype>,
    /// Average the adapters' A and B factors separately (as the paper's released code does) and
    /// write a PEFT adapter instead of a full model; linear only.
    #[arg(long)]
    lora_factors: bool,
    /// Cut output shards past this size (e.g. 5GB, 500MB, 2GiB); an index lists them.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    shard_size: u64,
    /// Replace the output folder if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Print no progress bar.
    #[arg(long)]
    quiet: bool,
    /// The output folder (written atomically).
    #[arg(long)]
    output: PathBuf,
}

pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    if args.lora_factors {
        return run_lora_factors(&args);
    }
    let mut spec = match &args.config {
        Some(file) => config::read(file, args.output.clone())?,
        None => spec_from_flags(&args)?,
    };
    spec.seed = args.seed;
    spec.shard_size = args.shard_size;
    spec.overwrite = args.overwrite;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} tensors {elapsed} {wide_msg}")
            .expect("valid template"),
    );
    let report = merge::merge(&spec, &mut |p: Progress<'_>| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(p.tensor.to_owned());
    })?;
    bar.finish_and_clear();
    print_report(&spec, &report);
    Ok(())
}

fn spec_from_flags(args: &MergeArgs) -> anyhow::Result<MergeSpec> {
    let name = args.method.as_deref().context("--method is required")?;
    let method = registry::find(name).context("unknown method")?;
    let base = args
        .base
        .as_deref()
        .map(|b| ModelRef::parse(b, None))
        .transpose()?;
    let n = args.models.len();
    if !args.weights.is_empty() && args.weights.len() != n {
        bail!(
            "--weights gives {} weights for {n} models",
            args.weights.len()
        );
    }
    if !args.fisher.is_empty() && args.fisher.len() != n {
        bail!("--fisher gives {} files for {n} models", args.fisher.len());
    }
    let mut models = Vec::new();
    for (i, m) in args.models.iter().enumerate() {
        let mut params = BTreeMap::new();
        params.insert(
            "weight".to_owned(),
            Setting::number(args.weights.get(i).copied().unwrap_or(1.0)),
        );
        if let Some(d) = args.density {
            params.insert("density".to_owned(), Setting::number(d));
        }
        if let Some(f) = args.fisher.get(i) {
            params.insert("fisher".to_owned(), Setting::text(f.clone()));
        }
        models.push(ModelInput {
            model: ModelRef::parse(m, base.as_ref())?,
            params,
        });
    }
    let mut params = BTreeMap::new();
    if let Some(l) = args.lambda {
        params.insert("lambda".to_owned(), Setting::number(l));
    }
    if let Some(b) = args.normalize {
        params.insert("normalize".to_owned(), Setting::bool(b));
    }
    if let Some(r) = args.rescale {
        params.insert("rescale".to_owned(), Setting::text(r.to_string()));
    }
    let mut spec = MergeSpec::new(method, args.output.clone());
    spec.base = base;
    spec.models = models;
    spec.params = params;
    spec.out_dtype = args.dtype;
    Ok(spec)
}

fn run_lora_factors(args: &MergeArgs) -> anyhow::Result<()> {
    if args.method.as_deref() != Some("linear") {
        bail!("--lora-factors averages factors linearly: use it with --method linear");
    }
    for (flag, given) in [
        ("--base", args.base.is_some()),
        ("--density", args.density.is_some()),
        ("--lambda", args.lambda.is_some()),
        ("--rescale", args.rescale.is_some()),
        ("--fisher", !args.fisher.is_empty()),
        ("--dtype", args.dtype.is_some()),
    ] {
        if given {
            bail!("{flag} does not apply to --lora-factors (a linear average of A and B)");
        }
    }
    let adapters: Vec<PathBuf> = args.models.iter().map(PathBuf::from).collect();
    if let Some(a) = adapters.iter().find(|a| !inputs::is_adapter(a)) {
        bail!(
            "{}: --lora-factors merges PEFT adapter folders, and this has no adapter_config.json",
            a.display()
        );
    }
    let weights = if args.weights.is_empty() {
        vec![1.0; adapters.len()]
    } else if args.weights.len() == adapters.len() {
        args.weights.clone()
    } else {
        bail!(
            "--weights gives {} weights for {} adapters",
            args.weights.len(),
            adapters.len()
        );
    };
    let normalize = args.normalize.unwrap_or(true);
    lora_factors::merge_factors(&adapters, &weights, normalize, &args.output, args.overwrite)?;
    println!(
        "averaged the A and B factors of {} adapters into {}",
        adapters.len(),
        args.output.display()
    );
    Ok(())
}

fn print_report(spec: &MergeSpec, r: &MergeReport) {
    for s in &r.skipped {
        eprintln!("note: {s} is the base model; it has no task vector and was left out");
    }
    if r.without_fisher > 0 {
        eprintln!(
            "note: {} tensors are in no Fisher file (e.g. not adapted) and were averaged by the weights alone",
            r.without_fisher
        );
    }
    println!(
        "{}: merged {} tensors of {} models into {} ({} shard{}, {:.1} MB)",
        r.method,
        r.tensors,
        r.models,
        spec.output.display(),
        r.shards,
        if r.shards == 1 { "" } else { "s" },
        r.bytes_written as f64 / 1e6
    );
    let peak = r.peak_rss.map_or("unknown".to_owned(), |b| {
        format!("{:.1} MiB", b as f64 / 1048576.0)
    });
    println!(
        "read {:.3} GB in {:.2} s ({:.2} GB/s); peak memory (VmHWM) {peak}",
        r.bytes_read as f64 / 1e9,
        r.seconds,
        r.read_gb_per_s()
    );
}

/// `5GB`, `500MB`, `2GiB`, `1000` (bytes): decimal units as transformers' `max_shard_size`,
/// binary ones with `i`.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 5GB or 500MB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1048576.0,
        "gib" => 1073741824.0,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    let bytes = number * scale;
    if bytes < 1.0 {
        return Err(format!("{text:?}: a shard size must be at least one byte"));
    }
    Ok(bytes as u64)
}
