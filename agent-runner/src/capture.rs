//! The capture: everything an agent printed, in a file, as it arrives.
//!
//! The file is the only buffer. Readers of `/live` read it from their own
//! offset and wait on a [`watch`] channel for it to grow, so a slow reader
//! holds one read buffer and lags behind on its own; the agent's output path
//! (pty → file) never waits for any reader. A capture left by an earlier
//! runner process is opened as finished and served the same way.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// How far a capture has been written, and whether it will grow again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub len: u64,
    pub finished: bool,
}

/// One session's capture file.
#[derive(Debug)]
pub struct Capture {
    path: PathBuf,
    file: Mutex<Option<File>>,
    progress: watch::Sender<Progress>,
}

const FILE_PREFIX: &str = "session-";
const FILE_SUFFIX: &str = ".log";

/// The file name of session `id`'s capture.
pub fn file_name(id: u64) -> String {
    format!("{FILE_PREFIX}{id:06}{FILE_SUFFIX}")
}

fn session_of(name: &str) -> Option<u64> {
    name.strip_prefix(FILE_PREFIX)?
        .strip_suffix(FILE_SUFFIX)?
        .parse()
        .ok()
}

/// The highest session id with a capture in `dir`, if any.
pub fn latest_session(dir: &Path) -> io::Result<Option<u64>> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(session_of) {
            latest = latest.max(Some(id));
        }
    }
    Ok(latest)
}

impl Capture {
    /// Creates the capture for a new session; fails if it already exists, so
    /// an earlier run's capture is never overwritten.
    pub fn create(dir: &Path, id: u64) -> io::Result<Self> {
        let path = dir.join(file_name(id));
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)?;
        let (progress, _) = watch::channel(Progress {
            len: 0,
            finished: false,
        });
        Ok(Self {
            path,
            file: Mutex::new(Some(file)),
            progress,
        })
    }

    /// Opens a capture that no process writes any more.
    pub fn open_finished(dir: &Path, id: u64) -> io::Result<Self> {
        let path = dir.join(file_name(id));
        let len = std::fs::metadata(&path)?.len();
        let (progress, _) = watch::channel(Progress {
            len,
            finished: true,
        });
        Ok(Self {
            path,
            file: Mutex::new(None),
            progress,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Appends output. Readers see it once this returns.
    pub fn append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| io::Error::other("capture writer poisoned"))?;
        let Some(file) = file.as_mut() else {
            return Err(io::Error::other("capture is finished"));
        };
        file.write_all(bytes)?;
        let len = file.seek(SeekFrom::End(0))?;
        self.progress.send_modify(|p| p.len = len);
        Ok(())
    }

    /// Flushes the file to disk and tells readers it will not grow again.
    pub fn finish(&self) -> io::Result<()> {
        let file = self
            .file
            .lock()
            .map_err(|_| io::Error::other("capture writer poisoned"))?
            .take();
        let synced = file.map(|f| f.sync_all()).unwrap_or(Ok(()));
        self.progress.send_modify(|p| p.finished = true);
        synced
    }

    /// A reader from `offset`: yields what is written until `limit` (or
    /// until the capture is finished when `follow`), in chunks.
    pub async fn reader(&self, offset: u64, end: ReadEnd) -> io::Result<CaptureReader> {
        let mut file = tokio::fs::File::open(&self.path).await?;
        file.seek(SeekFrom::Start(offset)).await?;
        Ok(CaptureReader {
            file,
            pos: offset,
            end,
            progress: self.subscribe(),
            buf: BytesMut::new(),
        })
    }
}

/// Bytes read per chunk of a download: large enough that HTTP framing and
/// task wakeups are a small share of it.
const DOWNLOAD_CHUNK: usize = 256 * 1024;
/// Per chunk when following: what one follower may hold in flight, so
/// hundreds of them stay cheap.
const FOLLOW_CHUNK: usize = 64 * 1024;

/// Where a [`CaptureReader`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// At this byte offset (exclusive), which is already written.
    At(u64),
    /// When the capture is finished and everything is read.
    Follow,
}

/// Reads one capture from an offset, waiting for more when following.
#[derive(Debug)]
pub struct CaptureReader {
    file: tokio::fs::File,
    pos: u64,
    end: ReadEnd,
    progress: watch::Receiver<Progress>,
    buf: BytesMut,
}

impl CaptureReader {
    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let available = match self.end {
                ReadEnd::At(end) => end.saturating_sub(self.pos),
                ReadEnd::Follow => {
                    let progress = *self.progress.borrow_and_update();
                    let available = progress.len.saturating_sub(self.pos);
                    if available == 0 {
                        if progress.finished {
                            return Ok(None);
                        }
                        if self.progress.changed().await.is_err() {
                            // The capture is gone (runner shutting down):
                            // serve what the file holds and stop.
                            return self.read_rest().await;
                        }
                        continue;
                    }
                    available
                }
            };
            if available == 0 {
                return Ok(None);
            }
            let want = usize::try_from(available)
                .unwrap_or(usize::MAX)
                .min(match self.end {
                    ReadEnd::At(_) => DOWNLOAD_CHUNK,
                    ReadEnd::Follow => FOLLOW_CHUNK,
                });
            self.buf.clear();
            self.buf.reserve(want);
            let n = (&mut self.file)
                .take(want as u64)
                .read_buf(&mut self.buf)
                .await?;
            if n == 0 {
                // Truncated underneath us; nothing more will come.
                return Ok(None);
            }
            self.pos += n as u64;
            return Ok(Some(self.buf.split().freeze()));
        }
    }

    async fn read_rest(&mut self) -> io::Result<Option<Bytes>> {
        self.end = ReadEnd::At(self.file.metadata().await?.len());
        Box::pin(self.next_chunk()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follower_sees_appends_and_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let capture = Capture::create(dir.path(), 1).unwrap();
        capture.append(b"hello ").unwrap();
        let mut reader = capture.reader(0, ReadEnd::Follow).await.unwrap();
        assert_eq!(&reader.next_chunk().await.unwrap().unwrap()[..], b"hello ");
        capture.append(b"world").unwrap();
        assert_eq!(&reader.next_chunk().await.unwrap().unwrap()[..], b"world");
        capture.finish().unwrap();
        assert_eq!(reader.next_chunk().await.unwrap(), None);
    }

    #[tokio::test]
    async fn reopened_capture_is_finished_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        {
            let capture = Capture::create(dir.path(), 7).unwrap();
            capture.append(b"abc").unwrap();
            capture.finish().unwrap();
        }
        assert!(Capture::create(dir.path(), 7).is_err(), "never overwritten");
        assert_eq!(latest_session(dir.path()).unwrap(), Some(7));
        let capture = Capture::open_finished(dir.path(), 7).unwrap();
        assert_eq!(
            capture.progress(),
            Progress {
                len: 3,
                finished: true
            }
        );
        let mut reader = capture.reader(1, ReadEnd::Follow).await.unwrap();
        assert_eq!(&reader.next_chunk().await.unwrap().unwrap()[..], b"bc");
        assert_eq!(reader.next_chunk().await.unwrap(), None);
    }
}
