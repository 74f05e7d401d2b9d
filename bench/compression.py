"""Benchmark: stored bytes, throughput, CPU and memory for each compression setting.

It fills a Valkey 8.1 server with realistic values — JSON documents of a few hundred
bytes with repeated field names and vocabularies, as applications store them — saved
with `rdbcompression yes` (the server's default, which LZF-compresses each long string
itself), takes one RDB of it with `valkey-cli --rdb`, and measures on that same RDB:

- the anchor: `valkey-cli --rdb -` into /dev/null (with `rdbcompression yes` the
  server's own LZF pass usually bounds every setting's throughput);
- the `lz4` command-line tool at its default level (what WAL-G stores by default) and
  `zstd` at its default level: stored bytes and the ratio to the RDB;
- the agent (release build, default parts and concurrency) doing `create-backup` for
  each setting: none, lz4, zstd at several levels, and zstd + age encryption: stored
  bytes, wall time and throughput in RDB bytes per second, agent CPU seconds, peak RSS.

The store is Garage when it is built, else moto (both on the same machine: uploads
compete with the compressor for the two cores, so the throughput is end to end).

Output: a table on stdout and bench/compression-results.json.

Usage: bench/run.sh --compression [--size-mib 256]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness import Agent, GarageServer, MotoServer, ValkeyServer, configure_params  # noqa: E402
from harness.components import load_components  # noqa: E402

from bench import anchor_rate, proc_cpu_seconds, proc_peak_rss  # noqa: E402

MiB = 1024**2

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Austin", "Lyon", "Perth", "Pune"]


def document(rng: random.Random, i: int) -> str:
    """One JSON document as an application might cache it (about 350-450 bytes)."""
    return json.dumps(
        {
            "id": i,
            "user": f"user-{rng.randrange(100_000)}",
            "email": f"user{rng.randrange(100_000)}@example.com",
            "city": rng.choice(CITIES),
            "plan": rng.choice(["free", "pro", "team", "enterprise"]),
            "created": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T"
            f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
            "tags": rng.sample(WORDS, 4),
            "score": round(rng.random() * 100, 3),
            "bio": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(10, 30))),
            "settings": {"theme": rng.choice(["dark", "light"]), "lang": rng.choice(["en", "pt"])},
        }
    )


def fill(server: ValkeyServer, size_mib: int) -> int:
    rng = random.Random(42)
    c = server.client()
    written, i = 0, 0
    while written < size_mib * MiB:
        batch = {f"doc:{i + k}": document(rng, i + k) for k in range(2000)}
        c.mset(batch)
        written += sum(len(k) + len(v) for k, v in batch.items())
        i += len(batch)
    return i


def tool_size(argv: list[str], rdb: Path) -> tuple[int, float]:
    """Bytes and seconds of `argv < rdb` (a CLI compressor writing to stdout)."""
    t0 = time.monotonic()
    with rdb.open("rb") as f:
        out = subprocess.run(argv, stdin=f, capture_output=True, check=True).stdout
    return len(out), time.monotonic() - t0


SETTINGS = [
    ("none", {"compression": "none"}, False),
    ("lz4", {"compression": "lz4"}, False),
    ("zstd-1", {"compression": "zstd", "compression-level": 1}, False),
    ("zstd-3", {"compression": "zstd", "compression-level": 3}, False),
    ("zstd-9", {"compression": "zstd", "compression-level": 9}, False),
    ("zstd-19", {"compression": "zstd", "compression-level": 19}, False),
    ("zstd-3+age", {"compression": "zstd", "compression-level": 3}, True),
    ("lz4+age", {"compression": "lz4"}, True),
]


def age_key(work: Path) -> str:
    path = work / "bench-key.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return next(x for x in path.read_text().splitlines() if x.startswith("AGE-SECRET-KEY-1"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256, help="dataset size (MiB of values)")
    ap.add_argument("--agent-bin", default=str(ROOT / "target" / "release" / "valkey-backup-agent"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "compression-results.json"))
    ap.add_argument(
        "--settings",
        default=",".join(name for name, _, _ in SETTINGS),
        help="comma-separated subset of: " + ", ".join(name for name, _, _ in SETTINGS),
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="valkey-backup-bench-comp-"))
    comps = load_components()
    if comps.garage:
        store = GarageServer(work / "garage").start()
        store_name, bucket = "garage 2.5.0 (single node)", store.bucket
    else:
        store = MotoServer(work / "moto").start()
        store_name, bucket = "moto 5.2 (Python, same machine)", store.create_bucket()
    server = ValkeyServer("valkey8", work / "valkey", extra_args=["--rdbcompression", "yes"])
    server.start()
    rows = []
    try:
        keys = fill(server, args.size_mib)
        rdb = server.dump_rdb(work / "dump.rdb", timeout=600)
        rdb_bytes = rdb.stat().st_size
        lz4_bytes, lz4_s = tool_size(["lz4", "-c"], rdb)
        zstd_bytes, zstd_s = tool_size(["zstd", "-c", "-T1"], rdb)
        rdb.unlink()
        anchor_s, anchor_bytes = anchor_rate(server)
        secret = age_key(work)
        wanted = set(args.settings.split(","))
        for name, backup, encrypted in SETTINGS:
            if name not in wanted:
                continue
            agent = Agent(work / f"agent-{name}", binary=Path(args.agent_bin)).start()
            try:
                extra = {"backup": backup}
                if encrypted:
                    extra["encryption"] = {"identities": [secret]}
                cluster = f"b-{name.replace('+', '-')}.valkey"
                params = configure_params(server, store, bucket, cluster=cluster, **extra)
                agent.request("configure", params).expect_ok()
                cpu0 = proc_cpu_seconds(agent.pid)
                t0 = time.monotonic()
                result = agent.request("create-backup", timeout=3600).expect_ok()
                wall = time.monotonic() - t0
                cpu = proc_cpu_seconds(agent.pid) - cpu0
                rss = proc_peak_rss(agent.pid)
            finally:
                agent.stop()
            rows.append(
                {
                    "setting": name,
                    "stored-bytes": result["size-bytes"],
                    "ratio": round(result["size-bytes"] / result["raw-size-bytes"], 3),
                    "seconds": round(wall, 2),
                    "rdb-mib-per-s": round(result["raw-size-bytes"] / MiB / wall, 1),
                    "agent-cpu-s": round(cpu, 2),
                    "peak-rss-mib": round(rss / MiB, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
        store.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    print(f"\nRDB: {rdb_bytes} bytes ({keys} keys, rdbcompression yes), store: {store_name}")
    print(f"anchor: valkey-cli --rdb - > /dev/null: {anchor_bytes / MiB / anchor_s:.1f} MiB/s")
    print(
        f"lz4 CLI (default level, WAL-G's default): {lz4_bytes} bytes, "
        f"ratio {lz4_bytes / rdb_bytes:.3f}, {rdb_bytes / MiB / lz4_s:.0f} MiB/s"
    )
    print(
        f"zstd CLI (default level 3, one thread): {zstd_bytes} bytes, "
        f"ratio {zstd_bytes / rdb_bytes:.3f}, {rdb_bytes / MiB / zstd_s:.0f} MiB/s\n"
    )
    cols = ["setting", "stored-bytes", "ratio", "rdb-mib-per-s", "agent-cpu-s", "peak-rss-mib"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    meta = {
        "machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
        "store": store_name,
        "server": "valkey 8.1.8, rdbcompression yes",
        "dataset-mib": args.size_mib,
        "keys": keys,
        "rdb-bytes": rdb_bytes,
        "anchor-mib-per-s": round(anchor_bytes / MiB / anchor_s, 1),
        "lz4-cli": {"bytes": lz4_bytes, "ratio": round(lz4_bytes / rdb_bytes, 3)},
        "zstd-cli": {"bytes": zstd_bytes, "ratio": round(zstd_bytes / rdb_bytes, 3)},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
