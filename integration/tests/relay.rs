//! `git-nfsd relay`, as an agent machine runs it in front of git-nfsd's
//! replicas: a client's connection goes to the first replica that answers;
//! when that replica dies the client's connection is closed, and on
//! reconnecting the client carries on through another replica with the
//! handles it already holds.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration::client::RpcClient;
use integration::fixture;
use integration::server::GitNfsd;

struct Relay {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay(upstreams: &[String]) -> Relay {
    let mut command = Command::new(integration::workspace_bin("git-nfsd"));
    command.args([
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--connect-timeout-ms",
        "500",
    ]);
    for upstream in upstreams {
        command.args(["--upstream", upstream]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git-nfsd relay");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the relay's banner");
    let addr = line
        .strip_prefix("git-nfsd relay listening on ")
        .and_then(|rest| rest.split(',').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"));
    Relay { child, addr }
}

#[test]
fn a_mount_carries_on_through_another_replica() {
    let store = fixture::store();
    let first = GitNfsd::start(store);
    let second = GitNfsd::start(store);
    let relay = relay(&[first.addr.to_string(), second.addr.to_string()]);

    let mut client = RpcClient::connect(relay.addr);
    let root = client.mount("/app@main").expect("mount through the relay");
    let file = client.walk(&root, "README.md").expect("walk");
    let before = client.read_all(&file, 4096).expect("read");
    assert!(!before.is_empty());

    // The replica the relay chose (the first that answered) goes away.
    drop(first);
    // The client's connection is closed rather than left hanging...
    assert_closed(&mut client);
    // ...and a new one reaches the other replica, where the same handles
    // name the same files.
    let mut client = RpcClient::connect(relay.addr);
    assert_eq!(client.read_all(&file, 4096).expect("read again"), before);
    let again = client.mount("/app@main").expect("mount again");
    assert_eq!(again.data, root.data, "handles agree across replicas");
    drop(second);

    // With no replica left, a connection is closed at once, not hung.
    let mut client = RpcClient::connect(relay.addr);
    assert_closed(&mut client);
}

/// The relay closed the client's connection: reading ends (EOF or reset),
/// rather than timing out.
fn assert_closed(client: &mut RpcClient) {
    client
        .stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let error = client.read_record().expect_err("the connection stays open");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{error}"
    );
}

#[test]
fn bad_upstreams_are_clear_errors() {
    let output = Command::new(integration::workspace_bin("git-nfsd"))
        .args(["relay", "--upstream", "no-port"])
        .output()
        .expect("git-nfsd relay");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HOST:PORT"), "{stderr}");
    let output = Command::new(integration::workspace_bin("git-nfsd"))
        .arg("relay")
        .output()
        .expect("git-nfsd relay");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--upstream"));
}
