use dtm_bench_common::testing::{data_dir, find_plugin};
use dtm_bench_mmlu::*;
use dtm_plugin_api::host::{aggregate, Plugin};
use dtm_plugin_api::*;

fn load() -> Mmlu {
    Mmlu::load(&data_dir(), &LoadOptions::default()).unwrap()
}

/// By hand from PROTOCOL.md §3: the description, the five abstract_algebra dev rows, then the first test row.
const GOLDEN_FIRST: &str = "The following are multiple choice questions (with answers) about abstract algebra.\n\n\
Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n\
Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n\
Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The symmetric group S_10 has 10 elements.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: C\n\n\
Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every subgroup of an abelian group is abelian.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: A\n\n\
Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n\
Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:";

#[test]
fn count_and_golden_prompt() {
    let items = load().items();
    assert_eq!(items.len(), 14042);
    assert_eq!(items[0].subtask, "mmlu:abstract_algebra");
    assert_eq!(items.last().unwrap().subtask, "mmlu:world_religions");
    let Request::Loglikelihood {
        context,
        continuation,
    } = &items[0].requests[0]
    else {
        panic!()
    };
    assert_eq!(continuation, " A");
    assert_eq!(context, GOLDEN_FIRST);
    let conts: Vec<_> = items[0]
        .requests
        .iter()
        .map(|r| match r {
            Request::Loglikelihood { continuation, .. } => continuation.as_str(),
            _ => panic!(),
        })
        .collect();
    assert_eq!(conts, [" A", " B", " C", " D"]);
}

#[test]
fn categories_cover_all_subjects() {
    let count = |c: &str| CATEGORIES.iter().filter(|(_, x)| *x == c).count();
    assert_eq!(
        (
            count("stem"),
            count("humanities"),
            count("social_sciences"),
            count("other")
        ),
        (19, 13, 12, 13)
    );
    assert_eq!(category("professional_law"), Some("humanities"));
    assert_eq!(category("econometrics"), Some("social_sciences"));
    assert_eq!(category("clinical_knowledge"), Some("other"));
}

fn ll(x: f64) -> Response {
    Response::Loglikelihood {
        logprob: x,
        is_greedy: false,
    }
}

#[test]
fn scoring_and_groups() {
    let m = load();
    // First question's gold is B.
    let s = m
        .score(0, &[ll(-3.0), ll(-1.0), ll(-2.0), ll(-4.0)], &[])
        .unwrap();
    assert_eq!(s.metrics["acc"], Some(1.0));
    assert_eq!(s.extracted["acc"], "B");
    assert_eq!(s.groups, ["stem"]);
    assert!(!s.metrics.contains_key("acc_norm"));
    let s2 = m
        .score(14041, &[ll(-1.0), ll(-1.0), ll(-1.0), ll(-1.0)], &[])
        .unwrap();
    assert_eq!(s2.groups, ["humanities"]);
    let a = aggregate(&[s, s2]);
    assert_eq!(a.groups["stem"]["acc"].mean, Some(1.0));
    assert_eq!(a.subtasks.len(), 2);
}

#[test]
fn through_the_abi() {
    let p = Plugin::open(find_plugin("dtm_bench_mmlu").unwrap()).unwrap();
    let task = p
        .load(
            &data_dir(),
            &LoadOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    let items = task.items().unwrap();
    assert_eq!(items.len(), 2 * 57);
    assert_eq!(items[2].subtask, "mmlu:anatomy");
    assert_eq!(items, {
        let all = load().items();
        items
            .iter()
            .map(|i| all[i.doc_id].clone())
            .collect::<Vec<_>>()
    });
}

/// An empty subject file is refused, naming it and the protocol's count, instead of the subject
/// silently dropping out of the aggregate; a missing one is named too.
#[test]
fn empty_or_missing_subject_is_refused_by_name() {
    let dir = dtm_bench_common::testing::scratch_copy(&["mmlu/data/dev", "mmlu/data/test"]);
    let anatomy = dir.join("mmlu/data/test/anatomy_test.csv");
    std::fs::write(&anatomy, "").unwrap();
    let e = Mmlu::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(
        e.contains("anatomy_test.csv: no questions, the protocol's set has 135"),
        "{e}"
    );
    std::fs::remove_file(&anatomy).unwrap();
    let e = Mmlu::load(&dir, &LoadOptions::default()).err().unwrap();
    assert!(
        e.contains("56 subjects, expected 57 (missing: anatomy)"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
