# Guest half of integration/tests/kernel_restarts.rs: reads, checksums and
# git status in a loop on a `hard` mount while the host kills and restarts
# git-nfsd. The host's control server (GUEST_CTLPORT) says when to stop
# and counts rounds. /manifest.sha256 lists files and their checksums.
fails=0
check() {
    if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
ctl() { wget -qO- "http://10.0.2.2:$GUEST_CTLPORT/$1" 2>/dev/null; }
mkdir -p /mnt/lower /tmp/w/upper /tmp/w/work /mnt/w
opts="vers=3,proto=tcp,port=$GUEST_NFSPORT,mountport=$GUEST_NFSPORT,nolock,ro,hard,timeo=20,retrans=3,actimeo=3600"
check "mount nfs (hard)" "mount -t nfs -o $opts 10.0.2.2:/app@main /mnt/lower"
check "overlay" "mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/tmp/w/upper,workdir=/tmp/w/work /mnt/w"
cd /mnt/w
mkdir notes
echo "written before the rounds" > notes/start.txt
check "status before" "[ \"\$(git status --porcelain)\" = '?? notes/' ]"
round=0 errors=0
while [ "$(ctl state)" = run ]; do
    round=$((round + 1))
    # Forget cached pages, so every round reads from the server again.
    sync
    echo 3 > /proc/sys/vm/drop_caches
    if ! sha256sum -c /manifest.sha256 > /tmp/sums.txt 2>&1; then
        errors=$((errors + 1))
        echo "round $round: checksum error"; grep -v ': OK$' /tmp/sums.txt
    fi
    status=$(git status --porcelain 2>&1)
    if [ "$status" != '?? notes/' ]; then
        errors=$((errors + 1))
        echo "round $round: git status said: $status"
    fi
    echo "written in round $round" > "notes/round-$round.txt"
    echo "round $round done at $(cut -d" " -f1 /proc/uptime) s"
    ctl "round/$round" > /dev/null
done
echo "rounds: $round, errors: $errors"
check "no error reached the application" "[ $errors -eq 0 ]"
kept=0
i=1
while [ $i -le $round ]; do
    [ "$(cat notes/round-$i.txt)" = "written in round $i" ] && kept=$((kept + 1))
    i=$((i + 1))
done
check "the upper kept every write" "[ $kept -eq $round ] && [ \$(ls /tmp/w/upper/notes | wc -l) -eq $((round + 1)) ]"
cd /
umount /mnt/w /mnt/lower
echo "guest checks failed: $fails"
exit "$fails"
