//! MOUNT paths (`/<repo>@<rev>/<folder>`) as a client sends them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nfs_server::fuzzing::export_path(data));
