#!/usr/bin/env bash
# Benchmark (not a test): installs components, builds the release agent, runs bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -j2 --locked --release -p valkey-backup-agent
python3 bench/bench.py "$@"
