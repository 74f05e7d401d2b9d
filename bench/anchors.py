"""Benchmark: the agent beside what an operator would otherwise use, on one dataset and
one store, in one invocation (so that machine noise cancels in the ratios).

One Valkey 8.1 server filled with 1 KiB values (`rdbcompression no`: the RDB is about
the dataset size) and one local single-node Garage. Each row runs `--runs` times; the
best wall time counts, and its CPU and peak RSS are reported:

backup side
- `cli → /dev/null`: `valkey-cli --rdb -` into /dev/null, the limit (the anchor);
- `agent native`, `agent cli`: a fresh release agent, `create-backup` (defaults: 5 MiB
  parts, 2 uploads in flight, `s3.checksum: auto`); `agent native md5` forces
  `s3.checksum: md5` to show what the integrity header costs; `--baseline-bin` adds a
  row for another agent build (e.g. `main`, before a change);
- `boto3 upload_fileobj`: the cli's stdout into boto3's `upload_fileobj`, 8 MiB parts
  (what the Valkey charm does);
- `aws s3 cp -` (awscli, whichever is on PATH) and `rclone rcat`, fed by the cli;
restore side
- `disk`: `dd` writes as many zero bytes as the RDB has beside the server's dump and
  fsyncs them, the limit of a restore (which must be on disk before it may replace the
  dump);
- `agent restore download`: `restore-backup` step `prepare` (download, check, fsync into
  a temporary file beside the dump) and then `abort` (and again with `--baseline-bin`'s
  build);
- `aws s3 cp s3://… -` into a file beside the dump (awscli does not fsync); and the same
  run's wall time with the fsync after it added, which is the agent's work.

Shares on the restore side: awscli's best wall time (without the fsync) divided by the
row's, and the disk row's divided by the row's.

Each tool's own CPU (user + system) and peak RSS come from the kernel's accounting of
that process alone (`wait4` and GNU time for the tools, `/proc` for the agent, whose
figures include the cli it runs for the `cli` source); the cli feeding a peer is not
counted for it.
Beside them, the CPU the store (Garage) and the server (Valkey, its snapshot's fork
included once reaped) spent during the row, per GiB: on two shared cores, the wall time
is bound by everyone's CPU, not the tool's alone.
Shares are the cli's wall time divided by the row's.

Between rows the bench settles: it waits until the server has reaped its snapshot's
child (so that child's CPU counts for the row that caused it, not the next one) and
flushes the page cache's dirty pages (so no row pays for an earlier row's write-back:
with gigabytes of RAM, the kernel writes a row's data to disk half a minute later, in
the middle of another row). A row's own data is written back during the settle after it,
outside every row's wall time and everyone's alike.

Usage: bench/run.sh --anchors [--size-gib 1] [--runs 2] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness import Agent, GarageServer, ValkeyServer, configure_params  # noqa: E402

GiB = 1024**3
MiB = 1024**2
TICKS = os.sysconf("SC_CLK_TCK")
PART = 8 * MiB
GNU_TIME = "/usr/bin/time"
DISK = "disk: write + fsync (restore's limit)"
AWS_DOWN = "aws s3 cp s3://… - > file"
AWS_DURABLE = "aws s3 cp s3://… - > file, then fsync"


def proc_cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / TICKS


def proc_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def run_measured(argv: list[str], *, env: dict, stdin=None, stdout=None) -> dict:
    """Runs `argv` to its end; its own wall, CPU (wait4's rusage) and peak RSS.

    The peak RSS comes from GNU time, which forks the tool from its own small process:
    wait4's `ru_maxrss` of a child this Python process starts counts this process's
    resident pages too (the kernel keeps the largest RSS the child had, and before its
    exec the child was a copy of this process), which put 58 MiB under `valkey-cli`."""
    with tempfile.NamedTemporaryFile("r", prefix="rss-") as rss:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *argv]
        t0 = time.monotonic()
        p = subprocess.Popen(wrapped, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace") if p.stderr else ""
        if p.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({p.returncode}): {err[-2000:]}")
        peak_kib = int(rss.read().split()[-1])
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": peak_kib * 1024}


def piped(server: ValkeyServer, consumer: list[str], env: dict) -> dict:
    """`valkey-cli --rdb -` into `consumer`'s stdin; the consumer's figures, the pipeline's
    wall time."""
    t0 = time.monotonic()
    cli = subprocess.Popen(
        server.cli_argv("--rdb", "-"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server.cli_env(),
    )
    try:
        own = run_measured(consumer, env=env, stdin=cli.stdout)
    finally:
        cli.stdout.close()
        cli.wait()
    if cli.returncode != 0:
        raise RuntimeError(f"the cli feeding {consumer[0]} failed")
    own["wall"] = time.monotonic() - t0
    return own


class Bench:
    def __init__(self, args, work: Path):
        self.args = args
        self.work = work
        self.garage = GarageServer(work / "garage").start()
        self.bucket = self.garage.bucket
        self.server = ValkeyServer(
            "valkey8", work / "valkey", extra_args=["--rdbcompression", "no", "--maxmemory", "0"]
        ).start()
        keys = int(args.size_gib * GiB / 1024)
        self.server.run_cli("DEBUG", "POPULATE", str(keys), "key", "1024", timeout=900)
        self.n = 0
        aws_config = work / "aws-config"
        aws_config.write_text(
            "[default]\nregion = garage\n"
            "s3 =\n  addressing_style = path\n  multipart_chunksize = 8MB\n"
        )
        # A CA bundle from the environment makes rclone's S3 client refuse a plain-HTTP
        # endpoint (and nothing here uses TLS).
        inherited = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.env = {
            **inherited,
            "AWS_ACCESS_KEY_ID": self.garage.access_key,
            "AWS_SECRET_ACCESS_KEY": self.garage.secret_key,
            "AWS_DEFAULT_REGION": "garage",
            "AWS_CONFIG_FILE": str(aws_config),
            "RCLONE_CONFIG_GARAGE_TYPE": "s3",
            "RCLONE_CONFIG_GARAGE_PROVIDER": "Other",
            "RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID": self.garage.access_key,
            "RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY": self.garage.secret_key,
            "RCLONE_CONFIG_GARAGE_ENDPOINT": self.garage.endpoint,
            "RCLONE_CONFIG_GARAGE_REGION": "garage",
            "RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE": "true",
        }
        self.last_backup: tuple[Path, dict] | None = None

    def key(self, tool: str) -> str:
        self.n += 1
        return f"peers/{tool}-{self.n}/dump.rdb"

    # ---- backup side
    def anchor(self) -> dict:
        with open(os.devnull, "wb") as null:
            return run_measured(
                self.server.cli_argv("--rdb", "-"), env=self.server.cli_env(), stdout=null
            )

    def agent_backup(self, source: str, binary: Path, checksum: str = "auto") -> dict:
        self.n += 1
        a = Agent(self.work / f"agent-{self.n}", binary=binary).start()
        try:
            params = configure_params(
                self.server,
                self.garage,
                self.bucket,
                cluster=f"bench{self.n}.valkey",
                source=source,
                s3_extra={"checksum": checksum} if checksum != "auto" else None,
            )
            configured = a.request("configure", params).expect_ok()
            cpu0, t0 = proc_cpu(a.pid), time.monotonic()
            result = a.request("create-backup", timeout=3600).expect_ok()
            wall = time.monotonic() - t0
            cpu, rss = proc_cpu(a.pid) - cpu0, proc_hwm(a.pid)
        finally:
            a.stop()
        self.last_backup = (binary, params)
        return {
            "wall": wall,
            "cpu": cpu,
            "rss": rss,
            "bytes": result["size-bytes"],
            "checksum": configured.get("s3-checksum", "md5"),
            "backup-id": result["backup-id"],
            "data-key": result["data-key"],
            "params": params,
        }

    def boto3(self) -> dict:
        script = (
            "import sys, boto3\n"
            "from boto3.s3.transfer import TransferConfig\n"
            "from botocore.config import Config\n"
            f"s3 = boto3.client('s3', endpoint_url={self.garage.endpoint!r}, "
            "config=Config(s3={'addressing_style': 'path'}))\n"
            f"s3.upload_fileobj(sys.stdin.buffer, {self.bucket!r}, sys.argv[1], "
            f"Config=TransferConfig(multipart_chunksize={PART}))\n"
        )
        return piped(self.server, [sys.executable, "-c", script, self.key("boto3")], self.env)

    def aws_up(self) -> dict:
        target = f"s3://{self.bucket}/{self.key('aws')}"
        argv = ["aws", "--endpoint-url", self.garage.endpoint, "s3", "cp", "-", target]
        return piped(self.server, argv, self.env)

    def rclone(self) -> dict:
        argv = ["rclone", "rcat", f"garage:{self.bucket}/{self.key('rclone')}"]
        return piped(self.server, argv, self.env)

    # ---- restore side
    def agent_restore(self, backup: dict, binary: Path) -> dict:
        self.n += 1
        a = Agent(self.work / f"agent-{self.n}", binary=binary).start()
        try:
            a.request("configure", backup["params"]).expect_ok()
            cpu0, t0 = proc_cpu(a.pid), time.monotonic()
            prepared = a.request(
                "restore-backup",
                {"step": "prepare", "backup-id": backup["backup-id"]},
                timeout=3600,
            ).expect_ok()
            wall = time.monotonic() - t0
            cpu, rss = proc_cpu(a.pid) - cpu0, proc_hwm(a.pid)
            a.request(
                "restore-backup", {"step": "abort", "restore-id": prepared["restore-id"]}
            ).expect_ok()
        finally:
            a.stop()
        return {"wall": wall, "cpu": cpu, "rss": rss}

    def aws_down(self, backup: dict) -> dict:
        """awscli's download into a file beside the server's dump; `fsync` is the time the
        fsync after it took (awscli does none; a restore needs one)."""
        source = f"s3://{self.bucket}/{backup['data-key']}"
        out = self.server.dir / "aws-download.rdb"
        with open(out, "wb") as f:
            r = run_measured(
                ["aws", "--endpoint-url", self.garage.endpoint, "s3", "cp", source, "-"],
                env=self.env,
                stdout=f,
            )
            t0 = time.monotonic()
            os.fsync(f.fileno())
            r["fsync"] = time.monotonic() - t0
        out.unlink()
        return r

    def disk(self, size: int) -> dict:
        """`size` bytes written beside the server's dump and fsynced: the restore's limit."""
        out = self.server.dir / "disk-anchor"
        argv = ["dd", "if=/dev/zero", f"of={out}", "bs=8M", f"count={size}"]
        r = run_measured([*argv, "iflag=count_bytes", "conv=fsync", "status=none"], env=self.env)
        out.unlink()
        return r

    def settle(self) -> None:
        settle(self.server)

    def stop(self) -> None:
        self.server.stop()
        self.garage.stop()


def settle(server: ValkeyServer) -> None:
    """Waits for the server's snapshot child to be reaped, then flushes dirty pages."""
    deadline = time.monotonic() + 120
    while True:
        info = server.run_cli("INFO", "persistence")
        if info.returncode != 0:
            raise RuntimeError(f"INFO persistence failed: {info.stderr[-500:]!r}")
        if b"rdb_bgsave_in_progress:0" in info.stdout:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the server's snapshot child is still running after 120 s")
        time.sleep(0.05)
    os.sync()


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["wall"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--agent-bin", default=str(ROOT / "target" / "release" / "valkey-backup-agent"))
    ap.add_argument("--baseline-bin", help="another agent build, for a before/after row")
    ap.add_argument("--baseline-name", default="baseline")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    ap.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the work directory (the store's and the server's logs) after the run",
    )
    args = ap.parse_args()
    agent_bin = Path(args.agent_bin)
    for tool in ("aws", "rclone", GNU_TIME):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install rclone time; pip install awscli)")
    work = Path(tempfile.mkdtemp(prefix="valkey-backup-anchors-"))
    bench = Bench(args, work)
    rows: dict[str, list[dict]] = {}
    size = None

    def record(name: str, fn) -> dict:
        bench.settle()
        store0, server0 = proc_cpu(bench.garage.proc.pid), proc_cpu(bench.server.proc.pid)
        r = fn()
        bench.settle()
        r["store-cpu"] = proc_cpu(bench.garage.proc.pid) - store0
        r["server-cpu"] = proc_cpu(bench.server.proc.pid) - server0
        rows.setdefault(name, []).append(r)
        print(
            f"{name}: {r['wall']:.2f} s, CPU {r['cpu']:.2f} s, RSS {r['rss'] / MiB:.1f} MiB; "
            f"store CPU {r['store-cpu']:.2f} s, server CPU {r['server-cpu']:.2f} s"
        )
        return r

    try:
        for i in range(args.runs):
            print(f"-- run {i + 1} of {args.runs}", flush=True)
            record("cli → /dev/null (anchor)", bench.anchor)
            native = record("agent native", lambda: bench.agent_backup("native", agent_bin))
            size = native["bytes"]
            record("agent cli", lambda: bench.agent_backup("cli", agent_bin))
            record(
                "agent native, s3.checksum md5",
                lambda: bench.agent_backup("native", agent_bin, "md5"),
            )
            if args.baseline_bin:
                record(
                    f"agent native ({args.baseline_name})",
                    lambda: bench.agent_backup("native", Path(args.baseline_bin), "auto"),
                )
            record("boto3 upload_fileobj, 8 MiB parts", bench.boto3)
            record("aws s3 cp -", bench.aws_up)
            record("rclone rcat", bench.rclone)
            record(DISK, lambda n=size: bench.disk(n))
            record("agent restore download", lambda b=native: bench.agent_restore(b, agent_bin))
            if args.baseline_bin:
                record(
                    f"agent restore download ({args.baseline_name})",
                    lambda b=native: bench.agent_restore(b, Path(args.baseline_bin)),
                )
            aws = record(AWS_DOWN, lambda b=native: bench.aws_down(b))
            # The same download with the fsync a restore needs before it may replace a dump.
            rows.setdefault(AWS_DURABLE, []).append({**aws, "wall": aws["wall"] + aws["fsync"]})
    finally:
        bench.stop()
        if args.keep_work:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    assert size is not None
    anchor = best(rows["cli → /dev/null (anchor)"])["wall"]
    aws_down = best(rows[AWS_DOWN])["wall"]
    aws_durable = best(rows[AWS_DURABLE])["wall"]
    disk = best(rows[DISK])["wall"]
    table = []
    for name, runs in rows.items():
        b = best(runs)
        restore = name in (DISK, AWS_DOWN, AWS_DURABLE) or "restore" in name
        table.append(
            {
                "tool": name,
                "side": "restore" if restore else "backup",
                "best-wall-s": round(b["wall"], 2),
                "walls-s": [round(r["wall"], 2) for r in runs],
                "share-of-cli": None if restore else round(anchor / b["wall"], 3),
                "vs-aws-download": round(aws_down / b["wall"], 3) if restore else None,
                "vs-aws-download-fsync": round(aws_durable / b["wall"], 3) if restore else None,
                "share-of-disk": round(disk / b["wall"], 3) if restore else None,
                "median-wall-s": round(statistics.median(r["wall"] for r in runs), 2),
                "cpu-s-per-gib": round(b["cpu"] / (size / GiB), 2),
                "cpu-s-per-gib-runs": [round(r["cpu"] / (size / GiB), 2) for r in runs],
                "median-cpu-s-per-gib": round(
                    statistics.median(r["cpu"] for r in runs) / (size / GiB), 2
                ),
                "peak-rss-mib": round(b["rss"] / MiB, 1),
                "peak-rss-mib-runs": [round(r["rss"] / MiB, 1) for r in runs],
                "store-cpu-s-per-gib": round(b["store-cpu"] / (size / GiB), 2),
                "store-cpu-s-per-gib-runs": [round(r["store-cpu"] / (size / GiB), 2) for r in runs],
                "server-cpu-s-per-gib": round(b["server-cpu"] / (size / GiB), 2),
                "mib-per-s": round(size / MiB / b["wall"], 1),
                **({"checksum": b["checksum"]} if "checksum" in b else {}),
            }
        )
    print()
    print(
        f"{'tool':40} {'best s':>7} {'share':>6} {'of disk':>7} {'CPU s/GiB':>9} {'RSS MiB':>8} "
        f"{'store CPU':>9} {'server CPU':>10}"
    )
    for r in table:
        share = r["share-of-cli"] if r["share-of-cli"] is not None else r["vs-aws-download"]
        of_disk = f"{r['share-of-disk']:7.3f}" if r["share-of-disk"] is not None else " " * 7
        print(
            f"{r['tool']:40} {r['best-wall-s']:7.2f} {share:6.3f} {of_disk} "
            f"{r['cpu-s-per-gib']:9.2f} {r['peak-rss-mib']:8.1f} "
            f"{r['store-cpu-s-per-gib']:9.2f} {r['server-cpu-s-per-gib']:10.2f}"
        )
    aws_version = subprocess.run(["aws", "--version"], capture_output=True, text=True)
    rclone_version = subprocess.run(["rclone", "version"], capture_output=True, text=True)
    meta = {
        "machine": {"cores": os.cpu_count(), "kernel": os.uname().release},
        "store": "garage 2.5.0 (single node, local disk)",
        "server": "valkey 8.1.8, 1 KiB values, rdbcompression no",
        "dataset-gib": args.size_gib,
        "rdb-bytes": size,
        "runs": args.runs,
        "tools": {
            "aws": (aws_version.stdout or aws_version.stderr).strip(),
            "rclone": rclone_version.stdout.splitlines()[0] if rclone_version.stdout else "",
        },
        "rows": table,
    }
    Path(args.out).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
