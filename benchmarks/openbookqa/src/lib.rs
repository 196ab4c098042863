//! OpenBookQA Main (PROTOCOL.md §3): zero-shot, the stem as it is, log-likelihood of each choice; acc (headline) and acc_norm.

use dtm_bench_common::arc_format::{ArcFormatSpec, ArcFormatTask, McDoc};
use dtm_plugin_api::export_plugin;

pub const NAME: &str = "openbookqa";
pub const TEST_FILE: &str = "openbookqa/Main/test.jsonl";

pub struct Main;

impl ArcFormatSpec for Main {
    const NAME: &'static str = NAME;
    const TEST_FILE: &'static str = TEST_FILE;
    const TEST_QUESTIONS: usize = 500;
    const SUMMARY: &'static str = "OpenBookQA Main test, 0-shot, log-likelihood of each choice";

    fn doc_to_text(d: &McDoc) -> String {
        d.stem.clone()
    }
}

pub type OpenBookQa = ArcFormatTask<Main>;

export_plugin!(OpenBookQa);
