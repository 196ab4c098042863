//! `trainer disperse`: K portions of an SFT file, at random or by k-means on sentence embeddings.

use std::path::PathBuf;

use anyhow::bail;
use clap::builder::PossibleValuesParser;
use clap::Args;
use dtm_model::device::DeviceKind;
use dtm_trainer::data;
use dtm_trainer::disperse::{self, registry, EmbedField, Method, Plan};
use dtm_trainer::embed::DEFAULT_BATCH_SIZE;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
#[command(
    after_help = "Writes DIR/portion-1.jsonl … portion-K.jsonl (the input lines unchanged, in file order within a \
    portion) and DIR/assignments.json (the 0-based portion of every input record in file order, the \
    sizes, the method and seed, and for k-means the embedded field, encoder, iterations and inertia).\n\n\
    random: a seeded permutation cut into K parts whose sizes differ by at most one.\n\
    kmeans: cosine k-means (k-means++ seeding, --restarts restarts, the lowest inertia kept) on \
    L2-normalised sentence embeddings of the instruction, the response or both."
)]
pub struct DisperseArgs {
    /// SFT records, JSONL (Alpaca `instruction`/`input`/`output` or chat `messages`).
    #[arg(long)]
    data: PathBuf,
    /// Number of portions.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// How records are split.
    #[arg(long, value_parser = PossibleValuesParser::new(registry::names()))]
    method: String,
    /// What k-means embeds: the instruction (with its input), the response, or both
    /// (instruction + "\n" + response). Default: response, as the paper's released code does.
    #[arg(long, value_enum)]
    embed: Option<EmbedField>,
    /// The sentence encoder for k-means: a sentence-transformers folder of the BERT family.
    /// Default: $DTM_CACHE/models/all-MiniLM-L6-v2 (`scripts/fetch-models.sh minilm`).
    #[arg(long)]
    encoder: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created if missing).
    #[arg(long)]
    output: PathBuf,
    /// k-means restarts (independent k-means++ seedings); the lowest inertia is kept.
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    /// k-means iterations at most per restart (each stops once no record changes cluster).
    #[arg(long, default_value_t = 1500)]
    max_iter: usize,
    /// Texts per encoder forward pass.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Where the encoder runs.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
}

impl DisperseArgs {
    /// The dispersal stage of `trainer dtm` (defaults as on the command line).
    #[allow(clippy::too_many_arguments)]
    pub fn stage(
        data: PathBuf,
        k: usize,
        method: String,
        embed: Option<EmbedField>,
        encoder: Option<PathBuf>,
        seed: u64,
        output: PathBuf,
        device: DeviceKind,
    ) -> Self {
        Self {
            data,
            k,
            method,
            embed,
            encoder,
            seed,
            output,
            restarts: 10,
            max_iter: 1500,
            batch_size: DEFAULT_BATCH_SIZE,
            device,
        }
    }
}

pub fn run(args: DisperseArgs) -> anyhow::Result<()> {
    let method = Method::from_name(&args.method)?;
    if !method.info().needs_embeddings && (args.embed.is_some() || args.encoder.is_some()) {
        bail!("--embed and --encoder only apply to a method that clusters embeddings (kmeans)");
    }
    let read = data::read_jsonl_lines(&args.data)?;
    let (records, lines): (Vec<_>, Vec<_>) = read.into_iter().unzip();
    let mut plan = Plan::new(method, args.k, args.seed);
    plan.embed = args.embed.unwrap_or(plan.embed);
    plan.restarts = args.restarts;
    plan.max_iter = args.max_iter;

    let mut encoder_dir = None;
    let mut assignments = disperse::assign(&plan, &records, |texts| {
        let (encoder, dir) = super::embed::load_encoder(args.encoder.clone(), args.device)
            .map_err(|e| disperse::DisperseError::Setting(format!("{e:#}")))?;
        eprintln!(
            "embedding {} {} texts with {}",
            texts.len(),
            serde_json::to_value(plan.embed).expect("serialises"),
            dir.display()
        );
        encoder_dir = Some(dir);
        let bar = ProgressBar::new(texts.len() as u64).with_style(
            ProgressStyle::with_template(
                "embedding [{bar:30}] {pos}/{len} texts, {elapsed} elapsed, ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let out = encoder.encode(texts, args.batch_size, |done, _| {
            bar.set_position(done as u64)
        });
        bar.finish_and_clear();
        Ok(out?)
    })?;
    assignments.data = Some(args.data.display().to_string());
    assignments.encoder = encoder_dir.map(|d| d.display().to_string());
    disperse::write(&args.output, &lines, &assignments)?;

    eprintln!(
        "{}: {} records into {} portions of {:?} ({})",
        method.name(),
        records.len(),
        plan.k,
        assignments.sizes,
        args.output.display()
    );
    if let Some(k) = &assignments.kmeans {
        eprintln!(
            "k-means: inertia {:.6}, {} iterations{}, restart {} of {} kept",
            k.inertia,
            k.iterations,
            if k.converged { "" } else { " (not converged)" },
            k.best_restart + 1,
            k.restarts
        );
    }
    Ok(())
}
