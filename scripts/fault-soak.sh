#!/usr/bin/env bash
# A long run of the lossy-network suite (tests/integration/test_lossy_network.py): many
# seeded rounds of backup, verify, restore and prune through a fault-injecting proxy in
# front of a real S3 server. Not part of CI (CI runs the default 6 rounds).
#
#   scripts/fault-soak.sh [ROUNDS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export VB_FAULT_ROUNDS=${1:-40}
export VB_FAULT_SEED=${2:-$(date +%s)}
echo "fault soak: $VB_FAULT_ROUNDS rounds, seed $VB_FAULT_SEED"
cargo build -j2 --locked -p valkey-backup-agent
python3 -m pytest -q -s -p no:cacheprovider tests/integration/test_lossy_network.py
