use dtm_bench_common::testing::{data_dir, find_plugin};
use dtm_bench_mbpp::*;
use dtm_plugin_api::host::Plugin;
use dtm_plugin_api::*;

fn load() -> Mbpp {
    Mbpp::load(&data_dir(), &LoadOptions::default()).unwrap()
}

/// By hand from PROTOCOL.md §3: shots task_id 2, 3, 4 (target `{code}\n[DONE]`, no delimiter),
/// then task 11.
const GOLDEN_FIRST: &str = "You are an expert Python programmer, and here is your task: Write a function to find the similar elements from the given two tuple lists. Your code should pass these tests:\n\n\
assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n\
assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n\
assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n\
[BEGIN]\n\
def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) \n[DONE]\n\n\
You are an expert Python programmer, and here is your task: Write a python function to identify non-prime numbers. Your code should pass these tests:\n\n\
assert is_not_prime(2) == False\n\
assert is_not_prime(10) == True\n\
assert is_not_prime(35) == True\n\
[BEGIN]\n\
import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n    return result\n[DONE]\n\n\
You are an expert Python programmer, and here is your task: Write a function to find the largest integers from a given list of numbers using heap queue algorithm. Your code should pass these tests:\n\n\
assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \n\
assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \n\
assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]\n\
[BEGIN]\n\
import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n  return largest_nums\n[DONE]\n\n\
You are an expert Python programmer, and here is your task: Write a python function to remove first and last occurrence of a given character from the string. Your code should pass these tests:\n\n\
assert remove_Occ(\"hello\",\"l\") == \"heo\"\n\
assert remove_Occ(\"abcda\",\"a\") == \"bcd\"\n\
assert remove_Occ(\"PHP\",\"P\") == \"H\"\n\
[BEGIN]\n";

#[test]
fn count_and_golden_prompt() {
    let items = load().items();
    assert_eq!(items.len(), 500);
    let Request::GenerateUntil {
        context,
        until,
        max_new_tokens,
    } = &items[0].requests[0]
    else {
        panic!()
    };
    assert_eq!(context, GOLDEN_FIRST);
    assert_eq!(until, &["[DONE]"]);
    assert_eq!(*max_new_tokens, 512);
}

#[test]
fn program_assembly_and_scoring() {
    let m = load();
    let r = [Response::Text(
        "def remove_Occ(s, ch):\n    return s".into(),
    )];
    assert_eq!(
        m.programs(0, &r).unwrap(),
        ["\ndef remove_Occ(s, ch):\n    return s\nassert remove_Occ(\"hello\",\"l\") == \"heo\"\nassert remove_Occ(\"abcda\",\"a\") == \"bcd\"\nassert remove_Occ(\"PHP\",\"P\") == \"H\""]
    );
    assert_eq!(
        m.score(0, &r, &[Outcome::Passed]).unwrap().metrics["pass@1"],
        Some(1.0)
    );
    assert_eq!(
        m.score(0, &r, &[Outcome::Crashed]).unwrap().metrics["pass@1"],
        Some(0.0)
    );
    assert_eq!(
        m.score(0, &r, &[Outcome::Unavailable]).unwrap().metrics["pass@1"],
        None
    );
    // Task 367 (doc 356) has setup code; by default it comes first.
    let p = &m
        .programs(356, &[Response::Text("class Node: pass".into())])
        .unwrap()[0];
    assert!(p.starts_with("root = Node(1)"), "{p}");
}

#[test]
fn through_the_abi_with_setup_after() {
    let p = Plugin::open(find_plugin("dtm_bench_mbpp").unwrap()).unwrap();
    let mut o = LoadOptions::default();
    o.flags
        .insert("setup_code".into(), "after_completion".into());
    let task = p.load(&data_dir(), &o).unwrap();
    assert_eq!(task.items().unwrap().len(), 500);
    let prog = &task
        .programs(356, &[Response::Text("class Node: pass".into())])
        .unwrap()[0];
    assert!(
        prog.starts_with("class Node: pass\nroot = Node(1)"),
        "{prog}"
    );
}
