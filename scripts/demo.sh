#!/usr/bin/env bash
# The main job end to end on a fresh machine: installs the servers it needs (no Garage),
# builds the agent, then runs scripts/demo.py (real Valkey, real S3 server, real agent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-garage
cargo build -j2 --locked -p valkey-backup-agent
python3 scripts/demo.py
