//! The puzzle's repository served the way agents get theirs: a git-nfsd of
//! the check's own on 127.0.0.1, and one worktree per agent made from its
//! export.
//!
//! On Fly (and in the test guest) each worktree is `mount-worktree`: the
//! export over the kernel's NFS client as the lower layer of an overlayfs
//! whose upper holds the agent's changes. Where the kernel has no NFS client
//! (this project's CI host), each worktree is a plain folder copied out of
//! the export through libnfs (`nfs-ls`, `nfs-cat`), the synthesized `.git`
//! included, so git there works on what git-nfsd served.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

use crate::command;

/// The export's name in the check's store.
pub const REPO: &str = "puzzle";

/// How each worktree is made from the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Worktrees {
    /// `mount-worktree`: NFS lower, overlay upper (needs root and the
    /// kernel's NFS client). What Fly runs.
    Overlay,
    /// A plain folder copied from the export through libnfs
    /// (libnfs-utils), for hosts whose kernel has no NFS client.
    Libnfs,
}

/// Programs the worktrees need.
#[derive(Debug, Clone)]
pub struct Tools {
    pub git_nfsd: PathBuf,
    /// `mount-worktree`; `umount-worktree` is looked up beside it.
    pub mount_worktree: PathBuf,
}

/// A git-nfsd serving `store` on 127.0.0.1, and how worktrees are made of
/// its export; killed when dropped.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    how: Worktrees,
    tools: Tools,
}

impl Server {
    /// Puts `origin` into a new store under `dir` as [`REPO`] and serves it;
    /// its worktrees will be made `how`.
    pub fn start(how: Worktrees, tools: Tools, dir: &Path, origin: &Path) -> anyhow::Result<Self> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
        command::output(
            Command::new("git")
                .args(["clone", "-q", "--bare"])
                .arg(origin)
                .arg(store.join(format!("{REPO}.git"))),
        )?;
        let git_nfsd = &tools.git_nfsd;
        let mut child = Command::new(git_nfsd)
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(&store)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", git_nfsd.display()))?;
        let stdout = child.stdout.take().context("git-nfsd stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                bail!("git-nfsd exited before listening");
            };
            if let Some(rest) = line?.strip_prefix("git-nfsd listening on ") {
                let addr = rest.split(',').next().unwrap_or_default();
                break addr
                    .parse()
                    .with_context(|| format!("git-nfsd's address {addr:?}"))?;
            }
        };
        // Drain the rest, so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            addr,
            how,
            tools,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes a worktree of `REPO@rev` at `dir`.
    pub fn worktree(&self, rev: &str, dir: &Path) -> anyhow::Result<Worktree> {
        let export = format!("{REPO}@{rev}");
        match self.how {
            Worktrees::Overlay => {
                let mount = &self.tools.mount_worktree;
                command::output(
                    Command::new(mount)
                        .arg(self.addr.to_string())
                        .arg(&export)
                        .arg(dir)
                        .arg("--upper")
                        .arg(with_suffix(dir, ".upper")),
                )?;
                Ok(Worktree {
                    dir: dir.to_owned(),
                    unmount: Some(mount.with_file_name("umount-worktree")),
                })
            }
            Worktrees::Libnfs => {
                copy_through_libnfs(self.addr, &export, dir)?;
                Ok(Worktree {
                    dir: dir.to_owned(),
                    unmount: None,
                })
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One agent's worktree; an overlay one is unmounted when dropped.
pub struct Worktree {
    dir: PathBuf,
    unmount: Option<PathBuf>,
}

impl Worktree {
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        if let Some(script) = &self.unmount
            && let Err(e) = command::output(Command::new(script).arg(&self.dir))
        {
            eprintln!("smoke-check: unmounting {}: {e:#}", self.dir.display());
        }
    }
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// `nfs-ls` and `nfs-cat` of an export path.
fn nfs_url(server: SocketAddr, path: &str) -> String {
    let port = server.port();
    format!(
        "nfs://{}/{path}?nfsport={port}&mountport={port}&version=3",
        server.ip()
    )
}

fn libnfs(tool: &str, url: &str) -> anyhow::Result<Vec<u8>> {
    command::output(Command::new(tool).arg(url))
        .with_context(|| format!("{tool} {url} (Debian package libnfs-utils)"))
}

/// Copies the export `path` into the new folder `dir`, one folder listing
/// and one file read at a time, keeping the executable bits.
fn copy_through_libnfs(server: SocketAddr, path: &str, dir: &Path) -> anyhow::Result<()> {
    let mut folders = vec![String::new()];
    while let Some(folder) = folders.pop() {
        let here = if folder.is_empty() {
            path.to_owned()
        } else {
            format!("{path}/{folder}")
        };
        let target = dir.join(&folder);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        let listing = libnfs("nfs-ls", &nfs_url(server, &here))?;
        for line in String::from_utf8(listing)
            .context("nfs-ls printed a name that is not UTF-8")?
            .lines()
        {
            let (mode, name) = parse_listing(line)?;
            if name == "." || name == ".." {
                continue;
            }
            let relative = if folder.is_empty() {
                name.to_owned()
            } else {
                format!("{folder}/{name}")
            };
            match mode.as_bytes().first() {
                Some(b'd') => folders.push(relative),
                Some(b'-') => {
                    let bytes = libnfs("nfs-cat", &nfs_url(server, &format!("{path}/{relative}")))?;
                    let file = dir.join(&relative);
                    std::fs::write(&file, bytes)
                        .with_context(|| format!("writing {}", file.display()))?;
                    if mode.contains('x') {
                        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
                    }
                }
                _ => bail!("{here}/{name}: a {mode} entry cannot be copied through libnfs"),
            }
        }
    }
    Ok(())
}

/// One `nfs-ls` line, `-rw-r--r--  1  1000  1000   120 name`: its mode and
/// name.
fn parse_listing(line: &str) -> anyhow::Result<(&str, &str)> {
    let mut rest = line;
    let mut mode = "";
    for field in 0..5 {
        rest = rest.trim_start_matches(' ');
        let end = rest
            .find(' ')
            .with_context(|| format!("nfs-ls line {line:?} has too few fields"))?;
        if field == 0 {
            mode = &rest[..end];
        }
        rest = &rest[end..];
    }
    let name = rest.strip_prefix(' ').unwrap_or(rest);
    if name.is_empty() || name.contains('/') {
        bail!("nfs-ls line {line:?}: unexpected name {name:?}");
    }
    Ok((mode, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_give_mode_and_name() {
        assert_eq!(
            parse_listing("-rwxr-xr-x  1  1000  1000       120 run tests.sh").unwrap(),
            ("-rwxr-xr-x", "run tests.sh")
        );
        assert_eq!(
            parse_listing("drwxr-xr-x  3     0     0      4096 .git").unwrap(),
            ("drwxr-xr-x", ".git")
        );
        assert!(parse_listing("total 3").is_err());
        assert!(parse_listing("drwxr-xr-x  3     0     0      4096 a/b").is_err());
    }
}
