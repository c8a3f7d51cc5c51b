//! The `git-nfsd` command line: help, bad flags, bad stores, and the
//! no-argument mode that serves the repository around the current directory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn git_nfsd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_git-nfsd"))
}

#[test]
fn help_explains_every_flag() {
    let out = git_nfsd().args(["serve", "--help"]).output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--store",
        "--listen",
        "--metrics",
        "--uid",
        "--gid",
        "--cache-bytes",
        "--max-record-bytes",
        "--max-in-flight",
        "--max-connections",
        "--allow",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn bad_flags_are_clear_errors() {
    let out = git_nfsd()
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    let out = git_nfsd()
        .args(["serve", "--allow", "10.0.0.0/33"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow"));
    let out = git_nfsd()
        .args(["serve", "--no-such-flag"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let out = git_nfsd()
        .args(["serve", "--cache-bytes", "10", "--store", "."])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cache-bytes"));
}

#[test]
fn a_missing_store_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let out = git_nfsd()
        .arg("serve")
        .arg("--store")
        .arg(&missing)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
}

/// A fresh volume holds no repository yet: the server listens anyway (a
/// health check must see it up) and says why nothing mounts.
#[test]
fn an_empty_store_is_served_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = git_nfsd()
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut banner = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut banner)
        .expect("banner");
    let listening = banner.contains("listening on 127.0.0.1:") && banner.contains("0 repositories");
    let addr = banner.split_whitespace().find_map(|word| {
        word.trim_end_matches(',')
            .parse::<std::net::SocketAddr>()
            .ok()
    });
    let connected = addr.map(std::net::TcpStream::connect);
    child.kill().ok();
    let out = child.wait_with_output().expect("wait");
    assert!(listening, "{banner}");
    assert!(matches!(connected, Some(Ok(_))), "{banner}: {connected:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no repository yet"), "{err}");
}

#[test]
fn without_arguments_it_serves_the_repository_around_the_current_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("my-project");
    std::fs::create_dir_all(repo.join("sub")).expect("mkdir");
    let git = |args: &[&str]| {
        assert!(
            Command::new("git")
                .args(args)
                .current_dir(&repo)
                .status()
                .expect("git")
                .success()
        );
    };
    git(&["init", "-q"]);
    std::fs::write(repo.join("sub/f.txt"), "x").expect("write");
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t.invalid",
        "commit",
        "-qm",
        "init",
    ]);

    // No arguments except a free port, run from a subfolder.
    let mut child = git_nfsd()
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(repo.join("sub"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let done = line.contains("nfs-ls");
        printed.push(line);
        if done {
            break;
        }
    }
    child.kill().ok();
    child.wait().ok();
    let text = printed.join("\n");
    assert!(text.contains("serving 1 repository"), "{text}");
    assert!(
        text.contains("mount -t nfs -o vers=3,proto=tcp,port=")
            && text.contains("127.0.0.1:/my-project /mnt/my-project"),
        "{text}"
    );

    // Outside any repository it says how to give a store.
    let out = git_nfsd().current_dir(dir.path()).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--store"));
}

/// Listening on IPv6, the printed mount command says so: mount.nfs with
/// `proto=tcp` would look the address up over IPv4 only.
#[test]
fn the_mount_command_for_an_ipv6_listener_uses_tcp6() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("store/app.git");
    assert!(
        Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(&repo)
            .status()
            .expect("git")
            .success()
    );
    let mut child = git_nfsd()
        .args(["serve", "--listen", "[::1]:0", "--store"])
        .arg(dir.path().join("store"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let banner: Vec<String> = lines.by_ref().take(4).map_while(Result::ok).collect();
    child.kill().ok();
    child.wait().ok();
    let banner = banner.join("\n");
    assert!(
        banner.contains("proto=tcp6,mountproto=tcp6") && banner.contains("[::1]:/app"),
        "{banner}"
    );
}

/// A closed stdout (its reader gone before the banner) does not take the
/// server down: the banner is dropped, the server serves.
#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("store/app.git");
    assert!(
        Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(&repo)
            .status()
            .expect("git")
            .success()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut child = git_nfsd()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics", "127.0.0.1:0", "--store"])
        .arg(dir.path().join("store"))
        .stdout(writer)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let connected = loop {
        if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            break stream;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "git-nfsd exited"
        );
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(connected);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "git-nfsd exited after its banner met a closed stdout"
    );
    child.kill().ok();
    child.wait().ok();
}
