//! The Fly apps' images, built here: `fly/images/build` builds the three
//! targets of `fly/Dockerfile` with buildah, over local stand-ins for the
//! public base images (fly/images/README.md), and exports each image's root
//! filesystem. Then, in each image:
//!
//! - every program its entrypoint and its machine checks call runs, as the
//!   user the image runs as, and the commands their scripts use are there;
//! - its entrypoint, with Fly's environment and the app's `fly.toml` `[env]`,
//!   runs to its first wait: its ports listen and answer (in a network
//!   namespace of its own, so it takes no port of the host's);
//! - it holds no build tool, no node, no package cache and none of the host's
//!   own CA certificates (the build stages that download get the host's CA
//!   bundle, the apps' stages do not); its own binaries are stripped; it stays
//!   within a size budget.
//!
//! A build failure names the stage and the step; a missing program names the
//! program. Needs root (buildah, namespaces), as CI has.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Where the harness keeps its state (`IMAGES_DIR`, default target/images).
fn images_dir() -> PathBuf {
    std::env::var_os("IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/images"))
}

fn harness() -> Command {
    assert!(
        rustix::process::geteuid().is_root(),
        "the image tests need root (buildah, mmdebstrap, namespaces); CI runs them as root"
    );
    Command::new(repo_root().join("fly/images/build"))
}

/// Runs buildah on the harness's storage.
fn buildah(args: &[&str]) -> Output {
    harness()
        .arg("--buildah")
        .args(args)
        .output()
        .expect("running buildah through fly/images/build")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs the harness with `args`, its output on the test's, and panics with
/// what it says failed (the stage and the step of a failed build).
fn run_harness(args: &[&str]) {
    let status = harness()
        .args(args)
        .status()
        .expect("running fly/images/build");
    if !status.success() {
        let failure = std::fs::read_to_string(images_dir().join("failure.txt"))
            .unwrap_or_else(|_| "see its output above".to_owned());
        panic!("fly/images/build {} failed: {failure}", args.join(" "));
    }
}

/// A working container of an image, removed on drop.
struct Container {
    name: String,
}

impl Container {
    fn of(image: &str, label: &str) -> Self {
        let name = format!("lw-test-{label}-{}", std::process::id());
        let _ = buildah(&["rm", &name]);
        let made = buildah(&["from", "--pull-never", "--name", &name, image]);
        assert!(
            made.status.success(),
            "no container of {image}: {}",
            text(&made)
        );
        Container { name }
    }

    /// The command line of `buildah run` (the image's user, environment and
    /// working directory) with `env` added.
    fn argv(&self, env: &[(String, String)], argv: &[&str]) -> Vec<String> {
        let mut line = vec![
            repo_root().join("fly/images/build").display().to_string(),
            "--buildah".to_owned(),
            "run".to_owned(),
        ];
        for (key, value) in env {
            line.push("--env".to_owned());
            line.push(format!("{key}={value}"));
        }
        line.push(self.name.clone());
        line.push("--".to_owned());
        line.extend(argv.iter().map(|a| (*a).to_owned()));
        line
    }

    fn run(&self, argv: &[&str]) -> Output {
        let line = self.argv(&[], argv);
        let mut attempts = 0;
        loop {
            let output = harness()
                .args(&line[1..])
                .output()
                .expect("running buildah run");
            // buildah's chroot runtime copies itself into a sealed memfd
            // before it runs anything, and that sealing now and then fails
            // with EBUSY ("Close_Fd sealing memfd copy: Device or resource
            // busy"; seen once in a CI run here): buildah's failure, before
            // the image's program ran. Try again; anything else counts.
            attempts += 1;
            if attempts < 3 && text(&output).contains("sealing memfd copy") {
                std::thread::sleep(std::time::Duration::from_millis(200));
                continue;
            }
            return output;
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = buildah(&["rm", &self.name]);
    }
}

/// What must run in an image: a program with arguments whose output
/// (stdout and stderr) contains `expect`.
struct Check {
    argv: &'static [&'static str],
    expect: &'static str,
}

const fn runs(argv: &'static [&'static str], expect: &'static str) -> Check {
    Check { argv, expect }
}

/// Each check that fails, naming its program: not found, a failed run, or
/// output without what was expected; and each of `tools` (commands the
/// image's scripts call) that is not on the PATH.
fn failures(container: &Container, checks: &[Check], tools: &[&str]) -> Vec<String> {
    let mut failed = Vec::new();
    for check in checks {
        let program = check.argv[0];
        let output = container.run(check.argv);
        let said = text(&output);
        if !output.status.success() {
            // buildah says so when it cannot exec the program (not on the
            // PATH, or no such file); a shell exits 127.
            let not_found =
                said.contains("process failed to start") || output.status.code() == Some(127);
            let why = if not_found {
                "not found".to_owned()
            } else {
                format!("{}", output.status)
            };
            failed.push(format!(
                "`{}` failed ({why}): {}",
                check.argv.join(" "),
                last_lines(&said, 3)
            ));
            if why == "not found" {
                failed.push(format!("{program} is missing"));
            }
        } else if !said.contains(check.expect) {
            failed.push(format!(
                "`{}` ran, but said no {:?}: {}",
                check.argv.join(" "),
                check.expect,
                last_lines(&said, 3)
            ));
        }
    }
    if !tools.is_empty() {
        let script =
            "for tool in \"$@\"; do command -v \"$tool\" >/dev/null 2>&1 || echo \"$tool\"; done";
        let mut argv = vec!["sh", "-c", script, "sh"];
        argv.extend_from_slice(tools);
        let output = container.run(&argv);
        assert!(
            output.status.success(),
            "cannot look for tools: {}",
            text(&output)
        );
        for tool in String::from_utf8_lossy(&output.stdout).lines() {
            failed.push(format!("{tool} is missing (not on the PATH)"));
        }
    }
    failed
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// One app's image and what it must hold and do.
struct App {
    /// Folder under fly/ and the Dockerfile's target.
    name: &'static str,
    user: &'static str,
    entrypoint: &'static [&'static str],
    checks: &'static [Check],
    tools: &'static [&'static str],
    /// Secrets the app is deployed with (`fly secrets set`).
    secrets: &'static [(&'static str, &'static str)],
    /// Ports the entrypoint listens on before anything else happens.
    ports: &'static [u16],
    /// A port, an HTTP path on it, and what the answer must contain.
    http: (u16, &'static str, &'static str),
    /// Largest root filesystem, in MB.
    budget_mb: u64,
}

/// The commands the overlay scripts and the entrypoints use besides the
/// programs checked by name.
const SCRIPT_TOOLS: &[&str] = &[
    "sh",
    "bash",
    "awk",
    "sed",
    "grep",
    "cut",
    "tr",
    "head",
    "tail",
    "sort",
    "wc",
    "find",
    "du",
    "stat",
    "mkdir",
    "rmdir",
    "mv",
    "rm",
    "cat",
    "ls",
    "ln",
    "chown",
    "install",
    "dirname",
    "basename",
    "id",
    "getent",
    "sha256sum",
    "sleep",
    "seq",
    "printf",
    "mount",
    "umount",
];

const APPS: &[App] = &[
    App {
        name: "git-nfsd",
        user: "root",
        entrypoint: &["/usr/bin/tini", "-s", "--", "/usr/local/bin/entrypoint"],
        checks: &[
            runs(&["git-nfsd", "--version"], "nfs-server"),
            runs(&["store-sync", "list"], ""),
            runs(&["git", "--version"], "git version"),
            runs(&["tini", "--version"], "tini version"),
        ],
        tools: &[
            "bash", "sed", "find", "sort", "mkdir", "mv", "rm", "dirname", "sleep",
        ],
        secrets: &[],
        ports: &[2049, 9100],
        http: (9100, "/metrics", "gitnfsd_"),
        budget_mb: 250,
    },
    App {
        name: "agent-runner",
        user: "root",
        entrypoint: &["/usr/bin/tini", "-s", "--", "/usr/local/bin/entrypoint"],
        checks: &[
            runs(&["agent-runner", "--version"], "agent-runner"),
            runs(&["codex", "--version"], "codex-cli"),
            runs(&["smoke-check", "--version"], "smoke-check"),
            runs(&["git-nfsd", "--version"], "nfs-server"),
            // The entrypoint's relay to git-nfsd's replicas.
            runs(&["git-nfsd", "relay", "--help"], "--upstream"),
            runs(&["mount.nfs", "-V"], "nfs-utils"),
            runs(&["mount-worktree", "--help"], "usage: mount-worktree"),
            runs(&["umount-worktree", "--help"], "usage: umount-worktree"),
            runs(&["worktree-status", "--help"], "usage: worktree-status"),
            runs(&["worktree-fsmonitor", "--help"], "fsmonitor"),
            runs(
                &["write-codex-config", "/tmp/codex-config.toml", "/workspace"],
                "",
            ),
            runs(&["python3", "-m", "unittest", "--help"], "usage"),
            runs(&["git", "--version"], "git version"),
            runs(&["tini", "--version"], "tini version"),
            runs(&["ps", "--version"], "procps"),
        ],
        tools: SCRIPT_TOOLS,
        secrets: &[("AGENT_RUNNER_TOKEN", "image-test-token")],
        ports: &[8080],
        http: (8080, "/healthz", MACHINE_ID),
        budget_mb: 600,
    },
    App {
        name: "coordinator",
        user: "nobody",
        entrypoint: &["/usr/local/bin/fly-coordinator"],
        checks: &[runs(&["fly-coordinator", "--version"], "fly-coordinator")],
        tools: &[],
        secrets: &[
            ("FLY_API_TOKEN", "image-test-api-token"),
            ("COORDINATOR_TOKEN", "image-test-admin-token"),
        ],
        ports: &[8080],
        http: (8080, "/healthz", ""),
        budget_mb: 150,
    },
];

const MACHINE_ID: &str = "148e21ea7e1089";

fn image_of(app: &str) -> String {
    format!("localhost/lazy-worktree/{app}:local")
}

/// What a Fly machine of `app` gets in its environment: `fly.toml`'s
/// `[env]`, the platform's variables and the app's secrets.
fn fly_env(app: &App) -> Vec<(String, String)> {
    let path = repo_root().join("fly").join(app.name).join("fly.toml");
    let config: toml::Table = std::fs::read_to_string(&path)
        .expect("fly.toml")
        .parse()
        .expect("fly.toml parses");
    let app_name = config["app"].as_str().expect("app = ...").to_owned();
    let region = config["primary_region"]
        .as_str()
        .expect("primary_region")
        .to_owned();
    let mut env: Vec<(String, String)> = config
        .get("env")
        .and_then(toml::Value::as_table)
        .map(|table| {
            table
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string env").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    env.extend([
        ("FLY_APP_NAME".to_owned(), app_name.clone()),
        ("FLY_MACHINE_ID".to_owned(), MACHINE_ID.to_owned()),
        (
            "FLY_PRIVATE_IP".to_owned(),
            "fdaa:0:1a2b:a7b:1f60:3c1e:9c1d:2".to_owned(),
        ),
        ("FLY_REGION".to_owned(), region.clone()),
        ("PRIMARY_REGION".to_owned(), region),
        (
            "FLY_IMAGE_REF".to_owned(),
            format!("registry.fly.io/{app_name}:deployment-image-test"),
        ),
    ]);
    env.extend(
        app.secrets
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// The entrypoint in network, PID and mount namespaces of its own: killing
/// `unshare` kills everything it started.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(container: &Container, app: &App, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("the entrypoint's log");
        let child = Command::new("unshare")
            .args([
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" \"$@\"",
            ])
            .args(container.argv(&fly_env(app), app.entrypoint))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the entrypoint's log"))
            .stderr(file)
            .spawn()
            .expect("starting unshare");
        // Until unshare has its network namespace, /proc/PID/net is ours.
        let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        while namespace(&child.id().to_string()) == namespace("self") {
            assert!(
                Instant::now() < deadline,
                "unshare made no network namespace"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The TCP ports listening in the namespace.
    fn listening(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for table in ["tcp", "tcp6"] {
            let path = format!("/proc/{}/net/{table}", self.child.id());
            for line in std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .skip(1)
            {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(3) == Some(&"0A")
                    && let Some(port) = fields[1].rsplit(':').next()
                    && let Ok(port) = u16::from_str_radix(port, 16)
                {
                    ports.push(port);
                }
            }
        }
        ports
    }

    /// Runs a host program in the namespace's network.
    fn probe(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.child.id()))
            .arg("--")
            .args(argv)
            .output()
            .expect("nsenter")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The entrypoint runs to its first wait: its ports listen, and the HTTP one
/// answers. Returns what failed.
fn entrypoint_failures(app: &App, container: &Container) -> Vec<String> {
    let log = images_dir().join(app.name).join("entrypoint-test.log");
    let mut running = Running::start(container, app, log.clone());
    let mut starts = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listening = running.listening();
        if app.ports.iter().all(|p| listening.contains(p)) {
            break;
        }
        if let Some(status) = running.exited() {
            // buildah's own transient failure before the entrypoint ran
            // (see Container::run): start it again.
            if starts < 3 && running.log().contains("sealing memfd copy") {
                starts += 1;
                running = Running::start(container, app, log.clone());
                continue;
            }
            return vec![format!(
                "the entrypoint exited ({status}) before listening on {:?}: {}",
                app.ports,
                last_lines(&running.log(), 8)
            )];
        }
        if Instant::now() > deadline {
            return vec![format!(
                "the entrypoint did not listen on {:?} within 60 s (listening: {listening:?}): {}",
                app.ports,
                last_lines(&running.log(), 8)
            )];
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut failed = Vec::new();
    let (port, path, expect) = app.http;
    let url = format!("http://127.0.0.1:{port}{path}");
    let answer = running.probe(&["curl", "-sS", "--fail", "--max-time", "10", &url]);
    let body = String::from_utf8_lossy(&answer.stdout);
    if !answer.status.success() || !body.contains(expect) {
        failed.push(format!(
            "GET {url} from the entrypoint's network: {} {:?} (wanted {expect:?}); log: {}",
            answer.status,
            last_lines(&text(&answer), 3),
            last_lines(&running.log(), 5)
        ));
    }
    if app.name == "git-nfsd" {
        // An empty store: the namespace root mounts and lists nothing.
        let listing = running.probe(&[
            "nfs-ls",
            "nfs://127.0.0.1/?nfsport=2049&mountport=2049&version=3",
        ]);
        if !listing.status.success() {
            failed.push(format!(
                "nfs-ls of the empty store failed: {}",
                text(&listing)
            ));
        }
    }
    if let Some(status) = running.exited() {
        failed.push(format!("the entrypoint exited ({status}) after listening"));
    }
    // On Fly, PID 1 is Fly's init: tini must reap as a subreaper (-s).
    if running.log().contains("not running as PID 1") {
        failed.push(format!(
            "tini warns it cannot reap: {}",
            last_lines(&running.log(), 3)
        ));
    }
    failed
}

/// Section names of an ELF file (empty if it is not one).
fn elf_sections(path: &Path) -> Vec<String> {
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Vec::new();
    }
    let u16_at = |at: usize| u16::from_le_bytes([data[at], data[at + 1]]) as usize;
    let u32_at =
        |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
    let u64_at =
        |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes")) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    if shnum == 0 || header(shnum) > data.len() {
        return Vec::new();
    }
    let strtab = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .map(|i| {
            let start = strtab + u32_at(header(i));
            let end = data[start..]
                .iter()
                .position(|b| *b == 0)
                .map_or(data.len(), |n| start + n);
            String::from_utf8_lossy(&data[start..end]).into_owned()
        })
        .collect()
}

fn tree_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            total += tree_bytes(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// The base64 lines of the CA certificates this host added to its own
/// trust (/usr/local/share/ca-certificates): a TLS proxy's, on machines
/// that reach the registries through one.
fn host_local_ca_lines() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/usr/local/share/ca-certificates") else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for entry in entries.flatten() {
        let pem = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // The second line of each certificate's body: 64 characters that
        // belong to that certificate only.
        for block in pem.split("-----BEGIN CERTIFICATE-----").skip(1) {
            if let Some(line) = block
                .lines()
                .map(str::trim)
                .filter(|l| l.len() == 64)
                .nth(1)
            {
                lines.push(line.to_owned());
            }
        }
    }
    lines
}

/// What the exported root filesystem says of the image: no build tools, no
/// node, no caches, no host CA; stripped binaries; within its budget.
fn rootfs_failures(app: &App) -> Vec<String> {
    let dir = images_dir().join(app.name);
    let rootfs = dir.join("rootfs");
    let mut failed = Vec::new();
    assert!(
        rootfs.join("usr/bin").is_dir(),
        "{} has no exported root filesystem",
        rootfs.display()
    );
    for absent in [
        "usr/bin/gcc",
        "usr/bin/cc",
        "usr/bin/ld",
        "usr/local/cargo",
        "usr/local/rustup",
        "usr/bin/node",
        "usr/local/bin/node",
        "usr/bin/npm",
        "opt/codex-npm",
        "src",
        "out",
        "root/.npm",
        "run/host-ca.crt",
    ] {
        if rootfs.join(absent).symlink_metadata().is_ok() {
            failed.push(format!("/{absent} is in the image"));
        }
    }
    for cache in ["var/lib/apt/lists", "var/cache/apt/archives"] {
        let leftovers: Vec<String> = std::fs::read_dir(rootfs.join(cache))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name != "partial" && name != "lock" && name != "auxfiles")
                    .collect()
            })
            .unwrap_or_default();
        if !leftovers.is_empty() {
            failed.push(format!("/{cache} holds {leftovers:?}"));
        }
    }
    let bin = rootfs.join("usr/local/bin");
    for entry in std::fs::read_dir(&bin).expect("/usr/local/bin").flatten() {
        let sections = elf_sections(&entry.path());
        if sections
            .iter()
            .any(|s| s == ".symtab" || s.starts_with(".debug"))
        {
            failed.push(format!(
                "/usr/local/bin/{} is not stripped",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    let ca_lines = host_local_ca_lines();
    if !ca_lines.is_empty() {
        let mut grep = Command::new("grep");
        grep.args(["-rlF", "--devices=skip", "--no-messages"]);
        for line in &ca_lines {
            grep.arg("-e").arg(line);
        }
        let found = grep.arg(&rootfs).output().expect("grep");
        let files = String::from_utf8_lossy(&found.stdout);
        if !files.trim().is_empty() {
            failed.push(format!("the host's own CA certificates are in {files}"));
        }
    }
    let config = std::fs::read_to_string(dir.join("image.json")).expect("image.json");
    for word in [
        "host-ca",
        "CAINFO",
        "CAFILE",
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
    ] {
        if config.contains(word) {
            failed.push(format!("the image's config or history names {word}"));
        }
    }
    let mb = tree_bytes(&rootfs) / 1_000_000;
    if mb > app.budget_mb {
        failed.push(format!(
            "its files take {mb} MB, over the budget of {} MB",
            app.budget_mb
        ));
    }
    failed
}

/// The image's config: the entrypoint, the user and the ports fly.toml's
/// services use.
fn config_failures(app: &App) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(images_dir().join(app.name).join("image.json"))
            .expect("image.json"),
    )
    .expect("image.json parses");
    let config = &json["OCIv1"]["config"];
    let mut failed = Vec::new();
    let entrypoint: Vec<&str> = config["Entrypoint"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if entrypoint != app.entrypoint {
        failed.push(format!(
            "entrypoint {entrypoint:?}, not {:?}",
            app.entrypoint
        ));
    }
    let user = config["User"].as_str().unwrap_or("");
    if user != app.user && !(user.is_empty() && app.user == "root") {
        failed.push(format!("runs as {user:?}, not {}", app.user));
    }
    let exposed = &config["ExposedPorts"];
    for port in app.ports {
        if exposed.get(format!("{port}/tcp")).is_none() {
            failed.push(format!("does not EXPOSE {port}"));
        }
    }
    failed
}

/// The three images build, and each holds and runs what it must.
#[test]
fn the_images_build_and_run_what_their_apps_call() {
    run_harness(&[]);
    let mut failed = Vec::new();
    for app in APPS {
        let mut mine = config_failures(app);
        mine.extend(rootfs_failures(app));
        let container = Container::of(&image_of(app.name), app.name);
        let whoami = container.run(&["id", "-un"]);
        let user = String::from_utf8_lossy(&whoami.stdout).trim().to_owned();
        if user != app.user {
            mine.push(format!("its programs run as {user:?}, not {}", app.user));
        }
        mine.extend(failures(&container, app.checks, app.tools));
        mine.extend(entrypoint_failures(app, &container));
        failed.extend(mine.into_iter().map(|f| format!("{} image: {f}", app.name)));
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

/// A program missing from an image fails the check and is named.
#[test]
fn a_missing_program_is_named() {
    run_harness(&["--stand-ins"]);
    let container = Container::of("docker.io/library/debian:bookworm-slim", "missing");
    let failed = failures(
        &container,
        &[
            runs(&["sh", "-c", "echo here"], "here"),
            runs(&["no-such-program", "--version"], ""),
            runs(&["sh", "-c", "echo other"], "expected"),
        ],
        &["sed", "no-such-tool"],
    );
    let all = failed.join("\n");
    assert!(all.contains("no-such-program is missing"), "{all}");
    assert!(all.contains("no-such-tool is missing"), "{all}");
    assert!(all.contains("said no \"expected\""), "{all}");
    assert!(!all.contains("sed"), "{all}");
    assert_eq!(failed.len(), 4, "{all}");
}

/// A build that fails says which stage and which step.
#[test]
fn a_build_failure_names_the_stage_and_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(
        &dockerfile,
        "FROM debian:bookworm-slim AS base\nRUN true\n\
         FROM base AS broken\nRUN echo fine\nRUN echo failing && exit 7\n",
    )
    .unwrap();
    let output = harness()
        .args([
            "--dockerfile",
            dockerfile.to_str().unwrap(),
            "--target",
            "broken",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    let last = said.lines().last().unwrap_or_default();
    assert!(
        last.contains("stage broken (2 of 2), step 3/3: RUN echo failing && exit 7 failed"),
        "{said}"
    );
    assert!(last.contains("exit status 7"), "{last}");
}

/// The stripped-binary check reads section names right: this unstripped
/// test binary has a symbol table and debug info.
#[test]
fn the_elf_reader_sees_the_symbols_of_an_unstripped_binary() {
    let sections = elf_sections(&std::env::current_exe().unwrap());
    assert!(sections.iter().any(|s| s == ".text"), "{sections:?}");
    assert!(sections.iter().any(|s| s == ".symtab"), "{sections:?}");
    assert!(
        sections.iter().any(|s| s.starts_with(".debug")),
        "{sections:?}"
    );
    assert!(elf_sections(Path::new("/etc/hostname")).is_empty());
}
