#!/usr/bin/env bash
# Benchmark (not a test): installs components, builds the release agent, runs bench.py
# (throughput and memory by dataset size), with --anchors anchors.py (the agent beside
# valkey-cli, boto3, awscli and rclone on one dataset; needs aws and rclone on PATH) or,
# with --profile, profile.py (where one backup's CPU goes, under perf), or,
# with --compression, compression.py (stored bytes and throughput per compression
# setting, next to the lz4 CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -j2 --locked --release -p valkey-backup-agent
if [ "${1:-}" = "--anchors" ]; then
  shift
  exec python3 bench/anchors.py "$@"
fi
if [ "${1:-}" = "--profile" ]; then
  shift
  exec python3 bench/profile.py "$@"
fi
if [ "${1:-}" = "--compression" ]; then
  shift
  exec python3 bench/compression.py "$@"
fi
exec python3 bench/bench.py "$@"
