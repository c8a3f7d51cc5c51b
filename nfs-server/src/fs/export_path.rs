//! Parsing MOUNT paths: `/`, `/<namespace>`, `/<repo>` and `/<repo>@<rev>`.
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
    /// Everything after `@`: a revision possibly followed by a folder.
    pub rev: Option<&'a str>,
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
        if let Some(rev) = rev {
            validate_rev(rev)?;
            if repo.is_empty() {
                return Err(ExportPathError::BadComponent(String::new()));
            }
        }
        Ok(Self { repo, rev })
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
        (p.repo.to_owned(), p.rev.map(str::to_owned))
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
