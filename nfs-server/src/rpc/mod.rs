//! ONC RPC (RFC 5531): record marking, call headers, bounded argument
//! decoding and reply encoding. Knows nothing about NFS.

pub mod message;
pub mod record;
pub mod xdr;

pub use message::{CallError, CallHeader, Credential, Reply, Tail, parse_call};
pub use xdr::{Decode, XdrError, XdrReader, decode_args, encode};
