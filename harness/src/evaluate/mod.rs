//! Scoring a benchmark plugin's task with a model: the loop behind `harness score`.
//!
//! The plugin builds requests; the engine answers them (batched across items, so shared prefixes
//! are computed once); code benchmarks' programs go to a [`ProgramRunner`]; the plugin scores;
//! finished items are saved chunk by chunk so that a killed run resumes.

pub mod error;
pub mod items;
pub mod plan;
pub mod plugins;
pub mod report;
pub mod shard;
pub mod source;
pub mod store;
pub mod subset;

use std::time::Instant;

use serde_json::json;

use dtm_plugin_api::{validate, Description, Item, ItemScore, Outcome, Request, Response};

use crate::engine::{Engine, GenerateRequest, LoglikelihoodRequest};
use error::{EvalError, Result};
use source::LoadedTask;
use store::{ChunkCost, Execution, RunStore, Sample};

/// Runs model-written programs (the sandbox); absent, code benchmarks report "unavailable".
pub trait ProgramRunner: Sync {
    /// One execution per program, in order. `timeout_s` is the protocol's per-program limit.
    fn run(&self, programs: &[String], timeout_s: Option<f64>) -> Vec<Execution>;
}

/// Bytes of a program's stderr kept in samples.jsonl (its end, where the traceback is).
pub const STDERR_TAIL: usize = 4000;

/// The WebAssembly sandbox as a [`ProgramRunner`], running programs on `jobs` threads.
pub struct SandboxRunner {
    pub sandbox: dtm_sandbox::Sandbox,
    /// Memory and output caps; the time limits come from the protocol's limit per call.
    pub limits: dtm_sandbox::Limits,
    pub jobs: usize,
}

impl ProgramRunner for SandboxRunner {
    fn run(&self, programs: &[String], timeout_s: Option<f64>) -> Vec<Execution> {
        let limits = match timeout_s {
            Some(t) => dtm_sandbox::Limits {
                memory_bytes: self.limits.memory_bytes,
                stdout_cap: self.limits.stdout_cap,
                stderr_cap: self.limits.stderr_cap,
                ..dtm_sandbox::Limits::for_protocol_seconds(t)
            },
            None => self.limits.clone(),
        };
        self.sandbox
            .run_many(programs, &limits, self.jobs)
            .into_iter()
            .map(execution)
            .collect()
    }
}

/// What samples.jsonl keeps of a sandbox outcome.
pub fn execution(o: dtm_sandbox::Outcome) -> Execution {
    use dtm_sandbox::Status;
    Execution {
        status: match o.status {
            Status::Passed => Outcome::Passed,
            Status::Failed => Outcome::Failed,
            Status::TimedOut => Outcome::TimedOut,
            Status::MemoryExceeded => Outcome::MemoryExceeded,
            Status::Crashed => Outcome::Crashed,
        },
        limit: o.limit.map(|l| l.as_str().to_owned()),
        error_type: o.error_type,
        error_message: o.error_message,
        stderr_tail: tail(&o.stderr, STDERR_TAIL).to_owned(),
        // Work done is deterministic, except for a run the wall clock cut short.
        fuel: o
            .fuel_used
            .filter(|_| o.limit != Some(dtm_sandbox::Limit::Wall)),
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// One task to score: the loaded task and the items selected from it.
pub struct TaskJob<'a> {
    pub task: &'a dyn LoadedTask,
    /// What the task says about itself: every score is checked against it.
    pub description: &'a Description,
    /// `gsm8k`, or `mmlu:anatomy` when one subtask was asked for.
    pub name: &'a str,
    pub items: &'a [Item],
    /// A code benchmark: its programs are run and the outcomes scored.
    pub code: bool,
    /// Per-program time limit the protocol sets (seconds of native CPython's work on the reference machine).
    pub timeout_s: Option<f64>,
}

/// What a finished task reports.
pub struct TaskRun {
    pub samples: Vec<Sample>,
    /// Tokens and time spent on the task's items, by this run and the interrupted ones before it.
    pub cost: ChunkCost,
    /// Items computed now (the rest came from an earlier, interrupted run).
    pub computed: usize,
}

/// Progress of one task, told to whoever displays it.
pub trait Progress {
    fn start(&self, task: &str, total: usize, already_done: usize);
    fn advance(&self, n: usize);
    fn finish(&self);
}

/// Scores `items` (already filtered) of `task`, resuming from `store`.
pub fn run_task(
    engine: &mut Engine,
    job: &TaskJob,
    runner: Option<&dyn ProgramRunner>,
    store: &RunStore,
    chunk_size: usize,
    progress: &dyn Progress,
) -> Result<TaskRun> {
    let (task_name, items) = (job.name, job.items);
    let saved = store.finished(task_name)?;
    let mut cost = saved.cost;
    let mut done = saved.samples;
    done.retain(|id, _| items.iter().any(|i| i.doc_id == *id));
    let todo: Vec<&Item> = items
        .iter()
        .filter(|i| !done.contains_key(&i.doc_id))
        .collect();
    progress.start(task_name, items.len(), done.len());
    for chunk in todo.chunks(chunk_size.max(1)) {
        let (started, before) = (Instant::now(), engine.stats().clone());
        let responses = answer(engine, chunk)?;
        let programs = chunk
            .iter()
            .zip(&responses)
            .map(|(item, r)| {
                if job.code {
                    job.task
                        .programs(item.doc_id, r)
                        .map_err(|e| EvalError::item(task_name, item.doc_id, "programs", e))
                } else {
                    Ok(Vec::new())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let mut executions = execute(&programs, runner, job.timeout_s).into_iter();
        let mut samples = Vec::with_capacity(chunk.len());
        for ((item, responses), programs) in chunk.iter().zip(responses).zip(programs) {
            let executions: Vec<Execution> = executions.by_ref().take(programs.len()).collect();
            samples.push(score_item(job, item, responses, programs, executions)?);
        }
        let chunk_cost = ChunkCost {
            tokens: engine.stats().since(&before),
            wall_seconds: started.elapsed().as_secs_f64(),
        };
        store.save(task_name, &samples, &chunk_cost)?;
        cost.tokens.add(&chunk_cost.tokens);
        cost.wall_seconds += chunk_cost.wall_seconds;
        for s in samples {
            done.insert(s.doc_id, s);
        }
        progress.advance(chunk.len());
    }
    progress.finish();
    Ok(TaskRun {
        samples: done.into_values().collect(),
        cost,
        computed: todo.len(),
    })
}

/// Answers every request of a chunk of items, one engine call per request type.
fn answer(engine: &mut Engine, items: &[&Item]) -> Result<Vec<Vec<Response>>> {
    let mut loglik = Vec::new();
    let mut generate = Vec::new();
    let mut rolling = Vec::new();
    for item in items {
        for request in &item.requests {
            match request {
                Request::Loglikelihood {
                    context,
                    continuation,
                } => loglik.push(LoglikelihoodRequest {
                    context: context.clone(),
                    continuation: continuation.clone(),
                }),
                Request::GenerateUntil {
                    context,
                    until,
                    max_new_tokens,
                } => generate.push(GenerateRequest {
                    context: context.clone(),
                    until: until.clone(),
                    max_new_tokens: *max_new_tokens,
                }),
                Request::LoglikelihoodRolling { text } => rolling.push(text.clone()),
            }
        }
    }
    // Each request type runs only when some item asks for it (rolling loglikelihood, say, needs
    // a start token that not every tokenizer has).
    let mut loglik = if loglik.is_empty() {
        Vec::new()
    } else {
        engine.loglikelihood(&loglik)?
    }
    .into_iter();
    let mut generate = if generate.is_empty() {
        Vec::new()
    } else {
        engine.generate_until(&generate)?
    }
    .into_iter();
    let mut rolling = if rolling.is_empty() {
        Vec::new()
    } else {
        engine.loglikelihood_rolling(&rolling)?
    }
    .into_iter();
    Ok(items
        .iter()
        .map(|item| {
            item.requests
                .iter()
                .map(|r| match r {
                    Request::Loglikelihood { .. } => {
                        let r = loglik.next().expect("one answer per request");
                        Response::Loglikelihood {
                            logprob: r.logprob,
                            is_greedy: r.is_greedy,
                        }
                    }
                    Request::GenerateUntil { .. } => {
                        Response::Text(generate.next().expect("one answer per request").text)
                    }
                    Request::LoglikelihoodRolling { .. } => Response::Rolling {
                        logprob: rolling.next().expect("one answer per request").logprob,
                    },
                })
                .collect()
        })
        .collect())
}

/// Runs every program of a chunk in one go (so the runner can use all its workers).
fn execute(
    programs: &[Vec<String>],
    runner: Option<&dyn ProgramRunner>,
    timeout_s: Option<f64>,
) -> Vec<Execution> {
    let all: Vec<String> = programs.iter().flatten().cloned().collect();
    match runner {
        _ if all.is_empty() => Vec::new(),
        Some(runner) => runner.run(&all, timeout_s),
        None => vec![
            Execution {
                status: Outcome::Unavailable,
                limit: None,
                error_type: None,
                error_message: None,
                stderr_tail: String::new(),
                fuel: None,
            };
            all.len()
        ],
    }
}

fn score_item(
    job: &TaskJob,
    item: &Item,
    responses: Vec<Response>,
    programs: Vec<String>,
    executions: Vec<Execution>,
) -> Result<Sample> {
    let outcomes: Vec<Outcome> = executions.iter().map(|e| e.status).collect();
    let (task, task_name) = (job.task, job.name);
    let score = task
        .score(item.doc_id, &responses, &outcomes)
        .map_err(|e| EvalError::item(task_name, item.doc_id, "scoring", e))?;
    validate::item_score(job.description, item, &score).map_err(EvalError::Contract)?;
    let ItemScore {
        doc_id,
        subtask,
        metrics,
        extracted,
        gold,
        groups,
    } = score;
    Ok(Sample {
        task: task_name.to_owned(),
        doc_id,
        subtask,
        requests: item.requests.iter().map(request_json).collect(),
        responses: responses.iter().map(response_json).collect(),
        programs,
        outcomes,
        executions,
        extracted,
        gold,
        metrics,
        groups,
    })
}

fn request_json(r: &Request) -> serde_json::Value {
    match r {
        Request::Loglikelihood {
            context,
            continuation,
        } => json!({"context": context, "continuation": continuation}),
        Request::GenerateUntil {
            context,
            until,
            max_new_tokens,
        } => json!({"context": context, "until": until, "max_new_tokens": max_new_tokens}),
        Request::LoglikelihoodRolling { text } => json!({"text": text}),
    }
}

fn response_json(r: &Response) -> serde_json::Value {
    match r {
        Response::Loglikelihood { logprob, is_greedy } => {
            json!({"logprob": logprob, "is_greedy": is_greedy})
        }
        Response::Text(t) => json!(t),
        Response::Rolling { logprob } => json!({"logprob": logprob}),
    }
}
