//! Bounded XDR decoding of call headers and procedure arguments.
//!
//! `nfs3_types` encodes our replies, but its decoders size allocations from
//! lengths the client sends (an opaque claiming 4 GiB allocates 4 GiB before
//! the read fails). Everything a client sends is therefore decoded here, from
//! a record that is already in memory, and every length is checked against
//! both a protocol maximum and the bytes actually left.

use thiserror::Error;

/// Why arguments could not be decoded; every variant answers `GARBAGE_ARGS`.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum XdrError {
    #[error("arguments end early: wanted {wanted} more bytes, {left} left")]
    Truncated { wanted: usize, left: usize },
    #[error("opaque of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("{0} unexpected bytes after the arguments")]
    TrailingBytes(usize),
    #[error("boolean with value {0}")]
    BadBool(u32),
}

/// A cursor over one record's bytes.
#[derive(Debug, Clone)]
pub struct XdrReader<'a> {
    buf: &'a [u8],
}

impl<'a> XdrReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The bytes not yet consumed.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        if self.buf.len() < n {
            return Err(XdrError::Truncated {
                wanted: n,
                left: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u32(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, XdrError> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }

    pub fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(XdrError::BadBool(other)),
        }
    }

    /// A fixed-size opaque (`opaque x[N]`), padded to four bytes.
    pub fn fixed<const N: usize>(&mut self) -> Result<[u8; N], XdrError> {
        let padded = N.next_multiple_of(4);
        let b = self.take(padded)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&b[..N]);
        Ok(out)
    }

    /// A variable-length opaque (`opaque x<max>`), borrowed from the record.
    pub fn opaque(&mut self, max: usize) -> Result<&'a [u8], XdrError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        let b = self.take(len.next_multiple_of(4))?;
        Ok(&b[..len])
    }

    /// Skips `n` bytes, for fields a read-only server never looks at.
    pub fn skip(&mut self, n: usize) -> Result<(), XdrError> {
        self.take(n).map(|_| ())
    }

    /// Fails when bytes are left over: a well-formed call has none.
    pub fn finish(self) -> Result<(), XdrError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(XdrError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Procedure arguments that decode from a record.
pub trait Decode<'a>: Sized {
    fn decode(r: &mut XdrReader<'a>) -> Result<Self, XdrError>;
}

/// Decodes a whole argument body, rejecting trailing bytes.
pub fn decode_args<'a, T: Decode<'a>>(buf: &'a [u8]) -> Result<T, XdrError> {
    let mut r = XdrReader::new(buf);
    let value = T::decode(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// Encodes a reply body with `nfs3_types`, appending to `out`.
pub fn encode<T: nfs3_types::xdr_codec::Pack>(value: &T, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail; a failure would be a bug in a Pack impl,
    // and the caller answers SYSTEM_ERR on an empty body anyway.
    if let Err(e) = value.pack(out) {
        tracing::error!(error = %e, "encoding a reply failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_padded_opaque_and_numbers() {
        let buf = [
            0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1,
        ];
        let mut r = XdrReader::new(&buf);
        assert_eq!(r.opaque(10).unwrap(), b"abc");
        assert_eq!(r.u64().unwrap(), (1 << 32) | 2);
        assert!(r.bool().unwrap());
        r.finish().unwrap();
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let buf = [0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        let err = XdrReader::new(&buf).opaque(usize::MAX).unwrap_err();
        assert_eq!(
            err,
            XdrError::Truncated {
                wanted: 1 << 32,
                left: 4
            }
        );
    }

    #[test]
    fn length_over_protocol_max_is_refused() {
        let buf = [0, 0, 1, 0];
        assert_eq!(
            XdrReader::new(&buf).opaque(64).unwrap_err(),
            XdrError::TooLong { len: 256, max: 64 }
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let buf = [0, 0, 0, 1, 9];
        let mut r = XdrReader::new(&buf);
        r.u32().unwrap();
        assert_eq!(r.finish().unwrap_err(), XdrError::TrailingBytes(1));
    }

    #[test]
    fn bad_bool_is_refused() {
        assert_eq!(
            XdrReader::new(&[0, 0, 0, 2]).bool().unwrap_err(),
            XdrError::BadBool(2)
        );
    }
}
