//! The paper's Table 1 (Fu et al., ACL 2024, Llama-2-7b), as PROTOCOL.md §3 quotes it, to print
//! beside our numbers. These are the paper's numbers, never ours.

pub const SOURCE: &str = "Fu et al., ACL 2024 (Disperse-Then-Merge), Table 1, Llama-2-7b";

/// Our task name → the paper's column heading, in the paper's column order.
pub const COLUMNS: [(&str, &str); 9] = [
    ("gsm8k", "GSM8K"),
    ("mmlu", "MMLU"),
    ("bbh", "BBH"),
    ("arc_challenge", "ARC-c"),
    ("openbookqa", "OBQA"),
    ("race", "RACE"),
    ("humaneval", "HumanEval"),
    ("mbpp", "MBPP"),
    ("truthfulqa_mc1", "TruthfulQA"),
];

/// Method → scores in percent, in [`COLUMNS`] order.
pub const ROWS: [(&str, [f64; 9]); 9] = [
    (
        "Llama-2-base",
        [
            13.57, 45.96, 39.41, 43.34, 31.40, 39.52, 12.20, 20.60, 24.85,
        ],
    ),
    (
        "Vanilla SFT",
        [
            18.50, 49.74, 42.78, 46.93, 32.80, 40.57, 17.68, 21.40, 25.83,
        ],
    ),
    (
        "L2-norm",
        [
            18.27, 49.98, 43.61, 46.33, 32.40, 39.62, 16.46, 22.60, 27.66,
        ],
    ),
    (
        "EWC",
        [
            15.77, 49.02, 41.80, 46.93, 32.40, 39.43, 15.85, 22.40, 28.52,
        ],
    ),
    (
        "Replay",
        [
            18.27, 49.46, 43.05, 46.76, 32.20, 40.19, 15.24, 22.40, 26.32,
        ],
    ),
    (
        "Uniform Soup",
        [
            19.03, 50.24, 42.92, 46.16, 33.20, 40.67, 14.02, 21.20, 25.95,
        ],
    ),
    (
        "MoE",
        [
            14.48, 47.36, 40.39, 44.62, 32.00, 40.10, 13.41, 21.80, 26.07,
        ],
    ),
    (
        "Deita",
        [
            18.12, 48.50, 42.90, 44.79, 32.00, 41.43, 15.24, 20.80, 28.37,
        ],
    ),
    (
        "DTM",
        [
            20.62, 50.43, 44.46, 48.72, 33.80, 41.34, 18.29, 23.60, 29.13,
        ],
    ),
];

/// The paper's column for one of our tasks (whole benchmarks only).
pub fn column(task: &str) -> Option<usize> {
    COLUMNS.iter().position(|(t, _)| *t == task)
}
