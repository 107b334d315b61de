# Sourced by scripts/bench-api and scripts/bench-pipeline (after scripts/lib.sh) for
# --baseline REV: which binaries to measure, built when they are not given.

# bench_args ARG...: sets bench_baseline to the REV of `--baseline REV` or `--baseline=REV`
# (empty without it).
bench_args() {
  bench_baseline=""
  local prev=""
  for arg in "$@"; do
    case "$arg" in
      --baseline=*) bench_baseline="${arg#--baseline=}" ;;
    esac
    [ "$prev" != --baseline ] || bench_baseline="$arg"
    prev="$arg"
  done
  if [ "$prev" = --baseline ]; then
    echo "--baseline needs a revision (a commit, tag or branch)" >&2
    exit 2
  fi
}

# build_current: the current tree's release binaries and examples, unless BENCH_BIN_DIR
# names a directory that holds them already.
build_current() {
  if [ -n "${BENCH_BIN_DIR:-}" ]; then
    echo "using the binaries in BENCH_BIN_DIR=$BENCH_BIN_DIR (not building)" >&2
  else
    echo "building the release binaries and examples…" >&2
    cargo build --release --bins --examples >&2
    export BENCH_BIN_DIR="$CARGO_TARGET_DIR/release"
  fi
}

_baseline_tmp=""
_remove_baseline_worktree() {
  if [ -n "$_baseline_tmp" ]; then
    git worktree remove --force "$_baseline_tmp/src" >/dev/null 2>&1 || true
    rm -rf "$_baseline_tmp"
    _baseline_tmp=""
  fi
}

# build_baseline REV: REV's release binaries and examples, unless BENCH_BASELINE_BIN_DIR
# names a directory that holds them already. Built from a temporary detached worktree
# outside the clone (removed right after the build, or when interrupted) into
# $HOME/.cache/monassurance-baseline-target, so that dependencies are built once; a build
# of the same commit found there (its commit in monassurance-baseline.commit) is reused
# as it is. Exports BENCH_BASELINE_BIN_DIR.
build_baseline() {
  local rev="$1" commit target
  if [ -n "${BENCH_BASELINE_BIN_DIR:-}" ]; then
    echo "baseline $rev: using the binaries in BENCH_BASELINE_BIN_DIR=$BENCH_BASELINE_BIN_DIR (not building)" >&2
    return
  fi
  commit="$(git rev-parse --verify --quiet "$rev^{commit}")" \
    || { echo "--baseline $rev: not a commit of this repository" >&2; exit 2; }
  target="$HOME/.cache/monassurance-baseline-target"
  export BENCH_BASELINE_BIN_DIR="$target/release" BENCH_BASELINE_ORIGIN=reused
  if [ "$(cat "$target/release/monassurance-baseline.commit" 2>/dev/null)" = "$commit" ] \
    && [ -x "$target/release/monassurance-api" ] && [ -x "$target/release/monassurance-worker" ]; then
    echo "baseline $rev: reusing its build in $target/release" >&2
    return
  fi
  _baseline_tmp="$(mktemp -d "${TMPDIR:-/tmp}/monassurance-baseline.XXXXXX")"
  trap _remove_baseline_worktree EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  echo "baseline $rev: checking out ${commit:0:12} in $_baseline_tmp/src (a temporary worktree)…" >&2
  git worktree add --quiet --detach "$_baseline_tmp/src" "$commit" >&2
  rm -f "$target/release/monassurance-baseline.commit"
  echo "baseline $rev: building its release binaries and examples in $target…" >&2
  (cd "$_baseline_tmp/src" && CARGO_TARGET_DIR="$target" cargo build --release --bins --examples) >&2
  echo "$commit" >"$target/release/monassurance-baseline.commit"
  BENCH_BASELINE_ORIGIN=built
  _remove_baseline_worktree
  trap - EXIT INT TERM HUP
}
