//! Malformed input: each abuse gets an RPC error or a closed connection, and
//! a well-behaved client on another connection is served throughout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use integration::client::{RpcClient, RpcError, pack};
use integration::fixture;
use integration::server::GitNfsd;
use nfs3_types::nfs3::{nfs_fh3, nfsstat3};
use nfs3_types::xdr_codec::Opaque;

/// The server still mounts and reads for an unrelated client.
fn assert_healthy(server: &GitNfsd) {
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount after abuse");
    let readme = c.walk(&root, "README.md").expect("lookup after abuse");
    assert!(
        c.read_all(&readme, 4096)
            .expect("read after abuse")
            .starts_with(b"# Fixture")
    );
}

/// Closed connections counted with `reason`, once at least `expected` are
/// (or after 10 s): a close is counted just after the socket is shut, so
/// the count may trail what a client saw by a moment.
fn counted_closes(server: &GitNfsd, reason: &str, expected: f64) -> f64 {
    let series = format!("gitnfsd_connections_closed_total{{name=\"{reason}\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let count = server.metric(&series);
        if count >= expected || std::time::Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when the server closed the connection (EOF or reset).
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

#[test]
fn oversized_record_header_closes_only_that_connection() {
    let mut server = GitNfsd::start(fixture::store());
    let mut abuser = TcpStream::connect(server.addr).expect("connect");
    // A record mark claiming 2 GiB: refused before anything is allocated.
    abuser
        .write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4])
        .expect("send");
    assert!(closed(&mut abuser), "connection left open");
    assert!(server.is_running());
    assert_healthy(&server);
    assert!(
        server.rss_kib() < 512 * 1024,
        "RSS {} KiB after a 2 GiB header",
        server.rss_kib()
    );
}

#[test]
fn random_bytes_and_truncated_records_are_survived() {
    let mut server = GitNfsd::start(fixture::store());
    // Deterministic pseudo-random garbage in many shapes.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..200 {
        let mut s = TcpStream::connect(server.addr).expect("connect");
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 2 == 0 && bytes.len() >= 4 {
            // A plausible mark for a short record, followed by garbage.
            let mark = 0x8000_0000u32 | (bytes.len() as u32 - 4);
            bytes[..4].copy_from_slice(&mark.to_be_bytes());
        }
        let _ = s.write_all(&bytes);
        // Half the time hang up mid-record.
        if round % 3 == 0 {
            drop(s);
        } else {
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let _ = s.read_to_end(&mut sink);
        }
    }
    assert!(server.is_running());
    assert_healthy(&server);
}

#[test]
fn unknown_program_version_and_procedure_get_rpc_errors() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    assert_eq!(
        c.call(123_456, 1, 0, &[]),
        Err(RpcError::Accepted(1)),
        "PROG_UNAVAIL"
    );
    assert_eq!(
        c.call(100_003, 4, 0, &[]),
        Err(RpcError::Accepted(2)),
        "PROG_MISMATCH"
    );
    assert_eq!(
        c.call(100_003, 3, 99, &[]),
        Err(RpcError::Accepted(3)),
        "PROC_UNAVAIL"
    );
    assert_eq!(
        c.call(100_005, 3, 17, &[]),
        Err(RpcError::Accepted(3)),
        "PROC_UNAVAIL"
    );
    // Garbage arguments: truncated, trailing bytes, an oversized handle.
    assert_eq!(
        c.call(100_003, 3, 1, &[0, 0]),
        Err(RpcError::Accepted(4)),
        "GARBAGE_ARGS"
    );
    let mut trailing = pack(&nfs_fh3 {
        data: Opaque::owned(vec![1; 8]),
    });
    trailing.extend_from_slice(&[0; 4]);
    assert_eq!(
        c.call(100_003, 3, 1, &trailing),
        Err(RpcError::Accepted(4)),
        "trailing bytes"
    );
    let mut huge_fh = 65u32.to_be_bytes().to_vec();
    huge_fh.extend_from_slice(&[0; 68]);
    assert_eq!(
        c.call(100_003, 3, 1, &huge_fh),
        Err(RpcError::Accepted(4)),
        "65-byte handle"
    );
    assert_eq!(
        c.call(100_003, 3, 6, &[0xff; 4]),
        Err(RpcError::Accepted(4)),
        "opaque claiming 4 GiB"
    );

    // RPC version 3: MSG_DENIED / RPC_MISMATCH.
    let (_, mut rec) = c.call_record(100_003, 3, 0, &[]);
    rec[11] = 3;
    c.send_record(&rec);
    let (_, res) = RpcClient::parse_reply(&c.read_record().expect("reply"));
    assert_eq!(res, Err(RpcError::Denied(0)));
    // A credential claiming 17 groups: MSG_DENIED / AUTH_ERROR.
    let (_, mut rec) = c.call_record(100_003, 3, 0, &[]);
    // xid..cred length (8 words), stamp, name length, "test", uid, gid, then the group count.
    let gids_at = 4 * 8 + 4 * 5;
    rec[gids_at..gids_at + 4].copy_from_slice(&17u32.to_be_bytes());
    c.send_record(&rec);
    let (_, res) = RpcClient::parse_reply(&c.read_record().expect("reply"));
    assert_eq!(res, Err(RpcError::Denied(1)));
    // The same connection still works.
    c.mount("/app").expect("mount on the same connection");
}

#[test]
fn bad_and_stale_handles_get_nfs_errors() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let bad = |bytes: Vec<u8>| nfs_fh3 {
        data: Opaque::owned(bytes),
    };
    for fh in [
        bad(vec![]),
        bad(vec![9; 10]),
        bad(vec![1, 7, 0, 0]),
        bad(vec![1, 2, 0]),
    ] {
        assert_eq!(
            c.getattr(&fh).err(),
            Some(nfsstat3::NFS3ERR_BADHANDLE),
            "{:?}",
            fh.data
        );
    }
    // Well formed but naming an unknown repository, commit or node.
    let mut unknown_repo = root.data.to_vec();
    unknown_repo[2] ^= 0xff;
    let mut unknown_commit = root.data.to_vec();
    let n = unknown_commit.len();
    unknown_commit[n - 1] ^= 0xff;
    let mut past_the_tree = root.data.to_vec();
    past_the_tree[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    for fh in [unknown_repo, unknown_commit, past_the_tree] {
        assert_eq!(
            c.getattr(&bad(fh.clone())).err(),
            Some(nfsstat3::NFS3ERR_STALE),
            "{fh:?}"
        );
    }
    assert_healthy(&server);
}

#[test]
fn many_calls_in_flight_on_one_connection_are_all_answered() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let readme = c.walk(&root, "README.md").expect("readme");
    // Pipeline 500 GETATTRs without waiting, then collect every reply.
    let mut xids = std::collections::BTreeSet::new();
    let mut batch = Vec::new();
    for _ in 0..500 {
        let (xid, rec) = c.call_record(100_003, 3, 1, &pack(&readme));
        xids.insert(xid);
        batch.extend_from_slice(&(0x8000_0000u32 | rec.len() as u32).to_be_bytes());
        batch.extend_from_slice(&rec);
    }
    c.stream().write_all(&batch).expect("send batch");
    for _ in 0..500 {
        let (xid, res) = RpcClient::parse_reply(&c.read_record().expect("reply"));
        assert!(res.is_ok());
        assert!(xids.remove(&xid), "unexpected or repeated xid {xid}");
    }
    assert!(xids.is_empty());
}

/// A slowloris client trickles a record a byte at a time: the record
/// timeout closes it (once, counted as `slow_record`), and a well-behaved
/// client is served meanwhile.
#[test]
fn a_trickled_record_is_cut_off_by_the_record_timeout() {
    let mut server = GitNfsd::start_with(
        fixture::store(),
        "127.0.0.1:0",
        &["--record-timeout-secs", "1"],
    );
    let mut slow = TcpStream::connect(server.addr).expect("connect");
    slow.set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    // A record mark for 100 bytes, then one byte every 200 ms.
    slow.write_all(&[0x80, 0, 0, 100]).unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    for _ in 0..100 {
        if slow.write_all(&[0]).is_err() {
            cut = true;
            break;
        }
        assert_healthy(&server);
        std::thread::sleep(Duration::from_millis(200));
        if server.metric("gitnfsd_connections_closed_total{name=\"slow_record\"}") >= 1.0 {
            cut = true;
            break;
        }
    }
    assert!(cut, "still open after {:?}", started.elapsed());
    assert!(closed(&mut slow), "the trickling connection was closed");
    assert!(server.is_running());
    assert_eq!(counted_closes(&server, "slow_record", 1.0), 1.0);
}

/// Idle connections (no call in flight, nothing sent) are closed after the
/// idle timeout, so they cannot hold every connection slot for good.
#[test]
fn idle_connections_are_closed_and_free_their_slots() {
    let server = GitNfsd::start_with(
        fixture::store(),
        "127.0.0.1:0",
        &["--idle-timeout-secs", "1", "--max-connections", "20"],
    );
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    // Every slot is taken: after the idle timeout they are all closed...
    for stream in &mut idle {
        assert!(closed(stream), "an idle connection stayed open");
    }
    let idle = counted_closes(&server, "idle", 20.0);
    assert!(idle >= 20.0, "{idle} counted");
    // ...and a client that talks is served.
    assert_healthy(&server);
}

/// One NULL call record (AUTH_NONE), with its record mark.
fn null_call(xid: u32) -> Vec<u8> {
    let mut v = 0x8000_0028u32.to_be_bytes().to_vec();
    for w in [xid, 0, 2, 100_003, 3, 0, 0, 0, 0, 0] {
        v.extend_from_slice(&w.to_be_bytes());
    }
    v
}

/// `count` copies of `record`, sent in batches of 64 KiB or so.
fn flood(stream: &mut TcpStream, record: &[u8], count: usize) -> std::io::Result<()> {
    let per_batch = (64 * 1024 / record.len()).max(1);
    let batch = record.repeat(per_batch);
    let mut sent = 0;
    while sent < count {
        let n = per_batch.min(count - sent);
        stream.write_all(&batch[..n * record.len()])?;
        sent += n;
    }
    Ok(())
}

/// Millions of tiny records: a million NULL calls pipelined on a connection
/// that reads its replies, as many on one that never reads them (the server
/// must stop reading from it rather than queue replies), and a million
/// records that are not calls. A well-behaved client is served throughout,
/// memory stays bounded and the log does not grow with the records.
#[test]
fn a_flood_of_tiny_records_keeps_memory_and_log_bounded() {
    const RECORDS: usize = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("git-nfsd.log");
    let server = GitNfsd::start_logging_to(fixture::store(), &[], &log);
    assert_healthy(&server);
    let rss_before = server.rss_kib();

    // Replies read: every call is answered.
    let mut answered = TcpStream::connect(server.addr).unwrap();
    let mut replies = answered.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0usize;
        // Each NULL reply is 28 bytes: mark, xid, REPLY, ACCEPTED, verifier, SUCCESS.
        while bytes < RECORDS * 28 {
            let n = replies.read(&mut buf).expect("reading replies");
            assert!(n > 0, "connection closed after {} replies", bytes / 28);
            bytes += n;
        }
        bytes / 28
    });
    let sender = std::thread::spawn(move || flood(&mut answered, &null_call(1), RECORDS));

    // Replies never read: the server stops reading once its queue is full.
    let mut deaf = TcpStream::connect(server.addr).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let deaf_result = flood(&mut deaf, &null_call(2), RECORDS);
    assert!(
        deaf_result.is_err(),
        "a client that reads no replies could send a million calls"
    );

    // Not calls at all (message type 1): ignored, and the connection stays usable.
    let mut not_calls = TcpStream::connect(server.addr).unwrap();
    let mut reply_record = 0x8000_0008u32.to_be_bytes().to_vec();
    reply_record.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 1]);
    flood(&mut not_calls, &reply_record, RECORDS).unwrap();
    not_calls.write_all(&null_call(4)).unwrap();
    not_calls
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reply = [0u8; 28];
    not_calls.read_exact(&mut reply).unwrap();
    assert_eq!(
        reply[4..8],
        4u32.to_be_bytes(),
        "the NULL call after the flood"
    );

    assert_healthy(&server);
    sender.join().unwrap().unwrap();
    assert_eq!(reader.join().unwrap(), RECORDS);
    assert_healthy(&server);

    let growth_mib = server.rss_kib().saturating_sub(rss_before) / 1024;
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    eprintln!("flood: RSS grew by {growth_mib} MiB, {lines} log lines");
    assert!(growth_mib < 128, "RSS grew by {growth_mib} MiB");
    assert!(lines < 50, "{lines} log lines for three million records");
    drop(deaf);
}

/// READ, READDIR and READDIRPLUS with absurd counts and offsets get bounded,
/// correct answers: never more than the advertised maximum, never an error
/// for a count that is merely too large.
#[test]
fn absurd_counts_and_offsets_get_bounded_answers() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let big = c.walk(&root, "big/random.bin").expect("big file");
    let (data, eof) = c.read(&big, 0, u32::MAX).expect("READ of 4 GiB");
    assert_eq!(data.len(), 1 << 20, "clamped to rtmax");
    assert!(!eof);
    let (data, eof) = c
        .read(&big, u64::MAX, u32::MAX)
        .expect("READ at the last offset");
    assert!(data.is_empty() && eof);
    let (data, eof) = c
        .read(&big, 20_000_000 - 10, u32::MAX)
        .expect("READ of the tail");
    assert_eq!((data.len(), eof), (10, true));
    let (data, eof) = c.read(&big, 5, 0).expect("READ of nothing");
    assert!(data.is_empty() && !eof);

    let many = c.walk(&root, "many").expect("many/");
    let listing = c
        .readdir_all(&many, u32::MAX)
        .expect("READDIR of 4 GiB pages");
    assert!(listing.entries.len() > 1000);
    let plus = c
        .readdirplus_all(&many, u32::MAX, u32::MAX)
        .expect("READDIRPLUS of 4 GiB pages");
    assert_eq!(plus.entries.len(), listing.entries.len());
    // A page too small for one entry is TOOSMALL, not a hang or a crash.
    assert_eq!(
        c.readdir_all(&many, 0).err(),
        Some(nfsstat3::NFS3ERR_TOOSMALL)
    );
    assert_eq!(
        c.readdirplus_all(&many, 0, 0).err(),
        Some(nfsstat3::NFS3ERR_TOOSMALL)
    );
    assert_healthy(&server);
}

/// Thousands of idle connections from one client: it gets its share
/// (`--max-connections-per-client`), the rest are closed on accept and
/// logged a few times, not per connection, and another client is served
/// while they are held.
#[test]
fn thousands_of_idle_connections_cannot_lock_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("git-nfsd.log");
    let server = GitNfsd::start_logging_to(
        fixture::store(),
        &[
            "--max-connections-per-client",
            "64",
            "--max-connections",
            "1024",
        ],
        &log,
    );
    // 2,000 sockets on this side: make sure the descriptor limit allows it.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current.is_some_and(|current| current < 4096) {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, raised).unwrap();
    }
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..2000 {
        let c = RpcClient::connect_from(attacker, server.addr);
        held.push(c);
    }
    // The server closes what is over the share as it accepts them.
    let refused = counted_closes(&server, "client_connection_limit", 1936.0);
    assert_eq!(refused, 1936.0, "2,000 - 64 refused");
    assert_healthy(&server);
    let open = held
        .iter_mut()
        .map(|c| closed_now(c.stream()))
        .filter(|closed| !closed)
        .count();
    assert_eq!(open, 64, "the client keeps its share");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = text.matches("too many connections from one client").count();
    assert!(
        (1..=5).contains(&lines),
        "{lines} log lines for 1,936 refusals"
    );
}

/// Whether the server has closed `stream` (EOF or reset), without waiting.
fn closed_now(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0; 1];
    let closed = match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).expect("blocking");
    closed
}

/// Clients that pipeline large READs and never read the replies: each
/// fills its reply queue, and the calls waiting behind it must not hold
/// threads the other clients need. Twelve of them at 64 calls in flight
/// would hold 768 blocking threads, more than the pool's 512.
#[test]
fn clients_that_read_no_replies_cannot_starve_the_others() {
    let server = GitNfsd::start(fixture::store());
    let mut c = RpcClient::connect(server.addr);
    let root = c.mount("/app").expect("mount");
    let big = c.walk(&root, "big/random.bin").expect("big file");
    let mut deaf = Vec::new();
    for _ in 0..12 {
        let mut d = RpcClient::connect(server.addr);
        d.stream()
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut batch = Vec::new();
        for i in 0..200u64 {
            let args = pack(&nfs3_types::nfs3::READ3args {
                file: big.clone(),
                offset: (i % 19) << 20,
                count: 1 << 20,
            });
            let (_, rec) = d.call_record(100_003, 3, 6, &args);
            batch.extend_from_slice(&(0x8000_0000u32 | rec.len() as u32).to_be_bytes());
            batch.extend_from_slice(&rec);
        }
        let _ = d.stream().write_all(&batch);
        deaf.push(d);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_healthy(&server);
    let readme = c.walk(&root, "README.md").expect("lookup");
    assert!(c.read_all(&readme, 4096).unwrap().starts_with(b"# Fixture"));
    drop(deaf);
}
