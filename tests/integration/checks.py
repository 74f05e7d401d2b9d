"""Assertions about what a backup left in the bucket, shared by the integration tests."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Components, wait_until
from harness.seed import id_time

CRC_POLY = 0x95AC9329AC4BC9B5  # CRC-64/Jones, reflected


def prefix_of(params: dict[str, Any]) -> str:
    """`<path>/<cluster>/` for a configure request."""
    path = params["s3"].get("path", "").strip("/")
    return f"{path}/{params['cluster']}/" if path else f"{params['cluster']}/"


def backups_in_order(agent, n: int = 2) -> list[str]:
    """`n` backups by `agent`, each started in a later second than the one before, so
    that their ids sort in the order the store wrote them. (Ids sort by start second,
    then by a random suffix: two backups started in one second may rank against the
    store's order, and retention keeps the newest on both clocks.)"""
    ids: list[str] = []
    for _ in range(n):
        if ids:
            next_second = id_time(ids[-1]) + dt.timedelta(seconds=1)
            wait_until(
                lambda t=next_second: dt.datetime.now(dt.UTC) >= t,
                timeout=5,
                what="the second after the last backup's",
            )
        ids.append(agent.request("create-backup").expect_ok()["backup-id"])
    assert ids == sorted(ids), ids
    return ids


@dataclass
class BucketState:
    keys: dict[str, int]
    uploads: list[str]

    def objects_of(self, backup_id: str) -> set[str]:
        return {k.rsplit(backup_id + "/", 1)[1] for k in self.keys if f"/{backup_id}/" in k}


def bucket_state(s3: Any, bucket: str, prefix: str = "") -> BucketState:
    """Every key (with size) and every open multipart upload's key under `prefix`."""
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = obj["Size"]
    uploads = [
        u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    ]
    return BucketState(keys, uploads)


def get_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def assert_failed_cleanly(s3: Any, bucket: str, prefix: str, backup_id: str, code: str) -> dict:
    """No data object, no open upload, and a failure record with `code`."""
    state = bucket_state(s3, bucket, prefix)
    assert state.objects_of(backup_id) == {"failure.json"}, state.keys
    assert not [u for u in state.uploads if backup_id in u], state.uploads
    failure = get_json(s3, bucket, f"{prefix}{backup_id}/failure.json")
    assert failure["code"] == code, failure
    assert failure["backup-id"] == backup_id
    return failure


def failed_backup_id(agent: Any) -> str:
    """The id of the backup that just failed, from the agent's status."""
    last = agent.request("status").expect_ok()["last-backup"]
    assert last is not None and last["status"] == "failed", last
    return last["backup-id"]


def check_rdb(components: Components, rdb: Path, workdir: Path) -> int:
    """Run valkey-check-rdb (the server binary under that name) and return the offset at
    which it found the checksum OK — the RDB's exact length. Valkey's own format
    (`VALKEY…`) is checked by Valkey 9, every `REDIS…` format by Valkey 8."""
    kind = "valkey9" if rdb.read_bytes()[:6] == b"VALKEY" else "valkey8"
    tool = workdir / f"{kind}-check" / "valkey-check-rdb"
    if not tool.exists():
        tool.parent.mkdir(exist_ok=True)
        tool.symlink_to(components.server_for(kind))
    out = subprocess.run([str(tool), str(rdb)], capture_output=True, text=True, timeout=120)
    assert "RDB looks OK" in out.stdout, out.stdout[-2000:]
    for line in out.stdout.splitlines():
        if line.endswith("Checksum OK"):
            return int(line.split("[offset ")[1].split("]")[0])
    raise AssertionError(f"no checksum line: {out.stdout[-2000:]}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
