//! Writing a report: `report.md` (one page, every figure linked), `report.csv`, `report.json`
//! and `plots/*.svg`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use super::error::ReportError;
use super::paper;
use super::stats::EXACT_SIGN_FLIP_MAX;
use super::table::Row;
use super::Report;

fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ReportError> {
    let err = |source| ReportError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(contents)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Writes every file of `report` into `dir` (created if needed).
pub fn write(report: &Report, dir: &Path) -> Result<(), ReportError> {
    let plots_dir = dir.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|source| ReportError::Write {
        path: plots_dir.clone(),
        source,
    })?;
    for plot in &report.plots {
        write_atomic(&dir.join(&plot.file), plot.svg.as_bytes())?;
    }
    let json = serde_json::to_string_pretty(&report_json(report)).expect("plain values");
    write_atomic(&dir.join("report.json"), json.as_bytes())?;
    write_atomic(&dir.join("report.csv"), report_csv(report).as_bytes())?;
    write_atomic(&dir.join("report.md"), markdown(report).as_bytes())?;
    Ok(())
}

fn statistics_json(report: &Report) -> Value {
    json!({
        "confidence": 0.95,
        "interval": "paired bootstrap over items, percentile",
        "bootstrap_resamples": report.options.resamples,
        "seed": report.options.seed,
        "test_binary": "exact McNemar (two-sided binomial on discordant pairs)",
        "test_graded": format!("sign-flip permutation (exact up to {EXACT_SIGN_FLIP_MAX} non-zero differences, else {} random sign patterns)", report.options.resamples),
        "multiple_comparisons": "Holm over every p-value in rows",
    })
}

fn paper_json(tasks: &[String]) -> Value {
    let cols = paper_columns(tasks);
    json!({
        "source": paper::SOURCE,
        "note": "the paper's numbers, quoted; not produced by this harness",
        "unit": "percent",
        "columns": cols.iter().map(|&c| paper::COLUMNS[c].0).collect::<Vec<_>>(),
        "rows": paper::ROWS.iter().map(|(method, values)| json!({
            "method": method,
            "values": cols.iter().map(|&c| (paper::COLUMNS[c].0.to_owned(), json!(values[c]))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

fn report_json(report: &Report) -> Value {
    json!({
        "baseline": report.options.baseline,
        "allow_mismatch": report.options.allow_mismatch,
        "statistics": statistics_json(report),
        "runs": report.runs.iter().map(|r| json!({
            "name": r.name, "dir": r.dir.display().to_string(), "labels": r.labels,
        })).collect::<Vec<_>>(),
        "rows": report.rows,
        "paper_reference": report.options.paper_reference.then(|| paper_json(&top_tasks(report))),
        "train_logs": report.train_logs,
        "error_sets": report.error_sets,
        "plots": report.plots.iter().map(|p| json!({"file": p.file, "title": p.title})).collect::<Vec<_>>(),
    })
}

fn num(x: Option<f64>) -> String {
    x.map(|x| x.to_string()).unwrap_or_default()
}

fn report_csv(report: &Report) -> String {
    let mut csv = csv::Writer::from_writer(Vec::new());
    let header = [
        "source", "method", "task", "metric", "value", "stderr", "n", "delta", "ci95_lo",
        "ci95_hi", "p_value", "p_holm", "test", "n_paired", "note",
    ];
    let write = |csv: &mut csv::Writer<Vec<u8>>, fields: Vec<String>| {
        csv.write_record(&fields).expect("writing to memory");
    };
    write(&mut csv, header.iter().map(|s| s.to_string()).collect());
    for r in &report.rows {
        write(
            &mut csv,
            vec![
                "ours".into(),
                r.method.clone(),
                r.task.clone(),
                r.metric.clone(),
                num(r.value),
                num(r.stderr),
                r.n.to_string(),
                num(r.delta),
                num(r.ci95.map(|c| c[0])),
                num(r.ci95.map(|c| c[1])),
                num(r.p_value),
                num(r.p_holm),
                r.test.unwrap_or_default().into(),
                r.n_paired.map(|n| n.to_string()).unwrap_or_default(),
                r.note.clone().unwrap_or_default(),
            ],
        );
    }
    if report.options.paper_reference {
        for c in paper_columns(&top_tasks(report)) {
            for (method, values) in paper::ROWS {
                let mut fields = vec![String::new(); header.len()];
                fields[0] = "paper".into();
                fields[1] = method.into();
                fields[2] = paper::COLUMNS[c].0.into();
                fields[3] = "headline".into();
                fields[4] = format!("{:.4}", values[c] / 100.0);
                fields[14] = paper::SOURCE.into();
                write(&mut csv, fields);
            }
        }
    }
    String::from_utf8(csv.into_inner().expect("writing to memory")).expect("UTF-8 fields")
}

fn top_tasks(report: &Report) -> Vec<String> {
    report
        .scopes
        .iter()
        .filter(|s| s.subtask.is_none())
        .map(|s| s.task.clone())
        .collect()
}

/// The paper's columns for our tasks; all nine when none of ours is one of them.
fn paper_columns(tasks: &[String]) -> Vec<usize> {
    let cols: Vec<usize> = tasks.iter().filter_map(|t| paper::column(t)).collect();
    if cols.is_empty() {
        (0..paper::COLUMNS.len()).collect()
    } else {
        cols
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

fn signed_pp(x: f64) -> String {
    format!("{:+.2}", 100.0 * x)
}

fn p_text(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn score_text(r: &Row) -> String {
    match (r.value, r.stderr) {
        (Some(v), Some(s)) => format!("{} ± {}", pct(v), pct(s)),
        (Some(v), None) => pct(v),
        (None, _) => "unavailable".into(),
    }
}

fn summary_table(md: &mut String, report: &Report, tasks: &[String]) {
    let methods: Vec<&str> = report.runs.iter().map(|r| r.name.as_str()).collect();
    let find = |m: &str, t: &str| report.rows.iter().find(|r| r.method == m && r.task == t);
    // n goes in the heading when every method scored the same number of items.
    let same_n: Vec<Option<usize>> = tasks
        .iter()
        .map(|t| {
            let ns: Vec<usize> = methods
                .iter()
                .filter_map(|m| find(m, t))
                .map(|r| r.n)
                .collect();
            (ns.windows(2).all(|w| w[0] == w[1]))
                .then(|| ns.first().copied())
                .flatten()
        })
        .collect();
    md.push_str("| method |");
    for (t, n) in tasks.iter().zip(&same_n) {
        match n {
            Some(n) => write!(md, " {t} (n={n}) |").unwrap(),
            None => write!(md, " {t} |").unwrap(),
        }
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(tasks.len()));
    md.push('\n');
    for m in &methods {
        let label = if *m == report.options.baseline {
            format!("{m} (baseline)")
        } else {
            m.to_string()
        };
        write!(md, "| {} |", cell(&label)).unwrap();
        for (t, n) in tasks.iter().zip(&same_n) {
            match find(m, t) {
                Some(r) if n.is_none() => write!(md, " {} (n={}) |", score_text(r), r.n).unwrap(),
                Some(r) => write!(md, " {} |", score_text(r)).unwrap(),
                None => md.push_str(" — |"),
            }
        }
        md.push('\n');
    }
}

fn paper_table(md: &mut String, tasks: &[String]) {
    let cols = paper_columns(tasks);
    writeln!(
        md,
        "\n**The paper's numbers, not ours** — {}, quoted from PROTOCOL.md §3 for reference (percent):\n",
        paper::SOURCE
    )
    .unwrap();
    md.push_str("| method (paper) |");
    for &c in &cols {
        write!(md, " {} |", paper::COLUMNS[c].0).unwrap();
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(cols.len()));
    md.push('\n');
    for (method, values) in paper::ROWS {
        write!(md, "| paper: {method} |").unwrap();
        for &c in &cols {
            write!(md, " {:.2} |", values[c]).unwrap();
        }
        md.push('\n');
    }
}

fn comparison_table(md: &mut String, report: &Report) {
    md.push_str("| task | method | metric | score ± se | n | Δ (points) | 95% CI | test | p | p (Holm) | note |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &report.rows {
        let is_base = r.method == report.options.baseline;
        let delta = if is_base {
            "baseline".into()
        } else {
            r.delta.map(signed_pp).unwrap_or_else(|| "—".into())
        };
        let ci = r
            .ci95
            .map(|[lo, hi]| format!("[{}, {}]", signed_pp(lo), signed_pp(hi)))
            .unwrap_or_default();
        let test = match (r.test, r.discordant) {
            (Some(t), Some([b, c])) => format!("{t} (b={b}, c={c})"),
            (Some(t), None) => t.to_owned(),
            _ => String::new(),
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&r.task),
            cell(&r.method),
            cell(&r.metric),
            score_text(r),
            r.n,
            delta,
            ci,
            test,
            r.p_value.map(p_text).unwrap_or_default(),
            r.p_holm.map(p_text).unwrap_or_default(),
            cell(r.note.as_deref().unwrap_or_default()),
        )
        .unwrap();
    }
}

fn image(md: &mut String, report: &Report, file: &str) {
    if let Some(p) = report.plots.iter().find(|p| p.file == file) {
        writeln!(md, "\n![{}]({})\n", cell(&p.title), p.file).unwrap();
    }
}

fn markdown(report: &Report) -> String {
    let o = &report.options;
    let tasks = top_tasks(report);
    let mut md = String::from("# Report\n\n");
    md.push_str("| run | folder | labels |\n|---|---|---|\n");
    for r in &report.runs {
        let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let name = if r.name == o.baseline {
            format!("{} (baseline)", r.name)
        } else {
            r.name.clone()
        };
        writeln!(
            md,
            "| {} | `{}` | {} |",
            cell(&name),
            r.dir.display(),
            cell(&labels.join(", "))
        )
        .unwrap();
    }
    md.push_str(
        "\n## Scores\n\nHeadline metric of each task in percent, ± one standard error.\n\n",
    );
    summary_table(&mut md, report, &tasks);
    if o.paper_reference {
        paper_table(&mut md, &tasks);
    }
    image(&mut md, report, "plots/scores.svg");

    writeln!(
        md,
        "## Differences to the baseline `{}`\n\nItems are paired by (task, doc_id). Δ is method − baseline in percentage points; the 95% CI is a \
         paired bootstrap over items ({} resamples, seed {}). Tests: exact McNemar on the discordant pairs (b = baseline right and method \
         wrong, c = the reverse) for 0/1 metrics; a sign-flip permutation test for graded metrics (exact up to {} non-zero differences, \
         else {} random sign patterns). p (Holm) is Holm's correction over all {} p-values of this table.{}\n",
        o.baseline,
        o.resamples,
        o.seed,
        EXACT_SIGN_FLIP_MAX,
        o.resamples,
        report.rows.iter().filter(|r| r.p_value.is_some()).count(),
        if o.allow_mismatch {
            " **--allow-mismatch**: runs that differ were compared on their common items; the note says what differs."
        } else {
            ""
        }
    )
    .unwrap();
    comparison_table(&mut md, report);

    let setting_plots: Vec<_> = report
        .plots
        .iter()
        .filter(|p| p.file.starts_with("plots/setting-"))
        .collect();
    if !setting_plots.is_empty() {
        md.push_str("\n## Scores against a varied setting\n\nFrom the runs' labels (`NAME=DIR@key=value`); error bars are 95% intervals (± 1.96 standard errors).\n");
        for p in setting_plots {
            writeln!(md, "\n![{}]({})\n", cell(&p.title), p.file).unwrap();
        }
    }

    if !report.train_logs.is_empty() {
        md.push_str("\n## Training\n\n| run | log | steps | first loss | final loss | lowest loss | mean tokens/s |\n|---|---|---|---|---|---|---|\n");
        for t in &report.train_logs {
            writeln!(
                md,
                "| {} | `{}` | {} | {:.4} | {:.4} | {:.4} | {} |",
                cell(&t.name),
                t.file,
                t.steps,
                t.first_loss,
                t.final_loss,
                t.min_loss,
                t.mean_tokens_per_s
                    .map(|s| format!("{s:.1}"))
                    .unwrap_or_default()
            )
            .unwrap();
        }
        image(&mut md, report, "plots/loss.svg");
    }

    for s in &report.error_sets {
        writeln!(
            md,
            "\n## Sub-model errors on `{}`\n\n{} items scored by every run; {} wrong for at least one of {} ({}).{}\n",
            s.task,
            s.n_items,
            s.any_wrong,
            s.submodels.join(", "),
            s.metric,
            s.note.as_deref().map(|n| format!(" {n}.")).unwrap_or_default()
        )
        .unwrap();
        md.push_str("| wrong for exactly | items | share of erroneous items |\n|---|---|---|\n");
        for i in &s.intersections {
            let who = if i.members.len() == s.submodels.len() {
                format!("all {} ({})", i.members.len(), i.members.join(", "))
            } else {
                i.members.join(", ")
            };
            writeln!(
                md,
                "| {} | {} | {:.1}% |",
                cell(&who),
                i.count,
                100.0 * i.share
            )
            .unwrap();
        }
        image(
            &mut md,
            report,
            &format!("plots/errors-upset-{}.svg", super::plots::slug(&s.task)),
        );
        if !s.merged.is_empty() {
            md.push_str("| sub-models wrong | items |");
            for m in &s.merged {
                write!(md, " {} accuracy |", cell(&m.merged)).unwrap();
            }
            md.push_str("\n|---|---|");
            md.push_str(&"---|".repeat(s.merged.len()));
            md.push('\n');
            for w in 0..=s.submodels.len() {
                write!(md, "| {w} | {} |", s.merged[0].buckets[w].n).unwrap();
                for m in &s.merged {
                    let b = &m.buckets[w];
                    match b.accuracy {
                        Some(a) => write!(md, " {} ({}/{}) |", pct(a), b.correct, b.n).unwrap(),
                        None => md.push_str(" — |"),
                    }
                }
                md.push('\n');
            }
            image(
                &mut md,
                report,
                &format!("plots/errors-merged-{}.svg", super::plots::slug(&s.task)),
            );
        }
    }
    md
}
