#!/bin/bash
# Builds the release binary of an earlier revision, for a side-by-side run of bench/run.sh, and
# prints its path:
#
#   BEFORE=$(bench/build-rev.sh 233bfcb) FRESH=1 SECTIONS="1 3 4 5" REPS=3 bench/run.sh
#
# 233bfcb is the build issue 12 measured ("about 4 ms" a key, 14.5 MB, 25 MB). The revision is
# checked out in a worktree of its own and built with a target directory of its own, both under
# .peers/ (git-ignored), so the warm target/ of the working tree is left alone; a cold build takes
# several minutes on two cores (3 on an idle machine, 11 beside a test run), a second call none.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ $# -eq 1 ] || { echo "usage: bench/build-rev.sh REVISION" >&2; exit 2; }
REV=$(git rev-parse --verify --short "$1^{commit}")
DIR=$ROOT/.peers/rev-$REV
BIN=$DIR/target/release/zenml-rotator
if [ ! -x "$BIN" ]; then
  [ -d "$DIR/src" ] || git worktree add --force --detach "$DIR/src" "$REV" >&2
  echo "== building $REV (release) in $DIR" >&2
  (cd "$DIR/src" && CARGO_TARGET_DIR=$DIR/target cargo build --release --locked >&2)
fi
echo "$BIN"
