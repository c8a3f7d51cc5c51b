# Guest half of integration/tests/kernel_client.rs. The test prepends:
#   EXPORT            export path to mount
#   MANIFEST          lines "sha256  ./path" for every file to verify
#   ENTRIES           number of entries `find` must see under the mount, outside .git
#   MANY              number of entries in many/
# and the guest gets GUEST_NFSPORT on the kernel command line.
fails=0
check() {
    if eval "$2"; then echo "PASS: $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi
}
as_agent() { su agent -c "$1"; }

mkdir -p /mnt/lower /mnt/work /tmp/upper /tmp/ovlwork
opts="vers=3,proto=tcp,port=$GUEST_NFSPORT,mountport=$GUEST_NFSPORT,nolock,ro"
check "mount nfs" "mount -t nfs -o $opts 10.0.2.2:$EXPORT /mnt/lower"
check "entry count" "[ \$(find /mnt/lower -path /mnt/lower/.git -prune -o -print | wc -l) -eq $ENTRIES ]"
check "20,000-entry folder" "[ \$(ls /mnt/lower/many | wc -l) -eq $MANY ]"
echo "$MANIFEST" > /tmp/manifest
check "file contents (sha256 of every file outside many/)" "cd /mnt/lower && sha256sum -c -s /tmp/manifest; rc=\$?; cd /tmp; [ \$rc -eq 0 ]"
check "symlink target" "[ \"\$(readlink /mnt/lower/link-to-readme)\" = README.md ]"
check "executable bit" "[ -x /mnt/lower/bin/run.sh ] && [ ! -x /mnt/lower/README.md ]"
check "30 levels deep" "[ -f /mnt/lower/deep/level01/level02/level03/level04/level05/level06/level07/level08/level09/level10/level11/level12/level13/level14/level15/level16/level17/level18/level19/level20/level21/level22/level23/level24/level25/level26/level27/level28/level29/level30/leaf.txt ]"
check "writes to the export are refused" "! touch /mnt/lower/nope 2>/dev/null"
check "owner from --uid" "[ \"\$(stat -c %u:%g /mnt/lower/README.md)\" = 1000:1000 ]"
lower_readme=$(sha256sum /mnt/lower/README.md | cut -d' ' -f1)

check "overlay mount" "mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/tmp/upper,workdir=/tmp/ovlwork,redirect_dir=on /mnt/work"
chmod 777 /tmp/upper 2>/dev/null
# root does not own the files: reads and copy-ups go through NFSACL.
check "root reads through the overlay" "cmp -s /mnt/work/README.md /mnt/lower/README.md"
check "root lists through the overlay" "[ \$(ls /mnt/work/many | wc -l) -eq $MANY ]"
check "root edits a file (copy-up)" "echo root-edit >> /mnt/work/README.md && tail -1 /mnt/work/README.md | grep -q root-edit"
check "root creates a file" "echo new > /mnt/work/root-new.txt && [ \"\$(cat /mnt/work/root-new.txt)\" = new ]"
check "root renames a folder" "mv /mnt/work/src /mnt/work/src-renamed && [ -f /mnt/work/src-renamed/main.rs ] && [ ! -e /mnt/work/src ]"
# agent owns the files (--uid 1000).
check "agent reads" "as_agent 'cat /mnt/work/bin/run.sh' | grep -q 'echo run'"
check "agent lists" "as_agent 'ls /mnt/work/deep/level01' | grep -q level02"
check "agent edits a file" "as_agent 'echo agent-edit >> /mnt/work/héllo\ wörld.txt' && tail -1 '/mnt/work/héllo wörld.txt' | grep -q agent-edit"
check "agent creates files and folders" "as_agent 'mkdir /mnt/work/agent-dir && echo x > /mnt/work/agent-dir/f && echo y > /mnt/work/big/agent.txt' && [ -f /mnt/work/agent-dir/f ]"
check "agent deletes a file (whiteout)" "as_agent 'rm /mnt/work/empty' && [ ! -e /mnt/work/empty ] && [ -e /mnt/lower/empty ]"
check "the lower layer is unchanged" "[ \"\$(sha256sum /mnt/lower/README.md | cut -d' ' -f1)\" = $lower_readme ] && [ ! -e /mnt/lower/root-new.txt ] && [ -d /mnt/lower/src ] && [ ! -e /mnt/lower/agent-dir ]"
check "changes live in the upper" "[ -f /tmp/upper/root-new.txt ] && [ -f /tmp/upper/agent-dir/f ] && [ -f /tmp/upper/README.md ]"
check "unmount" "umount /mnt/work && umount /mnt/lower"
echo "guest checks failed: $fails"
exit "$fails"
