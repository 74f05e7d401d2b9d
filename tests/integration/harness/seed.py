"""Many backups written straight into a bucket, in the agent's own object layout.

Listing and pruning at scale are about the number of backups, not their size: taking
10,000 real snapshots would take hours and prove nothing more. `seed_backups` writes, for
each backup, what the agent itself writes (docs/protocol.md, "Object layout"): a small
`data.rdb` and a format-1 `manifest.json` that describes it (its own id and data key, the
data object's exact size and SHA-256), so every seeded backup lists as `finished` and
passes the manifest check. Every `failed_every`-th backup gets a `failure.json` instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# A minimal RDB: header, EOF opcode, 8 bytes of (unchecked) CRC.
_DATA = b"REDIS0011" + b"\xff" + b"\x00" * 8


ID_TIME = "%Y%m%dT%H%M%SZ"


def backup_id(at: dt.datetime, unit: str = "valkey/0") -> str:
    """An id as the agent names backups: start second, unit, 6 random hex digits."""
    slug = unit.replace("/", "-")
    return f"{at.strftime(ID_TIME)}-{slug}-{secrets.token_hex(3)}"


def id_time(bid: str) -> dt.datetime:
    """The start second a backup id carries (UTC)."""
    return dt.datetime.strptime(bid[:16], ID_TIME).replace(tzinfo=dt.UTC)


def _manifest(prefix: str, cluster: str, unit: str, bid: str, at: dt.datetime) -> bytes:
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    sha = hashlib.sha256(_DATA).hexdigest()
    record: dict[str, Any] = {
        "format-version": 1,
        "backup-id": bid,
        "cluster": cluster,
        "unit": unit,
        "started-at": stamp,
        "finished-at": stamp,
        "source-kind": "valkey",
        "source-version": "8.1.8",
        "rdb-magic": "REDIS",
        "rdb-version": 11,
        "data-key": f"{prefix}{bid}/data.rdb",
        "compression": "none",
        "stored-size-bytes": len(_DATA),
        "raw-size-bytes": len(_DATA),
        "sha256": sha,
        "crc64": "0000000000000000",
        "parts": 1,
        "part-size-bytes": len(_DATA),
        "eof-mark-stripped": False,
        "keyspace-at-start": {},
        "agent-version": "seed",
    }
    return json.dumps(record).encode()


def _failure(cluster: str, unit: str, bid: str, at: dt.datetime) -> bytes:
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {
        "format-version": 1,
        "backup-id": bid,
        "cluster": cluster,
        "unit": unit,
        "started-at": stamp,
        "failed-at": stamp,
        "phase": "stream",
        "code": "valkey-unreachable",
        "reason": "seeded failure",
        "bytes-streamed": 0,
        "agent-version": "seed",
    }
    return json.dumps(record).encode()


def seed_backups(
    s3: Any,
    bucket: str,
    prefix: str,
    cluster: str,
    count: int,
    *,
    newest: dt.datetime | None = None,
    spacing: dt.timedelta = dt.timedelta(minutes=1),
    unit: str = "valkey/0",
    failed_every: int = 0,
    threads: int = 32,
) -> list[str]:
    """Writes `count` backups under `prefix` (`<path>/<cluster>/`), ids `spacing` apart
    ending at `newest` (default: now); returns their ids, oldest first. The store stamps
    every object with its own time (now), whatever the ids say: keep `count * spacing`
    under a day, or the older ids are more than a day before their manifests and the
    agent flags them and ranks them by the store's time (README, "Object layout")."""
    newest = newest or dt.datetime.now(dt.UTC).replace(microsecond=0)
    ids = []
    puts: list[tuple[str, bytes]] = []
    for i in range(count):
        at = newest - spacing * (count - 1 - i)
        bid = backup_id(at, unit)
        ids.append(bid)
        if failed_every and i % failed_every == failed_every - 1:
            puts.append((f"{prefix}{bid}/failure.json", _failure(cluster, unit, bid, at)))
            continue
        puts.append((f"{prefix}{bid}/data.rdb", _DATA))
        puts.append((f"{prefix}{bid}/manifest.json", _manifest(prefix, cluster, unit, bid, at)))

    def put(item: tuple[str, bytes]) -> None:
        key, body = item
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, puts))
    return ids
