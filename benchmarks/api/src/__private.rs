//! Plugin-side machinery behind [`crate::export_plugin!`]. Not a public API.

use crate::{Benchmark, Envelope, Item, ItemCall, LoadCall, LoadOptions, Request, TaskInfo};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// What the opaque task handle points to.
pub struct TaskBox<B> {
    bench: B,
    items_json: String,
}

fn to_c(s: String) -> *mut c_char {
    // JSON never contains a raw NUL (serde_json escapes it), but stay safe.
    let s = if s.contains('\0') {
        s.replace('\0', "\\u0000")
    } else {
        s
    };
    CString::new(s).expect("NUL removed").into_raw()
}

fn envelope<T: Serialize>(r: Result<T, String>) -> *mut c_char {
    let e = match r {
        Ok(v) => Envelope::Ok(v),
        Err(m) => Envelope::Error(m),
    };
    to_c(serde_json::to_string(&e).unwrap_or_else(|err| {
        serde_json::to_string(&Envelope::<()>::Error(format!(
            "cannot serialise result: {err}"
        )))
        .expect("string serialises")
    }))
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let msg = if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    };
    format!("plugin panicked: {msg}")
}

/// Run `f`, turning a panic into an error result.
fn guarded<T: Serialize>(f: impl FnOnce() -> Result<T, String>) -> *mut c_char {
    envelope(catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panic_message(p))))
}

unsafe fn read_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, String> {
    if p.is_null() {
        return Err(format!("{what}: null pointer"));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|e| format!("{what}: not UTF-8: {e}"))
}

pub fn describe<B: Benchmark>() -> *mut c_char {
    guarded(|| Ok(B::describe()))
}

/// Check `options` against the description; return the flags with defaults filled in.
pub fn validate_options(
    d: &crate::Description,
    o: &LoadOptions,
) -> Result<BTreeMap<String, String>, String> {
    crate::validate::options(d, o)
}

/// Keep the first `limit` items of each subtask (order preserved) and cap `max_new_tokens`.
pub fn apply_limit_and_cap(
    items: Vec<Item>,
    limit: Option<usize>,
    cap: Option<usize>,
) -> Vec<Item> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    items
        .into_iter()
        .filter(|it| {
            let n = seen.entry(it.subtask.clone()).or_insert(0);
            *n += 1;
            limit.is_none_or(|l| *n <= l)
        })
        .map(|mut it| {
            if let Some(cap) = cap {
                for r in &mut it.requests {
                    if let Request::GenerateUntil { max_new_tokens, .. } = r {
                        *max_new_tokens = (*max_new_tokens).min(cap);
                    }
                }
            }
            it
        })
        .collect()
}

/// # Safety
/// See `export_plugin!`.
pub unsafe fn load<B: Benchmark>(
    request: *const c_char,
    task_out: *mut *mut c_void,
) -> *mut c_char {
    guarded(|| {
        if task_out.is_null() {
            return Err("load: null task_out".to_string());
        }
        *task_out = std::ptr::null_mut();
        let call: LoadCall = serde_json::from_str(read_str(request, "load request")?)
            .map_err(|e| format!("load request: malformed JSON: {e}"))?;
        let d = B::describe();
        let flags = validate_options(&d, &call.options)?;
        let mut options = call.options.clone();
        options.flags = flags.clone();
        crate::take_data_files(Path::new(&call.data_dir));
        let bench = B::load(Path::new(&call.data_dir), &options)?;
        let data_files = crate::take_data_files(Path::new(&call.data_dir));
        let items = apply_limit_and_cap(bench.items(), options.limit, options.max_new_tokens);
        crate::validate::items(&d, &items)?;
        let info = TaskInfo {
            name: d.name.clone(),
            num_fewshot: options.num_fewshot.unwrap_or(d.default_num_fewshot),
            limit: options.limit,
            max_new_tokens: options.max_new_tokens,
            flags,
            num_items: items.len(),
            data_files,
        };
        let items_json = serde_json::to_string(&Envelope::Ok(&items)).map_err(|e| e.to_string())?;
        *task_out = Box::into_raw(Box::new(TaskBox { bench, items_json })) as *mut c_void;
        Ok(info)
    })
}

unsafe fn task<'a, B>(p: *const c_void) -> Result<&'a TaskBox<B>, String> {
    if p.is_null() {
        return Err("null task handle".to_string());
    }
    Ok(&*(p as *const TaskBox<B>))
}

/// # Safety
/// See `export_plugin!`.
pub unsafe fn items<B: Benchmark>(t: *const c_void) -> *mut c_char {
    match task::<B>(t) {
        Ok(t) => to_c(t.items_json.clone()),
        Err(e) => envelope::<()>(Err(e)),
    }
}

/// # Safety
/// See `export_plugin!`.
pub unsafe fn programs<B: Benchmark>(t: *const c_void, call: *const c_char) -> *mut c_char {
    guarded(|| {
        let t = task::<B>(t)?;
        let call: ItemCall = serde_json::from_str(read_str(call, "programs call")?)
            .map_err(|e| format!("programs call: malformed JSON: {e}"))?;
        t.bench.programs(call.doc_id, &call.responses)
    })
}

/// # Safety
/// See `export_plugin!`.
pub unsafe fn score<B: Benchmark>(t: *const c_void, call: *const c_char) -> *mut c_char {
    guarded(|| {
        let t = task::<B>(t)?;
        let call: ItemCall = serde_json::from_str(read_str(call, "score call")?)
            .map_err(|e| format!("score call: malformed JSON: {e}"))?;
        let s = t
            .bench
            .score(call.doc_id, &call.responses, &call.outcomes)?;
        // JSON has no NaN or infinity (they would arrive as null, "unavailable"): refuse here.
        crate::validate::finite_metrics(&B::describe().name, &s)?;
        Ok(s)
    })
}

/// # Safety
/// See `export_plugin!`.
pub unsafe fn task_free<B: Benchmark>(t: *mut c_void) {
    if !t.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(Box::from_raw(t as *mut TaskBox<B>))
        }));
    }
}

/// # Safety
/// See `export_plugin!`.
pub unsafe fn string_free(s: *mut c_char) {
    if !s.is_null() {
        drop(CString::from_raw(s));
    }
}
