//! Running the programs the check drives: git, git-nfsd's overlay scripts,
//! libnfs's tools.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `command` to its end: its stdout, or an error that names the
/// program and carries its stderr.
pub fn output(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}
