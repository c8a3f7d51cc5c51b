//! Discovers repositories in a store directory.
//!
//! `NAME.git` (bare) exports as `NAME`, `NAME/.git` (non-bare) as `NAME`;
//! folders nest (`org/app.git` is `org/app`). Names containing `@` are
//! skipped, since `@` separates the repository from the revision in export
//! paths.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::{Repo, RepoIndex};

/// How deep folders may nest inside the store.
const MAX_DEPTH: usize = 16;

/// Why the store could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ScanError {
    #[error("store directory {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the repository at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<gix::Error>,
    },
}

/// Scans `root` for repositories.
pub fn scan(root: &Path) -> Result<RepoIndex, ScanError> {
    if !root.is_dir() {
        return Err(ScanError::NotADirectory(root.to_path_buf()));
    }
    let mut index = RepoIndex::default();
    // The store itself may be a repository: export it under its folder name.
    if let Some(kind) = repo_kind(root) {
        let name = export_name(root, kind).unwrap_or_else(|| "repo".to_owned());
        add(&mut index, name, root.to_path_buf());
        return Ok(index);
    }
    walk(root, "", 0, &mut index)?;
    Ok(index)
}

/// An index holding exactly one repository.
pub fn single(name: String, path: PathBuf) -> Result<RepoIndex, ScanError> {
    let repo = Repo::open(name, path.clone()).map_err(|source| ScanError::Open {
        path,
        source: Box::new(source),
    })?;
    let repo = Arc::new(repo);
    let mut index = RepoIndex::default();
    index.by_id.insert(repo.id, Arc::clone(&repo));
    index.by_name.insert(repo.name.clone(), repo);
    Ok(index)
}

#[derive(Clone, Copy)]
enum Kind {
    Bare,
    WithWorktree,
}

fn repo_kind(dir: &Path) -> Option<Kind> {
    if dir.join(".git").exists() {
        return Some(Kind::WithWorktree);
    }
    let looks_bare =
        dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir();
    looks_bare.then_some(Kind::Bare)
}

fn export_name(dir: &Path, kind: Kind) -> Option<String> {
    let file = dir.file_name()?.to_str()?;
    Some(match kind {
        Kind::Bare => file.strip_suffix(".git").unwrap_or(file).to_owned(),
        Kind::WithWorktree => file.to_owned(),
    })
}

fn walk(dir: &Path, prefix: &str, depth: usize, index: &mut RepoIndex) -> Result<(), ScanError> {
    if depth > MAX_DEPTH {
        tracing::warn!(dir = %dir.display(), "store nests deeper than {MAX_DEPTH} folders; not descending");
        return Ok(());
    }
    let read = |source| ScanError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        // Symlinks are not followed: the store's layout is what is on disk.
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if !file_type.is_dir() {
            continue;
        }
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %path.display(), "skipping a folder whose name is not UTF-8");
            continue;
        };
        if file.starts_with('.') {
            continue;
        }
        match repo_kind(&path) {
            Some(kind) => {
                let Some(name) = export_name(&path, kind) else {
                    continue;
                };
                add(index, format!("{prefix}{name}"), path);
            }
            None => walk(&path, &format!("{prefix}{file}/"), depth + 1, index)?,
        }
    }
    Ok(())
}

fn add(index: &mut RepoIndex, name: String, path: PathBuf) {
    if name.contains('@') || name.is_empty() {
        tracing::warn!(%name, path = %path.display(), "skipping a repository whose name is empty or contains '@'");
        return;
    }
    if index.by_name.contains_key(&name) {
        tracing::warn!(%name, path = %path.display(), "two repositories export as the same name; keeping the first");
        return;
    }
    match Repo::open(name.clone(), path.clone()) {
        Ok(repo) => {
            let repo = Arc::new(repo);
            if let Some(other) = index.by_id.insert(repo.id, Arc::clone(&repo)) {
                tracing::error!(a = %other.name, b = %repo.name, "repository ids collide");
            }
            index.by_name.insert(name, repo);
        }
        Err(e) => {
            tracing::warn!(%name, path = %path.display(), error = %e, "skipping a repository that does not open");
        }
    }
}
