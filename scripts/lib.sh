# Shared by the scripts: where builds go and how to find cargo.
# Builds are cached outside the clone so that fresh clones (and CI reruns) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/monassurance-target}"
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo is required: install Rust with rustup (https://rustup.rs) and run this again" >&2
    exit 1
  fi
fi

# apt_install PACKAGE...: installs Debian packages when apt-get is there and we may use it.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing $*: install them with your system's package manager" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}
