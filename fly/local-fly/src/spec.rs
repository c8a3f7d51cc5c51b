//! What a local Fly runs, read from a TOML file: the region, the Machines
//! API token, the images in its registry, and the apps with their
//! `fly.toml`, secrets and first image.
//!
//! ```toml
//! region = "ams"
//! api_token = "local-token"
//!
//! [[images]]
//! reference = "registry.fly.io/lazy-worktree-nfsd:deployment-1"
//! root = "target/images/git-nfsd/rootfs"    # "/" runs the host's own files
//! entrypoint = ["/usr/bin/tini", "--", "/usr/local/bin/entrypoint"]
//!
//! [[apps]]
//! fly_toml = "fly/git-nfsd/fly.toml"
//! image = "registry.fly.io/lazy-worktree-nfsd:deployment-1"   # first deploy
//! secrets = { STORE_REPOS = "app=https://..." }
//! env = { RUST_LOG = "debug" }   # on top of fly.toml's [env]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::platform::Image;

/// The spec file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default = "default_region")]
    pub region: String,
    pub api_token: String,
    #[serde(default)]
    pub images: Vec<Image>,
    #[serde(default)]
    pub apps: Vec<AppSpec>,
}

fn default_region() -> String {
    "ams".to_owned()
}

/// One app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub fly_toml: PathBuf,
    /// Deployed once the platform is up, as a first `fly deploy`.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Set on top of `fly.toml`'s `[env]`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Spec {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the spec {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing the spec {}", path.display()))
    }
}
