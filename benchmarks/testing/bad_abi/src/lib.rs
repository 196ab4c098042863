//! A library that exports only `dtm_plugin_abi_version`, returning a version no host speaks.

/// The ABI version this test plugin claims.
pub const CLAIMED_ABI_VERSION: u32 = 9999;

#[no_mangle]
pub extern "C" fn dtm_plugin_abi_version() -> u32 {
    CLAIMED_ABI_VERSION
}
