//! One RPC call record through the parser, the program table and the
//! handler it names (every procedure's argument decoding), over a fixture
//! store.
#![no_main]

use std::sync::LazyLock;

use nfs_server::fuzzing::CallHarness;

static HARNESS: LazyLock<CallHarness> =
    LazyLock::new(|| CallHarness::new().expect("building the fixture store"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    HARNESS.call(data);
});
