//! A connection's byte stream split into RPC records (record marking).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nfs_server::fuzzing::record_stream(data));
