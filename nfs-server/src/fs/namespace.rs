//! The root export `/`: a read-only directory tree of the store's repository
//! names, whose leaves lead into each repository's worktree at HEAD.

use std::collections::{BTreeMap, HashMap};

use crate::store::RepoIndex;

/// Stable id of a namespace folder: a hash of its path ("" is the root).
pub fn namespace_id(path: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(path.as_bytes(), 0x6e73)
}

/// A child of a namespace folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsEntry {
    Folder(u64),
    /// A repository, by its full export name.
    Repo(String),
}

/// One namespace folder.
#[derive(Debug, Default)]
pub struct NsFolder {
    pub path: String,
    pub parent: u64,
    /// Sorted by name, so positions are stable READDIR cookies.
    pub entries: Vec<(String, NsEntry)>,
}

/// All folders derived from one snapshot of the store's index.
#[derive(Debug, Default)]
pub struct Namespace {
    folders: HashMap<u64, NsFolder>,
}

impl Namespace {
    pub fn build(index: &RepoIndex) -> Self {
        let mut tree: BTreeMap<String, BTreeMap<String, NsEntry>> = BTreeMap::new();
        tree.entry(String::new()).or_default();
        for name in index.names() {
            let mut parent = String::new();
            let mut components = name.split('/').peekable();
            while let Some(component) = components.next() {
                let path = if parent.is_empty() {
                    component.to_owned()
                } else {
                    format!("{parent}/{component}")
                };
                let entry = if components.peek().is_none() {
                    NsEntry::Repo(name.to_owned())
                } else {
                    NsEntry::Folder(namespace_id(&path))
                };
                let siblings = tree.entry(parent.clone()).or_default();
                // A repository wins over a folder of the same name.
                if !matches!(siblings.get(component), Some(NsEntry::Repo(_))) {
                    siblings.insert(component.to_owned(), entry);
                }
                if components.peek().is_some() {
                    tree.entry(path.clone()).or_default();
                }
                parent = path;
            }
        }
        let folders = tree
            .into_iter()
            .map(|(path, entries)| {
                let parent = match path.rsplit_once('/') {
                    Some((p, _)) => namespace_id(p),
                    None => namespace_id(""),
                };
                let folder = NsFolder {
                    parent,
                    entries: entries.into_iter().collect(),
                    path: path.clone(),
                };
                (namespace_id(&path), folder)
            })
            .collect();
        Self { folders }
    }

    pub fn folder(&self, id: u64) -> Option<&NsFolder> {
        self.folders.get(&id)
    }

    pub fn folder_by_path(&self, path: &str) -> Option<(u64, &NsFolder)> {
        let id = namespace_id(path);
        self.folders.get(&id).map(|f| (id, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable() {
        assert_eq!(namespace_id("org"), namespace_id("org"));
        assert_ne!(namespace_id("org"), namespace_id(""));
    }
}
