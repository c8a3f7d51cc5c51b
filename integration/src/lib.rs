//! Helpers for the end-to-end tests: fixture stores built with real `git`,
//! `git-nfsd` and `agent-runner` processes on 127.0.0.1, wrappers for
//! libnfs's command-line client, a minimal ONC RPC client for protocol
//! checks the command-line tools cannot make (paging, malformed input,
//! restarts), MCP/HTTP clients for the runner, and the benchmarks' report
//! records.

pub mod client;
pub mod codex;
pub mod fixture;
pub mod guest;
pub mod libnfs;
pub mod local_fly;
pub mod peers;
pub mod report;
pub mod runner;
pub mod server;

use std::path::PathBuf;

/// The cargo target directory the tests were built into.
pub fn target_dir() -> PathBuf {
    // Test binaries live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .and_then(|profile| profile.parent())
        .map(PathBuf::from)
        .expect("test binary lives in target/<profile>/deps")
}

/// A binary of this workspace, built by `cargo build --workspace --bins`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        bin.display()
    );
    bin
}

/// Resident memory of process `pid` in KiB (`VmRSS` in /proc), 0 if gone.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Peak resident memory of process `pid` so far in KiB (0 if unknown).
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// Anonymous (heap) resident memory of process `pid` in KiB: RSS without
/// file-backed pages such as memory-mapped pack files, which are page
/// cache the kernel can take back.
pub fn anon_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "RssAnon:")
}

/// CPU time process `pid` has used so far (user + system), 0 if gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is field 3,
    // utime and stime fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
