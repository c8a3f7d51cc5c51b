//! ONC RPC call headers (RFC 5531) and the replies we send.
//!
//! A call is parsed with the bounded [`XdrReader`]; replies are encoded with
//! the `nfs3_types::rpc` types. Credentials are parsed so that handlers can
//! answer ACCESS for the calling user; no flavour is trusted for more.

use nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, msg_body, opaque_auth, rejected_reply, reply_body,
    rpc_msg,
};
use thiserror::Error;

use super::xdr::{XdrError, XdrReader, encode};

/// The RPC protocol version this server speaks.
const RPC_VERSION: u32 = 2;
/// RFC 5531: the body of an opaque_auth is at most 400 bytes.
const MAX_AUTH_BYTES: usize = 400;
/// RFC 5531: AUTH_SYS machine names are at most 255 bytes, with 16 groups.
const MAX_MACHINE_NAME: usize = 255;
const MAX_AUTH_GIDS: usize = 16;

const AUTH_NONE: u32 = 0;
const AUTH_SYS: u32 = 1;

/// Who the client says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    Unix {
        uid: u32,
        gid: u32,
        gids: Vec<u32>,
    },
    /// A flavour we do not parse (e.g. RPCSEC_GSS); treated as anonymous.
    Other(u32),
}

/// The fixed part of a call, before the procedure's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHeader {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc_: u32,
    pub cred: Credential,
    /// The client's address, set by the connection that read the call
    /// (`None` where there is no connection, as in fuzzing).
    pub peer: Option<std::net::IpAddr>,
}

/// Why a record is not a call we can answer normally.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// Not even a transaction id: nothing can be answered, close the connection.
    #[error("record of {0} bytes is too short for an RPC message")]
    Unreadable(usize),
    /// A reply or unknown message type sent to a server: ignored.
    #[error("message type {mtype} is not a call")]
    NotACall { xid: u32, mtype: u32 },
    #[error("RPC version {vers} is not 2")]
    RpcMismatch { xid: u32, vers: u32 },
    #[error("malformed credential: {source}")]
    BadCredential { xid: u32, source: XdrError },
}

/// Parses a call header and returns it with the argument bytes that follow.
pub fn parse_call(record: &[u8]) -> Result<(CallHeader, &[u8]), CallError> {
    let mut r = XdrReader::new(record);
    let xid = r.u32().map_err(|_| CallError::Unreadable(record.len()))?;
    let mtype = r.u32().map_err(|_| CallError::Unreadable(record.len()))?;
    if mtype != 0 {
        return Err(CallError::NotACall { xid, mtype });
    }
    let vers = r.u32().map_err(|_| CallError::Unreadable(record.len()))?;
    if vers != RPC_VERSION {
        return Err(CallError::RpcMismatch { xid, vers });
    }
    let bad = |source| CallError::BadCredential { xid, source };
    let prog = r.u32().map_err(bad)?;
    let prog_vers = r.u32().map_err(bad)?;
    let proc_ = r.u32().map_err(bad)?;
    let cred_flavor = r.u32().map_err(bad)?;
    let cred_body = r.opaque(MAX_AUTH_BYTES).map_err(bad)?;
    let cred = parse_credential(cred_flavor, cred_body).map_err(bad)?;
    let _verf_flavor = r.u32().map_err(bad)?;
    let _verf_body = r.opaque(MAX_AUTH_BYTES).map_err(bad)?;
    let header = CallHeader {
        xid,
        prog,
        vers: prog_vers,
        proc_,
        cred,
        peer: None,
    };
    Ok((header, r.rest()))
}

fn parse_credential(flavor: u32, body: &[u8]) -> Result<Credential, XdrError> {
    match flavor {
        AUTH_NONE => Ok(Credential::None),
        AUTH_SYS => {
            let mut r = XdrReader::new(body);
            let _stamp = r.u32()?;
            let _machine = r.opaque(MAX_MACHINE_NAME)?;
            let uid = r.u32()?;
            let gid = r.u32()?;
            let count = r.u32()? as usize;
            if count > MAX_AUTH_GIDS {
                return Err(XdrError::TooLong {
                    len: count,
                    max: MAX_AUTH_GIDS,
                });
            }
            let gids = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            r.finish()?;
            Ok(Credential::Unix { uid, gid, gids })
        }
        other => Ok(Credential::Other(other)),
    }
}

/// What a handler decided to answer, before framing.
#[derive(Debug)]
pub enum Reply {
    /// SUCCESS with the procedure's encoded result.
    Success(Vec<u8>),
    /// SUCCESS with a result that ends in an opaque: `head` is everything
    /// before the opaque's bytes (its length included), `data` its bytes.
    /// READ answers this way, so file contents go to the socket without
    /// being copied into the reply.
    Data {
        head: Vec<u8>,
        data: bytes::Bytes,
    },
    ProgUnavail,
    ProgMismatch {
        low: u32,
        high: u32,
    },
    ProcUnavail,
    GarbageArgs,
    SystemErr,
    /// MSG_DENIED: the RPC version is not 2.
    RpcMismatch,
    /// MSG_DENIED: the credential was rejected.
    AuthError(auth_stat),
}

impl Reply {
    /// Name used in logs and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Success(_) | Self::Data { .. } => "success",
            Self::ProgUnavail => "prog_unavail",
            Self::ProgMismatch { .. } => "prog_mismatch",
            Self::ProcUnavail => "proc_unavail",
            Self::GarbageArgs => "garbage_args",
            Self::SystemErr => "system_err",
            Self::RpcMismatch => "rpc_mismatch",
            Self::AuthError(_) => "auth_error",
        }
    }

    /// Encodes the whole reply message for `xid` into `out` (no record mark).
    pub fn encode(self, xid: u32, out: &mut Vec<u8>) {
        let tail = self.encode_head(xid, out);
        out.extend_from_slice(&tail.data);
        out.resize(out.len() + tail.padding, 0);
    }

    /// Encodes all but the trailing opaque bytes of a [`Reply::Data`] into
    /// `out`, and returns them, so they can be written without a copy.
    pub fn encode_head(self, xid: u32, out: &mut Vec<u8>) -> Tail {
        let accepted = |reply_data| {
            reply_body::MSG_ACCEPTED(accepted_reply {
                verf: opaque_auth::default(),
                reply_data,
            })
        };
        let (body, result) = match self {
            Self::Success(result) => (accepted(accept_stat_data::SUCCESS), Some((result, None))),
            Self::Data { head, data } => (
                accepted(accept_stat_data::SUCCESS),
                Some((head, Some(data))),
            ),
            Self::ProgUnavail => (accepted(accept_stat_data::PROG_UNAVAIL), None),
            Self::ProgMismatch { low, high } => (
                accepted(accept_stat_data::PROG_MISMATCH { low, high }),
                None,
            ),
            Self::ProcUnavail => (accepted(accept_stat_data::PROC_UNAVAIL), None),
            Self::GarbageArgs => (accepted(accept_stat_data::GARBAGE_ARGS), None),
            Self::SystemErr => (accepted(accept_stat_data::SYSTEM_ERR), None),
            Self::RpcMismatch => (
                reply_body::MSG_DENIED(rejected_reply::RPC_MISMATCH {
                    low: RPC_VERSION,
                    high: RPC_VERSION,
                }),
                None,
            ),
            Self::AuthError(stat) => (
                reply_body::MSG_DENIED(rejected_reply::AUTH_ERROR(stat)),
                None,
            ),
        };
        let msg = rpc_msg {
            xid,
            body: msg_body::REPLY(body),
        };
        encode(&msg, out);
        let Some((result, data)) = result else {
            return Tail::default();
        };
        out.extend_from_slice(&result);
        let data = data.unwrap_or_default();
        Tail {
            padding: (4 - data.len() % 4) % 4,
            data,
        }
    }

    /// Bytes of the procedure's result, for limits and sizing.
    pub fn result_len(&self) -> usize {
        match self {
            Self::Success(result) => result.len(),
            Self::Data { head, data } => head.len() + data.len(),
            _ => 0,
        }
    }
}

/// The end of a reply that is written as is: an opaque's bytes and the
/// zeros that pad them to a multiple of four.
#[derive(Debug, Default)]
pub struct Tail {
    pub data: bytes::Bytes,
    pub padding: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(prog: u32, cred_flavor: u32, cred: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [7u32, 0, 2, prog, 3, 1, cred_flavor, cred.len() as u32] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(cred);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // AUTH_NONE verifier
        v.extend_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]); // arguments
        v
    }

    fn auth_sys(uid: u32, gid: u32, gids: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [1u32, 4] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(b"host");
        for w in [uid, gid, gids.len() as u32].iter().chain(gids) {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v
    }

    #[test]
    fn parses_auth_sys_call_and_leaves_args() {
        let record = call(100_003, AUTH_SYS, &auth_sys(1000, 100, &[4, 5]));
        let (h, args) = parse_call(&record).unwrap();
        assert_eq!(h.xid, 7);
        assert_eq!(h.prog, 100_003);
        assert_eq!(h.vers, 3);
        assert_eq!(h.proc_, 1);
        assert_eq!(
            h.cred,
            Credential::Unix {
                uid: 1000,
                gid: 100,
                gids: vec![4, 5]
            }
        );
        assert_eq!(args, [0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn too_many_groups_is_a_bad_credential() {
        let gids: Vec<u32> = (0..17).collect();
        let record = call(100_003, AUTH_SYS, &auth_sys(0, 0, &gids));
        assert!(matches!(
            parse_call(&record),
            Err(CallError::BadCredential { xid: 7, .. })
        ));
    }

    #[test]
    fn short_and_wrong_version_records() {
        assert_eq!(parse_call(&[1, 2]), Err(CallError::Unreadable(2)));
        let mut record = call(100_003, AUTH_NONE, &[]);
        record[11] = 3;
        assert_eq!(
            parse_call(&record),
            Err(CallError::RpcMismatch { xid: 7, vers: 3 })
        );
        record[7] = 1;
        assert_eq!(
            parse_call(&record),
            Err(CallError::NotACall { xid: 7, mtype: 1 })
        );
    }

    #[test]
    fn success_reply_layout() {
        let mut out = Vec::new();
        Reply::Success(vec![0, 0, 0, 9]).encode(42, &mut out);
        let words: Vec<u32> = out
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // xid, REPLY, MSG_ACCEPTED, verf flavor, verf len, SUCCESS, result
        assert_eq!(words, [42, 1, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn denied_reply_layout() {
        let mut out = Vec::new();
        Reply::RpcMismatch.encode(5, &mut out);
        let words: Vec<u32> = out
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(words, [5, 1, 1, 0, 2, 2]);
    }
}
