# Guest half of integration/tests/kernel_agent_entrypoint.rs: the Fly
# agent-runner image's entrypoint (/usr/local/bin/entrypoint) against
# git-nfsd at 10.0.2.2, with /tmp/data standing in for the machine's volume.
# Each "boot" runs the entrypoint as the image would, and each "restart"
# unmounts the worktree as a machine restart would. The test prepends:
#   MAIN      app@main's commit
#   FEATURE   app@feature/nested-name's commit
fails=0
check() {
    if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
export PATH=/opt/overlay-scripts:$PATH
export WORKTREE_SERVER=10.0.2.2:$GUEST_NFSPORT WORKTREE_DIR=/tmp/workspace DATA_DIR=/tmp/data
export CODEX_API_KEY_ENV=
W=/tmp/workspace

# Runs the entrypoint in the background with the given environment
# assignments; waits until the runner answers /healthz.
boot() {
    env "$@" entrypoint > /tmp/entrypoint.out 2> /tmp/entrypoint.err &
    runner=$!
    for _ in $(seq 1 600); do
        if wget -q -O /tmp/healthz http://127.0.0.1:8080/healthz 2>/dev/null; then return 0; fi
        kill -0 "$runner" 2>/dev/null || { cat /tmp/entrypoint.err; return 1; }
        sleep 0.2
    done
    return 1
}
# What a machine stop does: the runner gets SIGTERM, the mounts go away.
restart() {
    kill -TERM "$runner" && wait "$runner"
    umount-worktree "$W" >/dev/null
}

# First boot of agent alice: app@main, read-write.
check "boot alice rw at app@main" 'boot AGENT_NAME=alice WORKTREE_REPO=app@main WORKTREE_MODE=rw'
check "the worktree is read-write at main" 'worktree-status $W | grep -q "mode: *read-write" && [ "$(git -C $W rev-parse HEAD)" = "$MAIN" ]'
check "a fresh worktree is clean" '[ -z "$(git -C $W status --porcelain)" ]'
check "the commit and branch are pinned" '[ "$(cat /tmp/data/agents/alice/worktree.pin)" = "app $MAIN main" ]'
check "codex's config trusts the worktree" 'grep -qF "[projects.\"$W\"]" /tmp/data/agents/alice/codex-home/config.toml'
check "the agent commits" 'echo "agent work" > $W/agent.txt && git -C $W add agent.txt && git -C $W commit -q -m "agent work"'
check "its changes live in the upper on the volume" 'find /tmp/data/agents/alice/upper -name agent.txt | grep -q .'
check "the runner stops on SIGTERM" 'restart'

# The branch the agent started from now names another commit (here: the
# same repository at another branch); read-only this time.
check "boot alice ro at another revision" 'boot AGENT_NAME=alice WORKTREE_REPO=app@feature/nested-name WORKTREE_MODE=ro'
check "the entrypoint mounts the pinned branch and commit" 'grep -qF "stays where it was made: app@main:$MAIN" /tmp/entrypoint.err'
check "the worktree is read-only" 'worktree-status $W | grep -q "mode: *read-only"'
check "the agent's commit survived, on its branch" '[ "$(git -C $W log -1 --format=%s)" = "agent work" ] && [ "$(git -C $W rev-parse HEAD~1)" = "$MAIN" ] && [ "$(git -C $W symbolic-ref --short HEAD)" = main ] && [ "$(cat $W/agent.txt)" = "agent work" ]'
check "the feature branch's files are not laid under it" '[ ! -e $W/feature.txt ] && [ -z "$(git -C $W status --porcelain)" ]'
check "writes are refused" '! touch $W/new.txt 2>/dev/null'
check "the runner stops again" 'restart'

# Back to read-write: the same upper, writable again.
check "boot alice rw again" 'boot AGENT_NAME=alice WORKTREE_REPO=app@main WORKTREE_MODE=rw'
check "the work is there and writable" '[ "$(git -C $W log -1 --format=%s)" = "agent work" ] && echo more >> $W/agent.txt && git -C $W commit -q -am more'
check "the runner stops a third time" 'restart'

# The machine reused for another agent: its own upper, a clean worktree.
check "boot bob on alice's machine" 'boot AGENT_NAME=bob WORKTREE_REPO=app@main'
check "bob starts clean, at main" '[ ! -e $W/agent.txt ] && [ "$(git -C $W rev-parse HEAD)" = "$MAIN" ] && [ -z "$(git -C $W status --porcelain)" ]'
check "alice's work stays on the volume" 'find /tmp/data/agents/alice/upper -name agent.txt | grep -q . && [ -s /tmp/data/agents/alice/worktree.pin ]'
check "bob's runner stops" 'restart'

# Refusals: a worktree of another repository over alice's upper, a bad
# name, an unknown revision; none leaves a mount behind.
code() { env "$@" entrypoint > /tmp/out 2>&1; echo $?; }
mounted() { grep -q " $W " /proc/mounts; }
check "another repository over alice's upper is refused before mounting" '[ "$(code AGENT_NAME=alice WORKTREE_REPO=org/lib@main)" = 2 ] && grep -q "worktree is of app, not org/lib" /tmp/out && ! mounted'
check "a bad agent name is refused" '[ "$(code AGENT_NAME=../x WORKTREE_REPO=app@main)" = 2 ] && grep -q "bad AGENT_NAME" /tmp/out'
check "an unknown revision fails the boot" '[ "$(code AGENT_NAME=carol WORKTREE_REPO=app@no-such-branch)" != 0 ] && grep -q "unknown repository or revision" /tmp/out && ! mounted'

echo "checks failed: $fails"
[ "$fails" -eq 0 ]
