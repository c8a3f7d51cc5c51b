# Guest half of integration/tests/overlay_scripts.rs: the scripts in
# /opt/overlay-scripts against git-nfsd at 10.0.2.2 (and a second one at
# fec0::2, the host's ::1, port $GUEST_NFS6PORT). The test prepends:
#   FILES    number of tracked files in app@main
#   MAIN     the commit of app@main
#   README_OID, MAIN_RS_OID   blob ids of README.md and src/main.rs there
fails=0
check() {
    if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
S=/opt/overlay-scripts
SERVER=10.0.2.2:$GUEST_NFSPORT
export PATH=$S:$PATH
# Kernel NFS calls git-nfsd answered so far (GETATTR + LOOKUP + ACCESS).
calls() {
    wget -q -O - "http://10.0.2.2:$GUEST_METRICSPORT/metrics" |
        awk '/^gitnfsd_rpc_calls_total/ && /procedure="(GETATTR|LOOKUP|ACCESS|READDIRPLUS|READDIR)"/ { n += $2 } END { print n + 0 }'
}
code() { "$@" > /tmp/out 2>&1; echo $?; }

check "help" "mount-worktree --help | grep -q 'usage: mount-worktree' && umount-worktree --help >/dev/null && worktree-status --help >/dev/null && worktree-fsmonitor --help >/dev/null"

# A read-write worktree with fsmonitor, and one without, on separate exports
# (the same commit by branch and by tag) so they share no client cache.
check "mount read-write" "mount-worktree $SERVER app@main /work/a --uid 1000"
check "status reports it" "worktree-status /work/a | grep -q 'mode:     read-write' && worktree-status /work/a | grep -q 'app@main'"
check "fsmonitor configured" "[ \"\$(git -C /work/a config core.fsmonitor)\" = $S/worktree-fsmonitor ] && [ \"\$(git -C /work/a config core.untrackedCache)\" = true ]"
check "idempotent" "mount-worktree $SERVER app@main /work/a --uid 1000 | grep -q already"
check "mount without fsmonitor" "mount-worktree $SERVER app@v1.0 /work/b --no-fsmonitor"

cd /work/a
before=$(calls)
check "first status with fsmonitor is clean" "[ -z \"\$(git status --porcelain)\" ]"
with=$(( $(calls) - before ))
cd /work/b
before=$(calls)
check "first status without fsmonitor is clean" "[ -z \"\$(git status --porcelain)\" ]"
without=$(( $(calls) - before ))
echo "METRIC first-status-calls with-fsmonitor=$with without=$without files=$FILES"
check "fsmonitor status does not scale with the tree" "[ $with -lt 200 ] && [ $without -gt $FILES ]"

# Three edits in ordinary folders: status stays O(changes).
cd /work/a
su agent -c 'cd /work/a && echo a >> README.md && echo b >> src/main.rs && echo c >> bin/run.sh'
before=$(calls)
git status --porcelain > /tmp/with.txt
edited=$(( $(calls) - before ))
git -c core.fsmonitor=false status --porcelain > /tmp/without.txt
echo "METRIC status-after-3-edits-calls=$edited"
check "status after 3 edits equals a full scan" "cmp -s /tmp/with.txt /tmp/without.txt && [ \$(wc -l < /tmp/with.txt) -eq 3 ]"
check "status after 3 edits stays small" "[ $edited -lt 200 ]"

# Every kind of change: an edit in the 20,000-entry folder, a new file, a
# deletion, a new folder, a renamed folder. git re-lists the folders that
# changed (the big one included), so only correctness is asserted here.
su agent -c 'cd /work/a && echo c >> many/f00042 && echo new > new.txt && rm empty && mkdir newdir && echo x > newdir/x && mv deep/level01 deep/renamed'
before=$(calls)
git status --porcelain > /tmp/with.txt
edited=$(( $(calls) - before ))
git -c core.fsmonitor=false status --porcelain > /tmp/without.txt
echo "METRIC status-after-all-kinds-calls=$edited"
check "status after every kind of change equals a full scan" "cmp -s /tmp/with.txt /tmp/without.txt"
check "status lists every kind of change" "grep -q 'README.md' /tmp/with.txt && grep -q 'f00042' /tmp/with.txt && grep -q 'new.txt' /tmp/with.txt && grep -q ' D empty' /tmp/with.txt && grep -q 'deep/renamed' /tmp/with.txt && grep -q ' D deep/level01' /tmp/with.txt"
check "hook reports the upper" "worktree-fsmonitor 2 x | tr '\\0' '\\n' | grep -qx 'newdir/'"
check "status shows the diff size" "worktree-status /work/a | grep -q 'changes:  '"
git add -A && git -c user.name=t -c user.email=t@t commit -qm 'agent work'
cd /
check "umount" "umount-worktree /work/a && ! worktree-status /work/a >/dev/null"

# Re-attach the same upper, read-write and read-only: the work is there.
check "re-attach read-write" "mount-worktree $SERVER app@main /work/a && [ \"\$(git -C /work/a log -1 --format=%s)\" = 'agent work' ] && [ -f /work/a/new.txt ]"
umount-worktree /work/a >/dev/null
check "re-attach read-only" "mount-worktree $SERVER app@main /work/a --ro && [ -f /work/a/new.txt ] && [ ! -e /work/a/empty ] && [ \"\$(git -C /work/a log -1 --format=%s)\" = 'agent work' ]"
check "read-only refuses writes" "! touch /work/a/nope 2>/dev/null"
check "status says read-only" "worktree-status /work/a | grep -q 'mode:     read-only'"
umount-worktree /work/a >/dev/null
check "read-only without an upper" "mount-worktree $SERVER app@main /work/c --ro && [ -f /work/c/empty ] && ! touch /work/c/nope 2>/dev/null"
umount-worktree /work/c >/dev/null 2>&1 || umount /work/c

# Server names. Fly's private names (.flycast, .internal) have IPv6
# addresses only, and mount.nfs with proto=tcp looks up IPv4 ones alone:
# nfsd.flycast gets only the host's ::1 (fec0::2, the second git-nfsd, on
# [::1]), once eth0 has its autoconfigured fec0::/64 address; "host" is
# 10.0.2.2 in /etc/hosts and keeps IPv4.
n=0
while ! ip -6 addr show dev eth0 | grep 'inet6 fec0:' | grep -qv tentative && [ $n -lt 300 ]; do
    sleep 0.1; n=$((n + 1))
done
[ $n -lt 300 ] || echo "eth0 has no fec0::/64 address after 30 s: the IPv6 checks will fail"
echo 'fec0::2 nfsd.flycast' >> /etc/hosts
echo 'hosts: files' > /etc/nsswitch.conf
# The super options of the NFS mount under worktree $1.
nfs_opts() {
    lower=$(worktree-status "$1" | sed -n 's/^lower: *//p')
    awk -v p="$lower" '$5 == p { for (i = 7; i <= NF; i++) if ($i == "-") break; print $(i + 3) }' /proc/self/mountinfo
}
check "IPv6-only name: mount" "mount-worktree nfsd.flycast:$GUEST_NFS6PORT app@main /work/v6 --uid 1000"
check "IPv6-only name: over tcp6 to fec0::2" "nfs_opts /work/v6 | grep -q 'proto=tcp6,.*mountproto=tcp6,.*addr=fec0::2' && worktree-status /work/v6 | grep -q 'export:   nfsd.flycast:/app@main'"
# The commit and two files as the host's git sees them.
reads_right() {
    [ "$(git -C "$1" rev-parse HEAD)" = "$MAIN" ] &&
        [ "$(git -C "$1" ls-files | wc -l)" -eq "$FILES" ] &&
        [ "$(git -C "$1" hash-object README.md)" = "$README_OID" ] &&
        [ "$(git -C "$1" hash-object src/main.rs)" = "$MAIN_RS_OID" ]
}
check "IPv6-only name: the worktree reads right" "reads_right /work/v6"
check "IPv6-only name: git status is clean" "git -C /work/v6 status --porcelain > /tmp/st && git -C /work/v6 -c core.fsmonitor=false status --porcelain >> /tmp/st && [ ! -s /tmp/st ]"
check "IPv6-only name: umount" "umount-worktree /work/v6 && ! grep -q nfsd.flycast /proc/self/mountinfo"
check "IPv6-only name, nothing listening: exit 4" "[ \$(code mount-worktree nfsd.flycast:1 app /work/e) -eq 4 ] && grep -q 'cannot reach' /tmp/out && grep -q refused /tmp/out"
check "name with an IPv4 address: mount over tcp" "mount-worktree host:$GUEST_NFSPORT app@main /work/h --ro && nfs_opts /work/h | grep -q 'proto=tcp,.*addr=10.0.2.2' && reads_right /work/h"
check "name with an IPv4 address: umount" "umount-worktree /work/h && ! grep -q ' host:/' /proc/self/mountinfo"
check "name with no address: exit 4" "[ \$(code mount-worktree nowhere.flycast:$GUEST_NFS6PORT app /work/e) -eq 4 ] && grep -q 'cannot resolve nowhere.flycast' /tmp/out"

# Errors, each with its exit status.
check "unknown repository: exit 5" "[ \$(code mount-worktree $SERVER nope /work/e) -eq 5 ] && grep -q 'unknown repository' /tmp/out"
check "unknown revision: exit 5" "[ \$(code mount-worktree $SERVER app@no-such-branch /work/e) -eq 5 ]"
check "server unreachable: exit 4" "[ \$(code mount-worktree 10.0.2.2:1 app /work/e) -eq 4 ] && grep -q 'cannot reach' /tmp/out"
mkdir -p /work/busy && mount -t tmpfs tmpfs /work/busy
check "busy folder: exit 6" "[ \$(code mount-worktree $SERVER app /work/busy) -eq 6 ] && grep -q busy /tmp/out"
mkdir -p /work/ovl-lower /work/ovl-upper /work/ovl-work /work/ovl && mount -t overlay overlay -o lowerdir=/work/ovl-lower,upperdir=/work/ovl-upper,workdir=/work/ovl-work /work/ovl
check "upper on an unsupported filesystem: exit 7" "[ \$(code mount-worktree $SERVER app /work/f --upper /work/ovl/upper) -eq 7 ] && grep -q 'cannot use as an upper' /tmp/out"
check "bad usage: exit 2" "[ \$(code mount-worktree $SERVER app) -eq 2 ]"
umount-worktree /work/b >/dev/null
umount /work/ovl /work/busy
check "nothing left mounted from the export" "! grep -q ' nfs ' /proc/self/mountinfo"
mv /sbin/mount.nfs /sbin/mount.nfs.off
check "mount.nfs missing: exit 3" "[ \$(code mount-worktree $SERVER app /work/g) -eq 3 ] && grep -q 'nfs-common' /tmp/out"
mv /sbin/mount.nfs.off /sbin/mount.nfs
rmmod overlay
check "no overlayfs: exit 3" "[ \$(code mount-worktree $SERVER app /work/g) -eq 3 ] && grep -q overlayfs /tmp/out"
rmmod nfsv3 && rmmod nfs
check "no NFS client: exit 3" "[ \$(code mount-worktree $SERVER app /work/g) -eq 3 ] && grep -q 'no NFS client' /tmp/out"
echo "guest checks failed: $fails"
exit "$fails"
