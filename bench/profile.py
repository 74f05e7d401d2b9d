"""Profile (not a test): where one backup's CPU goes, by what the agent was doing.

On the anchors benchmark's setup (one Valkey 8.1 server with 1 KiB values, `rdbcompression
no`, one local single-node Garage; see anchors.py), runs one built-in-source backup to
warm up and then one under `perf record -F 2999 -a -g`, and sorts the agent process's
samples by category: user-space samples by the function sampled (the SHA-256 of the
stream, the RDB's CRC64, the parts' CRC32C, the end-mark check, the allocator, the rest
of the agent, the SDK and the runtime), kernel samples by their kernel call chain (the
copies out of the server's socket and into the store's, the rest of the loopback TCP
stack, scheduling and interrupts, page faults). Prints each category's share and CPU
seconds per GiB of RDB, and which of them every backup must pay on this machine (see the
README's Benchmark section), and writes the figures to `--out`.

Usage: bench/run.sh --profile [--size-gib 1] [--binary PATH] [--out bench/profile.json]
[--keep-work]
(needs `perf`: apt-get install linux-tools-common linux-tools-$(uname -r), or the
distribution's `perf`).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
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
    ("scheduling, wake-ups, interrupts", False, ""),
    ("allocator", False, ""),
    ("page faults", False, ""),
    ("kernel: other", False, ""),
]


# Frames are (symbol, is_kernel). User-space frames are classified by the sampled
# function alone: release builds keep no frame pointers, so their callers are unreliable.
# Kernel frames come with the kernel's own unwinding and are matched by exact name.
KERNEL_COPIES = {
    "_copy_to_iter",
    "_copy_from_iter",
    "rep_movs_alternative",
    "copy_user_enhanced_fast_string",
    "copy_user_generic_string",
    "copy_user_generic_unrolled",
    "__copy_user_nocache",
    "_copy_to_user",
    "_copy_from_user",
}
LOOPBACK = {"handle_softirqs", "__do_softirq", "process_backlog", "net_rx_action"}
LOOPBACK |= {"__tcp_transmit_skb", "tcp_v4_rcv", "ip_finish_output2", "__dev_queue_xmit"}
TCP_CALLS = {"tcp_recvmsg", "tcp_sendmsg", "sock_recvmsg", "sock_write_iter", "tcp_ack"}
SCHEDULING = {"__schedule", "schedule", "finish_task_switch.isra.0", "finish_task_switch"}
SCHEDULING |= {"try_to_wake_up", "futex_wait", "futex_wake", "do_futex", "ep_poll"}
SCHEDULING |= {"do_epoll_wait", "schedule_hrtimeout_range", "asm_sysvec_reschedule_ipi"}
SCHEDULING |= {"asm_sysvec_apic_timer_interrupt", "asm_sysvec_call_function_single"}
ALLOCATOR = re.compile(
    r"^(malloc|free|cfree|calloc|realloc|_int_malloc|_int_free|_int_realloc|unlink_chunk"
    r"|malloc_consolidate|__libc_malloc|__libc_free|__libc_calloc|__libc_realloc)\b"
)


def category(chain: list[tuple[str, bool]]) -> str:
    if not chain:
        return "kernel: other"
    top, top_in_kernel = chain[0]
    if not top_in_kernel:
        if "sha2::" in top or "sha256" in top.lower():
            return "SHA-256 of the stream"
        if "iscsi" in top:
            return "CRC32C of the parts"
        if "crc_fast" in top or "crc64" in top.lower():
            return "CRC64 of the RDB"
        if "memmem" in top or "memchr" in top or "scan_for_mark" in top:
            return "end-mark check"
        if ALLOCATOR.match(top):
            return "allocator"
        return "agent, SDK, hyper, tokio (user space)"
    kernel = {sym for sym, in_kernel in chain if in_kernel}
    if top in KERNEL_COPIES and "tcp_recvmsg" in kernel:
        return "kernel: copy out of the server's socket"
    if top in KERNEL_COPIES and "tcp_sendmsg" in kernel:
        return "kernel: copy into the store's socket"
    if kernel & LOOPBACK:
        return "kernel: loopback TCP (softirq, transmit)"
    if kernel & TCP_CALLS:
        return "kernel: TCP syscalls, other"
    if kernel & SCHEDULING:
        return "scheduling, wake-ups, interrupts"
    if "exc_page_fault" in kernel or "handle_mm_fault" in kernel:
        return "page faults"
    return "kernel: other"


def agent_samples(data: Path) -> collections.Counter:
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,comm,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    samples: list[tuple[str, int, list[tuple[str, bool]]]] = []
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith("\t"):
            head = re.match(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s*$", line)
            if head:
                samples.append((head.group(1), int(head.group(2)), []))
            continue
        frame = re.match(r"^\s*[0-9a-f]+\s+(.*?)\s*(?:\((.*)\))?\s*$", line)
        if samples and frame:
            sym, dso = frame.group(1) or "[unknown]", frame.group(2) or ""
            samples[-1][2].append((sym, "kernel" in dso or dso.startswith("[")))
    pids = {pid for comm, pid, _ in samples if comm == AGENT_THREAD}
    if len(pids) != 1:
        raise RuntimeError(f"expected one agent process (thread {AGENT_THREAD}), found {pids}")
    pid = pids.pop()
    return collections.Counter(category(chain) for _, p, chain in samples if p == pid)


def record_backup(bench: anchors.Bench, binary: Path, data: Path) -> dict:
    """One backup under a system-wide `perf record`, which is stopped whatever happens."""
    perf = subprocess.Popen(
        ["perf", "record", "-F", str(FREQ), "-a", "-g", "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # perf writes its header once it records; a backup started before would be cut.
        deadline = time.monotonic() + 30
        while not (data.exists() and data.stat().st_size > 0):
            if perf.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("perf record did not start")
            time.sleep(0.05)
        return bench.agent_backup("native", binary)
    finally:
        if perf.poll() is None:
            perf.send_signal(signal.SIGINT)
        try:
            perf.wait(timeout=60)
        except subprocess.TimeoutExpired:
            perf.kill()
            perf.wait()
        err = perf.stderr.read().decode(errors="replace")
        if perf.returncode not in (0, -signal.SIGINT):
            print(f"perf record exited with {perf.returncode}: {err[-500:]}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument(
        "--binary", default=str(anchors.ROOT / "target" / "release" / "valkey-backup-agent")
    )
    ap.add_argument("--out", default=str(anchors.ROOT / "bench" / "profile.json"))
    ap.add_argument("--keep-work", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf is missing (apt-get install linux-tools-common linux-tools-$(uname -r))")
    binary = Path(args.binary)
    work = Path(tempfile.mkdtemp(prefix="valkey-backup-profile-"))
    data = work / "perf.data"
    try:
        bench = anchors.Bench(SimpleNamespace(size_gib=args.size_gib), work)
        try:
            warm = bench.agent_backup("native", binary)
            print(f"warm-up backup: {warm['wall']:.2f} s, CPU {warm['cpu']:.2f} s")
            bench.settle()
            r = record_backup(bench, binary, data)
            counts = agent_samples(data)
        finally:
            bench.stop()
    finally:
        if args.keep_work:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    gib = r["bytes"] / GiB
    total = sum(counts.values())
    if total == 0:
        sys.exit("perf recorded no sample of the agent")
    sampled = total / FREQ / gib
    measured, warm_measured = r["cpu"] / gib, warm["cpu"] / gib
    print(f"profiled backup: {r['wall']:.2f} s, {r['bytes']:,} bytes")
    print(
        f"agent CPU-s per GiB: {sampled:.2f} by the samples (start to stop), "
        f"{measured:.2f} by /proc (create-backup only), {warm_measured:.2f} for the warm-up"
    )
    print(f"{'category':44} {'share':>6} {'CPU-s/GiB':>10}  every backup pays it")
    rows, floor = [], 0.0
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
    print(f"{'what every backup pays here (the floor)':44} {'':6} {floor:10.3f}")
    commit = subprocess.run(
        ["git", "-C", str(anchors.ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = {
        "binary": binary.name,
        "commit-checked-out": commit,
        "rdb-bytes": r["bytes"],
        "wall-s": round(r["wall"], 2),
        "cpu-s": r["cpu"],
        "cpu-s-per-gib": round(measured, 3),
        "sampled-cpu-s-per-gib": round(sampled, 3),
        "warm-up-wall-s": round(warm["wall"], 2),
        "warm-up-cpu-s": warm["cpu"],
        "warm-up-cpu-s-per-gib": round(warm_measured, 3),
        "samples": total,
        "frequency": FREQ,
        "floor-cpu-s-per-gib": round(floor, 3),
        "categories": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
