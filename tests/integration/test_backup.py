"""create-backup and list-backups against real servers: every server kind, both stores."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from checks import bucket_state, check_rdb, get_json, prefix_of, sha256_hex
from harness import assert_same_dataset, configure_params, dataset_fingerprint, load_dataset
from harness.seed import backup_id

MiB = 1024 * 1024
PART = 5 * MiB


#: Both snapshot sources: the agent's own replication client and `valkey-cli --rdb -`.
SOURCES = ("native", "cli")


def _configure(agent, server, store, cluster, bucket=None, **extra):
    params = configure_params(
        server, store, bucket, cluster=cluster, backup={"part-size-bytes": PART}, **extra
    )
    agent.request("configure", params).expect_ok()
    return params


@pytest.mark.parametrize("source_name", SOURCES)
@pytest.mark.parametrize("store_name", ["moto", "garage"])
def test_backup_is_the_exact_rdb_and_loads_with_the_same_data(
    request, server_kind, store_name, source_name, valkey_server, agent, components, tmp_path
):
    store = request.getfixturevalue(store_name)
    source = valkey_server(server_kind, password="src-pw")
    load_dataset(source, size_mb=24, dbs=(0, 1, 3), seed=7)
    expected = dataset_fingerprint(source)
    a = agent()
    cluster = f"m{int(time.time() * 1000) % 10**9}.{server_kind}"
    params = _configure(a, source, store, cluster, source=source_name)
    bucket = params["s3"]["bucket"]

    resp = a.request("create-backup")
    result = resp.expect_ok()
    assert resp.events, "progress events while streaming"
    assert any(e["bytes-done"] > 0 for e in resp.events)
    assert result["parts"] >= 4, result  # several parts of 5 MiB, all but the last equal
    assert result["part-size-bytes"] == PART
    assert result["source-version"] == source.version()
    assert result["source"] == source_name

    s3 = store.client()
    prefix = prefix_of(params)
    backup_id = result["backup-id"]
    data_key = f"{prefix}{backup_id}/data.rdb"
    assert result["data-key"] == data_key
    data = s3.get_object(Bucket=bucket, Key=data_key)["Body"].read()
    rdb = tmp_path / "backup.rdb"
    rdb.write_bytes(data)

    # Byte for byte the RDB: its size, its hash, its trailer, and nothing after it.
    assert len(data) == result["size-bytes"]
    assert sha256_hex(data) == result["sha256"]
    assert data[-9] == 0xFF
    assert data[-8:] == bytes.fromhex(result["crc64"])[::-1]
    assert check_rdb(components, rdb, tmp_path) == len(data)

    manifest = get_json(s3, bucket, f"{prefix}{backup_id}/manifest.json")
    assert manifest["sha256"] == result["sha256"]
    assert manifest["stored-size-bytes"] == len(data)
    assert manifest["unit"] == "valkey/0" and manifest["cluster"] == cluster
    assert manifest["source-kind"] == ("redis" if server_kind == "redis7" else "valkey")
    assert manifest["keyspace-at-start"]["db3"] > 0
    assert manifest["source"] == source_name
    assert manifest["source-version"] == source.version()
    # Valkey 9 sends its own format to a replica that announces its version (the built-in
    # source does); the cli never does and gets the older format.
    native_format = source_name == "native" and server_kind == "valkey9"
    magic = (b"VALKEY", 80) if native_format else (b"REDIS", 10 if server_kind == "redis7" else 11)
    assert data.startswith(magic[0]) and int(data[len(magic[0]) : 9]) == magic[1], data[:9]
    assert (manifest["rdb-magic"], manifest["rdb-version"]) == (magic[0].decode(), magic[1])
    # Diskless sync (the servers' default) ends the stream with a 40-byte EOF marker that
    # `--rdb -` cannot strip from a pipe: the agent did, or the size checks above would
    # fail. The built-in source reads the framing exactly and never sees the marker.
    assert manifest["eof-mark-stripped"] is (source_name == "cli")

    restored = valkey_server.from_rdb(server_kind, rdb)
    assert_same_dataset(expected, dataset_fingerprint(restored))

    listed = a.request("list-backups").expect_ok()
    assert listed["cluster"] == cluster
    [entry] = listed["backups"]
    assert entry["backup-id"] == backup_id and entry["status"] == "finished"
    assert entry["size-bytes"] == len(data) and entry["unit"] == "valkey/0"
    assert bucket_state(s3, bucket, prefix).uploads == []


def test_small_dataset_is_one_conditional_put(valkey_server, agent, moto, moto_bucket):
    source = valkey_server("valkey8")
    source.client().set("only", "key")
    a = agent()
    params = _configure(a, source, moto, "small.valkey", moto_bucket)
    result = a.request("create-backup").expect_ok()
    assert result["parts"] == 1
    puts = [
        r
        for r in moto.requests(moto_bucket)
        if r.method == "PUT" and r.key.endswith(f"{result['backup-id']}/data.rdb")
    ]
    assert len(puts) == 1, puts  # a single PutObject, no multipart for one part
    state = bucket_state(moto.client(), moto_bucket, prefix_of(params))
    assert state.objects_of(result["backup-id"]) == {"data.rdb", "manifest.json"}


def test_two_units_backing_up_at_once_make_two_backups(valkey_server, agent, moto, moto_bucket):
    source = valkey_server("valkey9")
    load_dataset(source, size_mb=4, seed=3)
    agents = [agent(), agent()]
    for n, a in enumerate(agents):
        params = configure_params(
            source, moto, moto_bucket, cluster="shared.valkey", unit=f"valkey/{n}"
        )
        a.request("configure", params).expect_ok()
    futures = [a.request_async("create-backup") for a in agents]
    results = [f.result(timeout=120).expect_ok() for f in futures]
    ids = {r["backup-id"] for r in results}
    assert len(ids) == 2, ids
    listed = agents[0].request("list-backups").expect_ok()["backups"]
    assert {b["backup-id"] for b in listed} == ids
    assert {b["unit"] for b in listed} == {"valkey/0", "valkey/1"}
    assert all(b["status"] == "finished" for b in listed)


def test_listing_derives_every_status_and_ignores_foreign_keys(
    valkey_server, agent, moto, moto_bucket
):
    source = valkey_server("valkey8")
    source.client().set("k", "v")
    a = agent()
    params = _configure(a, source, moto, "list.valkey", moto_bucket)
    finished = a.request("create-backup").expect_ok()["backup-id"]
    s3 = moto.client()
    prefix = prefix_of(params)
    # States only a crash can leave behind, made with plain S3 calls. Ids within the day
    # before their objects' store times (now), so they rank by their own times; an open
    # upload has no store time and ranks by its id.
    now = dt.datetime.now(dt.UTC)
    running = "20260101T000000Z-valkey-3-aaaaaa"  # an agent died mid-upload
    s3.create_multipart_upload(Bucket=moto_bucket, Key=f"{prefix}{running}/data.rdb")
    incomplete = backup_id(now - dt.timedelta(hours=2), "valkey/3")  # died before its manifest
    s3.put_object(Bucket=moto_bucket, Key=f"{prefix}{incomplete}/data.rdb", Body=b"x" * 10)
    failed = backup_id(now - dt.timedelta(hours=1), "valkey/3")
    s3.put_object(
        Bucket=moto_bucket,
        Key=f"{prefix}{failed}/failure.json",
        Body=json.dumps(
            {
                "format-version": 1,
                "backup-id": failed,
                "cluster": "list.valkey",
                "unit": "valkey/3",
                "started-at": (now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "failed-at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "phase": "streaming",
                "code": "valkey-auth",
                "reason": "Valkey rejected the credentials",
                "bytes-streamed": 0,
                "agent-version": "0.1.0",
            }
        ),
    )
    # Keys that are not backups, or not ours, are ignored.
    s3.put_object(Bucket=moto_bucket, Key=f"{prefix}README.txt", Body=b"x")
    s3.put_object(Bucket=moto_bucket, Key=f"{prefix}not-an-id/data.rdb", Body=b"x")
    s3.put_object(Bucket=moto_bucket, Key=f"{prefix}../evil/data.rdb", Body=b"x")
    other = "20260104T000000Z-valkey-0-dddddd"
    s3.put_object(Bucket=moto_bucket, Key=f"valkey/other.valkey/{other}/manifest.json", Body=b"{}")

    # moto dates every upload 2010: with a huge age limit the open upload is `running`,
    # with the default 24 h it is `abandoned` (an agent that died mid-upload).
    listed = a.request("list-backups", {"abandoned-after-hours": 1e6}).expect_ok()["backups"]
    default = a.request("list-backups").expect_ok()["backups"]
    assert {b["backup-id"]: b["status"] for b in default}[running] == "abandoned"
    got = [(b["backup-id"], b["status"]) for b in listed]
    assert got == [
        (finished, "finished"),
        (failed, "failed"),
        (incomplete, "incomplete"),
        (running, "running"),
    ]
    by_id = {b["backup-id"]: b for b in listed}
    assert by_id[failed]["code"] == "valkey-auth" and by_id[failed]["unit"] == "valkey/3"
    assert by_id[incomplete]["size-bytes"] == 10
    assert by_id[running]["unit"] == "valkey/3"

    other_listing = a.request("list-backups", {"cluster": "other.valkey"}).expect_ok()
    assert [b["backup-id"] for b in other_listing["backups"]] == [other]
    # An unreadable manifest is not fatal to the listing: that backup is `damaged`.
    [damaged] = other_listing["backups"]
    assert damaged["status"] == "damaged", damaged
    assert "manifest.json cannot be parsed" in damaged["reason"], damaged

    table = a.cli("list-backups")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "cluster: list.valkey" and lines[1].startswith("BACKUP-ID")
    assert "valkey-auth: Valkey rejected the credentials" in table.stdout
    as_json = a.cli("list-backups", "--json")
    assert json.loads(as_json.stdout)["backups"] == default


def test_cli_subcommands_do_what_the_socket_does(valkey_server, agent, moto, moto_bucket, tmp_path):
    source = valkey_server("redis7", password="pw-cli")
    source.client().set("k", "v")
    a = agent()
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(configure_params(source, moto, moto_bucket, cluster="cli.redis")))
    conf.chmod(0o600)
    out = a.cli("configure", "--file", str(conf))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bucket"] == moto_bucket
    out = a.cli("create-backup")
    assert out.returncode == 0, out.stderr
    backup = json.loads(out.stdout)
    assert "streaming" in out.stderr or "completing" in out.stderr  # progress shown
    status = json.loads(a.cli("status").stdout)
    assert status["last-backup"]["backup-id"] == backup["backup-id"]
    assert status["busy"] is False
    bad = a.cli("configure", "--file", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "missing.json" in bad.stderr


@pytest.mark.parametrize("source_name", SOURCES)
def test_disk_based_sync_has_no_eof_marker_and_is_stored_exactly(
    source_name, valkey_server, agent, moto, moto_bucket, components, tmp_path
):
    # With repl-diskless-sync no the server sends a length-prefixed file instead of a
    # stream ended by an EOF marker; both must store exactly the RDB.
    server = valkey_server("valkey8", extra_args=["--repl-diskless-sync", "no"])
    load_dataset(server, size_mb=8, seed=31)
    a = agent()
    _configure(a, server, moto, "disk.valkey", moto_bucket, source=source_name)
    result = a.request("create-backup").expect_ok()
    data = moto.client().get_object(Bucket=moto_bucket, Key=result["data-key"])["Body"].read()
    rdb = tmp_path / "disk.rdb"
    rdb.write_bytes(data)
    assert check_rdb(components, rdb, tmp_path) == len(data) == result["size-bytes"]
    manifest_key = result["data-key"].replace("data.rdb", "manifest.json")
    assert get_json(moto.client(), moto_bucket, manifest_key)["eof-mark-stripped"] is False
