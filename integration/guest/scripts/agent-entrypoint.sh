# Guest half of integration/tests/kernel_agent_entrypoint.rs: the Fly
# agent-runner image's entrypoint (/usr/local/bin/entrypoint) against
# git-nfsd at 10.0.2.2, with /tmp/data standing in for the machine's volume.
# Each "boot" runs the entrypoint as the image would, and each "restart"
# stops the runner and unmounts the worktree as a machine restart would.
# The entrypoint mounts through `git-nfsd relay` on 127.0.0.1:2049 unless
# WORKTREE_RELAY=off. Then failover: two replicas over the same store at
# port $GUEST_REPLICAPORT, on the host's 127.0.0.1 (10.0.2.2) and ::1
# (fec0::2), one name with both addresses; the host's control server
# (port $GUEST_CTLPORT) stops, kills and starts a replica when asked.
# The test prepends:
#   MAIN      app@main's commit
#   README_OID, MAIN_RS_OID, BIG_OID   blob ids of README.md, src/main.rs
#             and big/random.bin (20 MB) there
fails=0
check() {
    if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
export PATH=/opt/overlay-scripts:$PATH
export WORKTREE_SERVER=10.0.2.2:$GUEST_NFSPORT WORKTREE_DIR=/tmp/workspace DATA_DIR=/tmp/data
export CODEX_API_KEY_ENV=
W=/tmp/workspace

# Runs the entrypoint in the background, in a session of its own (as the
# machine's only processes), with the given environment assignments; waits
# until the runner answers /healthz.
boot() {
    setsid env "$@" entrypoint > /tmp/entrypoint.out 2> /tmp/entrypoint.err &
    runner=$!
    for _ in $(seq 1 600); do
        if wget -q -O /tmp/healthz http://127.0.0.1:8080/healthz 2>/dev/null; then return 0; fi
        kill -0 "$runner" 2>/dev/null || { cat /tmp/entrypoint.err; return 1; }
        sleep 0.2
    done
    return 1
}
# Whether anything listens on 127.0.0.1:2049 (the relay's address).
relay_listening() { grep -q '^ *[0-9]*: 0100007F:0801 [0-9A-F]*:[0-9A-F]* 0A ' /proc/net/tcp; }
# Kills what is left of the session $1 (the relay) and waits until its
# address is free.
end_session() {
    kill -KILL -"$1" 2>/dev/null
    n=0
    while relay_listening && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    ! relay_listening
}
# What a machine stop does: the runner gets SIGTERM, the mounts go away,
# and so does every other process (the relay).
restart() {
    kill -TERM "$runner" && wait "$runner"
    timeout -s KILL 120 umount-worktree "$W" >/dev/null && end_session "$runner"
}
# The super options of the NFS mount under the worktree.
nfs_opts() {
    lower=$(worktree-status "$W" | sed -n 's/^lower: *//p')
    awk -v p="$lower" '$5 == p { for (i = 7; i <= NF; i++) if ($i == "-") break; print $(i + 3) }' /proc/self/mountinfo
}
# The relay's log (on the entrypoint's stderr), without colours.
relay_log() { tr -d '\033' < /tmp/entrypoint.err | sed 's/\[[0-9;]*m//g'; }
# The replica the relay connected to last: 10.0.2.2:PORT or [fec0::2]:PORT.
relay_upstream() { relay_log | sed -n 's/.* relaying .*address=\([^ ]*\).*/\1/p' | tail -1; }

# First boot of agent alice: app@main, read-write.
check "boot alice rw at app@main" 'boot AGENT_NAME=alice WORKTREE_REPO=app@main WORKTREE_MODE=rw'
check "the worktree is mounted through the relay" 'relay_listening && nfs_opts | grep -q "addr=127.0.0.1" && [ "$(relay_upstream)" = "10.0.2.2:$GUEST_NFSPORT" ]'
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

# The machine reused for another agent: its own upper, a clean worktree;
# mounted directly this time, without the relay.
check "boot bob on alice's machine, without the relay" 'boot AGENT_NAME=bob WORKTREE_REPO=app@main WORKTREE_RELAY=off'
check "bob's worktree is mounted directly" 'nfs_opts | grep -q "addr=10.0.2.2" && ! relay_listening'
check "bob starts clean, at main" '[ ! -e $W/agent.txt ] && [ "$(git -C $W rev-parse HEAD)" = "$MAIN" ] && [ -z "$(git -C $W status --porcelain)" ]'
check "alice's work stays on the volume" 'find /tmp/data/agents/alice/upper -name agent.txt | grep -q . && [ -s /tmp/data/agents/alice/worktree.pin ]'
check "bob's runner stops" 'restart'

# Failover. On Fly, WORKTREE_SERVER names every git-nfsd machine; here
# nfsd.internal names the host's 127.0.0.1 and ::1, where two replicas
# serve the same store at one port. fec0::2 needs eth0's autoconfigured
# fec0::/64 address.
n=0
while ! ip -6 addr show dev eth0 | grep 'inet6 fec0:' | grep -qv tentative && [ $n -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done
[ $n -lt 300 ] || echo "eth0 has no fec0::/64 address after 30 s: the failover checks will fail"
printf '10.0.2.2 nfsd.internal\nfec0::2 nfsd.internal\n' >> /etc/hosts
echo 'hosts: files' > /etc/nsswitch.conf
# Asks the host to freeze (SIGSTOP), kill or start a replica: ctl ACTION ADDRESS.
ctl() {
    case $2 in 10.0.2.2:*) family=v4 ;; \[fec0::2\]:*) family=v6 ;; *) return 1 ;; esac
    [ "$(wget -q -O - "http://10.0.2.2:$GUEST_CTLPORT/$1/$family" 2>/dev/null)" = done ]
}
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# Every git command from here on gives up after 5 minutes, so a mount that
# never comes back fails the checks rather than hanging the guest. Once (in
# one of six runs, under a cold CI) the first git commands after the
# failover stalled for over 2 minutes without an error: the stall is timed
# and reported below, with the relay's and the kernel's view, to find out
# why (see RELIABILITY.md).
to() { timeout -s KILL 300 "$@"; }
# Forgets the kernel's cached pages, names and attributes, so the next
# reads go to a replica.
forget() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# What the relay, the sockets and the kernel say, when failover fails.
diagnose() {
    echo "--- relay log"; relay_log | tail -30
    echo "--- /proc/net/tcp"; cat /proc/net/tcp
    echo "--- /proc/net/tcp6"; cat /proc/net/tcp6
    echo "--- dmesg"; dmesg | tail -20
}
# Whether the relay found the replica at $1 gone (refused or silent).
relay_left() { relay_log | grep -F "address=$1" | grep -qE "replica refused|replica did not answer"; }

check "boot dave through the relay, to a name with two replicas" 'boot AGENT_NAME=dave WORKTREE_REPO=app@main WORKTREE_SERVER=nfsd.internal:$GUEST_REPLICAPORT'
first=$(relay_upstream)
echo "the relay uses $first"
check "the relay took one of the replicas" 'case $first in 10.0.2.2:$GUEST_REPLICAPORT|"[fec0::2]:$GUEST_REPLICAPORT") nfs_opts | grep -q "addr=127.0.0.1" ;; *) false ;; esac'
check "dave edits and commits" 'echo "dave 1" > $W/dave.txt && git -C $W add dave.txt && git -C $W commit -q -m "dave 1" && [ -z "$(git -C $W status --porcelain)" ]'

# The replica in use stops answering with a read in flight, then dies.
forget
check "the replica in use stops answering" 'ctl freeze "$first"'
(
    cat $W/src/main.rs > /tmp/inflight.out 2> /tmp/inflight.err
    echo $? > /tmp/inflight.rc
    up > /tmp/inflight.at
) &
sleep 3
check "a read waits on it" '[ ! -e /tmp/inflight.rc ]'
t0=$(up)
check "the replica in use dies with the read waiting" 'ctl kill "$first"'
n=0
while [ ! -e /tmp/inflight.at ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
if [ -e /tmp/inflight.at ]; then
    echo "METRIC failover-in-flight-seconds=$(since "$t0" "$(cat /tmp/inflight.at)")"
else
    # Everything after would hang on the mount: say why and stop here.
    echo "FAIL: the read waiting on the dead replica did not finish within 120 s"
    diagnose
    exit 1
fi
check "the waiting read finishes through the other replica, with the right bytes" '[ "$(cat /tmp/inflight.rc 2>/dev/null)" = 0 ] && [ ! -s /tmp/inflight.err ] && [ "$(git hash-object /tmp/inflight.out)" = "$MAIN_RS_OID" ]'
second=$(relay_upstream)
echo "the relay uses $second"
check "the relay found the replica gone and moved to the other" '[ -n "$second" ] && [ "$second" != "$first" ] && relay_left "$first"'
t_git=$(up)
check "git status, log and diff carry on" 'to git -C $W status --porcelain > /tmp/st 2>&1 && [ ! -s /tmp/st ] && [ "$(to git -C $W log -1 --format=%s)" = "dave 1" ] && [ "$(to git -C $W diff --name-only HEAD~1)" = dave.txt ]'
git_took=$(since "$t_git" "$(up)")
echo "METRIC git-after-failover-seconds=$git_took"
if [ "${git_took%.*}" -ge 10 ]; then
    echo "git stalled ${git_took}s after the failover:"
    diagnose
fi
check "files nobody has read yet read right" '[ "$(to git -C $W hash-object big/random.bin)" = "$BIG_OID" ] && to git -C $W grep -q "^echo run" -- bin/run.sh && [ "$(to cat $W/README.md | head -1)" = "# Fixture" ]'
check "dave commits again" 'echo "dave 2" >> $W/dave.txt && to git -C $W commit -q -am "dave 2" && [ -z "$(to git -C $W status --porcelain)" ]'

# The first replica comes back; the one in use now dies while the mount is
# idle (no call in flight): the next call goes to the first again.
check "the first replica comes back" 'ctl start "$first"'
check "the replica in use dies while the mount is idle" 'ctl kill "$second"'
forget
t0=$(up)
check "git reads right after the second failover" '[ "$(to git -C $W hash-object README.md)" = "$README_OID" ]'
echo "METRIC failover-idle-seconds=$(since "$t0" "$(up)")"
check "the relay went back to the first replica" '[ "$(relay_upstream)" = "$first" ] && relay_left "$second"'
check "nothing of dave's work is lost" '[ "$(to git -C $W log -3 --format=%s | tr "\n" ,)" = "dave 2,dave 1,$(git -C $W log -1 --format=%s $MAIN)," ] && [ "$(to git -C $W rev-parse HEAD~2)" = "$MAIN" ] && printf "dave 1\ndave 2\n" | cmp -s - $W/dave.txt && [ -z "$(to git -C $W status --porcelain)" ]'
echo "the relay's log of the failovers:"
relay_log | grep -E "refused|did not answer|no replica|broke" | tail -8
check "the kernel's client reported no error" '! dmesg | grep -iE "not responding|nfs: .*error"'
check "dave's runner stops" 'restart'

# Refusals: a worktree of another repository over alice's upper, a bad
# name, an unknown revision; none leaves a mount behind.
code() {
    setsid env "$@" entrypoint > /tmp/out 2>&1 &
    p=$!
    wait $p
    c=$?
    end_session $p
    echo $c
}
mounted() { grep -q " $W " /proc/mounts; }
check "another repository over alice's upper is refused before mounting" '[ "$(code AGENT_NAME=alice WORKTREE_REPO=org/lib@main)" = 2 ] && grep -q "worktree is of app, not org/lib" /tmp/out && ! mounted'
check "a bad agent name is refused" '[ "$(code AGENT_NAME=../x WORKTREE_REPO=app@main)" = 2 ] && grep -q "bad AGENT_NAME" /tmp/out'
check "an unknown revision fails the boot" '[ "$(code AGENT_NAME=carol WORKTREE_REPO=app@no-such-branch)" != 0 ] && grep -q "unknown repository or revision" /tmp/out && ! mounted'

echo "checks failed: $fails"
[ "$fails" -eq 0 ]
