//! File handles: the wire form of [`NodeId`].
//!
//! A handle carries everything needed to find its node again with no server
//! state: the repository id (a hash of its export name), the pinned commit
//! and the node's number in that commit's tree. So handles survive restarts
//! and are valid on every server with the same store. Layout (big endian):
//!
//! ```text
//! namespace: [version=1][kind=1][folder id: 8]
//! worktree:  [version=1][kind=2][repo id: 8][node: 4][head: 8][commit id: 20 or 32]
//! ```
//!
//! `head` says which branch the export's `.git/HEAD` names (a hash of its
//! name, 0 for a detached HEAD): two exports of the same commit mounted by
//! different branches differ only in their `.git`.

use gix::ObjectId;
use thiserror::Error;

use crate::fs::NodeId;
use crate::store::RepoId;

const VERSION: u8 = 1;
const KIND_NAMESPACE: u8 = 1;
const KIND_WORKTREE: u8 = 2;

/// NFSv3 handles are at most 64 bytes.
pub const MAX_HANDLE: usize = 64;

/// Why bytes are not one of our handles (answered with NFS3ERR_BADHANDLE).
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandleError {
    #[error("handle of {0} bytes has the wrong length")]
    Length(usize),
    #[error("handle version {0} is not known")]
    Version(u8),
    #[error("handle kind {0} is not known")]
    Kind(u8),
}

pub fn encode(id: &NodeId) -> Vec<u8> {
    match id {
        NodeId::Namespace(folder) => {
            let mut out = vec![VERSION, KIND_NAMESPACE];
            out.extend_from_slice(&folder.to_be_bytes());
            out
        }
        NodeId::Worktree {
            repo,
            commit,
            head,
            index,
        } => {
            let mut out = Vec::with_capacity(22 + commit.as_bytes().len());
            out.extend_from_slice(&[VERSION, KIND_WORKTREE]);
            out.extend_from_slice(&repo.0.to_be_bytes());
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&head.to_be_bytes());
            out.extend_from_slice(commit.as_bytes());
            out
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<NodeId, HandleError> {
    let length = || HandleError::Length(bytes.len());
    let (&version, rest) = bytes.split_first().ok_or_else(length)?;
    if version != VERSION {
        return Err(HandleError::Version(version));
    }
    let (&kind, rest) = rest.split_first().ok_or_else(length)?;
    match kind {
        KIND_NAMESPACE => {
            let id: [u8; 8] = rest.try_into().map_err(|_| length())?;
            Ok(NodeId::Namespace(u64::from_be_bytes(id)))
        }
        KIND_WORKTREE => {
            if rest.len() < 20 {
                return Err(length());
            }
            let (repo, rest) = rest.split_at(8);
            let (index, rest) = rest.split_at(4);
            let (head, commit) = rest.split_at(8);
            let commit = match commit.len() {
                20 | 32 => ObjectId::try_from(commit).map_err(|_| length())?,
                _ => return Err(length()),
            };
            Ok(NodeId::Worktree {
                repo: RepoId(u64::from_be_bytes(repo.try_into().map_err(|_| length())?)),
                index: u32::from_be_bytes(index.try_into().map_err(|_| length())?),
                head: u64::from_be_bytes(head.try_into().map_err(|_| length())?),
                commit,
            })
        }
        other => Err(HandleError::Kind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> ObjectId {
        ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").unwrap()
    }

    #[test]
    fn round_trips() {
        for id in [
            NodeId::Namespace(0xdead_beef_0000_0001),
            NodeId::Worktree {
                repo: RepoId(42),
                commit: commit(),
                head: 0x1234,
                index: 7,
            },
        ] {
            let bytes = encode(&id);
            assert!(bytes.len() <= MAX_HANDLE);
            assert_eq!(decode(&bytes).unwrap(), id);
        }
    }

    #[test]
    fn encoding_is_deterministic_and_pinned() {
        // A handle written by an earlier server must decode the same way.
        let id = NodeId::Worktree {
            repo: RepoId(1),
            commit: commit(),
            head: 3,
            index: 2,
        };
        let mut expected = vec![
            1, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3,
        ];
        expected.extend_from_slice(commit().as_bytes());
        assert_eq!(encode(&id), expected);
    }

    #[test]
    fn malformed_handles_are_refused() {
        assert_eq!(decode(&[]), Err(HandleError::Length(0)));
        assert_eq!(decode(&[9, 1]), Err(HandleError::Version(9)));
        assert_eq!(decode(&[1, 9]), Err(HandleError::Kind(9)));
        assert_eq!(decode(&[1, 1, 0]), Err(HandleError::Length(3)));
        let mut truncated = encode(&NodeId::Worktree {
            repo: RepoId(1),
            commit: commit(),
            head: 0,
            index: 2,
        });
        truncated.pop();
        assert_eq!(decode(&truncated), Err(HandleError::Length(41)));
    }
}
