#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs every real component it needs
# (scripts/setup.sh), builds the agent, runs the Rust unit tests, charmcraft's own
# validation of charmcraft.yaml, then the Python suites: the charm's unit tests
# (ops.testing), the integration tests that start real Valkey, Redis, moto and Garage
# servers on loopback, and the charm's handlers against the real agent.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build -j2 --locked -p valkey-backup-agent
cargo test -j2 --locked
"${VB_CACHE:-$HOME/.cache/valkey-backup}/charmcraft-venv/bin/python" -m pytest -q -p no:cacheprovider tests/charmcraft
python3 -m pytest -q -p no:cacheprovider tests/unit tests/integration tests/integration_charm "$@"
