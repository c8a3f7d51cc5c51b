//! Telling an OOM kill from any other SIGKILL. The kernel counts the
//! processes its OOM killer has killed (`oom_kill` in `/proc/vmstat`, for
//! memory limits of cgroups too); an agent that died of SIGKILL while that
//! count rose was, on a machine that runs one agent, killed for memory.

/// The kernel's count of OOM kills so far, if it can be read.
pub fn kills_so_far() -> Option<u64> {
    parse_vmstat(&std::fs::read_to_string("/proc/vmstat").ok()?)
}

fn parse_vmstat(vmstat: &str) -> Option<u64> {
    vmstat
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_oom_kill_count() {
        assert_eq!(parse_vmstat("pgfault 10\noom_kill 3\nfoo 1\n"), Some(3));
        assert_eq!(parse_vmstat("pgfault 10\n"), None);
        assert!(kills_so_far().is_some(), "this kernel reports oom_kill");
    }
}
