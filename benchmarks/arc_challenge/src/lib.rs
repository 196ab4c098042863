//! ARC-Challenge (PROTOCOL.md §3): zero-shot, `Question: {stem}\nAnswer:`, log-likelihood of each choice; acc (headline) and acc_norm.

use dtm_bench_common::arc_format::{ArcFormatSpec, ArcFormatTask, McDoc};
use dtm_plugin_api::export_plugin;

pub const NAME: &str = "arc_challenge";
pub const TEST_FILE: &str = "arc/ARC-Challenge/ARC-Challenge-Test.jsonl";

pub struct ArcChallenge;

impl ArcFormatSpec for ArcChallenge {
    const NAME: &'static str = NAME;
    const TEST_FILE: &'static str = TEST_FILE;
    const TEST_QUESTIONS: usize = 1172;
    const SUMMARY: &'static str = "ARC-Challenge test, 0-shot, log-likelihood of each choice";

    fn doc_to_text(d: &McDoc) -> String {
        format!("Question: {}\nAnswer:", d.stem)
    }
}

pub type Arc = ArcFormatTask<ArcChallenge>;

export_plugin!(Arc);
