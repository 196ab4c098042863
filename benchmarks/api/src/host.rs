//! The harness side: open a plugin `.so` with libloading and call it through typed methods.

use crate::{
    Description, Envelope, Item, ItemCall, ItemScore, LoadCall, LoadOptions, Outcome, Response,
    TaskInfo, ABI_VERSION,
};
use libloading::Library;
use serde::de::DeserializeOwned;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::aggregate::{aggregate, summarise, Aggregate, MetricSummary};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The library would not load; `reason` is the loader's message without the path it
    /// repeats.
    #[error("{}: cannot open as a plugin library: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("plugin {} lacks symbol `{symbol}` (not a dtm benchmark plugin?): {reason}", path.display())]
    MissingSymbol {
        path: PathBuf,
        symbol: &'static str,
        reason: String,
    },
    #[error("plugin {path} was built against plugin ABI version {plugin}, but this harness speaks ABI version {host}; rebuild the plugin against this dtm-plugin-api")]
    AbiMismatch {
        path: PathBuf,
        plugin: u32,
        host: u32,
    },
    #[error("plugin {path}: {call} returned malformed JSON: {message}")]
    Malformed {
        path: PathBuf,
        call: &'static str,
        message: String,
    },
    #[error("plugin {plugin}: {call} failed: {message}")]
    Plugin {
        plugin: String,
        call: &'static str,
        message: String,
    },
    #[error("invalid argument to {call}: {message}")]
    Argument { call: &'static str, message: String },
}

/// The dynamic loader's message, without the library's path (which the loader tends to repeat,
/// e.g. `x.so: x.so: file too short`).
fn loader_reason(e: &libloading::Error, path: &Path) -> String {
    let text = e.to_string();
    let shown = path.display().to_string();
    let mut reason = text.replace(&format!("{shown}: "), "");
    while let Some(rest) = reason.strip_suffix(&format!(": {shown}")) {
        reason = rest.to_owned();
    }
    reason.trim().to_owned()
}

type StrFn = unsafe extern "C" fn() -> *mut c_char;
type LoadFn = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> *mut c_char;
type ItemsFn = unsafe extern "C" fn(*const c_void) -> *mut c_char;
type CallFn = unsafe extern "C" fn(*const c_void, *const c_char) -> *mut c_char;
type TaskFreeFn = unsafe extern "C" fn(*mut c_void);
type StringFreeFn = unsafe extern "C" fn(*mut c_char);

#[derive(Clone, Copy)]
struct Fns {
    describe: StrFn,
    load: LoadFn,
    items: ItemsFn,
    programs: CallFn,
    score: CallFn,
    task_free: TaskFreeFn,
    string_free: StringFreeFn,
}

struct Shared {
    // Field order: the library is dropped last (after everything that points into it).
    path: PathBuf,
    fns: Fns,
    _lib: Library,
}

impl Shared {
    /// Take ownership of a plugin-allocated string and decode its envelope.
    unsafe fn take<T: DeserializeOwned>(
        &self,
        plugin: &str,
        call: &'static str,
        p: *mut c_char,
    ) -> Result<T, PluginError> {
        if p.is_null() {
            return Err(self.malformed(call, "null string".into()));
        }
        let text = CStr::from_ptr(p).to_string_lossy().into_owned();
        (self.fns.string_free)(p);
        match serde_json::from_str::<Envelope<T>>(&text) {
            Ok(Envelope::Ok(v)) => Ok(v),
            Ok(Envelope::Error(message)) => Err(PluginError::Plugin {
                plugin: plugin.to_string(),
                call,
                message,
            }),
            Err(e) => Err(self.malformed(call, format!("{e}"))),
        }
    }

    fn malformed(&self, call: &'static str, message: String) -> PluginError {
        PluginError::Malformed {
            path: self.path.clone(),
            call,
            message,
        }
    }
}

/// An opened plugin library.
pub struct Plugin {
    shared: Arc<Shared>,
    description: Description,
}

fn cstring(call: &'static str, s: String) -> Result<CString, PluginError> {
    CString::new(s).map_err(|e| PluginError::Argument {
        call,
        message: e.to_string(),
    })
}

impl Plugin {
    /// Load the library, check its ABI version, resolve every entry point and read its description.
    pub fn open(path: impl AsRef<Path>) -> Result<Plugin, PluginError> {
        let path = path.as_ref().to_path_buf();
        // SAFETY: loading a library runs its initialisers; plugins are trusted native code.
        let lib = unsafe { Library::new(&path) }.map_err(|e| PluginError::Open {
            path: path.clone(),
            reason: loader_reason(&e, &path),
        })?;
        macro_rules! sym {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the symbol type is fixed by the ABI version checked below/above.
                let s = unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) };
                *s.map_err(|e| PluginError::MissingSymbol {
                    path: path.clone(),
                    symbol: $name,
                    reason: loader_reason(&e, &path),
                })?
            }};
        }
        let version_fn = sym!("dtm_plugin_abi_version", unsafe extern "C" fn() -> u32);
        // SAFETY: every ABI version has this function with this signature.
        let plugin_version = unsafe { version_fn() };
        if plugin_version != ABI_VERSION {
            return Err(PluginError::AbiMismatch {
                path,
                plugin: plugin_version,
                host: ABI_VERSION,
            });
        }
        let fns = Fns {
            describe: sym!("dtm_plugin_describe", StrFn),
            load: sym!("dtm_plugin_load", LoadFn),
            items: sym!("dtm_plugin_items", ItemsFn),
            programs: sym!("dtm_plugin_programs", CallFn),
            score: sym!("dtm_plugin_score", CallFn),
            task_free: sym!("dtm_plugin_task_free", TaskFreeFn),
            string_free: sym!("dtm_plugin_string_free", StringFreeFn),
        };
        let shared = Arc::new(Shared {
            path: path.clone(),
            fns,
            _lib: lib,
        });
        let name = path.display().to_string();
        // SAFETY: ABI-checked function, returns a plugin-owned string.
        let description: Description =
            unsafe { shared.take(&name, "describe", (shared.fns.describe)())? };
        Ok(Plugin {
            shared,
            description,
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn describe(&self) -> &Description {
        &self.description
    }

    /// Read the task's data from `data_dir` and build its items.
    pub fn load(&self, data_dir: &Path, options: &LoadOptions) -> Result<Task, PluginError> {
        let call = LoadCall {
            data_dir: data_dir.to_string_lossy().into_owned(),
            options: options.clone(),
        };
        let json = cstring("load", serde_json::to_string(&call).expect("serialisable"))?;
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid NUL-terminated string and out-pointer.
        let out = unsafe { (self.shared.fns.load)(json.as_ptr(), &mut handle) };
        // SAFETY: plugin-owned string from an ABI-checked function.
        let info: Result<TaskInfo, _> =
            unsafe { self.shared.take(&self.description.name, "load", out) };
        match info {
            Ok(info) if !handle.is_null() => Ok(Task {
                shared: self.shared.clone(),
                handle,
                info,
            }),
            Ok(_) => Err(self
                .shared
                .malformed("load", "ok without a task handle".into())),
            Err(e) => {
                if !handle.is_null() {
                    // SAFETY: handle came from this plugin's load.
                    unsafe { (self.shared.fns.task_free)(handle) };
                }
                Err(e)
            }
        }
    }
}

/// A loaded task (owns the plugin's task handle; keeps the library alive).
pub struct Task {
    shared: Arc<Shared>,
    handle: *mut c_void,
    info: TaskInfo,
}

// SAFETY: the plugin-side task is `Send + Sync` (required by the `Benchmark` trait) and all
// entry points take it by shared reference.
unsafe impl Send for Task {}
unsafe impl Sync for Task {}

impl Task {
    /// The settings this task runs with (print them with the result).
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    /// Every item (after `limit`), in upstream file order.
    pub fn items(&self) -> Result<Vec<Item>, PluginError> {
        // SAFETY: live handle; plugin-owned string.
        unsafe {
            let out = (self.shared.fns.items)(self.handle);
            self.shared.take(&self.info.name, "items", out)
        }
    }

    /// Code benchmarks: the programs to run in the sandbox, one per response.
    pub fn programs(
        &self,
        doc_id: usize,
        responses: &[Response],
    ) -> Result<Vec<String>, PluginError> {
        self.call(
            "programs",
            self.shared.fns.programs,
            ItemCall {
                doc_id,
                responses: responses.to_vec(),
                outcomes: vec![],
            },
        )
    }

    /// Score one item. `outcomes` is empty unless the benchmark produces programs.
    pub fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        outcomes: &[Outcome],
    ) -> Result<ItemScore, PluginError> {
        self.call(
            "score",
            self.shared.fns.score,
            ItemCall {
                doc_id,
                responses: responses.to_vec(),
                outcomes: outcomes.to_vec(),
            },
        )
    }

    fn call<T: DeserializeOwned>(
        &self,
        name: &'static str,
        f: CallFn,
        call: ItemCall,
    ) -> Result<T, PluginError> {
        let json = cstring(name, serde_json::to_string(&call).expect("serialisable"))?;
        // SAFETY: live handle, valid string; plugin-owned result.
        unsafe {
            let out = f(self.handle, json.as_ptr());
            self.shared.take(&self.info.name, name, out)
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // SAFETY: the handle came from this plugin's load and is freed once.
        unsafe { (self.shared.fns.task_free)(self.handle) }
    }
}
