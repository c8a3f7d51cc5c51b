//! `bench-report` turns the benches' records into report.md and PNG plots.

use std::process::Command;

#[test]
fn writes_every_table_and_a_png_per_plot() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    std::fs::create_dir(&results).unwrap();
    std::fs::write(
        results.join("peers.jsonl"),
        concat!(
            r#"{"table":"Reads","header":["measure","git-nfsd","ratio"],"rows":[["cat","2,443 MB/s","1.02"]]}"#,
            "\n",
            r#"{"plot":"rates","title":"Random reads","x_label":"clients","y_label":"reads/s","log_x":true,"log_y":false,"lines":[{"name":"git-nfsd","points":[[64,65354],[1,25285],[4,61396]]},{"name":"nfs-ganesha","points":[[1,30820],[64,57588]]}]}"#,
            "\n",
        ),
    )
    .unwrap();
    std::fs::write(
        results.join("worktree.jsonl"),
        r#"{"table":"Ready","header":["files","time"],"rows":[["1000","5 ms"]]}"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = Command::new(integration::workspace_bin("bench-report"))
        .arg(&results)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report
            .contains("| measure | git-nfsd | ratio |\n|---|---|---|\n| cat | 2,443 MB/s | 1.02 |"),
        "{report}"
    );
    assert!(
        report.contains("cargo bench -p integration --bench peers"),
        "{report}"
    );
    assert!(report.contains("![Random reads](rates.png)"), "{report}");
    // Benches in the suite's order: worktree before peers.
    assert!(report.find("## worktree").unwrap() < report.find("## peers").unwrap());
    let png = std::fs::read(out.join("rates.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "a drawn chart, not an empty image");
}

#[test]
fn refuses_a_malformed_record_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.jsonl"), "{\"table\": \n").unwrap();
    let run = Command::new(integration::workspace_bin("bench-report"))
        .arg(dir.path())
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("server.jsonl: line 1"), "{stderr}");
}
