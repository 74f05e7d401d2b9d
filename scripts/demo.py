"""End-to-end demo: a real backup and listing against local servers this script starts.

Starts Valkey 8.1 (with a password) and moto's S3 server on loopback, fills Valkey with a
multi-type dataset in three databases, starts the agent, and then does what an operator
on the machine would do with the agent's CLI: configure, create-backup, list-backups,
verify-backup --load; then it destroys the data and restores it with restore-backup, and
proves the dataset came back. Everything is stopped at the end.

Run through scripts/demo.sh (which installs and builds first).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness import (  # noqa: E402  (the harness lives with the tests)
    Agent,
    MotoServer,
    ValkeyServer,
    assert_same_dataset,
    configure_params,
    dataset_fingerprint,
    free_port,
    load_dataset,
    wait_until,
)


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def run(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    print(f"$ valkey-backup-agent {' '.join(args)}", flush=True)
    out = agent.cli(*args)
    sys.stderr.write(out.stderr)
    sys.stdout.write(out.stdout)
    if out.returncode != 0:
        raise SystemExit(f"demo failed: {' '.join(args)} exited {out.returncode}")
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="valkey-backup-demo-"))
    servers: list = []
    valkey_proc = None
    try:
        step("starting Valkey 8.1 (password protected, as a daemon) and moto's S3 server")
        # The server runs as a daemon the way a service would, so the restore below can
        # stop and start it with plain commands.
        valkey = ValkeyServer("valkey8", work / "valkey", password="demo-valkey-pw")
        valkey.port = free_port()
        pidfile = work / "valkey.pid"
        start_cmd = shlex.join(
            [*valkey._argv(), "--daemonize", "yes", "--pidfile", str(pidfile),
             "--logfile", str(work / "valkey.log")]
        )  # fmt: skip
        # SIGTERM is a clean shutdown; the loop waits until the process is gone.
        stop_cmd = f"pid=$(cat {pidfile}); kill $pid; while [ -e /proc/$pid ]; do sleep 0.05; done"
        subprocess.run(["/bin/sh", "-c", start_cmd], check=True)
        valkey_proc = pidfile
        wait_until(lambda: valkey.client().ping(), timeout=20, what="valkey")
        moto = MotoServer(work / "moto").start()
        servers.append(moto)
        info = load_dataset(valkey, size_mb=32, dbs=(0, 1, 3), seed=1)
        print(f"valkey {valkey.version()} on port {valkey.port}: {info}")
        expected = dataset_fingerprint(valkey)

        step("starting the agent")
        agent = Agent(work / "agent").start()
        servers.append(agent)
        print(f"socket {agent.socket_path}, state {agent.state_dir}")

        step("configure (the secrets travel in a 0600 file, never on the command line)")
        params = configure_params(
            valkey, moto, bucket=None, cluster="demo.valkey", unit="valkey/0",
            backup={"part-size-bytes": 8 * 1024 * 1024},
        )  # fmt: skip
        conf = work / "configure.json"
        conf.write_text(json.dumps(params))
        conf.chmod(0o600)
        run(agent, "configure", "--file", str(conf))

        step("create-backup")
        backup = json.loads(run(agent, "create-backup").stdout)

        step("list-backups")
        run(agent, "list-backups")

        step("verify-backup --load (re-read, check against the manifest, load in a scratch server)")
        run(agent, "verify-backup", backup["backup-id"], "--load")

        step("disaster: every database is flushed and overwritten")
        valkey.client().flushall()
        valkey.client().set("oops", "this is not the data you backed up")
        print(f"keys now: {dataset_fingerprint(valkey).keyspace}")

        step("restore-backup (prepare+verify, stop, place the dump, start, wait for load)")
        run(
            agent, "restore-backup", backup["backup-id"],
            "--stop-command", stop_cmd, "--start-command", start_cmd,
        )  # fmt: skip
        assert_same_dataset(expected, dataset_fingerprint(valkey))
        print(
            f"the dataset came back: same keys, values and TTLs in every database "
            f"{expected.keyspace}"
        )
        print("\ndemo OK")
    finally:
        if valkey_proc is not None and valkey_proc.exists():
            subprocess.run(["kill", valkey_proc.read_text().strip()], check=False)
        for s in reversed(servers):
            s.stop()


if __name__ == "__main__":
    main()
