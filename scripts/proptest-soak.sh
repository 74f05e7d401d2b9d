#!/usr/bin/env bash
# Long run of the property tests (agent/tests/properties.rs), outside CI.
#
# Every property runs PROPTEST_CASES generated cases (default here: 720000), so the run
# feeds at least PROPTEST_CASES x <number of properties> generated inputs (14 properties:
# 10,080,000 at the default); cases proptest rejects are regenerated and not counted.
# The test crate, the agent library and the generators (proptest, its regex and random
# sources, serde_json, the CRC crates) are built optimised so that the run takes minutes,
# not hours; the rest of the dependency graph stays as `cargo test` builds it.
#
# Usage: scripts/proptest-soak.sh [cases-per-property]
set -euo pipefail
cd "$(dirname "$0")/.."

cases="${1:-720000}"
opt=()
for pkg in valkey-backup-agent proptest regex-syntax rand rand_core rand_xorshift rand_chacha \
    serde_json crc crc-fast; do
    opt+=(--config "profile.dev.package.${pkg}.opt-level=3")
done

cargo test -j2 --locked -p valkey-backup-agent --test properties "${opt[@]}" --no-run
properties="$(cargo test -j2 --locked -p valkey-backup-agent --test properties "${opt[@]}" \
    -- --list 2>/dev/null | grep -c ': test$')"
echo "proptest soak: ${properties} properties x ${cases} cases = $((properties * cases)) generated inputs"
start="$(date +%s)"
PROPTEST_CASES="$cases" cargo test -j2 --locked -p valkey-backup-agent --test properties \
    "${opt[@]}" -- --test-threads=2
echo "proptest soak: $((properties * cases)) inputs, no failure, in $(($(date +%s) - start)) s"
