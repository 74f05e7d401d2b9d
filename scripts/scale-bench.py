#!/usr/bin/env python3
"""list-backups and prune-backups over a long history, measured on a real store.

Seeds COUNT backups straight into a fresh bucket in the agent's own layout
(tests/integration/harness/seed.py: a small data object and a manifest that describes it
per backup, every tenth a failure record instead), then times, with the debug agent
binary (build it first: cargo build -j2):
  1. list-backups, default page (the newest 100 + totals), and its answer's size;
  2. list-backups of the last page (offset COUNT-100);
  3. prune-backups --keep-last 7, dry run;
  4. the same, confirmed (every other backup deleted);
and prints one JSON line with the figures. Not part of CI (tests/integration/test_scale.py
runs the same steps at 800 backups with bounds).

    scripts/scale-bench.py [--count 10000] [--store moto|garage]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness import Agent, GarageServer, MotoServer, ValkeyServer, configure_params  # noqa: E402
from harness.seed import seed_backups  # noqa: E402

CLUSTER = "scale.valkey"


def timed(fn):
    started = time.monotonic()
    out = fn()
    return out, round(time.monotonic() - started, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--store", choices=["moto", "garage"], default="moto")
    ap.add_argument("--keep-last", type=int, default=7)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="vb-scale-") as tmp:
        work = Path(tmp)
        if args.store == "moto":
            store = MotoServer(work / "moto").start()
            bucket = store.create_bucket()
        else:
            store = GarageServer(work / "garage").start()
            bucket = store.bucket
        server = ValkeyServer("valkey8", work / "valkey").start()
        agent = Agent(work / "agent").start()
        try:
            params = configure_params(server, store, bucket, cluster=CLUSTER)
            agent.request("configure", params).expect_ok()
            prefix = f"{params['s3']['path']}/{CLUSTER}/"
            _, seed_s = timed(
                lambda: seed_backups(
                    store.client(),
                    bucket,
                    prefix,
                    CLUSTER,
                    args.count,
                    # Ids within a day of now: none flagged for clock skew.
                    spacing=dt.timedelta(seconds=max(1, 80_000 // args.count)),
                    failed_every=10,
                )
            )
            print(f"seeded {args.count} backups in {seed_s} s", file=sys.stderr)

            listed, list_s = timed(lambda: agent.request("list-backups", timeout=900).expect_ok())
            assert listed["total"] == args.count, listed["total"]
            last, last_s = timed(
                lambda: agent.request(
                    "list-backups", {"offset": args.count - 100}, timeout=900
                ).expect_ok()
            )
            assert len(last["backups"]) == 100
            policy = {"keep-last": args.keep_last}
            dry, dry_s = timed(
                lambda: agent.request("prune-backups", policy, timeout=1800).expect_ok()
            )
            done, confirm_s = timed(
                lambda: agent.request(
                    "prune-backups", {**policy, "confirm": True}, timeout=3600
                ).expect_ok()
            )
            assert not done["skipped"], done["skipped"][:3]
            figures = {
                "store": args.store,
                "backups": args.count,
                "seed-seconds": seed_s,
                "list-seconds": list_s,
                "list-answer-bytes": len(json.dumps(listed)),
                "list-last-page-seconds": last_s,
                "prune-dry-run-seconds": dry_s,
                "prune-confirmed-seconds": confirm_s,
                "dry-run-would-delete": len(dry["deleted"]),
                "deleted": len(done["deleted"]),
                "kept": len(done["kept"]),
            }
            print(json.dumps(figures))
        finally:
            agent.stop()
            server.stop()
            store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
