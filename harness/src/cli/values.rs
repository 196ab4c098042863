//! Parsers for flag values: every flag is checked when the command line is parsed, with a
//! one-line message, so no run starts with a value it cannot use.

/// Longest per-program time limit accepted, in seconds.
pub const MAX_TIMEOUT_S: f64 = 3600.0;
/// Largest `--memory-mb`: a wasm32 guest cannot address more than 4 GiB.
pub const MAX_MEMORY_MB: usize = 4096;
/// Largest `--jobs`, even when forced.
pub const MAX_JOBS: usize = 1024;

fn whole(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .map_err(|_| format!("`{s}` is not a whole number"))
}

/// A whole number ≥ 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match whole(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A whole number ≥ 2 (a model reads at least one token and predicts one).
pub fn at_least_two(s: &str) -> Result<usize, String> {
    match whole(s)? {
        n if n < 2 => Err("must be at least 2".into()),
        n => Ok(n),
    }
}

/// Seconds: finite, above 0 and at most an hour.
pub fn seconds(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !x.is_finite() || x <= 0.0 {
        return Err("must be a number of seconds above 0".into());
    }
    if x > MAX_TIMEOUT_S {
        return Err(format!("must be at most {MAX_TIMEOUT_S} seconds"));
    }
    Ok(x)
}

/// MiB of sandbox memory: 1 to 4096.
pub fn memory_mb(s: &str) -> Result<usize, String> {
    match whole(s)? {
        0 => Err("must be at least 1 MiB".into()),
        n if n > MAX_MEMORY_MB => Err(format!(
            "must be at most {MAX_MEMORY_MB} MiB (a 32-bit WebAssembly guest cannot use more)"
        )),
        n => Ok(n),
    }
}

/// Sandbox worker threads: 0 (one per core) to 1024.
pub fn jobs(s: &str) -> Result<usize, String> {
    match whole(s)? {
        n if n > MAX_JOBS => Err(format!("must be at most {MAX_JOBS}")),
        n => Ok(n),
    }
}

/// The cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `--jobs` as used: 0 means one per core; more than the cores is capped unless forced.
pub fn effective_jobs(jobs: usize, force: bool) -> (usize, Option<String>) {
    let cores = available_cores();
    match jobs {
        0 => (cores, None),
        n if n > cores && !force => (
            cores,
            Some(format!(
                "--jobs {n} capped at the {cores} available cores (pass --force-jobs to use {n})"
            )),
        ),
        n => (n, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_a_run_cannot_use_are_refused() {
        for bad in ["nan", "inf", "-1", "0", "1e20", "x"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(seconds("0.5"), Ok(0.5));
        assert!(at_least_one("0").is_err() && at_least_one("-3").is_err());
        assert!(at_least_two("1").is_err());
        assert!(memory_mb("0").is_err() && memory_mb("5000").is_err());
        assert!(jobs("100000").is_err());
        assert_eq!(jobs("0"), Ok(0));
    }

    #[test]
    fn jobs_are_capped_at_the_cores_unless_forced() {
        let cores = available_cores();
        assert_eq!(effective_jobs(0, false).0, cores);
        let (n, note) = effective_jobs(cores + 5, false);
        assert_eq!(n, cores);
        assert!(note.unwrap().contains("--force-jobs"));
        assert_eq!(effective_jobs(cores + 5, true), (cores + 5, None));
    }
}
