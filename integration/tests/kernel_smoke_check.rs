//! The smoke check's puzzle as Fly runs it, in the QEMU guest, with the
//! real codex against the scripted mock model. A test binary of its own:
//! the guest takes a core for minutes, and the TUI tests in `codex.rs`
//! must not share the machine with it. (The libnfs variants, on the host,
//! are in `codex.rs`.)

use integration::codex::{MockResponses, RIGHT_DATES_FIX, codex_bin, puzzle_script};

/// The check as Fly runs it, in the QEMU guest: the smoke check, its
/// git-nfsd on the guest's 127.0.0.1, three agent-runners with the real
/// codex, each agent in an overlay worktree of the one export mounted with
/// the kernel's NFS client (`mount-worktree`), and a fourth worktree where
/// all their patches go. Only the mock model stays on the host (10.0.2.2).
#[test]
fn puzzle_in_overlay_worktrees_in_the_guest_passes_when_every_agent_fixes_its_bug() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mock = MockResponses::start(&puzzle_script(RIGHT_DATES_FIX), dir.path());
    let mut guest = integration::guest::GuestRun::new()
        .timeout(1800)
        .memory(3072)
        .env("mockport", mock.port)
        .agent_runner_image()
        .python3()
        .program(&codex_bin(), "usr/local/bin/codex");
    for bin in ["smoke-check", "git-nfsd"] {
        guest = guest.program(
            &integration::workspace_bin(bin),
            &format!("usr/local/bin/{bin}"),
        );
    }
    let console = guest.run(GUEST_PUZZLE);
    assert!(
        console.contains("3 worktrees of one export (Overlay)"),
        "the agents' worktrees were not overlay mounts"
    );
    for n in 1..=3 {
        assert!(console.contains(&format!("agent {n} finished its turn")));
    }
    assert!(console.contains("Ran 7 tests"), "the suite did not run");
    assert!(console.contains("smoke-check: ok"));
    assert!(console.contains("PASS: every worktree unmounted"));
}

const GUEST_PUZZLE: &str = r#"
set -eu
export CODEX_MODEL=mock-model CODEX_API_KEY_ENV=
export CODEX_PROVIDER_URL="http://10.0.2.2:$GUEST_MOCKPORT/v1"
smoke-check puzzle --worktrees overlay --timeout 900 \
    --git-nfsd /usr/local/bin/git-nfsd \
    --mount-worktree /opt/overlay-scripts/mount-worktree \
    --runner /usr/local/bin/agent-runner --agent /usr/local/bin/codex \
    --codex-config /usr/local/bin/write-codex-config --work-dir /tmp/puzzle
# Neither an overlay nor a shared NFS lower outlives the check.
if grep -E ' /tmp/puzzle/| nfs ' /proc/mounts; then
    echo "FAIL: every worktree unmounted"; exit 1
fi
echo "PASS: every worktree unmounted"
"#;
