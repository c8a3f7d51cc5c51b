//! The local Fly itself, run as `local-fly run` on this host (root: it makes
//! network namespaces, links and mounts): a first deploy from a fly.toml,
//! Fly's environment and names in a machine, IPv6 only between machines,
//! the volume, suspend and stop with the proxy's autostart and its strict
//! `fly-force-instance-id`, the Machines API's errors, and a rolling deploy
//! whose machine check fails, then one whose check passes.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TOKEN: &str = "platform-test-token";

const FLY_TOML: &str = r#"
app = "web"
primary_region = "ams"
kill_signal = "SIGTERM"
kill_timeout = 5

[env]
  GREETING = "hello from fly.toml"

[mounts]
  source = "web_data"
  destination = "/data"

[http_service]
  internal_port = 8080
  auto_start_machines = true
  auto_stop_machines = "off"

  [[http_service.machine_checks]]
    entrypoint = ["/bin/sh", "-c"]
    command = ["python3 -c 'import os, urllib.request; urllib.request.urlopen(\"http://[\" + os.environ[\"FLY_TEST_MACHINE_IP\"] + \"]:8080/\", timeout=10)' && exit $CHECK_EXIT"]
"#;

/// The machine: notes what it sees (environment, IPv4 routes, names) in its
/// volume, then serves the volume over HTTP.
const ENTRYPOINT: &str = "env > /data/env.txt; ip -4 route > /data/routes4.txt 2>&1; \
     ip -6 addr show dev eth0 > /data/addr6.txt; cat /etc/hosts > /data/hosts.txt; \
     hostname > /data/hostname.txt; \
     exec python3 -m http.server --bind :: 8080 --directory /data";

struct Fly {
    child: Child,
    dir: tempfile::TempDir,
    api: String,
    flycast: SocketAddr,
}

impl Drop for Fly {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image(tag: &str, check_exit: u8) -> String {
    format!(
        "[[images]]\nreference = \"web:{tag}\"\nroot = \"/\"\nentrypoint = [\"/bin/sh\", \"-c\", {entry:?}]\n\
         env = {{ CHECK_EXIT = \"{check_exit}\", PATH = \"/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\" }}\n\n",
        entry = ENTRYPOINT,
    )
}

fn start() -> Fly {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("fly.toml"), FLY_TOML).expect("fly.toml");
    let spec = format!(
        "region = \"ams\"\napi_token = \"{TOKEN}\"\n\n{}{}{}[[apps]]\nfly_toml = \"fly.toml\"\nimage = \"web:1\"\n",
        image("1", 0),
        image("2", 1),
        image("3", 0),
    );
    std::fs::write(dir.path().join("spec.toml"), spec).expect("spec");
    let instance = 20 + (std::process::id() % 60) as u16;
    let mut child = Command::new(env!("CARGO_BIN_EXE_local-fly"))
        .args(["run", "--spec"])
        .arg(dir.path().join("spec.toml"))
        .arg("--dir")
        .arg(dir.path().join("state"))
        .args(["--instance", &instance.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("log")).expect("log"),
        ))
        .spawn()
        .expect("local-fly");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not ready:\n{log}"));
    let flycast: std::net::Ipv6Addr = ready["flycast"]["web"]
        .as_str()
        .and_then(|ip| ip.parse().ok())
        .expect("web's flycast address");
    Fly {
        child,
        api: ready["api"].as_str().expect("api").to_owned(),
        flycast: SocketAddr::new(flycast.into(), 80),
        dir,
    }
}

impl Fly {
    fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .resolve("web.flycast", self.flycast)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client")
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API call");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn machine(&self, id: &str) -> Value {
        self.api(
            reqwest::Method::GET,
            &format!("/v1/apps/web/machines/{id}"),
            None,
        )
        .await
        .1
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http()
            .get(format!("http://web.flycast{path}"))
            .send()
            .await
            .expect("GET through the proxy");
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    }

    fn volume_dir(&self, volume: &str) -> PathBuf {
        self.dir.path().join("state/volumes").join(volume)
    }

    fn hosts(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/hosts")).unwrap_or_default()
    }
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_names_proxy_and_deploys() {
    let fly = start();
    let (status, machines) = fly
        .api(reqwest::Method::GET, "/v1/apps/web/machines", None)
        .await;
    assert_eq!(status, 200, "{machines}");
    let machines = machines.as_array().cloned().expect("a list");
    assert_eq!(machines.len(), 1, "the first deploy makes one machine");
    let machine = &machines[0];
    let id = machine["id"].as_str().expect("id").to_owned();
    let ip = machine["private_ip"].as_str().expect("ip").to_owned();
    assert!(ip.starts_with("fdaa:"), "{ip}");
    assert_eq!(machine["state"], "started");
    assert_eq!(machine["config"]["metadata"]["fly_release_version"], "1");
    let volume = machine["config"]["mounts"][0]["volume"]
        .as_str()
        .expect("a volume")
        .to_owned();
    let data = fly.volume_dir(&volume);

    // The machine serves its volume through the proxy, with Fly's env.
    wait_for("the machine serving", async || {
        fly.get("/env.txt").await.0 == 200
    })
    .await;
    let env = read(&data.join("env.txt"));
    for expected in [
        "FLY_APP_NAME=web".to_owned(),
        format!("FLY_MACHINE_ID={id}"),
        format!("FLY_PRIVATE_IP={ip}"),
        "FLY_REGION=ams".to_owned(),
        "FLY_IMAGE_REF=web:1".to_owned(),
        "GREETING=hello from fly.toml".to_owned(),
        "PRIMARY_REGION=ams".to_owned(),
    ] {
        assert!(
            env.lines().any(|l| l == expected),
            "{expected} missing:\n{env}"
        );
    }
    assert_eq!(read(&data.join("hostname.txt")).trim(), id);
    // IPv6 only: no IPv4 route leaves the machine.
    assert_eq!(read(&data.join("routes4.txt")).trim(), "");
    assert!(read(&data.join("addr6.txt")).contains(&ip));
    let hosts = read(&data.join("hosts.txt"));
    assert!(
        hosts.contains(&format!("{ip}\tweb.internal {id}.vm.web.internal")),
        "{hosts}"
    );
    assert!(
        hosts.contains("web.flycast") && hosts.contains("_api.internal"),
        "{hosts}"
    );

    // Suspended: not in web.internal; the proxy's autostart resumes it.
    let (status, body) = fly
        .api(
            reqwest::Method::POST,
            &format!("/v1/apps/web/machines/{id}/suspend"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for("suspended", async || {
        fly.machine(&id).await["state"] == "suspended"
    })
    .await;
    assert!(!fly.hosts().contains("web.internal"), "{}", fly.hosts());
    let (status, _) = fly.get("/hostname.txt").await;
    assert_eq!(status, 200);
    assert_eq!(fly.machine(&id).await["state"], "started");

    // Stopped: a request pinned with fly-force-instance-id fails and does
    // not start it; an unpinned one does.
    let (status, body) = fly
        .api(
            reqwest::Method::POST,
            &format!("/v1/apps/web/machines/{id}/stop"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for("stopped", async || {
        fly.machine(&id).await["state"] == "stopped"
    })
    .await;
    let pinned = fly
        .http()
        .get("http://web.flycast/hostname.txt")
        .header("fly-force-instance-id", &id)
        .send()
        .await
        .expect("pinned");
    assert!(!pinned.status().is_success(), "{}", pinned.status());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fly.machine(&id).await["state"], "stopped");
    wait_for("autostart", async || {
        fly.get("/hostname.txt").await.0 == 200
    })
    .await;

    // The Machines API's errors.
    let (status, _) = fly
        .api(reqwest::Method::GET, "/v1/apps/web/machines/nope", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = fly
        .api(
            reqwest::Method::GET,
            &format!("/v1/apps/web/machines/{id}/wait?state=asleep"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = fly
        .api(
            reqwest::Method::GET,
            &format!("/v1/apps/web/machines/{id}/wait?state=destroyed&timeout=1"),
            None,
        )
        .await;
    assert_eq!(status, 408);
    let unauthenticated = reqwest::Client::new()
        .get(format!("{}/v1/apps/web/machines", fly.api))
        .send()
        .await
        .expect("GET");
    assert_eq!(unauthenticated.status(), 401);
    let mut large = machine["config"].clone();
    large["guest"]["memory_mb"] = json!(4096);
    large["mounts"] = json!([]);
    let (status, created) = fly
        .api(
            reqwest::Method::POST,
            "/v1/apps/web/machines",
            Some(json!({"config": large, "skip_launch": false})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let large_id = created["id"].as_str().expect("id").to_owned();
    let (status, body) = fly
        .api(
            reqwest::Method::POST,
            &format!("/v1/apps/web/machines/{large_id}/suspend"),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("2048"),
        "{body}"
    );
    let (status, _) = fly
        .api(
            reqwest::Method::DELETE,
            &format!("/v1/apps/web/machines/{large_id}?force=true"),
            None,
        )
        .await;
    assert_eq!(status, 200);

    // A rolling deploy whose check fails stops after updating the first
    // machine (flyctl's rolling order: update, then check).
    let (status, report) = fly
        .api(
            reqwest::Method::POST,
            "/local/apps/web/deploy",
            Some(json!({"image": "web:2"})),
        )
        .await;
    assert_eq!(status, 409, "{report}");
    assert_eq!(report["strategy"], "rolling");
    assert_eq!(report["checks"][0]["exit_code"], 1, "{report}");
    assert_eq!(report["checks"][0]["tested_machine"], id.as_str());

    // One that passes: the machine runs the new image, its volume kept.
    let (status, report) = fly
        .api(
            reqwest::Method::POST,
            "/local/apps/web/deploy",
            Some(json!({"image": "web:3"})),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["checks"][0]["exit_code"], 0, "{report}");
    let machine = fly.machine(&id).await;
    assert_eq!(machine["config"]["image"], "web:3");
    assert_eq!(machine["config"]["metadata"]["fly_release_version"], "3");
    assert_eq!(machine["config"]["mounts"][0]["volume"], volume.as_str());
    wait_for("the new image serving", async || {
        read(&data.join("env.txt")).contains("FLY_IMAGE_REF=web:3")
    })
    .await;
    // Check machines are gone once they ended.
    let (_, all) = fly
        .api(reqwest::Method::GET, "/v1/apps/web/machines", None)
        .await;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
}
