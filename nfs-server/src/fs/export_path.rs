//! Parsing MOUNT paths: `/`, `/<namespace>`, `/<repo>`, `/<repo>@<rev>` and
//! `/<repo>@<branch>:<commit>` (the branch, pinned at a commit).
//!
//! Parsing only checks shape; whether the repository and revision exist is
//! decided by the store. Nothing here ever becomes a filesystem path, so a
//! repository name can only select a repository the store scan found.

use thiserror::Error;

/// Longest accepted export path (MOUNT's MNTPATHLEN).
pub const MAX_EXPORT_PATH: usize = 1024;

/// Longest revision tried (git's own limit for a ref name component chain
/// is larger, but no real branch comes near it).
pub const MAX_REV: usize = 255;

/// A syntactically valid export path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPath<'a> {
    /// Everything before `@`, without leading or trailing `/`: a namespace
    /// folder, or a repository name possibly followed by a folder inside
    /// it. Empty for the root.
    pub repo: &'a str,
    /// Everything after `@`: a revision possibly followed by a folder; with
    /// a [`Pin`], exactly the branch.
    pub rev: Option<&'a str>,
    /// After `<branch>:`, the commit the branch is pinned at.
    pub pin: Option<Pin<'a>>,
}

/// `/<repo>@<branch>:<commit>[/<folder>]`: the worktree of `commit` whose
/// HEAD is `branch`, whatever the branch names now. A worktree whose
/// changes were made on a branch is mounted again this way after the
/// branch moved on, so that its upper's commits stay on the branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin<'a> {
    /// A full object id in hex (40 or 64 digits).
    pub commit: &'a str,
    /// The folder inside the worktree, without leading `/`; may be empty.
    pub folder: &'a str,
}

/// Why an export path was refused; returned by [`ExportPath::parse`].
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExportPathError {
    #[error("export path is not UTF-8")]
    NotUtf8,
    #[error("export path must start with '/'")]
    NotAbsolute,
    #[error("export path is longer than {MAX_EXPORT_PATH} bytes")]
    TooLong,
    #[error("export path component {0:?} is not allowed")]
    BadComponent(String),
    #[error("revision {0:?} is not allowed")]
    BadRevision(String),
}

impl<'a> ExportPath<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<Self, ExportPathError> {
        if raw.len() > MAX_EXPORT_PATH {
            return Err(ExportPathError::TooLong);
        }
        let path = std::str::from_utf8(raw).map_err(|_| ExportPathError::NotUtf8)?;
        let path = path.strip_prefix('/').ok_or(ExportPathError::NotAbsolute)?;
        let (repo, rev) = match path.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (path, None),
        };
        let repo = repo.strip_suffix('/').unwrap_or(repo);
        if !repo.is_empty() {
            for component in repo.split('/') {
                let bad = component.is_empty()
                    || component == "."
                    || component == ".."
                    || component.chars().any(|c| c.is_control() || c == '\\');
                if bad {
                    return Err(ExportPathError::BadComponent(component.to_owned()));
                }
            }
        }
        let mut pin = None;
        let mut rev = rev;
        if let Some(after_at) = rev {
            if repo.is_empty() {
                return Err(ExportPathError::BadComponent(String::new()));
            }
            if let Some((branch, pinned)) = after_at.split_once(':') {
                let (commit, folder) = pinned.split_once('/').unwrap_or((pinned, ""));
                let full_id = matches!(commit.len(), 40 | 64)
                    && commit.bytes().all(|b| b.is_ascii_hexdigit());
                if !full_id || branch.contains(['~', '^']) {
                    return Err(ExportPathError::BadRevision(after_at.to_owned()));
                }
                validate_rev(branch)?;
                if !folder.is_empty() {
                    validate_rev(folder)?;
                }
                rev = Some(branch);
                pin = Some(Pin { commit, folder });
            } else {
                validate_rev(after_at)?;
            }
        }
        Ok(Self { repo, rev, pin })
    }
}

/// Revisions follow `git check-ref-format` closely enough that no rev-parse
/// operator other than ancestry (`~`, `^`) can sneak in. The text checked
/// may continue with a folder inside the worktree, so length is checked per
/// candidate revision by the caller ([`MAX_REV`]).
fn validate_rev(rev: &str) -> Result<(), ExportPathError> {
    let bad = rev.is_empty()
        || rev.starts_with('-')
        || rev.starts_with('/')
        || rev.ends_with('/')
        || rev.contains("..")
        || rev.contains("//")
        || rev.contains("@{")
        || rev.contains(':')
        || rev
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '\\' | '?' | '*' | '['));
    if bad {
        Err(ExportPathError::BadRevision(rev.to_owned()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> (String, Option<String>) {
        let p = ExportPath::parse(raw.as_bytes()).unwrap();
        assert_eq!(p.pin, None);
        (p.repo.to_owned(), p.rev.map(str::to_owned))
    }

    const ID: &str = "1faee7c16b7129ae4fac3bbade6a25f0480e970d";

    #[test]
    fn a_branch_pinned_at_a_commit() {
        let path = format!("/org/app@feature/x:{ID}");
        let p = ExportPath::parse(path.as_bytes()).unwrap();
        assert_eq!((p.repo, p.rev), ("org/app", Some("feature/x")));
        assert_eq!(
            p.pin,
            Some(Pin {
                commit: ID,
                folder: ""
            })
        );
        let path = format!("/app@main:{ID}/src/lib");
        let p = ExportPath::parse(path.as_bytes()).unwrap();
        assert_eq!(p.rev, Some("main"));
        assert_eq!(
            p.pin,
            Some(Pin {
                commit: ID,
                folder: "src/lib"
            })
        );
        for bad in [
            "/app@main:1faee7c".to_owned(),
            format!("/app@main:{}", &ID.replace('1', "g")),
            format!("/app@main~1:{ID}"),
            format!("/app@:{ID}"),
            format!("/app@main:{ID}:{ID}"),
            format!("/app@main:{ID}/a..b"),
            format!("/@main:{ID}"),
        ] {
            assert!(
                ExportPath::parse(bad.as_bytes()).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(ok("/"), (String::new(), None));
        assert_eq!(ok("/app"), ("app".into(), None));
        assert_eq!(ok("/app/"), ("app".into(), None));
        assert_eq!(ok("/org/app"), ("org/app".into(), None));
        assert_eq!(ok("/app@main"), ("app".into(), Some("main".into())));
        assert_eq!(
            ok("/org/app@feature/x-y"),
            ("org/app".into(), Some("feature/x-y".into()))
        );
        assert_eq!(ok("/app@v1.0"), ("app".into(), Some("v1.0".into())));
        assert_eq!(ok("/app@1a2b3c4"), ("app".into(), Some("1a2b3c4".into())));
        assert_eq!(ok("/app@HEAD~2"), ("app".into(), Some("HEAD~2".into())));
    }

    #[test]
    fn escaping_and_malformed_paths_are_refused() {
        for bad in [
            "app",
            "",
            "/..",
            "/../etc",
            "/app/../x",
            "/./app",
            "//app",
            "/a//b",
            "/a\\b",
            "/a\u{0}b",
        ] {
            assert!(
                matches!(
                    ExportPath::parse(bad.as_bytes()),
                    Err(ExportPathError::BadComponent(_) | ExportPathError::NotAbsolute)
                ),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(ExportPath::parse(b"/\xff"), Err(ExportPathError::NotUtf8));
        assert_eq!(
            ExportPath::parse(&[b'/'; 2000]),
            Err(ExportPathError::TooLong)
        );
    }

    #[test]
    fn bad_revisions_are_refused() {
        for bad in [
            "/app@",
            "/app@-x",
            "/app@a..b",
            "/app@main@{1}",
            "/app@a b",
            "/app@HEAD:file",
            "/app@x/",
            "/@main",
        ] {
            assert!(
                ExportPath::parse(bad.as_bytes()).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
