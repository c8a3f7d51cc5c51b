//! git-nfsd against nfs-ganesha through the Linux kernel's NFS client, in
//! the QEMU guest: `cargo build --release --bins && cargo bench -p
//! integration --bench peers_guest` (as root, with Debian's `nfs-ganesha
//! nfs-ganesha-vfs rpcbind linux-source`).
//!
//! The same data as the `peers` bench, plus the Linux kernel tree:
//! - sequential read of the 256 MiB file (`dd bs=1M`);
//! - `ls -lR` (READDIRPLUS and attributes) of the 100,000-file tree and of
//!   the kernel tree;
//! - random 4 KiB reads across 2,000 files (O_DIRECT, so each is a READ
//!   call) from 1, 4, 16 and 64 threads (`guest-reads`).
//!
//! The guest runs under software emulation, which slows the client alike
//! for both servers; its page cache is dropped before every measure. Runs
//! alternate between the servers; figures are medians of 3 rounds.

use std::collections::BTreeMap;

use integration::guest::GuestRun;
use integration::peers::{BIG_MIB, FILES, Ganesha, prepare, prepare_kernel, random_read_files};
use integration::report::{Plot, Table};
use integration::server::GitNfsd;

const ROUNDS: usize = 3;
const RANDOM_FILES: usize = 2_000;
const RANDOM_READS: usize = 4_000;
const CLIENTS: [usize; 4] = [1, 4, 16, 64];

fn main() {
    let (store, data) = prepare();
    prepare_kernel(&store, &data);
    let kernel_files = integration::fixture::file_count(&store.join("linux.git"), "main");
    let nfsd = GitNfsd::start(&store);
    let ganesha = Ganesha::start(&data);
    // The same files, under each server's mount point in the guest.
    let files = random_read_files(&store, RANDOM_FILES);
    let list = |root: &str| {
        files
            .iter()
            .map(|(path, size)| format!("{size} {root}/{path}\n"))
            .collect::<String>()
    };
    let lists = tempfile::tempdir().expect("tmp");
    std::fs::write(lists.path().join("ours"), list("/m/ours/files")).expect("list");
    std::fs::write(lists.path().join("theirs"), list("/m/theirs/files")).expect("list");
    let lists_path = lists.path().to_string_lossy().into_owned();
    let reader = integration::workspace_bin("guest-reads");
    let guest = GuestRun::new()
        .timeout(5400)
        .env("nfsport", nfsd.port())
        .env("ganeshaport", ganesha.port)
        .env("ganeshamountport", ganesha.mount_port)
        .program(&reader, "usr/local/bin/guest-reads")
        .file(&lists_path, "lists");
    let console = guest.run(&format!(
        "ROUNDS={ROUNDS}\nREADS={RANDOM_READS}\nCLIENTS='{}'\n{GUEST_SCRIPT}",
        CLIENTS.map(|c| c.to_string()).join(" ")
    ));

    // "RESULT <measure> <server> <value...>" lines, every round.
    let mut results: BTreeMap<(String, String), Vec<Vec<f64>>> = BTreeMap::new();
    for line in console.lines() {
        let mut fields = line.trim_end_matches('\r').split(' ');
        if fields.next() != Some("RESULT") {
            continue;
        }
        let (Some(measure), Some(server)) = (fields.next(), fields.next()) else {
            continue;
        };
        let values = fields.filter_map(|v| v.parse().ok()).collect();
        results
            .entry((measure.to_owned(), server.to_owned()))
            .or_default()
            .push(values);
    }
    // The round with the median first value (a time or a rate).
    let median = |measure: &str, server: &str| -> Vec<f64> {
        let mut rounds = results
            .get(&(measure.to_owned(), server.to_owned()))
            .unwrap_or_else(|| panic!("no {measure} for {server} in the guest's output"))
            .clone();
        rounds.sort_by(|a, b| a[0].total_cmp(&b[0]));
        rounds.swap_remove(rounds.len() / 2)
    };

    let mut table = Table::new(
        &format!(
            "git-nfsd vs nfs-ganesha, Linux kernel NFS client in the QEMU guest (software emulation), medians of {ROUNDS} alternating rounds, page cache dropped before each"
        ),
        &[
            "measure",
            "git-nfsd",
            "nfs-ganesha",
            "ratio (≥ 1: git-nfsd as fast or faster)",
        ],
    );
    let (ours, theirs) = (median("seq", "ours")[0], median("seq", "theirs")[0]);
    let mb = (BIG_MIB << 20) as f64 / 1e6;
    table.row(vec![
        format!("`dd bs=1M` of a {BIG_MIB} MiB file"),
        format!("{:.0} MB/s", mb / (ours / 100.0)),
        format!("{:.0} MB/s", mb / (theirs / 100.0)),
        format!("{:.2}", theirs / ours),
    ]);
    for (measure, what) in [
        ("list-files", format!("`ls -lR` of {FILES} files")),
        (
            "list-linux",
            format!("`ls -lR` of the Linux tree ({kernel_files} files)"),
        ),
    ] {
        let (ours, theirs) = (median(measure, "ours")[0], median(measure, "theirs")[0]);
        table.row(vec![
            what,
            format!("{:.2} s", ours / 100.0),
            format!("{:.2} s", theirs / 100.0),
            format!("{:.2}", theirs / ours),
        ]);
    }
    let mut rates = Plot::new(
        "random-reads-guest",
        "Random 4 KiB reads, kernel NFS client in the QEMU guest",
        "client threads",
        "reads per second",
    )
    .log_x();
    for clients in CLIENTS {
        let measure = format!("random-{clients}");
        let (ours, theirs) = (median(&measure, "ours"), median(&measure, "theirs"));
        table.row(vec![
            format!("random 4 KiB reads, {clients} thread(s): reads/s; p50 / p99 ms"),
            format!(
                "{:.0}; {:.2} / {:.2}",
                ours[0],
                ours[1] / 1e3,
                ours[2] / 1e3
            ),
            format!(
                "{:.0}; {:.2} / {:.2}",
                theirs[0],
                theirs[1] / 1e3,
                theirs[2] / 1e3
            ),
            format!("{:.2}", ours[0] / theirs[0]),
        ]);
        rates.point("git-nfsd", clients as f64, ours[0]);
        rates.point("nfs-ganesha", clients as f64, theirs[0]);
    }
    table.row(vec![
        "server RSS after the runs".into(),
        format!("{} MiB", nfsd.rss_kib() / 1024),
        format!("{} MiB", integration::rss_kib(ganesha.ganesha.id()) / 1024),
        String::new(),
    ]);
    table.print();
    rates.save();
}

/// Guest half: mounts both servers read-only, then per round and server
/// prints `RESULT <measure> <ours|theirs> <values>`: times in centiseconds
/// from /proc/uptime, random reads as guest-reads prints them.
const GUEST_SCRIPT: &str = r#"
ulimit -n 8192 || exit 3
now() { cut -d' ' -f1 /proc/uptime | tr -d .; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
opts=vers=3,proto=tcp,nolock,ro,actimeo=600
mkdir -p /m/ours/big /m/ours/files /m/ours/linux /m/theirs
for e in big files linux; do
    mount -t nfs -o $opts,port=$GUEST_NFSPORT,mountport=$GUEST_NFSPORT 10.0.2.2:/$e@main /m/ours/$e || exit 1
done
mount -t nfs -o $opts,port=$GUEST_GANESHAPORT,mountport=$GUEST_GANESHAMOUNTPORT,mountproto=tcp 10.0.2.2:/data /m/theirs || exit 1
# Warm both servers (the first read decodes the pack; the first listing walks the trees).
for who in ours theirs; do
    cat /m/$who/big/big.bin > /dev/null
    ls -lR /m/$who/files /m/$who/linux > /dev/null
    guest-reads /lists/$who 200 1 > /dev/null || exit 2
done
round=0
while [ $round -lt $ROUNDS ]; do
    round=$((round + 1))
    for who in ours theirs; do
        cold; t0=$(now); dd if=/m/$who/big/big.bin of=/dev/null bs=1M 2> /dev/null; t1=$(now)
        echo "RESULT seq $who $((t1 - t0))"
        for tree in files linux; do
            cold; t0=$(now); ls -lR /m/$who/$tree > /dev/null; t1=$(now)
            echo "RESULT list-$tree $who $((t1 - t0))"
        done
        for c in $CLIENTS; do
            echo "RESULT random-$c $who $(guest-reads /lists/$who $READS $c)"
        done
    done
done
"#;
