"""Profile (not a test): where one backup's CPU goes, by what the agent was doing.

On the anchors benchmark's setup (one Valkey 8.1 server with 1 KiB values, `rdbcompression
no`, one local single-node Garage; see anchors.py), runs one built-in-source backup to
warm up and then one under `perf record -F 2999 -a -g`, and sorts the agent process's
samples by category from each sample's call chain: the SHA-256 of the stream, the RDB's
CRC64, the parts' CRC32C, the end-mark check, the kernel's copies out of the server's
socket and into the store's, the rest of the loopback TCP stack, scheduling, the
allocator, and the agent's, the SDK's and the runtime's own code. Prints each category's
share and CPU seconds per GiB of RDB, and which of them every backup must pay (see the
README's Benchmark section), and writes the figures to `--out`.

Usage: bench/run.sh --profile [--size-gib 1] [--binary PATH] [--out bench/profile.json]
(needs `perf`: apt-get install linux-tools-common linux-tools-$(uname -r), or the
distribution's `perf`).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anchors

GiB = 1024**3
FREQ = 2999
AGENT_THREAD = "part-sha256"

# (category, whether every backup of this design must pay it, what it is)
CATEGORIES = [
    ("SHA-256 of the stream", True, "DESIGN.md: the manifest's SHA-256 of the stored bytes"),
    ("CRC64 of the RDB", True, "DESIGN.md: the validator's trailer check"),
    ("CRC32C of the parts", True, "the integrity header every write carries"),
    ("kernel: copy out of the server's socket", True, "the one copy no socket reader avoids"),
    ("kernel: copy into the store's socket", True, "every byte is sent once"),
    ("kernel: loopback TCP (softirq, transmit)", True, "the store on the same machine"),
    ("end-mark check", False, "the diskless transfer's end"),
    ("kernel: TCP syscalls, other", False, "recv and writev themselves, per call"),
    ("agent, SDK, hyper, tokio (user space)", False, ""),
    ("scheduling, futex, epoll", False, ""),
    ("allocator", False, ""),
    ("page faults", False, ""),
    ("kernel: other", False, ""),
]


def category(chain: list[str]) -> str:
    top = chain[0] if chain else "?"
    joined = " ".join(chain[:25])
    if "sha2::" in top or "sha256" in top.lower():
        return "SHA-256 of the stream"
    if "crc32_iscsi" in top or ("crc_fast" in top and "Crc32" in joined):
        return "CRC32C of the parts"
    if "crc_fast" in top:
        return "CRC64 of the RDB"
    if "memmem" in top or "memchr" in top or "scan_for_mark" in top:
        return "end-mark check"
    if top == "_copy_to_iter" and "tcp_recvmsg" in joined:
        return "kernel: copy out of the server's socket"
    if top == "_copy_from_iter" and "tcp_sendmsg" in joined:
        return "kernel: copy into the store's socket"
    if any(
        s in joined
        for s in (
            "handle_softirqs",
            "process_backlog",
            "net_rx",
            "__tcp_transmit_skb",
            "tcp_v4_rcv",
        )
    ):
        return "kernel: loopback TCP (softirq, transmit)"
    if "tcp_" in joined or "sock_" in joined or "__sys_recvfrom" in joined:
        return "kernel: TCP syscalls, other"
    if any(s in joined for s in ("schedule", "futex", "finish_task_switch", "epoll")):
        return "scheduling, futex, epoll"
    if "page_fault" in joined:
        return "page faults"
    if "malloc" in top or "free" in top or "_int_" in top or "unlink_chunk" in top:
        return "allocator"
    if "entry_SYSCALL" in joined or top.startswith(("__x64_sys", "do_syscall")):
        return "kernel: other"
    return "agent, SDK, hyper, tokio (user space)"


def agent_samples(data: Path) -> collections.Counter:
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,comm,ip,sym"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    samples: list[tuple[str, int, list[str]]] = []
    for line in out.splitlines():
        head = re.match(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s*$", line)
        if head:
            samples.append((head.group(1), int(head.group(2)), []))
            continue
        fields = line.split(None, 1)
        if samples and len(fields) == 2:
            samples[-1][2].append(fields[1].strip())
    pids = {pid for comm, pid, _ in samples if comm == AGENT_THREAD}
    if len(pids) != 1:
        raise RuntimeError(f"expected one agent process (thread {AGENT_THREAD}), found {pids}")
    pid = pids.pop()
    return collections.Counter(category(chain) for _, p, chain in samples if p == pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument(
        "--binary", default=str(anchors.ROOT / "target" / "release" / "valkey-backup-agent")
    )
    ap.add_argument("--out", default=str(anchors.ROOT / "bench" / "profile.json"))
    args = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf is missing (apt-get install linux-tools-common linux-tools-$(uname -r))")
    binary = Path(args.binary)
    work = Path(tempfile.mkdtemp(prefix="valkey-backup-profile-"))
    bench = anchors.Bench(SimpleNamespace(size_gib=args.size_gib), work)
    data = work / "perf.data"
    try:
        warm = bench.agent_backup("native", binary)
        print(f"warm-up backup: {warm['wall']:.2f} s, CPU {warm['cpu']:.2f} s")
        bench.settle()
        perf = subprocess.Popen(
            ["perf", "record", "-F", str(FREQ), "-a", "-g", "-o", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # perf writes its header once it records; a backup started before would be cut.
        deadline = time.monotonic() + 30
        while not (data.exists() and data.stat().st_size > 0):
            if perf.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"perf record did not start: {perf.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        r = bench.agent_backup("native", binary)
        perf.send_signal(2)
        perf.wait()
        print(f"profiled backup: {r['wall']:.2f} s, CPU {r['cpu']:.2f} s, {r['bytes']:,} bytes")
        counts = agent_samples(data)
    finally:
        bench.stop()
    gib = r["bytes"] / GiB
    total = sum(counts.values())
    rows, floor = [], 0.0
    print(f"\nagent: {total} samples, {total / FREQ / gib:.2f} CPU-s per GiB under the profiler")
    print(f"{'category':44} {'share':>6} {'CPU-s/GiB':>10}  every backup pays it")
    for name, required, why in CATEGORIES:
        n = counts.get(name, 0)
        per_gib = n / FREQ / gib
        floor += per_gib if required else 0.0
        rows.append(
            {
                "category": name,
                "samples": n,
                "cpu-s-per-gib": round(per_gib, 3),
                "required": required,
                "why": why,
            }
        )
        pays = f"yes: {why}" if required else "no"
        print(f"{name:44} {100 * n / total:5.1f}% {per_gib:10.3f}  {pays}")
    print(f"{'what every backup pays (the floor)':44} {'':6} {floor:10.3f}")
    Path(args.out).write_text(
        json.dumps(
            {
                "binary": str(binary),
                "rdb-bytes": r["bytes"],
                "wall": r["wall"],
                "cpu": r["cpu"],
                "warm-up-wall": warm["wall"],
                "warm-up-cpu": warm["cpu"],
                "samples": total,
                "frequency": FREQ,
                "floor-cpu-s-per-gib": round(floor, 3),
                "categories": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
