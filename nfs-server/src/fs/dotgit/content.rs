//! Contents of the small synthesized files: HEAD, config, packed-refs,
//! description and info/exclude.

use gix::ObjectId;

use super::GitFile;

/// A reference of the store, as of the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEntry {
    /// Full name, `refs/heads/...` or `refs/tags/...`.
    pub name: String,
    pub id: ObjectId,
    /// The commit an annotated tag points at.
    pub peeled: Option<ObjectId>,
}

/// What the small files of one export are made from.
#[derive(Debug, Clone)]
pub struct ExportView {
    pub commit: ObjectId,
    /// The branch the export was mounted by (short name), if any.
    pub branch: Option<String>,
    /// Branches and tags of the store when the view was made.
    pub refs: Vec<RefEntry>,
    /// `remote.origin.url` of the store's repository, if it has one.
    pub origin_url: Option<String>,
    /// The repository's export name.
    pub name: String,
}

/// The bytes of `file` for `view` (not the index; see [`super::index`]).
pub fn render(file: GitFile, view: &ExportView) -> Vec<u8> {
    match file {
        GitFile::Head => match &view.branch {
            Some(branch) => format!("ref: refs/heads/{branch}\n").into_bytes(),
            None => format!("{}\n", view.commit).into_bytes(),
        },
        GitFile::Config => config(view).into_bytes(),
        GitFile::Description => format!(
            "Worktree of {} at {}, served by git-nfsd.\n",
            view.name, view.commit
        )
        .into_bytes(),
        GitFile::PackedRefs => packed_refs(view).into_bytes(),
        GitFile::InfoExclude => b"# git ls-files --others --exclude-from=.git/info/exclude\n\
# Lines that start with '#' are comments.\n"
            .to_vec(),
        GitFile::Index => Vec::new(),
    }
}

/// Quotes a config subsection name.
fn subsection(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}

fn config(view: &ExportView) -> String {
    let url = view
        .origin_url
        .clone()
        .unwrap_or_else(|| format!("/git-nfsd/{}", view.name));
    let mut out = String::from(
        "[core]\n\
         \trepositoryformatversion = 0\n\
         \tfilemode = true\n\
         \tbare = false\n\
         \tlogallrefupdates = true\n\
         \tcheckStat = minimal\n\
         \ttrustctime = false\n\
         [gc]\n\
         \tauto = 0\n\
         [maintenance]\n\
         \tauto = false\n",
    );
    out.push_str(&format!(
        "[remote \"origin\"]\n\turl = {url}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
    ));
    if let Some(branch) = &view.branch {
        out.push_str(&format!(
            "[branch \"{}\"]\n\tremote = origin\n\tmerge = refs/heads/{branch}\n",
            subsection(branch)
        ));
    }
    out
}

fn packed_refs(view: &ExportView) -> String {
    let mut refs: Vec<(String, ObjectId, Option<ObjectId>)> = Vec::new();
    if let Some(branch) = &view.branch {
        refs.push((format!("refs/heads/{branch}"), view.commit, None));
    }
    for r in &view.refs {
        if let Some(branch) = r.name.strip_prefix("refs/heads/") {
            refs.push((format!("refs/remotes/origin/{branch}"), r.id, None));
        } else if r.name.starts_with("refs/tags/") {
            refs.push((r.name.clone(), r.id, r.peeled));
        }
    }
    refs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    refs.dedup_by(|a, b| a.0 == b.0);
    let mut out = String::from("# pack-refs with: peeled fully-peeled sorted \n");
    for (name, id, peeled) in refs {
        out.push_str(&format!("{id} {name}\n"));
        if let Some(p) = peeled {
            out.push_str(&format!("^{p}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(c: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[c; 20])
    }

    fn view(branch: Option<&str>) -> ExportView {
        ExportView {
            commit: oid(1),
            branch: branch.map(str::to_owned),
            refs: vec![
                RefEntry {
                    name: "refs/heads/main".into(),
                    id: oid(2),
                    peeled: None,
                },
                RefEntry {
                    name: "refs/heads/feature/x".into(),
                    id: oid(3),
                    peeled: None,
                },
                RefEntry {
                    name: "refs/tags/v1".into(),
                    id: oid(4),
                    peeled: Some(oid(1)),
                },
                RefEntry {
                    name: "refs/pull/1/head".into(),
                    id: oid(5),
                    peeled: None,
                },
            ],
            origin_url: None,
            name: "app".into(),
        }
    }

    #[test]
    fn head_is_the_branch_or_the_commit() {
        assert_eq!(
            render(GitFile::Head, &view(Some("feature/x"))),
            b"ref: refs/heads/feature/x\n"
        );
        assert_eq!(
            render(GitFile::Head, &view(None)),
            format!("{}\n", oid(1)).into_bytes()
        );
    }

    #[test]
    fn packed_refs_are_sorted_with_the_branch_pinned() {
        let text = String::from_utf8(render(GitFile::PackedRefs, &view(Some("main")))).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "# pack-refs with: peeled fully-peeled sorted ",
                &format!("{} refs/heads/main", oid(1)),
                &format!("{} refs/remotes/origin/feature/x", oid(3)),
                &format!("{} refs/remotes/origin/main", oid(2)),
                &format!("{} refs/tags/v1", oid(4)),
                &format!("^{}", oid(1)),
            ]
        );
    }

    #[test]
    fn config_trusts_minimal_stat_data_and_tracks_the_branch() {
        let text = String::from_utf8(render(GitFile::Config, &view(Some("we\"ird")))).unwrap();
        assert!(text.contains("\tcheckStat = minimal\n"));
        assert!(text.contains("\ttrustctime = false\n"));
        assert!(text.contains("\tbare = false\n"));
        assert!(text.contains("[gc]\n\tauto = 0\n"));
        assert!(
            text.contains(
                "[branch \"we\\\"ird\"]\n\tremote = origin\n\tmerge = refs/heads/we\"ird\n"
            )
        );
        let detached = String::from_utf8(render(GitFile::Config, &view(None))).unwrap();
        assert!(!detached.contains("[branch"));
    }
}
