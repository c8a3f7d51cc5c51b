//! One boot of a machine: a process tree in the machine's network
//! namespace, with its own mount, PID and UTS namespaces and a root that is
//! the image's files under a fresh writable layer, as a Fly machine's root
//! filesystem is rebuilt from its image at every boot.
//!
//! ```text
//! ip netns exec <ns> unshare --mount --pid --uts --fork --kill-child \
//!     sh boot.sh            # mounts the root, /proc, /dev, the volume,
//!                           # /.fly (the Machines API socket), /etc/hosts
//!       └─ exec chroot ROOT [setpriv USER] ENTRYPOINT...   (PID 1)
//! ```
//!
//! Suspending freezes every process of the machine (SIGSTOP); resuming
//! thaws them (SIGCONT): the processes carry on where they were, as after
//! Fly's snapshot resume. Stopping signals PID 1 with the machine's stop
//! signal and kills the namespace after its timeout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};

/// Everything one boot needs.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// The machine id: its hostname.
    pub id: String,
    /// The machine's folder on the host (its root's writable layer, logs).
    pub dir: PathBuf,
    pub namespace: String,
    /// The image's files (`/` for a machine made of the host's own files).
    pub image_root: PathBuf,
    /// The image's `USER`, resolved in the image's own `/etc/passwd`.
    pub user: Option<String>,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// A volume: (folder on the host, path in the machine).
    pub volume: Option<(PathBuf, String)>,
    /// The folder the machine sees as `/.fly` (holds its `api` socket).
    pub fly_dir: PathBuf,
    pub hosts_file: PathBuf,
}

/// A running boot's process tree, for signals.
#[derive(Debug, Clone)]
pub struct Boot {
    /// `unshare`'s pid; its child is the machine's PID 1.
    unshare: u32,
}

/// Why a machine could not boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the machine's process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the machine has nothing to run: no entrypoint or command")]
    NoCommand,
}

impl Boot {
    /// Starts the boot; the returned child is `unshare`, which exits when
    /// the machine's PID 1 does, with its status.
    pub fn spawn(spec: &BootSpec) -> Result<(Self, Child), BootError> {
        if spec.argv.is_empty() {
            return Err(BootError::NoCommand);
        }
        let prepare = |path: &Path| {
            std::fs::create_dir_all(path).map_err(|source| BootError::Prepare {
                path: path.to_path_buf(),
                source,
            })
        };
        // The writable layer is new at every boot, as Fly's root is.
        let layer = spec.dir.join("layer");
        let _ = std::fs::remove_dir_all(&layer);
        for sub in ["upper", "work", "root"] {
            prepare(&layer.join(sub))?;
        }
        prepare(&spec.fly_dir)?;
        let script = boot_script(spec, &layer);
        let script_path = spec.dir.join("boot.sh");
        std::fs::write(&script_path, script).map_err(|source| BootError::Prepare {
            path: script_path.clone(),
            source,
        })?;
        let log_path = spec.dir.join("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| BootError::Prepare {
                path: log_path,
                source,
            })?;
        let log_err = log.try_clone().map_err(BootError::Spawn)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &spec.namespace])
            .args([
                "unshare",
                "--mount",
                "--pid",
                "--uts",
                "--fork",
                "--kill-child=SIGKILL",
                "--propagation",
                "private",
                "/bin/sh",
            ])
            .arg(&script_path)
            .env_clear()
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false)
            .spawn()
            .map_err(BootError::Spawn)?;
        let unshare = child
            .id()
            .ok_or_else(|| BootError::Spawn(std::io::Error::other("the process exited at once")))?;
        Ok((Self { unshare }, child))
    }

    /// The machine's PID 1 (the entrypoint), once `unshare` has forked it.
    pub fn init_pid(&self) -> Option<u32> {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.unshare)).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// Sends `signal` to the machine's PID 1.
    pub fn signal_init(&self, signal: Signal) -> bool {
        self.init_pid()
            .and_then(|pid| Pid::from_raw(i32::try_from(pid).ok()?))
            .is_some_and(|pid| rustix::process::kill_process(pid, signal).is_ok())
    }

    /// Kills the whole machine: `unshare` kills PID 1, and the PID
    /// namespace goes with it.
    pub fn kill(&self) {
        for pid in self.processes() {
            signal(pid, Signal::KILL);
        }
        if let Some(pid) = i32::try_from(self.unshare).ok().and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }

    /// Freezes every process of the machine. Two passes: a process forked
    /// (or woken by another's SIGCONT) during the first is caught by the
    /// second.
    pub fn freeze(&self) {
        for _ in 0..2 {
            for pid in self.processes() {
                signal(pid, Signal::STOP);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Thaws every process of the machine.
    pub fn thaw(&self) {
        for pid in self.processes() {
            signal(pid, Signal::CONT);
        }
    }

    /// Every process in the machine's PID namespace.
    fn processes(&self) -> Vec<u32> {
        let Some(init) = self.init_pid() else {
            return Vec::new();
        };
        let Ok(namespace) = std::fs::read_link(format!("/proc/{init}/ns/pid")) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns == namespace)
            })
            .collect()
    }
}

fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// The script that makes the machine's root and becomes its PID 1.
fn boot_script(spec: &BootSpec, layer: &Path) -> String {
    let root = layer.join("root");
    let q = |path: &Path| quote(&path.to_string_lossy());
    let r = q(&root);
    let mut script = String::from("set -eu\n");
    script.push_str(&format!("hostname {}\n", quote(&spec.id)));
    script.push_str(&format!(
        "mount -t overlay overlay -o {} {r}\n",
        quote(&format!(
            "lowerdir={},upperdir={},workdir={}",
            spec.image_root.display(),
            layer.join("upper").display(),
            layer.join("work").display()
        ))
    ));
    for (dir, mount) in [
        ("proc", "mount -t proc proc"),
        ("sys", "mount -t sysfs sysfs"),
        ("dev", "mount --rbind /dev"),
        // A machine of the host's own files sees the host's /tmp (where
        // a checkout and its binaries may live); an image gets a fresh one.
        (
            "tmp",
            if spec.image_root == Path::new("/") {
                "mount --rbind /tmp"
            } else {
                "mount -t tmpfs -o mode=1777 tmpfs"
            },
        ),
        ("run", "mount -t tmpfs -o mode=755 tmpfs"),
        (".fly", ""),
    ] {
        script.push_str(&format!("mkdir -p {r}/{dir}\n"));
        if !mount.is_empty() {
            script.push_str(&format!("{mount} {r}/{dir}\n"));
        }
    }
    script.push_str(&format!("mount --bind {} {r}/.fly\n", q(&spec.fly_dir)));
    script.push_str(&format!(
        "mkdir -p {r}/etc && touch {r}/etc/hosts && mount --bind {} {r}/etc/hosts\n",
        q(&spec.hosts_file)
    ));
    if let Some((host, path)) = &spec.volume {
        let target = format!("{}{}", root.display(), path);
        script.push_str(&format!(
            "mkdir -p {0} && mount --bind {1} {0}\n",
            quote(&target),
            q(host)
        ));
    }
    // chroot first (it needs root), then the image's own setpriv drops to
    // its USER: busybox's chroot (the test guest's) has no --userspec.
    script.push_str(&format!("cd {r}\nexec chroot {r}"));
    if let Some(user) = &spec.user {
        let ids = user_spec(&spec.image_root, user);
        let (uid, gid) = ids.split_once(':').unwrap_or((&ids, &ids));
        script.push_str(&format!(
            " setpriv --reuid={} --regid={} --clear-groups --",
            quote(uid),
            quote(gid)
        ));
    }
    for arg in &spec.argv {
        script.push(' ');
        script.push_str(&quote(arg));
    }
    script.push('\n');
    script
}

/// The image's `USER` as `uid:gid`, looked up in the image's own
/// `/etc/passwd` (the host's names need not match the image's).
fn user_spec(image_root: &Path, user: &str) -> String {
    let (name, group) = user.split_once(':').unwrap_or((user, ""));
    let numeric = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let passwd = std::fs::read_to_string(image_root.join("etc/passwd")).unwrap_or_default();
    let entry = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && (fields[0] == name || fields[2] == name))
            .then(|| (fields[2].to_owned(), fields[3].to_owned()))
    });
    let (uid, primary_gid) = match entry {
        Some(found) => found,
        None if numeric(name) => (name.to_owned(), name.to_owned()),
        // Unknown: let chroot try the name.
        None => return user.to_owned(),
    };
    let gid = if group.is_empty() {
        primary_gid
    } else {
        group.to_owned()
    };
    format!("{uid}:{gid}")
}

/// A POSIX shell single-quoted word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(user_spec(dir.path(), "nobody"), "65534:65534");
        assert_eq!(user_spec(dir.path(), "65534:100"), "65534:100");
        assert_eq!(user_spec(dir.path(), "1000"), "1000:1000");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_script_mounts_the_volume_and_runs_the_entrypoint() {
        let spec = BootSpec {
            id: "m1".into(),
            dir: "/m".into(),
            namespace: "ns".into(),
            image_root: "/img".into(),
            user: None,
            argv: vec!["/bin/echo".into(), "a b".into()],
            env: BTreeMap::new(),
            volume: Some(("/vol".into(), "/data".into())),
            fly_dir: "/m/fly".into(),
            hosts_file: "/hosts".into(),
        };
        let script = boot_script(&spec, Path::new("/m/layer"));
        assert!(script.contains("lowerdir=/img,upperdir=/m/layer/upper"));
        assert!(script.contains("mount --bind '/vol' '/m/layer/root/data'"));
        assert!(script.ends_with("exec chroot '/m/layer/root' '/bin/echo' 'a b'\n"));
    }
}
