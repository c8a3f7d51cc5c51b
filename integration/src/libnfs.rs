//! The independent client: `nfs-ls` and `nfs-cat` from Debian's libnfs-utils.

use std::process::Command;

/// One line of `nfs-ls -R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub path: Vec<u8>,
}

/// Runs `nfs-ls [-R] url` and parses its lines.
pub fn ls(url: &str, recursive: bool) -> Result<Vec<Listed>, String> {
    let mut cmd = Command::new("nfs-ls");
    if recursive {
        cmd.arg("-R");
    }
    let out = cmd
        .arg(url)
        .output()
        .map_err(|e| format!("running nfs-ls: {e} (install libnfs-utils)"))?;
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect())
}

/// Lists a whole export, folder by folder: `nfs-ls -R` stops at 15 levels
/// ("Recursion detected!"), so each folder is mounted and listed on its own
/// (which also exercises MOUNT of paths inside a worktree). Paths are
/// relative to the export.
pub fn ls_tree(url: impl Fn(&str) -> String, export: &str) -> Result<Vec<Listed>, String> {
    let mut all = Vec::new();
    let mut folders = vec![Vec::new()];
    while let Some(folder) = folders.pop() {
        let mut path = export.trim_end_matches('/').to_owned();
        if !folder.is_empty() {
            path.push('/');
            path.push_str(std::str::from_utf8(&folder).map_err(|e| e.to_string())?);
        }
        for mut entry in ls(&url(&path), false)? {
            let mut full = folder.clone();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&entry.path);
            entry.path = full;
            if entry.mode.starts_with('d') {
                folders.push(entry.path.clone());
            }
            all.push(entry);
        }
    }
    Ok(all)
}

/// `drwxr-xr-x  2     0     0         4096 a/b`: mode, nlink, uid, gid, size, path.
fn parse_line(line: &[u8]) -> Listed {
    let mut rest = line;
    let mut fields = Vec::new();
    for _ in 0..5 {
        let start = rest.iter().position(|b| *b != b' ').unwrap_or(rest.len());
        rest = &rest[start..];
        let end = rest.iter().position(|b| *b == b' ').unwrap_or(rest.len());
        fields.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = &rest[end..];
    }
    let path = rest.strip_prefix(b" ").unwrap_or(rest).to_vec();
    Listed {
        mode: fields[0].clone(),
        uid: fields[2].parse().unwrap_or(u32::MAX),
        gid: fields[3].parse().unwrap_or(u32::MAX),
        size: fields[4].parse().unwrap_or(u64::MAX),
        path,
    }
}

/// Runs `nfs-cat url` and returns the bytes, or stderr on failure.
pub fn cat(url: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("nfs-cat")
        .arg(url)
        .output()
        .map_err(|e| format!("running nfs-cat: {e} (install libnfs-utils)"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
