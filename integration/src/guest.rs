//! Runs a test script in the QEMU guest (`guest/run-guest`), where the
//! Linux kernel's NFS client reaches a server on the host's 127.0.0.1 as
//! 10.0.2.2.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A guest run: its kernel command-line settings and extra files.
#[derive(Debug, Default)]
pub struct GuestRun {
    envs: Vec<String>,
    files: Vec<String>,
    timeout_secs: u32,
    memory_mb: u32,
    /// Folders made for the run (a trimmed Python library), kept until it ends.
    staged: Vec<tempfile::TempDir>,
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

    /// Copies the host program `src` into the guest at `dest`, with every
    /// shared library `ldd` lists for it at the path `ldd` gives (nothing
    /// more for a static binary).
    pub fn program(mut self, src: &Path, dest: &str) -> Self {
        for lib in shared_libraries(src) {
            // The file itself, not a link to it: /lib64/ld-linux-x86-64.so.2
            // links to a path the guest may not have.
            let real = std::fs::canonicalize(&lib).expect("a library ldd listed");
            let path = lib.to_string_lossy();
            self = self.file(&real.to_string_lossy(), &path[1..]);
        }
        self.file(&src.to_string_lossy(), dest)
    }

    /// What the agent-runner image (`fly/Dockerfile`, target
    /// `agent-runner`) has that the base guest lacks: bash, the CA
    /// certificates (reqwest loads them even to speak plain HTTP), Debian's
    /// `/etc/host.conf` (`multi on`: a name on several lines of /etc/hosts
    /// has all their addresses, not the first line's only), `agent-runner`,
    /// `git-nfsd` (the entrypoint's relay) and `write-codex-config` in
    /// /usr/local/bin, and the overlay scripts in /opt/overlay-scripts.
    pub fn agent_runner_image(self) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        self.program(Path::new("/bin/bash"), "bin/bash")
            .file(
                "/etc/ssl/certs/ca-certificates.crt",
                "etc/ssl/certs/ca-certificates.crt",
            )
            .file("/etc/host.conf", "etc/host.conf")
            .program(
                &crate::workspace_bin("agent-runner"),
                "usr/local/bin/agent-runner",
            )
            .program(&crate::workspace_bin("git-nfsd"), "usr/local/bin/git-nfsd")
            .file(
                &root
                    .join("fly/agent-runner/write-codex-config")
                    .to_string_lossy(),
                "usr/local/bin/write-codex-config",
            )
            .file(
                &root.join("overlay-scripts").to_string_lossy(),
                "opt/overlay-scripts",
            )
    }

    /// The host's `python3` with its standard library, less what a test
    /// never imports (the static libpython, tkinter, IDLE, ...): 25 MB
    /// instead of 54 MB of initramfs.
    pub fn python3(mut self) -> Self {
        let python =
            std::fs::canonicalize("/usr/bin/python3").expect("python3 (Debian package python3)");
        let version = python
            .file_name()
            .and_then(|n| n.to_str())
            .expect("python3's name")
            .to_owned();
        let stdlib = Path::new("/usr/lib").join(&version);
        let staged = tempfile::tempdir().expect("tempdir");
        let trimmed = staged.path().join(&version);
        copy_tree_except(
            &stdlib,
            &trimmed,
            &[
                "__pycache__",
                "test",
                "idlelib",
                "tkinter",
                "turtledemo",
                "lib2to3",
                "ensurepip",
                "pydoc_data",
                "config-",
            ],
        );
        self = self
            .program(&python, "usr/bin/python3")
            .file(&trimmed.to_string_lossy(), &format!("usr/lib/{version}"));
        self.staged.push(staged);
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

/// The libraries `ldd` lists for `program`: none for a static one.
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .expect("running ldd");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect()
}

/// Copies the folder `src` to `dst`, leaving out entries whose name starts
/// with one of `skip`; a symbolic link to a file becomes a copy of it.
fn copy_tree_except(src: &Path, dst: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dst).expect("creating a staged folder");
    for entry in std::fs::read_dir(src).expect("reading a folder to stage") {
        let entry = entry.expect("a folder entry");
        let name = entry.file_name();
        if skip.iter().any(|s| name.to_string_lossy().starts_with(s)) {
            continue;
        }
        let kind = entry.file_type().expect("an entry's type");
        let to = dst.join(&name);
        if kind.is_dir() {
            copy_tree_except(&entry.path(), &to, skip);
        } else if entry.path().is_file() {
            std::fs::copy(entry.path(), &to).expect("staging a file");
        }
    }
}
