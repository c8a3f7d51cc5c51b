//! Writes the fuzz targets' seed corpora (see `nfs-server/fuzz/README.md`):
//! `cargo run -p nfs-server --example fuzz-seeds -- nfs-server/fuzz/corpus`.

use std::path::PathBuf;

use anyhow::Context;
use nfs_server::fuzzing::{CallHarness, seed_export_paths, seed_streams};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .context("usage: fuzz-seeds <corpus folder>")?,
    );
    let harness = CallHarness::new().context("building the fixture store")?;
    let corpora = [
        ("rpc_call", harness.seed_calls()?),
        ("export_path", seed_export_paths()),
        ("record_stream", seed_streams()),
    ];
    for (target, seeds) in corpora {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, bytes) in seeds {
            let path = dir.join(format!("seed-{name}"));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}
