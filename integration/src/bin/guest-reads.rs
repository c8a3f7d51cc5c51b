//! Random 4 KiB reads through a mounted file system, for the benchmarks'
//! guest half (the kernel NFS client): files opened with O_DIRECT so every
//! read is a READ call to the server, not a page-cache hit.
//!
//! usage: guest-reads LIST TOTAL CLIENTS
//!
//! LIST has one `SIZE PATH` per line. CLIENTS threads share TOTAL reads,
//! each picking files and 4 KiB-aligned offsets from its own deterministic
//! sequence. Prints `reads/s p50_us p99_us`.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use integration::peers::Rng;
use integration::report::percentile;

const BLOCK: u64 = 4096;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [list, total, clients] = args.as_slice() else {
        bail!("usage: guest-reads LIST TOTAL CLIENTS");
    };
    let total: usize = total.parse().context("TOTAL is a number")?;
    let clients: usize = clients.parse().context("CLIENTS is a number")?;
    if clients == 0 {
        bail!("CLIENTS must be at least 1");
    }
    let files = open_files(list)?;
    let per_client = total / clients;
    let started = Instant::now();
    let mut latencies = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|n| {
                let files = &files;
                scope.spawn(move || read_randomly(files, n as u64, per_client))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a reader panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?
    .concat();
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |p: f64| percentile(&latencies, p).as_micros();
    println!("{rate:.0} {} {}", at(0.5), at(0.99));
    Ok(())
}

/// Opens every file of LIST with O_DIRECT; `(file, size)`.
fn open_files(list: &str) -> Result<Vec<(File, u64)>> {
    let text = std::fs::read_to_string(list).with_context(|| format!("reading {list}"))?;
    let files = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(size, path)| {
            let size: u64 = size.parse().with_context(|| format!("size of {path}"))?;
            let file = File::options()
                .read(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(path)
                .with_context(|| format!("opening {path}"))?;
            Ok((file, size))
        })
        .collect::<Result<Vec<_>>>()?;
    if files.is_empty() {
        bail!("{list} names no file");
    }
    Ok(files)
}

fn read_randomly(files: &[(File, u64)], client: u64, reads: usize) -> Result<Vec<Duration>> {
    let mut rng = Rng(0x1234_5678 + client);
    // O_DIRECT wants an aligned buffer on some file systems; NFS does not,
    // but an aligned one costs nothing.
    let mut buffer = vec![0u8; 2 * BLOCK as usize];
    let skip = buffer.as_ptr().align_offset(BLOCK as usize);
    let block = &mut buffer[skip..skip + BLOCK as usize];
    let mut latencies = Vec::with_capacity(reads);
    for _ in 0..reads {
        let (file, size) = &files[(rng.next_u64() % files.len() as u64) as usize];
        let offset = (rng.next_u64() % size.div_ceil(BLOCK).max(1)) * BLOCK;
        let t = Instant::now();
        file.read_at(block, offset).context("a 4 KiB read")?;
        latencies.push(t.elapsed());
    }
    Ok(latencies)
}
