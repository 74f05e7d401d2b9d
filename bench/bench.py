"""Benchmark: backup throughput, CPU and memory of the agent against a raw-cli anchor.

For each dataset size (GiB) it starts a Valkey 8.1 server (or `--server valkey9`) filled
with incompressible-size data (`DEBUG POPULATE` with 1 KiB values and `rdbcompression no`,
so the RDB is about the dataset size), then measures on that same dataset, in one run:

- anchor: `valkey-cli --rdb -` piped to /dev/null (the fastest the snapshot can leave the
  server on this machine);
- agent, once per snapshot source (`--sources native,cli`: the built-in replication client
  and `valkey-cli --rdb -`): a fresh `valkey-backup-agent serve` (release build, default
  settings: 5 MiB parts, 2 uploads at once) doing `create-backup` into a local Garage (or
  `--store moto`): wall time, throughput, CPU seconds per GiB (utime+stime of the agent
  and, for the cli source, of the cli it ran), and peak RSS (VmHWM of the agent).

Before each row it settles as anchors.py does: it waits until the server has reaped the
last snapshot's child and flushes dirty pages, so that no row pays for the one before.

Output: a table on stdout and a JSON file (bench/results-sizes.json). Figures are ratios to the
anchor where it matters, since machines are noisy.

Usage: bench/run.sh [--sizes 1,4] [--sources native,cli] [--store garage|moto]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from anchors import settle  # noqa: E402
from harness import (  # noqa: E402
    Agent,
    GarageServer,
    MotoServer,
    ValkeyServer,
    configure_params,
)

GiB = 1024**3
MiB = 1024**2
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def children_cpu_seconds(pid: int) -> float:
    """CPU of `pid`'s reaped children (cutime + cstime): the cli the agent ran."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICKS


def proc_peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def anchor_rate(server: ValkeyServer) -> tuple[float, int]:
    """Seconds and bytes of `valkey-cli --rdb -` into /dev/null (bytes counted by wc)."""
    argv = server.cli_argv("--rdb", "-")
    start = time.monotonic()
    cli = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=server.cli_env()
    )
    wc = subprocess.run(["wc", "-c"], stdin=cli.stdout, capture_output=True, text=True, check=True)
    cli.wait()
    seconds = time.monotonic() - start
    assert cli.returncode == 0, "anchor cli failed"
    return seconds, int(wc.stdout.split()[0])


def rdb_format(magic: str, version: int) -> str:
    """`REDIS0011` / `VALKEY080`, as the RDB header spells it."""
    return f"{magic}{version:03}" if magic == "VALKEY" else f"{magic}{version:04}"


def backup_with(
    source: str, server: ValkeyServer, store, bucket: str, work: Path, agent_bin: Path, tag: str
) -> dict:
    """One `create-backup` by a fresh agent using `source`; its figures."""
    agent = Agent(work / f"agent-{tag}-{source}", binary=agent_bin).start()
    try:
        params = configure_params(
            server, store, bucket, cluster=f"bench{tag}-{source}.valkey", source=source
        )
        agent.request("configure", params).expect_ok()
        cpu0 = proc_cpu_seconds(agent.pid) + children_cpu_seconds(agent.pid)
        t0 = time.monotonic()
        result = agent.request("create-backup", timeout=3600).expect_ok()
        wall = time.monotonic() - t0
        cpu = proc_cpu_seconds(agent.pid) + children_cpu_seconds(agent.pid) - cpu0
        rss = proc_peak_rss(agent.pid)
    finally:
        agent.stop()
    return {"result": result, "wall": wall, "cpu": cpu, "rss": rss}


def run_size(
    size_gib: float,
    work: Path,
    store,
    bucket: str,
    agent_bin: Path,
    sources: list[str],
    kind: str,
) -> list[dict]:
    keys = int(size_gib * GiB / 1024)
    server = ValkeyServer(
        kind,
        work / f"valkey-{size_gib}",
        extra_args=["--rdbcompression", "no", "--maxmemory", "0"],
    ).start()
    rows = []
    try:
        t0 = time.monotonic()
        server.run_cli("DEBUG", "POPULATE", str(keys), "key", "1024", timeout=600)
        populate_s = time.monotonic() - t0
        # Settled before each row (see anchors.settle): no row pays for the one before.
        settle(server)
        anchor_s, anchor_bytes = anchor_rate(server)
        for source in sources:
            settle(server)
            run = backup_with(source, server, store, bucket, work, agent_bin, f"{size_gib:g}")
            result, wall = run["result"], run["wall"]
            size = result["size-bytes"]
            rows.append(
                {
                    "dataset-gib": size_gib,
                    "source": source,
                    "rdb-format": rdb_format(result["rdb-magic"], result["rdb-version"]),
                    "rdb-bytes": size,
                    "populate-seconds": round(populate_s, 1),
                    "anchor-seconds": round(anchor_s, 2),
                    "anchor-mib-per-s": round(anchor_bytes / MiB / anchor_s, 1),
                    "agent-seconds": round(wall, 2),
                    "agent-mib-per-s": round(size / MiB / wall, 1),
                    "agent-vs-anchor": round((size / wall) / (anchor_bytes / anchor_s), 3),
                    "agent-cpu-s-per-gib": round(run["cpu"] / (size / GiB), 2),
                    "agent-peak-rss-mib": round(run["rss"] / MiB, 1),
                    "parts": result["parts"],
                    "part-size-mib": result["part-size-bytes"] / MiB,
                    "memory-bound-mib": result["memory-bound-bytes"] / MiB,
                }
            )
    finally:
        server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,4", help="dataset sizes in GiB, comma separated")
    ap.add_argument(
        "--sources", default="native,cli", help="snapshot sources to compare, comma separated"
    )
    ap.add_argument("--store", choices=["garage", "moto"], default="garage")
    ap.add_argument("--server", choices=["valkey8", "valkey9"], default="valkey8")
    ap.add_argument("--agent-bin", default=str(ROOT / "target" / "release" / "valkey-backup-agent"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results-sizes.json"))
    args = ap.parse_args()
    agent_bin = Path(args.agent_bin)
    sizes = [float(s) for s in args.sizes.split(",")]
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="valkey-backup-bench-"))
    if args.store == "garage":
        store = GarageServer(work / "garage").start()
        bucket, store_name = store.bucket, "garage 2.5.0 (single node, local disk)"
    else:
        store = MotoServer(work / "moto").start()
        bucket, store_name = store.create_bucket(), "moto 5.2 (in memory)"
    rows = []
    try:
        for size in sizes:
            print(f"-- {size:g} GiB ...", flush=True)
            for row in run_size(size, work, store, bucket, agent_bin, sources, args.server):
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        store.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    cols = [
        ("dataset-gib", "GiB"), ("source", "source"), ("rdb-format", "RDB"),
        ("rdb-bytes", "RDB bytes"), ("anchor-mib-per-s", "cli→null MiB/s"),
        ("agent-mib-per-s", "agent MiB/s"), ("agent-vs-anchor", "agent/anchor"),
        ("agent-cpu-s-per-gib", "CPU s/GiB"), ("agent-peak-rss-mib", "peak RSS MiB"),
        ("parts", "parts"),
    ]  # fmt: skip
    widths = [max(len(h), *(len(str(r[k])) for r in rows)) for k, h in cols]
    print()
    print("  ".join(h.ljust(w) for (_, h), w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for (k, _), w in zip(cols, widths, strict=True)))
    server_name = {"valkey8": "valkey 8.1.8", "valkey9": "valkey 9.1.2"}[args.server]
    meta = {"machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
            "store": store_name, "server": server_name, "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
