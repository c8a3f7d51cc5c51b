//! One client connection: read records, answer each call on a blocking
//! thread (at most `max_in_flight` at once), write replies as they finish.
//!
//! Invariant: every call that parses gets an answer, or its connection is
//! closed. Replies may leave out of order; RPC matches them by xid.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use nfs3_types::rpc::auth_stat;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Limits;
use crate::dispatch::{Context, route};
use crate::metrics::Metrics;
use crate::rpc::record::{RecordError, read_record, reply_buffer, seal_reply};
use crate::rpc::{CallError, Reply, Tail, parse_call};

/// RFC 5531 §12: procedure 0 of every program is the null procedure, which
/// takes no arguments and does no work.
const NULL_PROCEDURE: u32 = 0;

pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<Context>,
    limits: Limits,
    shutdown: CancellationToken,
    refused: bool,
) {
    ctx.metrics.connections_open.inc();
    tracing::debug!(%peer, "connection opened");
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let (replies, mut outgoing) = mpsc::channel::<Framed>(limits.max_in_flight);
    let writer = tokio::spawn(async move {
        while let Some(framed) = outgoing.recv().await {
            // One vectored write where it fits: head, file data, padding.
            let mut buf = bytes::Buf::chain(
                bytes::Buf::chain(&framed.head[..], framed.tail.data),
                &PADDING[..framed.tail.padding],
            );
            if let Err(e) = write_half.write_all_buf(&mut buf).await {
                tracing::debug!(error = %e, "writing a reply failed");
                break;
            }
        }
        let _ = write_half.shutdown().await;
    });
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let reason = loop {
        // Wait for the next record's first byte. Silence is idleness only
        // when no call is being answered (the client may be waiting for
        // its replies).
        let first_byte = async {
            loop {
                match tokio::time::timeout(limits.idle_timeout, reader.fill_buf()).await {
                    Ok(read) => return Some(read.map(|b| b.is_empty())),
                    Err(_elapsed) if in_flight.available_permits() == limits.max_in_flight => {
                        return None;
                    }
                    Err(_elapsed) => continue,
                }
            }
        };
        let waited = tokio::select! {
            () = shutdown.cancelled() => break "shutdown",
            waited = first_byte => waited,
        };
        match waited {
            None => {
                tracing::debug!(%peer, timeout = ?limits.idle_timeout, "idle connection closed");
                break "idle";
            }
            Some(Ok(true)) => break "closed",
            Some(Err(e)) if is_disconnect(&e) => break "closed",
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "reading from the connection failed; closing it");
                break "bad_record";
            }
            Some(Ok(false)) => {}
        }
        let mut record = Vec::new();
        let read = tokio::select! {
            () = shutdown.cancelled() => break "shutdown",
            read = tokio::time::timeout(
                limits.record_timeout,
                read_record(&mut reader, &mut record, limits.max_record_bytes),
            ) => match read {
                Ok(read) => read,
                Err(_elapsed) => {
                    tracing::warn!(%peer, timeout = ?limits.record_timeout, "a record did not arrive in time (slow or stalled client); closing the connection");
                    break "slow_record";
                }
            },
        };
        match read {
            Ok(true) => {}
            Ok(false) => break "closed",
            Err(RecordError::Io(e)) if is_disconnect(&e) => break "closed",
            Err(e) => {
                tracing::warn!(%peer, error = %e, "bad record; closing the connection");
                break "bad_record";
            }
        }
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break "shutdown";
        };
        let (mut header, args_at) = match parse_call(&record) {
            Ok((header, args)) => (header, record.len() - args.len()),
            Err(CallError::Unreadable(len)) => {
                tracing::warn!(%peer, len, "unreadable RPC message; closing the connection");
                break "bad_record";
            }
            Err(CallError::NotACall { xid, mtype }) => {
                tracing::debug!(%peer, xid, mtype, "ignoring a message that is not a call");
                continue;
            }
            Err(CallError::RpcMismatch { xid, .. }) => {
                send(&replies, &ctx.metrics, xid, Reply::RpcMismatch).await;
                continue;
            }
            Err(CallError::BadCredential { xid, source }) => {
                tracing::debug!(%peer, xid, error = %source, "malformed credential");
                send(
                    &replies,
                    &ctx.metrics,
                    xid,
                    Reply::AuthError(auth_stat::AUTH_BADCRED),
                )
                .await;
                continue;
            }
        };
        header.peer = Some(peer.ip());
        if refused {
            send(
                &replies,
                &ctx.metrics,
                header.xid,
                Reply::AuthError(auth_stat::AUTH_TOOWEAK),
            )
            .await;
            continue;
        }
        let procedure = match route(&header) {
            Ok(p) => p,
            Err(reply) => {
                tracing::debug!(%peer, prog = header.prog, vers = header.vers, proc_ = header.proc_, outcome = reply.outcome(), "call not routed");
                send(&replies, &ctx.metrics, header.xid, reply).await;
                continue;
            }
        };
        if header.proc_ == NULL_PROCEDURE {
            // Nothing to do but answer: a flood of pings must not cost a
            // blocking thread each.
            let started = Instant::now();
            let reply = (procedure.handler)(&ctx, &header, &record[args_at..]);
            ctx.metrics
                .observe_call(procedure.program, procedure.name, started.elapsed());
            send(&replies, &ctx.metrics, header.xid, reply).await;
            drop(permit);
            continue;
        }
        // The handler runs, and its reply is framed and queued, on one
        // blocking thread: no hop through another task per call.
        let ctx = Arc::clone(&ctx);
        let replies = replies.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (procedure.handler)(&ctx, &header, &record[args_at..])
            }));
            let reply = answered.unwrap_or_else(|_| {
                tracing::error!(procedure = procedure.name, "handler panicked");
                Reply::SystemErr
            });
            ctx.metrics
                .observe_call(procedure.program, procedure.name, started.elapsed());
            match replies.try_send(frame(&ctx.metrics, header.xid, reply)) {
                // A client that reads no replies fills the queue: wait for
                // room on a task, not on a blocking thread, so such clients
                // cannot use up the blocking pool.
                Err(mpsc::error::TrySendError::Full(framed)) => {
                    tokio::runtime::Handle::current().spawn(async move {
                        let _ = replies.send(framed).await;
                        drop(permit);
                    });
                }
                // Sent, or the connection is gone and the reply with it.
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => drop(permit),
            }
        });
    };
    drop(replies);
    // Calls still running hold senders; the writer ends after their replies.
    let _ = writer.await;
    ctx.metrics.connections_open.dec();
    Metrics::count(&ctx.metrics.connections_closed, reason);
    tracing::debug!(%peer, reason, "connection closed");
}

/// A reply ready for the socket: record mark and everything up to the
/// tail, then the tail (file data) as it came from the cache.
struct Framed {
    head: Vec<u8>,
    tail: Tail,
}

const PADDING: [u8; 3] = [0; 3];

async fn send(replies: &mpsc::Sender<Framed>, metrics: &Metrics, xid: u32, reply: Reply) {
    // The connection may be gone; its reply has nowhere to go then.
    let _ = replies.send(frame(metrics, xid, reply)).await;
}

/// Encodes and frames a reply, counting it when it is not a success.
fn frame(metrics: &Metrics, xid: u32, reply: Reply) -> Framed {
    if !matches!(reply, Reply::Success(_) | Reply::Data { .. }) {
        Metrics::count(&metrics.statuses, reply.outcome());
    }
    let mut head = reply_buffer(reply.result_len().min(64 * 1024) + 32);
    let tail = reply.encode_head(xid, &mut head);
    seal_reply(&mut head, tail.data.len() + tail.padding);
    Framed { head, tail }
}

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}
