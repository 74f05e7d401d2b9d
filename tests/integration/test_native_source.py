"""The built-in replication source against real servers: Valkey 9 datasets the cli cannot
back up, the RDB formats restore and verify must respect, and every way the transfer can
fail through it leaving nothing behind."""

from __future__ import annotations

import os

import pytest
from checks import assert_failed_cleanly, check_rdb, failed_backup_id, get_json, prefix_of
from faults import FakePrimary
from harness import (
    StartupError,
    configure_params,
    dataset_fingerprint,
    load_dataset,
    port_accepts,
    wait_until,
)

MiB = 1024 * 1024
FIELDS = ("a", "b", "c")


def _hashes_with_field_ttls(server, dbs=(0, 2), per_db=40) -> None:
    """Hashes whose fields `a` and `b` expire (HEXPIRE), in several databases."""
    for db in dbs:
        c = server.client(db)
        for i in range(per_db):
            key = f"h:{db}:{i}"
            c.hset(key, mapping={f: f"{f}{i}" for f in FIELDS})
            c.execute_command("HEXPIRE", key, 3600 + i, "FIELDS", 2, "a", "b")


def _field_expiries(server, dbs=(0, 2), per_db=40) -> dict:
    """Absolute expiry (ms) of every field, by db and key: equal after a load."""
    out = {}
    for db in dbs:
        c = server.client(db)
        for i in range(per_db):
            key = f"h:{db}:{i}"
            out[(db, key)] = c.execute_command("HPEXPIRETIME", key, "FIELDS", 3, *FIELDS)
    return out


def _lock_is_free(a) -> None:
    status = a.request("status").expect_ok()
    assert status["busy"] is False and status["running"] is None, status


def test_valkey9_field_ttls_back_up_with_the_defaults_and_restore(
    valkey_server, agent, moto, moto_bucket, components, tmp_path
):
    # Canonical's valkey charm: `user default off`, an ACL superuser, bound to its own
    # address. No source and no cli are configured: the defaults must do.
    server = valkey_server(
        "valkey9", username="charmed-operator", password="op-pw", host="127.0.0.2"
    )
    assert not port_accepts("127.0.0.1", server.port), "bound to 127.0.0.2 only"
    load_dataset(server, size_mb=2, dbs=(0, 2), seed=41)
    _hashes_with_field_ttls(server)
    expected = dataset_fingerprint(server)
    expiries = _field_expiries(server)
    assert all(t > 0 for v in expiries.values() for t in v[:2]) and all(
        v[2] == -1 for v in expiries.values()
    )
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="ttl.valkey")
    del params["valkey"]["cli"]
    assert params["valkey"]["host"] == "127.0.0.2"
    assert a.request("configure", params).expect_ok()["valkey-source"] == "auto"

    result = a.request("create-backup").expect_ok()
    assert result["source"] == "native"
    assert (result["rdb-magic"], result["rdb-version"]) == ("VALKEY", 80)
    data = moto.client().get_object(Bucket=moto_bucket, Key=result["data-key"])["Body"].read()
    assert data.startswith(b"VALKEY")
    rdb = tmp_path / "ttl.rdb"
    rdb.write_bytes(data)
    assert check_rdb(components, rdb, tmp_path) == len(data) == result["size-bytes"]
    assert data[-8:] == bytes.fromhex(result["crc64"])[::-1]
    manifest = get_json(
        moto.client(), moto_bucket, result["data-key"].replace("data.rdb", "manifest.json")
    )
    assert manifest["source"] == "native" and manifest["source-version"].startswith("9.1.")
    assert manifest["eof-mark-stripped"] is False

    loaded = valkey_server.from_rdb("valkey9", rdb)
    assert dataset_fingerprint(loaded) == expected
    assert _field_expiries(loaded) == expiries
    assert loaded.client(2).execute_command("HTTL", "h:2:0", "FIELDS", 1, "a")[0] > 3000

    # Through the agent: change everything, restore, the same digest comes back.
    for db in (0, 2):
        server.client(db).flushdb()
    server.client().set("after", "backup")
    prepared = a.request(
        "restore-backup", {"step": "prepare", "backup-id": result["backup-id"]}
    ).expect_ok()
    server.stop()
    a.request(
        "restore-backup", {"step": "commit", "restore-id": prepared["restore-id"]}
    ).expect_ok()
    server.start_again()
    finished = a.request(
        "restore-backup", {"step": "finish", "restore-id": prepared["restore-id"]}
    ).expect_ok()
    assert finished["keys-match"] is True
    assert dataset_fingerprint(server) == expected
    assert _field_expiries(server) == expiries


def test_the_cli_source_cannot_back_up_field_ttls_and_says_so(
    valkey_server, agent, moto, moto_bucket
):
    # Why the agent speaks the handshake itself: `--rdb -` never announces a version, so
    # Valkey 9 picks RDB 11 and aborts on the first hash with a field TTL.
    server = valkey_server("valkey9")
    _hashes_with_field_ttls(server, dbs=(0,), per_db=1)
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="ttlcli.valkey", source="cli")
    a.request("configure", params).expect_ok()
    a.request("create-backup").expect_error("valkey-error")
    assert_failed_cleanly(
        moto.client(), moto_bucket, prefix_of(params), failed_backup_id(a), "valkey-error"
    )
    assert "RDB version 11" in server.log_text()


def test_servers_refuse_formats_newer_than_they_know(valkey_server, tmp_path):
    # The table in rdb_compat.rs, on the real servers: Valkey 8.1 cannot load VALKEY080,
    # Redis 7.0 cannot load REDIS0011; Valkey 9.1 loads both.
    v9 = valkey_server("valkey9")
    v9.client().set("k", "v")
    v9_rdb = tmp_path / "v9.rdb"
    v9.client().save()
    v9_rdb.write_bytes((v9.dir / "dump.rdb").read_bytes())
    v8 = valkey_server("valkey8")
    v8.client().set("k", "v")
    v8.client().save()
    v8_rdb = tmp_path / "v8.rdb"
    v8_rdb.write_bytes((v8.dir / "dump.rdb").read_bytes())
    assert v9_rdb.read_bytes()[:9] == b"VALKEY080"
    assert v8_rdb.read_bytes()[:9] == b"REDIS0011"
    with pytest.raises(StartupError):
        valkey_server.from_rdb("valkey8", v9_rdb)
    with pytest.raises(StartupError):
        valkey_server.from_rdb("redis7", v8_rdb)
    assert valkey_server.from_rdb("valkey9", v8_rdb).client().get("k") == b"v"


def test_restore_refuses_a_format_the_target_cannot_load_before_touching_anything(
    valkey_server, agent, moto, moto_bucket
):
    source = valkey_server("valkey9")
    source.client().set("from", "nine")
    a = agent()
    a.request(
        "configure", configure_params(source, moto, moto_bucket, cluster="nine.valkey")
    ).expect_ok()
    backup_id = a.request("create-backup").expect_ok()["backup-id"]

    target = valkey_server("valkey8")
    target.client().set("live", "data")
    target.client().save()
    before = {p: (target.dir / p).read_bytes() for p in os.listdir(target.dir) if p != "server.log"}
    b = agent()
    b.request(
        "configure", configure_params(target, moto, moto_bucket, cluster="eight.valkey")
    ).expect_ok()
    err = b.request(
        "restore-backup",
        {"step": "prepare", "backup-id": backup_id, "source-cluster": "nine.valkey"},
    ).expect_error("bad-request")
    assert "VALKEY080" in err.message and "Valkey 8.1" in err.message, err.message
    after = {p: (target.dir / p).read_bytes() for p in os.listdir(target.dir) if p != "server.log"}
    assert after == before
    assert target.client().get("live") == b"data"
    _lock_is_free(b)


def test_verify_load_needs_a_server_that_knows_the_format(
    valkey_server, agent, moto, moto_bucket, components
):
    server = valkey_server("valkey9")
    load_dataset(server, size_mb=1, dbs=(0, 1), seed=5)
    a = agent()
    a.request(
        "configure", configure_params(server, moto, moto_bucket, cluster="vf.valkey")
    ).expect_ok()
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    eight = str(components.server_for("valkey8"))
    err = a.request(
        "verify-backup", {"backup-id": backup_id, "load": True, "server": eight}
    ).expect_error("bad-request")
    assert "VALKEY080" in err.message and eight in err.message and "Valkey 8.1" in err.message
    nine = str(components.server_for("valkey9"))
    ok = a.request(
        "verify-backup", {"backup-id": backup_id, "load": True, "server": nine}
    ).expect_ok()
    assert ok["load"]["keys-match"] is True


# --------------------------------------------------------------------------- failures


def test_server_killed_mid_payload_aborts_the_started_upload(
    valkey_server, agent, moto, moto_bucket
):
    # A slow snapshot (rdb-key-save-delay) so that the server can be killed while the
    # agent is uploading its first parts.
    server = valkey_server("valkey8", extra_args=["--rdb-key-save-delay", "300"])
    load_dataset(server, size_mb=12, dbs=(0,), seed=12)
    a = agent()
    params = configure_params(
        server, moto, moto_bucket, cluster="kill.valkey", backup={"part-size-bytes": 5 * MiB}
    )
    a.request("configure", params).expect_ok()

    def uploads_started() -> int:
        return sum(
            r.method == "POST" and "uploads" in r.query_keys
            for r in moto.requests(moto_bucket)
            if "kill.valkey" in r.path
        )

    # configure's checksum probe started (and aborted) one upload already.
    probes = uploads_started()
    pending = a.request_async("create-backup", timeout=120)
    wait_until(lambda: uploads_started() > probes, timeout=60, what="the first part")
    server.kill()
    err = pending.result(timeout=120).expect_error("valkey-error")
    assert "broke off" in err.message and "closed the connection" in err.message, err.message
    failure = assert_failed_cleanly(
        moto.client(), moto_bucket, prefix_of(params), failed_backup_id(a), "valkey-error"
    )
    assert failure["bytes-streamed"] >= 5 * MiB
    _lock_is_free(a)


@pytest.mark.parametrize(
    ("mode", "code", "words"),
    [
        ("garbage", "valkey-error", "does not answer like a Valkey server"),
        ("not-rdb", "stream-invalid", "not an RDB"),
        ("stall", "valkey-error", "no data from the server for 1 s"),
    ],
)
def test_a_misbehaving_peer_fails_cleanly_naming_the_cause(
    mode, code, words, valkey_server, agent, moto, moto_bucket
):
    peer = FakePrimary(mode)
    try:
        server = valkey_server("valkey8")  # only for the shape of the params
        params = configure_params(
            server,
            moto,
            moto_bucket,
            cluster=f"fake-{mode}.valkey",
            source="native",
            backup={"stall-timeout-seconds": 1},
        )
        params["valkey"].update(host=peer.host, port=peer.port)
        a = agent()
        a.request("configure", params).expect_ok()
        err = a.request("create-backup", timeout=60).expect_error(code)
        assert words in err.message, err.message
        assert_failed_cleanly(
            moto.client(), moto_bucket, prefix_of(params), failed_backup_id(a), code
        )
        _lock_is_free(a)
        sent = [c[:2] for c in peer.commands]
        assert [b"REPLCONF", b"capa"] in sent and [b"REPLCONF", b"rdb-only"] in sent
        assert not any(b"skip-rdb-checksum" in b" ".join(c) for c in peer.commands)
        # REPLCONF version goes to Valkey >= 9 only (Redis refuses it; Valkey 8 needs none).
        assert [b"REPLCONF", b"version"] not in sent
    finally:
        peer.stop()


def test_verify_load_finds_a_server_that_knows_the_format_beside_the_cli(
    valkey_server, agent, moto, moto_bucket, components, tmp_path
):
    # Without `server`, verify looks beside the configured cli (then the system's bin
    # directories) and takes the first server whose version loads the backup's format.
    server = valkey_server("valkey9")
    load_dataset(server, size_mb=1, dbs=(0,), seed=6)
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="pick.valkey")
    a.request("configure", params).expect_ok()
    backup_id = a.request("create-backup").expect_ok()["backup-id"]

    def cli_dir_with(kind: str):
        d = tmp_path / f"bin-{kind}"
        d.mkdir()
        (d / "valkey-cli").symlink_to(components.cli_for("valkey8"))
        (d / "valkey-server").symlink_to(components.server_for(kind))
        return d

    params["valkey"]["cli"] = str(cli_dir_with("valkey8") / "valkey-cli")
    a.request("configure", params).expect_ok()
    err = a.request("verify-backup", {"backup-id": backup_id, "load": True}).expect_error(
        "bad-request"
    )
    assert "no server on this machine can load this backup's RDB VALKEY080" in err.message
    assert "is Valkey 8.1.8 (RDB up to REDIS0011)" in err.message, err.message

    params["valkey"]["cli"] = str(cli_dir_with("valkey9") / "valkey-cli")
    a.request("configure", params).expect_ok()
    ok = a.request("verify-backup", {"backup-id": backup_id, "load": True}).expect_ok()
    assert ok["load"]["keys-match"] is True
