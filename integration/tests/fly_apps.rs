//! The Fly apps as files: each fly.toml parses, has the keys the design
//! depends on, agrees with the ports its binary listens on, and builds its
//! own target of the shared `fly/Dockerfile`, whose every copied file exists.
//! (The coordinator checks its fly.toml's service in its crate.) Also the
//! scripts the images run: `store-sync` keeping a store current under a live
//! git-nfsd, `write-codex-config` writing valid TOML. `images.rs` builds
//! the images and runs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::fixture::git;
use integration::server::GitNfsd;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn fly_toml(app: &str) -> toml::Table {
    let path = repo_root().join("fly").join(app).join("fly.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// `fly/Dockerfile` with its continuation lines joined.
fn dockerfile() -> String {
    std::fs::read_to_string(repo_root().join("fly/Dockerfile"))
        .expect("fly/Dockerfile")
        .replace("\\\n", " ")
}

/// The stages of `fly/Dockerfile` by name: each `FROM ... AS name` and the
/// instructions up to the next `FROM`.
fn stages() -> Vec<(String, String)> {
    let mut stages: Vec<(String, String)> = Vec::new();
    for line in dockerfile().lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"FROM") {
            let name = match words.as_slice() {
                [_, _, as_, name] if as_.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => panic!("fly/Dockerfile: every stage needs a name: {line}"),
            };
            stages.push((name, String::new()));
        }
        if let Some((_, text)) = stages.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    stages
}

fn stage(name: &str) -> String {
    stages()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("fly/Dockerfile has no stage {name}"))
        .1
}

/// The app's fly.toml builds its own target of `fly/Dockerfile` (the path
/// is relative to the fly.toml, as flyctl resolves it), and every source
/// path of that stage's `COPY` lines (not `--from=`) exists in the build
/// context, the repository root.
fn assert_builds_its_target(app: &str) {
    let config = fly_toml(app);
    let dockerfile = str_at(&config, &["build", "dockerfile"]);
    let resolved = repo_root().join("fly").join(app).join(dockerfile);
    assert_eq!(
        std::fs::canonicalize(&resolved).expect("the fly.toml's dockerfile exists"),
        repo_root().join("fly/Dockerfile"),
        "{app}/fly.toml builds {dockerfile}"
    );
    let target = str_at(&config, &["build", "build-target"]);
    assert_eq!(target, app, "{app}/fly.toml's build-target");
    let mut copies = 0;
    for line in stage(target).lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            copies += 1;
            assert!(
                repo_root().join(source).exists(),
                "the {app} stage copies {source}, which does not exist"
            );
        }
    }
    assert!(
        copies > 0,
        "the {app} stage copies nothing from the context"
    );
}

fn str_at<'a>(table: &'a toml::Table, path: &[&str]) -> &'a str {
    let mut value = table
        .get(path[0])
        .unwrap_or_else(|| panic!("no {}", path[0]));
    for key in &path[1..] {
        value = value
            .get(key)
            .unwrap_or_else(|| panic!("no {}", path.join(".")));
    }
    value
        .as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

#[test]
fn git_nfsd_app() {
    let config = fly_toml("git-nfsd");
    assert!(!str_at(&config, &["app"]).is_empty());
    assert_eq!(str_at(&config, &["mounts", "destination"]), "/data");
    assert!(str_at(&config, &["env", "STORE_DIR"]).starts_with("/data/"));
    let service = &config["services"].as_array().unwrap()[0];
    // The entrypoint runs git-nfsd on [::]:2049, metrics on 9100.
    assert_eq!(service["internal_port"].as_integer(), Some(2049));
    assert_eq!(service["protocol"].as_str(), Some("tcp"));
    assert_eq!(service["auto_stop_machines"].as_str(), Some("off"));
    assert_eq!(service["min_machines_running"].as_integer(), Some(1));
    assert_eq!(service["ports"][0]["port"].as_integer(), Some(2049));
    assert!(
        service["ports"][0].get("handlers").is_none(),
        "raw TCP, no HTTP/TLS handlers"
    );
    assert_eq!(config["metrics"]["port"].as_integer(), Some(9100));
    let entrypoint = std::fs::read_to_string(repo_root().join("fly/git-nfsd/entrypoint")).unwrap();
    assert!(entrypoint.contains("--listen \"${GIT_NFSD_LISTEN:-[::]:2049}\""));
    assert!(entrypoint.contains("--metrics \"${GIT_NFSD_METRICS:-[::]:9100}\""));
    assert_builds_its_target("git-nfsd");
}

#[test]
fn agent_runner_app() {
    let config = fly_toml("agent-runner");
    let http = config["http_service"].as_table().unwrap();
    // agent-runner listens on [::]:8080 by default, which the entrypoint keeps.
    assert_eq!(http["internal_port"].as_integer(), Some(8080));
    let entrypoint =
        std::fs::read_to_string(repo_root().join("fly/agent-runner/entrypoint")).unwrap();
    assert!(entrypoint.contains("--listen '[::]:8080'"));
    assert_eq!(http["auto_start_machines"].as_bool(), Some(true));
    assert_eq!(
        http["auto_stop_machines"].as_str(),
        Some("off"),
        "the runner's idle policy decides"
    );
    assert_eq!(http["checks"][0]["path"].as_str(), Some("/healthz"));
    // Only canary deploys update no machine of the app before the checks
    // pass: the coordinator takes its agents' image from those machines.
    assert_eq!(config["deploy"]["strategy"].as_str(), Some("canary"));
    let check = &http["machine_checks"][0];
    let command = check["command"][0].as_str().unwrap();
    assert!(
        command.starts_with("smoke-check runner ") && command.contains("$FLY_TEST_MACHINE_IP"),
        "{command}"
    );
    assert!(command.contains(":8080"));
    assert!(command.contains("&& smoke-check puzzle "), "{command}");
    assert!(command.contains("--codex-config /usr/local/bin/write-codex-config"));
    // The puzzle serves itself with git-nfsd and mounts overlay worktrees:
    // the image carries both, on the PATH where the check looks.
    assert!(command.contains("--worktrees overlay"), "{command}");
    assert!(stage("build").contains("--bin git-nfsd"));
    let image = stage("agent-runner");
    for needed in [
        "/out/git-nfsd",
        "overlay-scripts/mount-worktree",
        "overlay-scripts/umount-worktree",
        "python3",
    ] {
        assert!(image.contains(needed), "the image lacks {needed}");
    }
    // Fly refuses canary deploys of machines with volumes: agents' volumes
    // are the coordinator's, and the release machine has none.
    assert!(config.get("mounts").is_none(), "[mounts] forbids canary");
    assert_eq!(str_at(&config, &["env", "DATA_DIR"]), "/data");
    assert_eq!(str_at(&config, &["kill_signal"]), "SIGTERM");
    // Direct to git-nfsd's machines (the relay fails over between them):
    // Flycast would show every agent as the proxy's one address.
    assert!(str_at(&config, &["env", "WORKTREE_SERVER"]).ends_with(".internal:2049"));
    assert_builds_its_target("agent-runner");
}

#[test]
fn write_codex_config_writes_valid_toml() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let worktree = "/work/a \"quoted\" dir";
    let status = Command::new(repo_root().join("fly/agent-runner/write-codex-config"))
        .arg(&config)
        .arg(worktree)
        .env("CODEX_MODEL", "some-model")
        .env_remove("CODEX_PROVIDER_URL")
        .env_remove("CODEX_API_KEY_ENV")
        .status()
        .unwrap();
    assert!(status.success());
    let parsed: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    assert_eq!(parsed["model"].as_str(), Some("some-model"));
    assert_eq!(parsed["approval_policy"].as_str(), Some("never"));
    let provider = &parsed["model_providers"]["runner"];
    assert_eq!(
        provider["base_url"].as_str(),
        Some("https://api.openai.com/v1")
    );
    assert_eq!(provider["env_key"].as_str(), Some("OPENAI_API_KEY"));
    assert_eq!(
        parsed["projects"][worktree]["trust_level"].as_str(),
        Some("trusted")
    );
    let usage = Command::new(repo_root().join("fly/agent-runner/write-codex-config"))
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

/// Writes `name` in `repo` and commits it.
fn commit_file(repo: &Path, name: &str, content: &str) {
    std::fs::write(repo.join(name), content).expect("write");
    git(repo, &["add", "."]);
    let identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"];
    git(
        repo,
        &[&identity[..], &["commit", "-q", "-m", name]].concat(),
    );
}

/// An upstream repository in `dir` with `first.txt` committed on main,
/// and its `file://` URL.
fn upstream_repo(dir: &Path) -> (PathBuf, String) {
    let upstream = dir.join("upstream");
    std::fs::create_dir(&upstream).expect("the upstream folder");
    git(&upstream, &["init", "-q", "-b", "main"]);
    commit_file(&upstream, "first.txt", "one\n");
    let url = format!("file://{}", upstream.display());
    (upstream, url)
}

fn store_sync(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(repo_root().join("fly/git-nfsd/store-sync"))
        .args(args)
        .env("STORE_DIR", store)
        .output()
        .expect("store-sync")
}

/// The store kept current under a live server: new commits upstream reach
/// new mounts after a fetch; a mirror is never half made.
#[test]
fn store_sync_keeps_a_live_store_current() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream, url) = upstream_repo(dir.path());
    let store = dir.path().join("store");

    let added = store_sync(&store, &["add", "org/app", &url]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    assert!(store.join("org/app.git").is_dir());
    let gc = Command::new("git")
        .args([
            "--git-dir",
            store.join("org/app.git").to_str().unwrap(),
            "config",
            "gc.auto",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&gc.stdout).trim(),
        "0",
        "never repacked under the server"
    );
    let listed = store_sync(&store, &["list"]);
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        format!("org/app\t{url}\n")
    );
    assert_eq!(
        store_sync(&store, &["add", "../evil", &url]).status.code(),
        Some(2)
    );
    assert_eq!(
        store_sync(&store, &["fetch", "nope"]).status.code(),
        Some(1)
    );
    assert_eq!(store_sync(&store, &["bogus"]).status.code(), Some(2));

    let server = GitNfsd::start(&store);
    let listing = |path: &str| {
        let output = Command::new("nfs-ls")
            .arg(server.url(path))
            .output()
            .expect("nfs-ls (libnfs-utils)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(listing("/org/app@main").contains("first.txt"));

    commit_file(
        &upstream,
        "second.txt",
        "two
",
    );
    let fetched = store_sync(&store, &["fetch"]);
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert!(String::from_utf8_lossy(&fetched.stdout).contains("fetched org/app"));

    // The server rescans the store at most once a second.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listing("/org/app@main").contains("second.txt") {
        assert!(Instant::now() < deadline, "new commit never showed");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The first commit is still served by its id.
    let first = Command::new("git")
        .args(["-C", upstream.to_str().unwrap(), "rev-parse", "HEAD~1"])
        .output()
        .unwrap();
    let first = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    let old = listing(&format!("/org/app@{first}"));
    assert!(
        old.contains("first.txt") && !old.contains("second.txt"),
        "{old}"
    );
}

/// The git-nfsd image's entrypoint on the host: on an empty volume it
/// serves at once (Fly's TCP health check must find the port open before
/// anything is in the store) and finds a repository added later, its sync
/// loop brings new upstream commits to new mounts; `STORE_REPOS` seeds a
/// fresh store.
#[test]
fn the_git_nfsd_entrypoint_serves_an_empty_store_at_once_and_syncs() {
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::process::CommandExt as _;

    let dir = tempfile::tempdir().unwrap();
    let (upstream, url) = upstream_repo(dir.path());
    let bin_dir = integration::workspace_bin("git-nfsd")
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}:{}",
        repo_root().join("fly/git-nfsd").display(),
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let start = |store: &Path, repos: &str| {
        Command::new(repo_root().join("fly/git-nfsd/entrypoint"))
            .env("PATH", &path)
            .env("STORE_DIR", store)
            .env("STORE_REPOS", repos)
            .env("STORE_SYNC_INTERVAL", "1")
            .env("GIT_NFSD_LISTEN", "127.0.0.1:0")
            .env("GIT_NFSD_METRICS", "127.0.0.1:0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("starting the entrypoint")
    };
    struct Group(std::process::Child);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .status();
            let _ = self.0.wait();
        }
    }
    let listening = |child: &mut std::process::Child| {
        integration::server::addresses(child.stdout.take().expect("stdout piped")).0
    };

    // A fresh volume: the port is open (what the health check sees), the
    // log says how to add a repository, and a MOUNT says it is unknown.
    let store = dir.path().join("empty-store");
    let mut child = Group(start(&store, ""));
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let first = stderr.next().unwrap().unwrap();
    assert!(first.contains("is empty; add a repository"), "{first}");
    std::thread::spawn(move || stderr.for_each(drop));
    let addr = listening(&mut child.0);
    let mut c = integration::client::RpcClient::connect(addr);
    assert!(c.mount("/app@main").is_err(), "nothing is in the store yet");
    assert!(store_sync(&store, &["add", "app", &url]).status.success());
    // The store is rescanned for an unknown name at most once a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let root = loop {
        match c.mount("/app@main") {
            Ok(root) => break root,
            Err(error) => assert!(
                std::time::Instant::now() < deadline,
                "the added repository never mounted: {error:?}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let first = c.walk(&root, "first.txt").unwrap();
    assert_eq!(c.read_all(&first, 4096).unwrap(), b"one\n");

    // Upstream moves; the sync loop (every second here) brings it in.
    commit_file(&upstream, "second.txt", "two\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let root = c.mount("/app@main").expect("mount");
        if let Ok(second) = c.walk(&root, "second.txt") {
            assert_eq!(c.read_all(&second, 4096).unwrap(), b"two\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new commit never reached a new mount"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(child);

    // STORE_REPOS seeds a fresh store, and names an unreachable one without
    // failing the others.
    let seeded = dir.path().join("seeded-store");
    let mut child = Group(start(
        &seeded,
        &format!("lib={url} broken=file:///nonexistent/repo"),
    ));
    let addr = listening(&mut child.0);
    let mut c = integration::client::RpcClient::connect(addr);
    let root = c.mount("/lib@main").expect("the seeded repository");
    assert!(c.walk(&root, "second.txt").is_ok());
    assert!(c.mount("/broken").is_err());
}

/// The build stage compiles, in one `cargo build --locked`, binaries that
/// exist in the workspace (each `--bin` in one of the `-p` packages, checked
/// against `cargo metadata`) and puts them in /out; each app's stage copies
/// only binaries from there; each fly.toml builds its own target of the one
/// Dockerfile; the images' binaries are stripped. No container engine runs
/// in this test; `images.rs` builds and runs the images.
#[test]
fn the_dockerfile_builds_the_workspace_once_and_copies_real_binaries() {
    let metadata = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata");
    assert!(metadata.status.success());
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let has_bin = |package: &str, bin: &str| {
        metadata["packages"].as_array().unwrap().iter().any(|p| {
            p["name"] == package
                && p["targets"].as_array().unwrap().iter().any(|t| {
                    t["name"] == bin && t["kind"].as_array().unwrap().iter().any(|k| k == "bin")
                })
        })
    };
    let build = stage("build");
    let runs: Vec<&str> = build.split("cargo build").skip(1).collect();
    assert_eq!(runs.len(), 1, "the build stage runs cargo build once");
    let words: Vec<&str> = runs[0]
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let values = |flag: &str| -> Vec<&str> {
        words
            .iter()
            .enumerate()
            .filter(|(_, w)| **w == flag)
            .map(|(i, _)| words[i + 1])
            .collect()
    };
    let (packages, bins) = (values("-p"), values("--bin"));
    assert!(words.contains(&"--locked"), "builds without --locked");
    assert!(words.contains(&"--release"), "builds without --release");
    assert!(
        build.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")
            && build.contains("CARGO_PROFILE_RELEASE_DEBUG=0"),
        "the images' binaries are not stripped"
    );
    for bin in &bins {
        assert!(
            packages.iter().any(|p| has_bin(p, bin)),
            "no binary {bin} in the packages {packages:?}"
        );
        assert!(
            build.contains(&format!("target/release/{bin}")),
            "the build stage does not put {bin} in /out"
        );
    }
    for (name, text) in stages().into_iter().filter(|(name, _)| name != "build") {
        for word in text.split_whitespace() {
            if let Some(bin) = word.strip_prefix("/out/").filter(|bin| !bin.is_empty()) {
                assert!(
                    bins.contains(&bin),
                    "the {name} stage copies {bin}, which the build stage does not build"
                );
            }
        }
    }
    for app in ["git-nfsd", "agent-runner", "coordinator"] {
        assert!(
            stage(app).contains("--from=build /out/"),
            "the {app} stage copies no binary"
        );
        let config = fly_toml(app);
        assert_eq!(str_at(&config, &["build", "dockerfile"]), "../Dockerfile");
        assert_eq!(str_at(&config, &["build", "build-target"]), app);
    }
}

/// The agent-runner image ships the codex the tests run.
#[test]
fn the_runner_image_ships_the_codex_version_the_tests_run() {
    let dockerfile = stage("codex");
    let run_tests = std::fs::read_to_string(repo_root().join("integration/run-tests")).unwrap();
    let value = |text: &str, prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix}"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        value(&dockerfile, "ARG CODEX_VERSION="),
        value(&run_tests, "codex_version=")
    );
}
