//! Runs a test script in the QEMU guest (`guest/run-guest`), where the
//! Linux kernel's NFS client reaches a server on the host's 127.0.0.1 as
//! 10.0.2.2.

use std::process::Command;

/// A guest run: its kernel command-line settings and extra files.
#[derive(Debug, Default)]
pub struct GuestRun {
    envs: Vec<String>,
    files: Vec<String>,
    timeout_secs: u32,
    memory_mb: u32,
}

impl GuestRun {
    pub fn new() -> Self {
        Self {
            timeout_secs: 900,
            memory_mb: 1024,
            ..Self::default()
        }
    }

    /// The script sees `GUEST_<KEY>=value` (KEY upper-cased).
    pub fn env(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.envs.push(format!("{key}={value}"));
        self
    }

    /// Kills the guest after this long (default 900 s).
    pub fn timeout(mut self, secs: u32) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// Guest memory; `/tmp` is a tmpfs of half of it (default 1024).
    pub fn memory(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// Copies `src` (file or folder) into the guest at `dest`.
    pub fn file(mut self, src: &str, dest: &str) -> Self {
        self.files.push(format!("{src}:{dest}"));
        self
    }

    /// Boots the guest with `script` as /test.sh and returns its console
    /// output; panics (printing the console) unless the script exits 0.
    pub fn run(self, script: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("test.sh");
        std::fs::write(&path, script).expect("write the guest script");
        let mut cmd = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/guest/run-guest"));
        cmd.arg("--timeout").arg(self.timeout_secs.to_string());
        cmd.arg("--memory").arg(self.memory_mb.to_string());
        for e in &self.envs {
            cmd.arg("--env").arg(e);
        }
        for f in &self.files {
            cmd.arg("--file").arg(f);
        }
        let out = cmd.arg(&path).output().expect("run-guest");
        let console = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{console}");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "guest checks failed (exit {:?})",
            out.status.code()
        );
        console
    }
}

/// Asserts that every check line (`check "NAME" ...`) of `script` passed.
pub fn assert_all_checks_passed(script: &str, console: &str) {
    let checks: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("check \"")?.split('"').next())
        .collect();
    assert!(!checks.is_empty(), "the script has checks");
    for check in checks {
        assert!(
            console.contains(&format!("PASS: {check}")),
            "check {check:?} did not pass"
        );
    }
}
