//! The versioned C ABI between the `harness` and benchmark plugins (see `benchmarks/API.md`).
//!
//! Two sides live here:
//! * plugin authors implement [`Benchmark`] and call [`export_plugin!`], which generates the
//!   `extern "C"` functions (panics are caught and become error results);
//! * the harness uses [`host`] to open a plugin `.so`, describe it, load a task, fetch requests,
//!   score responses, and [`host::aggregate`] the per-item scores.
//!
//! Everything crossing the boundary is a NUL-terminated UTF-8 JSON string of the types below.

mod aggregate;
pub mod host;
mod types;
pub mod validate;

#[doc(hidden)]
pub mod __private;

pub use types::*;

/// Bumped on every incompatible change of the functions or of the JSON types: it is this crate's
/// major version (`Cargo.toml`), so the crate version and the ABI cannot drift apart.
pub const ABI_VERSION: u32 = parse_u32(env!("CARGO_PKG_VERSION_MAJOR"));

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut n = 0u32;
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "major version is a number");
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

thread_local! {
    static DATA_FILES: std::cell::RefCell<Vec<std::path::PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A plugin calls this for every data file its `load` reads (the readers in
/// `dtm-bench-common` do it for you); the files are listed in [`TaskInfo::data_files`] and the
/// harness records their hashes beside the results, so a number names the data it came from.
pub fn record_data_file(path: &std::path::Path) {
    DATA_FILES.with(|f| f.borrow_mut().push(path.to_owned()));
}

/// The files recorded since the last call, relative to `data_dir`, sorted and deduplicated.
pub(crate) fn take_data_files(data_dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<String> = DATA_FILES
        .with(|f| std::mem::take(&mut *f.borrow_mut()))
        .into_iter()
        .map(|p| {
            p.strip_prefix(data_dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Result type of plugin code: errors are plain messages (they cross the C boundary as text).
pub type PluginResult<T> = Result<T, String>;

/// What a benchmark plugin implements. One value is one loaded task (data read, prompts built).
///
/// Implementations must be `Send + Sync`: the harness may score items from several threads.
pub trait Benchmark: Send + Sync + 'static {
    /// Static self-description: name, metrics, default shots, subtasks, options.
    fn describe() -> Description
    where
        Self: Sized;

    /// Read the upstream files under `data_dir` and build the task. `options` has already been
    /// checked against [`Description::options`] and `max_num_fewshot`.
    fn load(data_dir: &std::path::Path, options: &LoadOptions) -> PluginResult<Self>
    where
        Self: Sized;

    /// Every item of the task in upstream file order; `doc_id` must be unique.
    /// (`limit` and the `max_new_tokens` cap are applied by the exported layer, not here.)
    fn items(&self) -> Vec<Item>;

    /// Code benchmarks: one program per response, to be run in the sandbox.
    fn programs(&self, doc_id: usize, responses: &[Response]) -> PluginResult<Vec<String>> {
        let _ = (doc_id, responses);
        Err("this benchmark does not produce programs".to_string())
    }

    /// Score one item from the model's responses (in request order) and, for code benchmarks,
    /// the sandbox outcomes (one per program).
    fn score(
        &self,
        doc_id: usize,
        responses: &[Response],
        outcomes: &[Outcome],
    ) -> PluginResult<ItemScore>;
}

/// Generate the plugin's `extern "C"` entry points for a type implementing [`Benchmark`].
/// Use it once, in the crate root of a `cdylib`.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty) => {
        #[no_mangle]
        pub extern "C" fn dtm_plugin_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        #[no_mangle]
        pub extern "C" fn dtm_plugin_describe() -> *mut ::std::os::raw::c_char {
            $crate::__private::describe::<$ty>()
        }

        /// # Safety
        /// `request` is a NUL-terminated string; `task_out` is a valid pointer.
        #[no_mangle]
        pub unsafe extern "C" fn dtm_plugin_load(
            request: *const ::std::os::raw::c_char,
            task_out: *mut *mut ::std::os::raw::c_void,
        ) -> *mut ::std::os::raw::c_char {
            $crate::__private::load::<$ty>(request, task_out)
        }

        /// # Safety
        /// `task` came from `dtm_plugin_load` and was not freed.
        #[no_mangle]
        pub unsafe extern "C" fn dtm_plugin_items(
            task: *const ::std::os::raw::c_void,
        ) -> *mut ::std::os::raw::c_char {
            $crate::__private::items::<$ty>(task)
        }

        /// # Safety
        /// `task` came from `dtm_plugin_load`; `call` is a NUL-terminated string.
        #[no_mangle]
        pub unsafe extern "C" fn dtm_plugin_programs(
            task: *const ::std::os::raw::c_void,
            call: *const ::std::os::raw::c_char,
        ) -> *mut ::std::os::raw::c_char {
            $crate::__private::programs::<$ty>(task, call)
        }

        /// # Safety
        /// `task` came from `dtm_plugin_load`; `call` is a NUL-terminated string.
        #[no_mangle]
        pub unsafe extern "C" fn dtm_plugin_score(
            task: *const ::std::os::raw::c_void,
            call: *const ::std::os::raw::c_char,
        ) -> *mut ::std::os::raw::c_char {
            $crate::__private::score::<$ty>(task, call)
        }

        /// # Safety
        /// `task` came from `dtm_plugin_load` and is freed once.
        #[no_mangle]
        pub unsafe extern "C" fn dtm_plugin_task_free(task: *mut ::std::os::raw::c_void) {
            $crate::__private::task_free::<$ty>(task)
        }

        /// # Safety
        /// `s` was returned by this plugin and is freed once.
        #[no_mangle]
        pub unsafe extern "C" fn dtm_plugin_string_free(s: *mut ::std::os::raw::c_char) {
            $crate::__private::string_free(s)
        }
    };
}
