# Guest half of integration/tests/kernel_git.rs. The test prepends:
#   EXPORT   export path; COMMIT  the pinned commit; TRACKED  git ls-files count
#   WORKFLOW the text of git-workflow.sh; MODE  "status" or "workflow"
fails=0
check() {
    if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
mkdir -p /mnt/lower
opts="vers=3,proto=tcp,port=$GUEST_NFSPORT,mountport=$GUEST_NFSPORT,nolock,ro,actimeo=3600"
check "mount nfs" "mount -t nfs -o $opts 10.0.2.2:$EXPORT /mnt/lower"
overlay() {
    mkdir -p "/tmp/$1/upper" "/tmp/$1/work" "/mnt/$1"
    chown "$2" "/tmp/$1/upper" "/tmp/$1/work"
    mount -t overlay overlay -o "lowerdir=/mnt/lower,upperdir=/tmp/$1/upper,workdir=/tmp/$1/work,redirect_dir=on" "/mnt/$1"
}
check "overlays for root and agent" "overlay root 0:0 && overlay agent 1000:1000"

if [ "$MODE" = status ]; then
    cd /mnt/root
    check "fresh status is clean (root)" "[ -z \"\$(git status --porcelain)\" ]"
    check "status says clean" "git status | grep -q 'nothing to commit, working tree clean'"
    check "HEAD is the pinned commit" "[ \"\$(git rev-parse HEAD)\" = $COMMIT ]"
    check "on the mounted branch" "[ \"\$(git branch --show-current)\" = main ]"
    check "index lists every file" "[ \"\$(git ls-files | wc -l)\" -eq $TRACKED ]"
    check "log reads the packs" "git log --oneline | grep -q 'fixture: initial tree'"
    check "upstream is origin/main" "git status -sb | head -1 | grep -q 'main...origin/main'"
    check "fresh status is clean (agent)" "[ -z \"\$(su agent -c 'cd /mnt/agent && git status --porcelain')\" ]"
    check "git status wrote nothing but the index" "[ -z \"\$(find /tmp/root/upper -type f ! -path '*/.git/*')\" ]"
else
    # The sessions run in worktrees made by mount-worktree, so git asks
    # worktree-fsmonitor what changed; every status is checked against a
    # full scan (git-workflow.sh prints FSMONITOR-MISMATCH otherwise).
    umount /mnt/root /mnt/agent
    S=/opt/overlay-scripts
    check "mount-worktree for root and agent" "$S/mount-worktree 10.0.2.2:$GUEST_NFSPORT ${EXPORT#/} /w/root && $S/mount-worktree 10.0.2.2:$GUEST_NFSPORT ${EXPORT#/} /w/agent --uid 1000"
    check "fsmonitor is on" "[ -n \"\$(git -C /w/root config core.fsmonitor)\" ]"
    before=$(sha256sum /mnt/lower/README.md /mnt/lower/src/main.rs)
    echo "$WORKFLOW" > /tmp/git-workflow.sh
    chmod 644 /tmp/git-workflow.sh
    cd /tmp
    sh /tmp/git-workflow.sh /w/root > /tmp/root.txt 2>&1; echo "root workflow exit $?"
    su agent -c 'sh /tmp/git-workflow.sh /w/agent' > /tmp/agent.txt 2>&1; echo "agent workflow exit $?"
    sed 's/^/ROOT /' /tmp/root.txt
    sed 's/^/AGENT /' /tmp/agent.txt
    check "the lower layer is unchanged" "[ \"\$(sha256sum /mnt/lower/README.md /mnt/lower/src/main.rs)\" = \"\$before\" ] && [ -d /mnt/lower/deep/level01 ] && [ -e /mnt/lower/empty ]"
    check "the work lives in the uppers" "[ -d /w/.root.upper/upper/.git ] && [ -d /w/.agent.upper/upper/.git ]"
    cd /
    $S/umount-worktree /w/root > /dev/null && $S/umount-worktree /w/agent > /dev/null
    umount /mnt/lower
    echo "guest checks failed: $fails"
    exit "$fails"
fi
cd /
umount /mnt/root /mnt/agent /mnt/lower
echo "guest checks failed: $fails"
exit "$fails"
