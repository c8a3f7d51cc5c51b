//! A local Fly (`local-fly run`) as a child process: the spec it runs,
//! where its API and Flycast addresses are, and clients that reach them by
//! Fly's names. Needs root (namespaces, links, mounts).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Network instances handed out in this process; another test binary
/// running at the same time starts from its own pid.
static NEXT_INSTANCE: AtomicU16 = AtomicU16::new(0);

/// A running local Fly.
pub struct LocalFly {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `http://[gateway]:4280`.
    pub api: String,
    pub api_token: String,
    /// app → its Flycast address.
    pub flycast: BTreeMap<String, Ipv6Addr>,
    /// The hosts file every machine sees.
    pub hosts: PathBuf,
}

impl LocalFly {
    /// Starts `local-fly run` with `spec` (TOML text; paths in it are
    /// absolute) and waits for its ready line.
    pub fn start(spec: &str, api_token: &str) -> Self {
        let dir = tempfile::tempdir().expect("a folder for the local Fly");
        let spec_path = dir.path().join("spec.toml");
        std::fs::write(&spec_path, spec).expect("write the spec");
        let offset = NEXT_INSTANCE.fetch_add(1, Ordering::SeqCst);
        // Bridge names and prefixes must not collide with another test
        // binary's: spread by pid.
        let instance = 100 + (std::process::id() % 400) as u16 * 8 + offset;
        let mut child = Command::new(crate::workspace_bin("local-fly"))
            .args(["run", "--spec"])
            .arg(&spec_path)
            .arg("--dir")
            .arg(dir.path().join("state"))
            .args(["--instance", &instance.to_string()])
            .env("RUST_LOG", "info,local_fly=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("local-fly.log")).expect("log file"),
            ))
            .spawn()
            .expect("start local-fly");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        if read.is_err() || line.is_empty() {
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join("local-fly.log")).unwrap_or_default();
            panic!("local-fly did not come up:\n{log}");
        }
        let ready: Value = serde_json::from_str(&line).expect("the ready line is JSON");
        let flycast = ready["flycast"]
            .as_object()
            .expect("flycast addresses")
            .iter()
            .map(|(app, ip)| {
                (
                    app.clone(),
                    ip.as_str()
                        .and_then(|ip| ip.parse().ok())
                        .expect("an IPv6 address"),
                )
            })
            .collect();
        Self {
            child,
            api: ready["api"].as_str().expect("api").to_owned(),
            api_token: api_token.to_owned(),
            flycast,
            hosts: PathBuf::from(ready["hosts"].as_str().expect("hosts")),
            dir,
        }
    }

    /// What local-fly logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("local-fly.log")).unwrap_or_default()
    }

    /// An HTTP client that resolves `<app>.flycast` to the proxy, so
    /// requests carry Fly's names as Host.
    pub fn http(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(120));
        for (app, ip) in &self.flycast {
            builder = builder.resolve(&format!("{app}.flycast"), SocketAddr::new((*ip).into(), 80));
        }
        builder.build().expect("HTTP client")
    }

    /// A Machines API call (with the token).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.api_token)
            .timeout(Duration::from_secs(1800));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("Machines API call");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The app's machines, as the Machines API lists them.
    pub async fn machines(&self, app: &str) -> Vec<Value> {
        let (status, body) = self
            .api(
                reqwest::Method::GET,
                &format!("/v1/apps/{app}/machines"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// Waits until `machine` of `app` is in `state`.
    pub async fn wait_state(&self, app: &str, machine: &str, state: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (_, body) = self
                .api(
                    reqwest::Method::GET,
                    &format!("/v1/apps/{app}/machines/{machine}"),
                    None,
                )
                .await;
            if body["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "machine {machine} is {} after {within:?}, not {state}\n{}",
                body["state"],
                self.machine_log(machine).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A machine's console output.
    pub async fn machine_log(&self, machine: &str) -> String {
        let (_, body) = self
            .api(
                reqwest::Method::GET,
                &format!("/local/machines/{machine}/log"),
                None,
            )
            .await;
        body.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string())
    }

    /// `fly deploy` of `image` to `app`: the deploy's report.
    pub async fn deploy(&self, app: &str, image: &str) -> (u16, Value) {
        self.api(
            reqwest::Method::POST,
            &format!("/local/apps/{app}/deploy"),
            Some(serde_json::json!({ "image": image })),
        )
        .await
    }
}

impl Drop for LocalFly {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TOML basic string.
pub fn toml_string(text: &str) -> String {
    toml_escape(text)
}

fn toml_escape(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An app's `fly.toml` in this repository (`fly/APP/fly.toml`), as a TOML
/// string for a spec's `fly_toml`.
pub fn fly_toml(app: &str) -> String {
    toml_string(
        &repo_root()
            .join("fly")
            .join(app)
            .join("fly.toml")
            .display()
            .to_string(),
    )
}

/// The repository's root folder.
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// An `[[images]]` block for the spec: the image `fly/images/build` made
/// for `app` (its exported root filesystem and its OCI config), under
/// `reference`. Builds it first if needed (the harness caches its layers,
/// so an unchanged image costs seconds).
pub fn built_image(app: &str, reference: &str) -> String {
    let images = std::env::var_os("IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/images"));
    let status = Command::new(repo_root().join("fly/images/build"))
        .arg(app)
        .env("IMAGES_DIR", &images)
        .stdout(Stdio::null())
        .status()
        .expect("running fly/images/build");
    assert!(status.success(), "fly/images/build {app} failed");
    let inspected: Value = serde_json::from_slice(
        &std::fs::read(images.join(app).join("image.json")).expect("the image's config"),
    )
    .expect("image.json is JSON");
    let config: Value = match &inspected["Config"] {
        Value::String(text) => serde_json::from_str(text).expect("the OCI config"),
        other => other.clone(),
    };
    let config = &config["config"];
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let list = |items: Vec<String>| {
        items
            .iter()
            .map(|item| toml_string(item))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let env: Vec<String> = strings(&config["Env"])
        .into_iter()
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some(format!("{key} = {}", toml_string(value)))
        })
        .collect();
    format!(
        "[[images]]\nreference = {}\nroot = {}\nentrypoint = [{}]\ncmd = [{}]\nenv = {{ {} }}\nuser = {}\n\n",
        toml_string(reference),
        toml_string(&images.join(app).join("rootfs").display().to_string()),
        list(strings(&config["Entrypoint"])),
        list(strings(&config["Cmd"])),
        env.join(", "),
        toml_string(config["User"].as_str().unwrap_or_default()),
    )
}
