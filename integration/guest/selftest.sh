#!/usr/bin/env bash
# Self-test of the test guest: boots it once (run-guest) with a script that
# checks the modules (nfs and overlay in /proc/filesystems), the network
# (10.0.2.15, the host reachable at 10.0.2.2), kernel command-line env vars,
# users root and agent, an overlayfs of tmpfs layers written by both, git as
# both, and mount.nfs. Prints PASS/FAIL per check and the boot time; exits
# non-zero if any check fails.
#
# usage: selftest.sh [--timeout SECS] [--nfs PORT:EXPORT]
#   --nfs PORT:EXPORT  also mount EXPORT from an NFSv3 server already listening
#                      on the host's 127.0.0.1:PORT (NFS and MOUNT on the same
#                      port), read-only, with an overlay and `git status` on top
#   --timeout SECS     passed to run-guest (default 300)
#   --help
set -eu
set -o pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
timeout=300
nfs=
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --timeout) timeout=${2:?}; shift 2 ;;
        --nfs) nfs=${2:?}; shift 2 ;;
        *) usage >&2; exit 2 ;;
    esac
done
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/guest-selftest.XXXXXX")
httpd_pid=
cleanup() {
    if [ -n "$httpd_pid" ]; then kill "$httpd_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
random_port() { echo $((20000 + RANDOM % 40000)); }

# A web server on the host's 127.0.0.1 (busybox httpd) that the guest
# fetches a token from as 10.0.2.2, and a port nothing listens on, for a
# mount.nfs attempt that must fail with "connection refused".
token=selftest-$$-$RANDOM
mkdir "$work/www"
echo "$token" > "$work/www/token"
args=(--timeout "$timeout" --env "selftest=$token" --env "two-words=a=b")
for _ in 1 2 3 4 5 6 7 8 9 10; do
    port=$(random_port)
    port_is_free "$port" || continue
    busybox httpd -f -p "127.0.0.1:$port" -h "$work/www" &
    httpd_pid=$!
    sleep 0.3
    if kill -0 "$httpd_pid" 2>/dev/null; then args+=(--env "httpport=$port"); break; fi
    httpd_pid=
done
[ -n "$httpd_pid" ] || echo "selftest: could not start busybox httpd; the host-reachability check is skipped" >&2
for _ in 1 2 3 4 5 6 7 8 9 10; do
    closed=$(random_port)
    if port_is_free "$closed"; then args+=(--env "closedport=$closed"); break; fi
done
if [ -n "$nfs" ]; then
    args+=(--env "nfsport=${nfs%%:*}" --env "nfsexport=${nfs#*:}")
fi

cat > "$work/test.sh" <<'GUEST'
fails=0
check() { # NAME SHELL-CODE: runs the code in a subshell, prints PASS or FAIL
    if (eval "$2") > /tmp/check.out 2>&1; then
        echo "PASS: $1"
    else
        echo "FAIL: $1"
        sed 's/^/    | /' /tmp/check.out
        fails=$((fails + 1))
    fi
}

check "every module is loaded" 'for m in $(cat /etc/modules.order); do grep -q "^$m " /proc/modules || { echo "not loaded: $m"; exit 1; }; done'
check "/proc/filesystems lists nfs and overlay" 'grep -qw nfs /proc/filesystems && grep -qw overlay /proc/filesystems'
check "guest.KEY=VALUE arrives as GUEST_KEY" '[ "${GUEST_SELFTEST#selftest-}" != "$GUEST_SELFTEST" ] && [ "$GUEST_TWO_WORDS" = a=b ]'
check "eth0 is 10.0.2.15/24" 'ip addr show eth0 | grep -q "inet 10.0.2.15/24"'
check "default route via 10.0.2.2" 'ip route | grep -q "^default via 10.0.2.2 dev eth0"'
if [ -n "${GUEST_HTTPPORT:-}" ]; then
    check "the host's 127.0.0.1 answers at 10.0.2.2" '[ "$(wget -q -O - "http://10.0.2.2:$GUEST_HTTPPORT/token")" = "$GUEST_SELFTEST" ]'
fi
check "hostname" '[ "$(hostname)" = guest ]'
check "/tmp is a writable tmpfs" 'grep -q "^tmpfs /tmp tmpfs" /proc/mounts && echo x > /tmp/x && su agent -c "echo y > /tmp/y"'
check "su agent -c runs as agent without a password" '[ "$(su agent -c "id -u; id -g; echo \$HOME")" = "$(printf "1000\n1000\n/home/agent")" ]'
check "as-agent runs as agent" '[ "$(as-agent id -u)" = 1000 ] && [ "$(as-agent sh -c "echo \$HOME")" = /home/agent ]'

# overlayfs: tmpfs lower, tmpfs upper; a folder owned by agent.
O=/tmp/ovl
mkdir -p $O/lower $O/up $O/merged
check "tmpfs lower layer" "mount -t tmpfs lower $O/lower && mkdir $O/lower/shared $O/lower/rootdir && echo lower > $O/lower/shared/f && echo gone > $O/lower/shared/gone && chown -R 1000:1000 $O/lower/shared"
check "overlay mount (tmpfs upper)" "mount -t tmpfs upper $O/up && mkdir $O/up/u $O/up/w && mount -t overlay overlay -o lowerdir=$O/lower,upperdir=$O/up/u,workdir=$O/up/w $O/merged"
check "root writes into agent's folder" "echo root > $O/merged/shared/by-root && [ \"\$(cat $O/up/u/shared/by-root)\" = root ]"
check "agent writes into its folder" "as-agent sh -c 'echo agent > $O/merged/shared/by-agent' && [ \"\$(stat -c %u $O/up/u/shared/by-agent)\" = 1000 ]"
check "su agent writes into its folder" "su agent -c 'echo su > $O/merged/shared/by-su' && [ -f $O/up/u/shared/by-su ]"
check "agent edits a lower file (copy-up)" "as-agent sh -c 'echo more >> $O/merged/shared/f' && [ \"\$(cat $O/lower/shared/f)\" = lower ] && [ \"\$(tail -n 1 $O/up/u/shared/f)\" = more ]"
check "agent deletes a lower file (whiteout)" "as-agent rm $O/merged/shared/gone && [ ! -e $O/merged/shared/gone ] && [ -c $O/up/u/shared/gone ] && [ -f $O/lower/shared/gone ]"
check "agent cannot write into root's folder" "! as-agent touch $O/merged/rootdir/x"

# git as root (tmpfs) and as agent (in the overlay).
gitflow='set -e
git init -q .
echo one > a.txt
git add a.txt
git commit -q -m first
[ -z "$(git status --porcelain)" ]
echo two >> a.txt
git diff | grep -q "^+two"
git status --porcelain | grep -q "^ M a.txt"
git commit -q -am second
[ "$(git log --format=%s | tr "\n" " ")" = "second first " ]
[ "$(git log -1 --format=%an)" = Guest ]
git stash list >/dev/null
git submodule status >/dev/null'
echo "$gitflow" > /tmp/gitflow.sh
chmod 644 /tmp/gitflow.sh
check "git init/add/commit/status/diff/log as root" 'mkdir /tmp/repo-root && cd /tmp/repo-root && sh /tmp/gitflow.sh && [ "$(stat -c %u .git/HEAD)" = 0 ]'
check "git init/add/commit/status/diff/log as agent (overlay)" "as-agent sh -c 'mkdir $O/merged/shared/repo && cd $O/merged/shared/repo && sh /tmp/gitflow.sh' && [ \"\$(stat -c %u $O/up/u/shared/repo/.git/HEAD)\" = 1000 ]"
check "agent reads root's repository (safe.directory)" "[ \"\$(as-agent git -C /tmp/repo-root log --format=%s -1)\" = second ]"

check "mount.nfs runs" 'mount.nfs -V 2>&1 | grep -q nfs-utils'
if [ -n "${GUEST_CLOSEDPORT:-}" ]; then
    # mount -t nfs must reach mount.nfs and the kernel, and fail only
    # because nothing listens (not for lack of /etc/netconfig et al.).
    check "mount -t nfs gets to the network" 'mkdir -p /mnt/none; out=$(timeout 60 mount -t nfs -o vers=3,proto=tcp,port=$GUEST_CLOSEDPORT,mountport=$GUEST_CLOSEDPORT,nolock,ro,retry=0 10.0.2.2:/none /mnt/none 2>&1); rc=$?; echo "rc=$rc: $out"; [ $rc -ne 0 ] && echo "$out" | grep -qi "refused" && ! echo "$out" | grep -qi "protocol"'
fi
if [ -n "${GUEST_NFSPORT:-}" ]; then
    N=/mnt/nfs
    mkdir -p $N /tmp/nfs/u /tmp/nfs/w /mnt/nfs-work
    opts="vers=3,proto=tcp,port=$GUEST_NFSPORT,mountport=$GUEST_NFSPORT,nolock,ro"
    check "NFS mount of 10.0.2.2:$GUEST_NFSEXPORT" "mount -t nfs -o $opts 10.0.2.2:$GUEST_NFSEXPORT $N && ls -la $N | head -n 20"
    check "NFS listing and reads" "[ \$(ls -A $N | wc -l) -gt 0 ] && find $N -maxdepth 2 -type f | head -n 5 | while read -r f; do cat \"\$f\" > /dev/null || exit 1; done"
    check "overlay over NFS" "mount -t overlay overlay -o lowerdir=$N,upperdir=/tmp/nfs/u,workdir=/tmp/nfs/w $N-work && echo x > $N-work/selftest-new && [ -f /tmp/nfs/u/selftest-new ]"
    if [ -e $N/.git ]; then
        check "git status on the NFS overlay" "cd $N-work && git status --short | head -n 20"
    fi
    umount $N-work 2>/dev/null; umount $N 2>/dev/null
fi

echo "SELFTEST: $fails check(s) failed"
exit "$fails"
GUEST

start=$(date +%s.%N)
set +e
"$here/run-guest" "${args[@]}" "$work/test.sh" | tee "$work/console.txt"
code=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
ready=$(sed -n 's/.*guest-init: ready after \([0-9.]*\) s.*/\1/p' "$work/console.txt" | head -n 1)
passed=$(grep -c '^PASS: ' "$work/console.txt" || true)
failed=$(grep -c '^FAIL: ' "$work/console.txt" || true)
echo
echo "selftest: $passed passed, $failed failed; run-guest exit $code"
echo "selftest: whole run $(awk "BEGIN { printf \"%.1f\", $end - $start }") s (build check, boot, checks, power-off); guest init ready at ${ready:-?} s of guest uptime"
[ "$code" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
