# A git session shared by the host (in an ordinary clone) and the guest (in
# an overlay over the export): each step's observable result is printed as
# "STEP name: value", so the test can compare the two transcripts line by
# line. POSIX sh; runs under busybox. Usage: sh git-workflow.sh DIR
set -e
cd "$1"
step() { printf 'STEP %s: %s\n' "$1" "$2"; }
# Status, checked against a full scan: with fsmonitor configured (the guest
# mounts with mount-worktree), both must agree after every step.
porcelain() {
    fast=$(git status --porcelain | tr '\n' '|')
    full=$(git -c core.fsmonitor=false status --porcelain | tr '\n' '|')
    [ "$fast" = "$full" ] || printf 'FSMONITOR-MISMATCH: %s <> %s\n' "$fast" "$full"
    printf '%s' "$fast"
}

step "initial status" "$(porcelain)"
step "branch" "$(git branch --show-current)"
step "log" "$(git log --format=%s | tr '\n' '|')"
step "ls-files" "$(git ls-files | wc -l | tr -d ' ')"
step "log -p" "$(git log -p --format=%s -- src/main.rs | tr '\n' '|')"
step "grep" "$(git grep -n 'hello' -- src | tr '\n' '|')"
step "blame" "$(git blame --porcelain src/main.rs | grep -c '^author ')"

echo "edited" >> README.md
step "diff" "$(git diff --stat | tail -1 | tr -s ' ')"
git add README.md
git commit -q -m "edit README"
step "after commit" "$(porcelain)"
step "tree after commit" "$(git rev-parse 'HEAD^{tree}')"

git checkout -q -b topic
echo topic > topic.txt
git add topic.txt
git commit -q -m "topic work"
git checkout -q feature/nested-name
step "feature branch file" "$(cat feature.txt)"
git checkout -q main
step "back on main" "$(git branch --show-current) $(test -e feature.txt && echo has-feature || echo no-feature)"

echo stashed >> src/main.rs
git stash -q
step "after stash" "$(porcelain)"
git stash pop -q
step "after stash pop" "$(porcelain)"
git commit -q -am "main change"

git mv deep/level01 moved-deep
git rm -q empty
git commit -q -m "move and remove"
step "after mv and rm" "$(porcelain) $(test -f moved-deep/level02/level03/level04/level05/level06/level07/level08/level09/level10/level11/level12/level13/level14/level15/level16/level17/level18/level19/level20/level21/level22/level23/level24/level25/level26/level27/level28/level29/level30/leaf.txt && echo moved)"

echo junk > junk.txt
mkdir -p junkdir && echo j > junkdir/j
git clean -fdxq
step "after clean" "$(porcelain) $(test -e junk.txt && echo junk || echo clean)"

echo scratch >> README.md
git reset -q --hard
step "after reset --hard" "$(porcelain)"

git checkout -q topic
git rebase -q main
step "rebased topic" "$(git log --format=%s main..topic | tr '\n' '|') $(git rev-parse 'HEAD^{tree}')"
step "format-patch" "$(git format-patch -o /tmp/patches-$$ main..topic | wc -l | tr -d ' ') $(head -4 /tmp/patches-$$/0001-*.patch | grep Subject)"
git checkout -q main
step "final tree" "$(git rev-parse 'HEAD^{tree}')"
step "final status" "$(porcelain)"
