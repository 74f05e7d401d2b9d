"""Compressed and client-side encrypted backups against real servers and stores.

Round trips (backup → verify --load → restore, dataset digest equal) for none/lz4/zstd by
clear/encrypted. To keep CI lean the full six-way matrix runs on one server kind and one
store (Valkey 8.1 on moto); a diagonal covers the others, each once:

    Valkey 9.1 + moto    zstd + age        Redis 7.0 + moto    lz4 + age
    Valkey 9.1 + Garage  lz4, clear        Redis 7.0 + Garage  zstd + age
    Valkey 8.1 + Garage  none + age

Every round trip also opens the stored object with the stock Debian tools
(`age -d -i key.txt | zstd -d`, `lz4 -d`) and gets back the RDB whose SHA-256 the
manifest recorded. Then: a flipped byte anywhere (start, middle, end) in an encrypted or
compressed object is refused by verify and restore with the live dump untouched; a
missing or wrong key is `decrypt-failed`; key rotation; and the secret key never appears
in argv, the log, responses, objects or the state directory beyond the 0600 config.

Run: python -m pytest tests/integration/test_compression.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from checks import get_json
from harness import (
    assert_same_dataset,
    configure_params,
    dataset_fingerprint,
    load_dataset,
    wait_until,
)

MiB = 1024 * 1024
TOOLS = ("age", "age-keygen", "zstd", "lz4")


@pytest.fixture(scope="module", autouse=True)
def stock_tools() -> None:
    """The Debian tools an operator would restore with (scripts/setup.sh installs them)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"missing {missing}: run scripts/setup.sh"


@dataclass(frozen=True)
class Key:
    """An age key pair made by age-keygen: the key file, its secret and public key."""

    file: Path
    secret: str
    public: str


def make_key(directory: Path, name: str) -> Key:
    path = directory / f"{name}.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    lines = path.read_text().splitlines()
    secret = next(line for line in lines if line.startswith("AGE-SECRET-KEY-1"))
    public = next(line for line in lines if "public key:" in line).split(": ", 1)[1].strip()
    return Key(path, secret, public)


def encryption(recipients: list[Key], identities: list[Key]) -> dict:
    return {
        "recipients": [k.public for k in recipients],
        "identities": [k.secret for k in identities],
    }


def backup_section(compression: str) -> dict:
    section: dict = {"compression": compression}
    if compression == "zstd":
        section["compression-level"] = 6
    return section


def json_values(server, n: int = 3000) -> None:
    """Realistic, compressible values next to the harness's random ones."""
    c = server.client(0)
    c.mset(
        {
            f"user:{i}": json.dumps(
                {"id": i, "name": f"user-{i}", "plan": ["free", "pro"][i % 2], "visits": i * 7}
            )
            for i in range(n)
        }
    )


def save(server) -> None:
    """SAVE once the replication fork has exited (see test_restore._save)."""
    c = server.client()
    wait_until(
        lambda: c.info("persistence")["rdb_bgsave_in_progress"] == 0,
        timeout=30,
        what="the replication fork to exit",
    )
    c.save()


def restore(a, server, backup_id) -> dict:
    """prepare → stop → commit → start → finish."""
    prepared = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    server.stop()
    a.request("restore-backup", {"step": "commit", "restore-id": prepared["restore-id"]})
    server.start_again()
    return a.request(
        "restore-backup", {"step": "finish", "restore-id": prepared["restore-id"]}
    ).expect_ok()


def open_with_stock_tools(stored: bytes, compression: str, key: Key | None, tmp: Path) -> bytes:
    """What an operator gets with `age -d -i key.txt data.rdb.zst.age | zstd -d`."""
    path = tmp / "object"
    path.write_bytes(stored)
    data = path.read_bytes()
    if key is not None:
        data = subprocess.run(
            ["age", "-d", "-i", str(key.file), str(path)], check=True, capture_output=True
        ).stdout
    if compression == "zstd":
        data = subprocess.run(
            ["zstd", "-d", "-c"], input=data, check=True, capture_output=True
        ).stdout
    elif compression == "lz4":
        data = subprocess.run(
            ["lz4", "-d", "-c"], input=data, check=True, capture_output=True
        ).stdout
    return data


def object_bytes(store, bucket: str, key: str) -> bytes:
    return store.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def manifest_of(store, bucket: str, data_key: str) -> dict:
    return get_json(store.client(), bucket, data_key.rsplit("/", 1)[0] + "/manifest.json")


@pytest.mark.parametrize(
    ("kind", "store_name", "compression", "encrypted"),
    [("valkey8", "moto", c, e) for c in ("none", "lz4", "zstd") for e in (False, True)]
    + [
        ("valkey9", "moto", "zstd", True),
        ("redis7", "moto", "lz4", True),
        ("valkey9", "garage", "lz4", False),
        ("redis7", "garage", "zstd", True),
        ("valkey8", "garage", "none", True),
    ],
)
def test_round_trip(
    kind, store_name, compression, encrypted, request, valkey_server, agent, tmp_path
):
    store = request.getfixturevalue(store_name)
    bucket = store.bucket if store_name == "garage" else store.create_bucket()
    key = make_key(tmp_path, "a") if encrypted else None
    server = valkey_server(kind, password="comp-pw")
    load_dataset(server, size_mb=2, dbs=(0, 2), seed=31)
    json_values(server)
    expected = dataset_fingerprint(server)
    a = agent()
    cluster = f"c-{kind}-{compression}-{int(encrypted)}.valkey"
    extra = {"backup": backup_section(compression)}
    if key:
        extra["encryption"] = encryption([key], [key])
    a.request(
        "configure", configure_params(server, store, bucket, cluster=cluster, **extra)
    ).expect_ok()
    backup = a.request("create-backup").expect_ok()

    suffix = {"none": "", "lz4": ".lz4", "zstd": ".zst"}[compression] + (".age" if key else "")
    assert backup["data-key"].endswith(f"/data.rdb{suffix}"), backup["data-key"]
    assert backup["compression"] == compression and backup["encrypted"] is encrypted
    stored = object_bytes(store, bucket, backup["data-key"])
    manifest = manifest_of(store, bucket, backup["data-key"])
    assert len(stored) == backup["size-bytes"] == manifest["stored-size-bytes"]
    assert hashlib.sha256(stored).hexdigest() == manifest["sha256"]
    raw = open_with_stock_tools(stored, compression, key, tmp_path)
    assert len(raw) == manifest["raw-size-bytes"] == backup["raw-size-bytes"]
    assert hashlib.sha256(raw).hexdigest() == manifest.get("raw-sha256", manifest["sha256"])
    assert raw[:5] in (b"REDIS", b"VALKE")
    if compression != "none":
        assert len(stored) < len(raw)

    verify = {"backup-id": backup["backup-id"], "load": True}
    if kind == "valkey9":
        # VALKEY080, which only a Valkey 9 server loads (see test_restore).
        verify["server"] = str(server.server_bin)
    verified = a.request("verify-backup", verify)
    assert verified.expect_ok()["load"]["keys-match"] is True
    listed = a.request("list-backups").expect_ok()["backups"]
    entry = next(b for b in listed if b["backup-id"] == backup["backup-id"])
    assert (entry["compression"], entry["encrypted"]) == (compression, encrypted)

    server.client(0).flushall()
    finished = restore(a, server, backup["backup-id"])
    assert finished["keys-match"] is True
    assert_same_dataset(expected, dataset_fingerprint(server))


@pytest.mark.parametrize(("compression", "encrypted"), [("lz4", False), ("zstd", True)])
def test_a_flipped_byte_anywhere_is_refused_and_live_data_untouched(
    compression, encrypted, valkey_server, agent, moto, moto_bucket, tmp_path
):
    key = make_key(tmp_path, "a") if encrypted else None
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=1, dbs=(0,), seed=7)
    json_values(server, 1000)
    a = agent()
    extra = {"backup": backup_section(compression)}
    if key:
        extra["encryption"] = encryption([key], [key])
    a.request("configure", configure_params(server, moto, moto_bucket, **extra)).expect_ok()
    backup = a.request("create-backup").expect_ok()
    save(server)
    live = (server.dir / "dump.rdb").read_bytes()
    s3 = moto.client()
    good = object_bytes(moto, moto_bucket, backup["data-key"])
    for at in (5, len(good) // 2, len(good) - 2):
        bad = bytearray(good)
        bad[at] ^= 0x04
        s3.put_object(Bucket=moto_bucket, Key=backup["data-key"], Body=bytes(bad))
        err = a.request("verify-backup", {"backup-id": backup["backup-id"]}).expect_error(
            "stream-invalid"
        )
        assert err.message, at
        a.request(
            "restore-backup", {"step": "prepare", "backup-id": backup["backup-id"]}
        ).expect_error("stream-invalid")
        assert (server.dir / "dump.rdb").read_bytes() == live
        assert not [p for p in os.listdir(server.dir) if p.endswith(".tmp")]
    s3.put_object(Bucket=moto_bucket, Key=backup["data-key"], Body=good)
    a.request("verify-backup", {"backup-id": backup["backup-id"]}).expect_ok()


def test_wrong_or_missing_key_is_decrypt_failed_and_rotation_keeps_old_backups(
    valkey_server, agent, moto, moto_bucket, tmp_path
):
    key_a, key_b, stranger = (make_key(tmp_path, n) for n in ("a", "b", "c"))
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=1, dbs=(0,), seed=3)
    with_a = dataset_fingerprint(server)
    a = agent()

    def configure(enc: dict | None) -> None:
        extra: dict = {"backup": {"compression": "zstd"}}
        if enc is not None:
            extra["encryption"] = enc
        a.request("configure", configure_params(server, moto, moto_bucket, **extra)).expect_ok()

    configure(encryption([key_a], [key_a]))
    old = a.request("create-backup").expect_ok()["backup-id"]
    save(server)
    live = (server.dir / "dump.rdb").read_bytes()

    # No key, or only a stranger's: decrypt-failed, before anything is touched.
    for enc in (None, encryption([stranger], [stranger])):
        configure(enc)
        for op, params in (
            ("verify-backup", {"backup-id": old}),
            ("restore-backup", {"step": "prepare", "backup-id": old}),
        ):
            err = a.request(op, params).expect_error("decrypt-failed")
            assert key_a.secret not in err.message and stranger.secret not in err.message
        assert (server.dir / "dump.rdb").read_bytes() == live

    # Rotation: new backups go to B; A stays an identity for the old ones.
    configure(encryption([key_b], [key_b, key_a]))
    server.client(0).set("after-rotation", "1")
    with_b = dataset_fingerprint(server)
    new = a.request("create-backup").expect_ok()["backup-id"]
    server.client(0).flushall()
    restore(a, server, old)
    assert_same_dataset(with_a, dataset_fingerprint(server))
    # A retired: the backup taken with B restores without it; the old one names its key.
    configure(encryption([key_b], [key_b]))
    restore(a, server, new)
    assert_same_dataset(with_b, dataset_fingerprint(server))
    a.request("verify-backup", {"backup-id": old}).expect_error("decrypt-failed")


def test_the_key_never_appears_outside_the_config_file(
    valkey_server, agent, moto, moto_bucket, tmp_path, argv_sampler
):
    key = make_key(tmp_path, "a")
    other = make_key(tmp_path, "b")
    needles = [key.secret, other.secret, key.secret.lower()]
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=1, dbs=(0,), seed=11)
    a = agent(env={"VALKEY_BACKUP_LOG": "debug"})
    params = configure_params(
        server,
        moto,
        moto_bucket,
        backup={"compression": "lz4"},
        encryption=encryption([], [key, other]),
    )
    responses = []
    with argv_sampler() as sampler:
        responses.append(a.request("configure", params))
        backup = a.request("create-backup")
        responses.append(backup)
        backup_id = backup.expect_ok()["backup-id"]
        for op, p in (
            ("status", None),
            ("list-backups", None),
            ("verify-backup", {"backup-id": backup_id, "load": True}),
        ):
            responses.append(a.request(op, p))
        bad = json.loads(json.dumps(params))
        # One character changed (never to itself): the Bech32 checksum catches it.
        last = "P" if other.secret.endswith("Q") else "Q"
        bad["encryption"]["identities"][1] = other.secret[:-1] + last
        responses.append(a.request("configure", bad))
        cli = a.cli("configure", "--file", "-", input=json.dumps(params))
    err = responses[-1].expect_error("bad-request")
    assert "encryption.identities" in err.message, err
    assert cli.returncode == 0, cli.stderr
    assert sampler.leaks(needles) == []
    for resp in responses:
        raw = resp.raw.decode(errors="replace")
        assert not [n for n in needles if n in raw], resp.lines
    assert not [n for n in needles if n in a.log_text()]
    assert not [n for n in needles if n in cli.stdout + cli.stderr]
    s3 = moto.client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=moto_bucket):
        for o in page.get("Contents", []):
            body = s3.get_object(Bucket=moto_bucket, Key=o["Key"])["Body"].read()
            assert not [n for n in needles if n.encode() in body], o["Key"]
    # The state directory: only config.json holds it, and that file is 0600.
    holders = []
    for path in a.state_dir.rglob("*"):
        if path.is_file() and any(n.encode() in path.read_bytes() for n in needles):
            holders.append(path.name)
    assert holders == ["config.json"]
    assert (a.state_dir / "config.json").stat().st_mode & 0o777 == 0o600
