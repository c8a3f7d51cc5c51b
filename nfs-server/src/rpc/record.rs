//! RPC record marking over TCP (RFC 5531 §11): reading bounded records and
//! framing replies.

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

const LAST_FRAGMENT: u32 = 0x8000_0000;
/// A record split into more fragments than this is abuse, not a call.
const MAX_FRAGMENTS: usize = 64;

/// Why reading a record failed; each one ends the connection.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("record of at least {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("record split into more than {MAX_FRAGMENTS} fragments")]
    TooManyFragments,
    #[error("connection closed in the middle of a record")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one record into `buf` (cleared first). Returns `Ok(false)` when the
/// peer closed the connection cleanly between records.
pub async fn read_record<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max_len: usize,
) -> Result<bool, RecordError> {
    buf.clear();
    for fragment in 0..MAX_FRAGMENTS {
        let mut header = [0u8; 4];
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return if fragment == 0 {
                    Ok(false)
                } else {
                    Err(RecordError::Truncated)
                };
            }
            Err(e) => return Err(e.into()),
        }
        let header = u32::from_be_bytes(header);
        let len = (header & !LAST_FRAGMENT) as usize;
        let total = buf.len() + len;
        if total > max_len {
            return Err(RecordError::TooLarge {
                len: total,
                max: max_len,
            });
        }
        let start = buf.len();
        buf.resize(total, 0);
        reader
            .read_exact(&mut buf[start..])
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => RecordError::Truncated,
                _ => RecordError::Io(e),
            })?;
        if header & LAST_FRAGMENT != 0 {
            return Ok(true);
        }
    }
    Err(RecordError::TooManyFragments)
}

/// A reply buffer that starts with room for its record mark.
pub fn reply_buffer(capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(capacity + 4);
    v.extend_from_slice(&[0; 4]);
    v
}

/// Writes the record mark into a buffer made by [`reply_buffer`], for a
/// record of its bytes and `more` bytes sent after it.
pub fn seal_reply(buf: &mut [u8], more: usize) {
    let len = u32::try_from(buf.len() - 4 + more).unwrap_or(u32::MAX) & !LAST_FRAGMENT;
    buf[..4].copy_from_slice(&(len | LAST_FRAGMENT).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8], max: usize) -> Result<(bool, Vec<u8>), RecordError> {
        let mut reader = bytes;
        let mut buf = Vec::new();
        let more = read_record(&mut reader, &mut buf, max).await?;
        Ok((more, buf))
    }

    #[tokio::test]
    async fn joins_fragments() {
        let bytes = [0, 0, 0, 2, b'a', b'b', 0x80, 0, 0, 1, b'c'];
        let (more, buf) = read(&bytes, 100).await.unwrap();
        assert!(more);
        assert_eq!(buf, b"abc");
    }

    #[tokio::test]
    async fn clean_eof_between_records() {
        assert!(!read(&[], 100).await.unwrap().0);
    }

    #[tokio::test]
    async fn two_gib_header_is_refused_before_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read(&bytes, 1 << 20).await,
            Err(RecordError::TooLarge {
                len: 0x7fff_ffff,
                max: 1_048_576
            })
        ));
    }

    #[tokio::test]
    async fn truncated_record() {
        let bytes = [0x80, 0, 0, 8, 1, 2];
        assert!(matches!(
            read(&bytes, 100).await,
            Err(RecordError::Truncated)
        ));
        let bytes = [0, 0, 0, 1, 1];
        assert!(matches!(
            read(&bytes, 100).await,
            Err(RecordError::Truncated)
        ));
    }

    #[tokio::test]
    async fn endless_empty_fragments_are_refused() {
        let bytes = [0u8; 4 * (MAX_FRAGMENTS + 1)];
        assert!(matches!(
            read(&bytes, 100).await,
            Err(RecordError::TooManyFragments)
        ));
    }

    #[test]
    fn seals_reply() {
        let mut buf = reply_buffer(3);
        buf.extend_from_slice(b"xyz");
        seal_reply(&mut buf, 0);
        assert_eq!(&buf[..4], &[0x80, 0, 0, 3]);
        seal_reply(&mut buf, 5);
        assert_eq!(&buf[..4], &[0x80, 0, 0, 8]);
    }
}
