//! A minimal blocking ONC RPC client over TCP, for protocol checks that the
//! command-line tools cannot make. Encodes with `nfs3_types`; replies come
//! from the server under test, so decoding them with `nfs3_types` is fine.

use std::io::{Cursor, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nfs3_types::mount::{dirpath, mountres3};
use nfs3_types::nfs3::{
    self, GETATTR3args, GETATTR3res, LOOKUP3args, LOOKUP3res, READ3args, READ3res, READDIR3args,
    READDIR3res, READDIRPLUS3args, READDIRPLUS3res, cookieverf3, diropargs3, fattr3, filename3,
    nfs_fh3, nfsstat3,
};
use nfs3_types::xdr_codec::{Opaque, Pack, Unpack};

pub const NFS: u32 = 100_003;
pub const MOUNT: u32 = 100_005;
pub const NFSACL: u32 = 100_227;
pub const PORTMAP: u32 = 100_000;

/// How an RPC ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcError {
    /// MSG_ACCEPTED with this accept_stat (1 PROG_UNAVAIL, 2 PROG_MISMATCH,
    /// 3 PROC_UNAVAIL, 4 GARBAGE_ARGS, 5 SYSTEM_ERR).
    Accepted(u32),
    /// MSG_DENIED with this reject_stat (0 RPC_MISMATCH, 1 AUTH_ERROR).
    Denied(u32),
}

/// A whole directory listing and how many calls it took.
pub struct Listing<E> {
    pub entries: Vec<E>,
    pub pages: usize,
}

/// A READDIR entry.
pub struct Entry {
    pub name: Vec<u8>,
    pub cookie: u64,
}

/// A READDIRPLUS entry.
pub struct PlusEntry {
    pub name: Vec<u8>,
    pub attrs: Option<fattr3>,
    pub fh: Option<nfs_fh3>,
}

pub struct RpcClient {
    stream: TcpStream,
    xid: u32,
}

/// The words of an AUTH_SYS credential for uid/gid 0.
fn auth_sys() -> Vec<u8> {
    let mut body = Vec::new();
    for w in [0u32, 4] {
        body.extend_from_slice(&w.to_be_bytes());
    }
    body.extend_from_slice(b"test");
    for w in [0u32, 0, 0] {
        body.extend_from_slice(&w.to_be_bytes());
    }
    body
}

impl RpcClient {
    pub fn connect(addr: SocketAddr) -> Self {
        Self::with_stream(TcpStream::connect(addr).expect("connect to git-nfsd"))
    }

    /// Connects from the local address `from` (another loopback address,
    /// say), so that one machine can play several clients.
    pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> Self {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .expect("binding the client's source address");
        socket.connect(&addr.into()).expect("connect to git-nfsd");
        Self::with_stream(socket.into())
    }

    fn with_stream(stream: TcpStream) -> Self {
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        Self { stream, xid: 0 }
    }

    /// The raw stream, for tests that send malformed bytes.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// A whole call record (without record mark) for `prog`/`vers`/`proc_`.
    pub fn call_record(&mut self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> (u32, Vec<u8>) {
        self.xid += 1;
        let mut rec = Vec::new();
        for w in [self.xid, 0, 2, prog, vers, proc_, 1] {
            rec.extend_from_slice(&w.to_be_bytes());
        }
        let cred = auth_sys();
        rec.extend_from_slice(&(cred.len() as u32).to_be_bytes());
        rec.extend_from_slice(&cred);
        rec.extend_from_slice(&[0; 8]);
        rec.extend_from_slice(args);
        (self.xid, rec)
    }

    /// Sends one record with a single last-fragment mark.
    pub fn send_record(&mut self, rec: &[u8]) {
        let mark = 0x8000_0000u32 | rec.len() as u32;
        self.stream
            .write_all(&mark.to_be_bytes())
            .expect("send mark");
        self.stream.write_all(rec).expect("send record");
    }

    /// Reads one reply record.
    pub fn read_record(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut mark = [0; 4];
            self.stream.read_exact(&mut mark)?;
            let mark = u32::from_be_bytes(mark);
            let start = out.len();
            out.resize(start + (mark & 0x7fff_ffff) as usize, 0);
            self.stream.read_exact(&mut out[start..])?;
            if mark & 0x8000_0000 != 0 {
                return Ok(out);
            }
        }
    }

    /// Parses a reply: the xid and either the result body or the error.
    pub fn parse_reply(reply: &[u8]) -> (u32, Result<Vec<u8>, RpcError>) {
        let word =
            |i: usize| u32::from_be_bytes(reply[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
        let xid = word(0);
        assert_eq!(word(1), 1, "not a reply");
        if word(2) == 1 {
            return (xid, Err(RpcError::Denied(word(3))));
        }
        let verf_len = word(4) as usize;
        let stat_at = 5 + verf_len.div_ceil(4);
        let stat = word(stat_at);
        if stat != 0 {
            return (xid, Err(RpcError::Accepted(stat)));
        }
        (xid, Ok(reply[(stat_at + 1) * 4..].to_vec()))
    }

    /// One call; returns the result body.
    pub fn call(
        &mut self,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
    ) -> Result<Vec<u8>, RpcError> {
        let (xid, rec) = self.call_record(prog, vers, proc_, args);
        self.send_record(&rec);
        let reply = self.read_record().expect("reply");
        let (got, result) = Self::parse_reply(&reply);
        assert_eq!(got, xid, "reply to another call");
        result
    }

    pub fn nfs<A: Pack, R: Unpack>(&mut self, proc_: u32, args: &A) -> R {
        let body = self
            .call(NFS, 3, proc_, &pack(args))
            .expect("NFS call accepted");
        unpack(&body)
    }

    /// MOUNT: the root handle of an export, or the mount status number.
    pub fn mount(&mut self, path: &str) -> Result<nfs_fh3, u32> {
        let args = dirpath(Opaque::borrowed(path.as_bytes()));
        let body = self.call(MOUNT, 3, 1, &pack(&args)).expect("MNT accepted");
        match unpack::<mountres3>(&body) {
            mountres3::Ok(ok) => Ok(nfs_fh3 {
                data: Opaque::owned(ok.fhandle.0.to_vec()),
            }),
            mountres3::Err(stat) => Err(stat as u32),
        }
    }

    pub fn getattr(&mut self, fh: &nfs_fh3) -> Result<fattr3, nfsstat3> {
        match self.nfs::<_, GETATTR3res>(1, &GETATTR3args { object: fh.clone() }) {
            nfs3::Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
            nfs3::Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    pub fn lookup(&mut self, dir: &nfs_fh3, name: &[u8]) -> Result<nfs_fh3, nfsstat3> {
        let args = LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: filename3(Opaque::borrowed(name)),
            },
        };
        match self.nfs::<_, LOOKUP3res>(3, &args) {
            nfs3::Nfs3Result::Ok(ok) => Ok(ok.object),
            nfs3::Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// Follows a `/`-separated path from `root`.
    pub fn walk(&mut self, root: &nfs_fh3, path: &str) -> Result<nfs_fh3, nfsstat3> {
        let mut fh = root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            fh = self.lookup(&fh, part.as_bytes())?;
        }
        Ok(fh)
    }

    pub fn read(
        &mut self,
        fh: &nfs_fh3,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let args = READ3args {
            file: fh.clone(),
            offset,
            count,
        };
        match self.nfs::<_, READ3res>(6, &args) {
            nfs3::Nfs3Result::Ok(ok) => Ok((ok.data.to_vec(), ok.eof)),
            nfs3::Nfs3Result::Err((s, _)) => Err(s),
        }
    }

    /// Reads a whole file in `chunk`-byte READs.
    pub fn read_all(&mut self, fh: &nfs_fh3, chunk: u32) -> Result<Vec<u8>, nfsstat3> {
        let mut out = Vec::new();
        loop {
            let (data, eof) = self.read(fh, out.len() as u64, chunk)?;
            out.extend_from_slice(&data);
            if eof {
                return Ok(out);
            }
            assert!(!data.is_empty(), "short READ without eof");
        }
    }

    /// Lists a directory with READDIR pages of `count` bytes.
    pub fn readdir_all(&mut self, dir: &nfs_fh3, count: u32) -> Result<Listing<Entry>, nfsstat3> {
        let (mut cookie, mut verf, mut out, mut pages) = (0, cookieverf3::default(), Vec::new(), 0);
        loop {
            let args = READDIR3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                count,
            };
            match self.nfs::<_, READDIR3res>(16, &args) {
                nfs3::Nfs3Result::Ok(ok) => {
                    pages += 1;
                    verf = ok.cookieverf;
                    for e in ok.reply.entries.0 {
                        cookie = e.cookie;
                        out.push(Entry {
                            name: e.name.0.to_vec(),
                            cookie: e.cookie,
                        });
                    }
                    if ok.reply.eof {
                        return Ok(Listing {
                            entries: out,
                            pages,
                        });
                    }
                }
                nfs3::Nfs3Result::Err((s, _)) => return Err(s),
            }
        }
    }

    /// Lists a directory with READDIRPLUS pages.
    pub fn readdirplus_all(
        &mut self,
        dir: &nfs_fh3,
        dircount: u32,
        maxcount: u32,
    ) -> Result<Listing<PlusEntry>, nfsstat3> {
        let (mut cookie, mut verf, mut out, mut pages) = (0, cookieverf3::default(), Vec::new(), 0);
        loop {
            let args = READDIRPLUS3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                dircount,
                maxcount,
            };
            match self.nfs::<_, READDIRPLUS3res>(17, &args) {
                nfs3::Nfs3Result::Ok(ok) => {
                    pages += 1;
                    verf = ok.cookieverf;
                    for e in ok.reply.entries.0 {
                        cookie = e.cookie;
                        let attrs = match e.name_attributes {
                            nfs3::Nfs3Option::Some(a) => Some(a),
                            nfs3::Nfs3Option::None => None,
                        };
                        let fh = match e.name_handle {
                            nfs3::Nfs3Option::Some(h) => Some(h),
                            nfs3::Nfs3Option::None => None,
                        };
                        out.push(PlusEntry {
                            name: e.name.0.to_vec(),
                            attrs,
                            fh,
                        });
                    }
                    if ok.reply.eof {
                        return Ok(Listing {
                            entries: out,
                            pages,
                        });
                    }
                }
                nfs3::Nfs3Result::Err((s, _)) => return Err(s),
            }
        }
    }
}

pub fn pack<T: Pack>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.pack(&mut out).expect("pack");
    out
}

pub fn unpack<T: Unpack>(bytes: &[u8]) -> T {
    let mut cursor = Cursor::new(bytes);
    let (v, _) = T::unpack(&mut cursor).expect("unpack reply");
    assert_eq!(
        cursor.position() as usize,
        bytes.len(),
        "trailing bytes in reply"
    );
    v
}
