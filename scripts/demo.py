"""End-to-end demo: a real backup and listing against local servers this script starts.

Starts Valkey 8.1 (with a password) and moto's S3 server on loopback, fills Valkey with a
multi-type dataset in three databases, starts the agent, and then does what an operator
on the machine would do with the agent's CLI: configure, create-backup, list-backups.
Finally it proves the backup by loading the stored object into a fresh server and
comparing the datasets. Everything is stopped at the end.

Run through scripts/demo.sh (which installs and builds first).
"""

from __future__ import annotations

import json
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
    load_dataset,
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
    try:
        step("starting Valkey 8.1 (password protected) and moto's S3 server on 127.0.0.1")
        valkey = ValkeyServer("valkey8", work / "valkey", password="demo-valkey-pw").start()
        moto = MotoServer(work / "moto").start()
        servers += [valkey, moto]
        info = load_dataset(valkey, size_mb=32, dbs=(0, 1, 3), seed=1)
        print(f"valkey {valkey.version()} on port {valkey.port}: {info}")
        expected = dataset_fingerprint(valkey)

        step("starting the agent")
        agent = Agent(work / "agent").start()
        servers.append(agent)
        print(f"socket {agent.socket_path}, state {agent.state_dir}")

        step("configure (the secrets travel in a 0600 file, never on the command line)")
        bucket = "demo-backups"
        params = configure_params(
            valkey,
            moto,
            bucket=None,
            cluster="demo.valkey",
            unit="valkey/0",
            backup={"part-size-bytes": 8 * 1024 * 1024},
        )
        bucket = params["s3"]["bucket"]
        conf = work / "configure.json"
        conf.write_text(json.dumps(params))
        conf.chmod(0o600)
        run(agent, "configure", "--file", str(conf))

        step("create-backup")
        backup = json.loads(run(agent, "create-backup").stdout)

        step("list-backups")
        run(agent, "list-backups")

        step("proving the backup: load the stored object into a fresh Valkey")
        data = moto.client().get_object(Bucket=bucket, Key=backup["data-key"])["Body"].read()
        rdb = work / "restored.rdb"
        rdb.write_bytes(data)
        fresh = ValkeyServer("valkey8", work / "fresh", rdb_path=rdb).start()
        servers.append(fresh)
        assert_same_dataset(expected, dataset_fingerprint(fresh))
        print(
            f"the stored object ({len(data)} bytes) loads with the same keys and values "
            f"in every database: {expected.keyspace}"
        )
        print("\ndemo OK")
    finally:
        for s in reversed(servers):
            s.stop()


if __name__ == "__main__":
    main()
