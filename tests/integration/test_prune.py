"""prune-backups against real stores: retention rules, Object Lock (retention and legal
hold, per version), every version deleted without delete markers, dry runs that change
nothing, lock states that cannot be read, the upload a killed agent leaves open, and the
clock of the unit that named a backup checked against the store's."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import http.server
import json
import threading
import urllib.parse

import pytest
from checks import backups_in_order, bucket_state, prefix_of
from faults import cli_wrapper
from harness import (
    AgentProtocolError,
    configure_params,
    load_dataset,
    unique_bucket_name,
    wait_until,
)
from harness.s3proxy import S3Proxy
from harness.seed import backup_id, id_time

MiB = 1024 * 1024

# Backups "from 2020", made by copying a real backup's objects under older ids: real
# objects in the real store, old enough for any policy without waiting days. The store
# stamps the copies with today's time, and the agent keeps a backup that is new by the
# store's time as well as one new by its id's, so the agent reaches the store through a proxy
# that gives these objects the times an honest unit would have written them at
# (`_as_old_as_their_ids`).
OLD_FREE = "20200101T000000Z-valkey-0-aaaaaa"
OLD_RETAINED = "20200102T000000Z-valkey-0-bbbbbb"
OLD_HELD = "20200103T000000Z-valkey-0-cccccc"
OLD_FAILED = "20200104T000000Z-valkey-0-dddddd"
OLD_IDS = (OLD_FREE, OLD_RETAINED, OLD_HELD, OLD_FAILED)


def _as_old_as_their_ids(*ids: str):
    """A restamp rule for the proxy (harness/s3proxy.py): every object of the backups `ids`
    gets its id's time plus five minutes, the time an honest unit would have written it
    at. (S3 cannot backdate an object.)"""

    def stamp(key: str) -> dt.datetime | None:
        for bid in ids:
            if f"/{bid}/" in key:
                return id_time(bid) + dt.timedelta(minutes=5)
        return None

    return stamp


@pytest.fixture
def aged():
    """`aged(store, *ids) -> S3Proxy`: a proxy in front of `store` that shows the objects
    of `ids` (default: the OLD_* backups) as written when their ids say; closed at the
    end of the test."""
    proxies: list[S3Proxy] = []

    def make(store, *ids: str) -> S3Proxy:
        proxy = S3Proxy(store.endpoint).restamp(_as_old_as_their_ids(*(ids or OLD_IDS)))
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


def _put(s3, bucket: str, key: str, body: bytes) -> str | None:
    """PutObject with Content-MD5 (Object Lock buckets require it); the new VersionId."""
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    return s3.put_object(Bucket=bucket, Key=key, Body=body, ContentMD5=md5).get("VersionId")


def _copy_backup(s3, bucket: str, prefix: str, src: str, dst: str) -> None:
    """Every object of backup `src` again under the id `dst`; the manifest is rewritten to
    describe `dst` (a manifest that names another backup is not restorable)."""
    # The whole bucket is listed: moto's signature check mishandles a '/' in a prefix.
    for key in [k for k in bucket_state(s3, bucket).keys if k.startswith(f"{prefix}{src}/")]:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if key.endswith("/manifest.json"):
            manifest = json.loads(body)
            manifest["backup-id"] = dst
            manifest["data-key"] = manifest["data-key"].replace(f"/{src}/", f"/{dst}/")
            body = json.dumps(manifest).encode()
        _put(s3, bucket, key.replace(f"/{src}/", f"/{dst}/"), body)


def _failure_record(backup_id: str) -> bytes:
    return json.dumps({"backup-id": backup_id, "code": "valkey-auth", "reason": "test"}).encode()


def _listing(moto, bucket: str):
    """The full state of a bucket: every version, every delete marker, every open upload."""
    v = moto.object_versions(bucket)
    uploads = moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return (
        sorted((x["Key"], x["VersionId"], x["ETag"]) for x in v["Versions"]),
        sorted((x["Key"], x["VersionId"]) for x in v["DeleteMarkers"]),
        sorted((u["Key"], u["UploadId"]) for u in uploads),
    )


def _by_id(entries):
    return {e["backup-id"]: e for e in entries}


def _backup_agent(agent, valkey_server, store, bucket, cluster, **s3_extra):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=0.2, dbs=(0,), seed=9)
    a = agent()
    params = configure_params(server, store, bucket, cluster=cluster, s3_extra=s3_extra or None)
    a.request("configure", params).expect_ok()
    return a, params


def test_prune_keeps_locked_and_newest_backups_and_deletes_every_version_of_the_rest(
    agent, valkey_server, moto, aged
):
    s3 = moto.client()
    # Object Lock without a default rule: retention and legal hold are set per object below.
    bucket = unique_bucket_name("vb-prune")
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    a, params = _backup_agent(
        agent, valkey_server, moto, bucket, "prune.valkey", endpoint=aged(moto).endpoint
    )
    prefix = prefix_of(params)
    older, newest = backups_in_order(a)

    for old in (OLD_FREE, OLD_RETAINED, OLD_HELD):
        _copy_backup(s3, bucket, prefix, newest, old)
    # A second version of OLD_FREE's snapshot and a verification record: all must go.
    _put(s3, bucket, f"{prefix}{OLD_FREE}/data.rdb", b"an older version")
    _put(s3, bucket, f"{prefix}{OLD_FREE}/verify/20200102T000000Z-abcdef.json", b"{}")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    s3.put_object_retention(
        Bucket=bucket,
        Key=f"{prefix}{OLD_RETAINED}/data.rdb",
        Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until},
    )
    s3.put_object_legal_hold(
        Bucket=bucket, Key=f"{prefix}{OLD_HELD}/manifest.json", LegalHold={"Status": "ON"}
    )
    _put(s3, bucket, f"{prefix}{OLD_FAILED}/failure.json", _failure_record(OLD_FAILED))
    # Not ours, or not a backup: never touched.
    foreign = [
        f"{prefix}README.txt",
        f"{prefix}not-an-id/data.rdb",
        f"valkey/prune.valkey2/{OLD_FREE}/data.rdb",  # a sibling cluster sharing a prefix
        f"valkey/other.valkey/{OLD_FREE}/manifest.json",
    ]
    for key in foreign:
        _put(s3, bucket, key, b"x")
    before = _listing(moto, bucket)

    # Dry run: reports everything, changes nothing.
    dry = a.request("prune-backups", {"keep-days": 0}).expect_ok()
    assert dry["dry-run"] is True
    assert dry["policy"] == {
        "keep-last": None,
        "keep-days": 0.0,
        "keep-days-from": "request",
        "abandoned-after-hours": 24.0,
    }
    would = _by_id(dry["deleted"])
    assert set(would) == {older, OLD_FREE, OLD_FAILED}, dry
    assert (would[OLD_FREE]["objects"], would[OLD_FREE]["versions"]) == (3, 4)
    assert would[OLD_FAILED]["status"] == "failed"
    assert all(e["why"] for e in dry["deleted"])
    kept = _by_id(dry["kept"])
    assert set(kept) == {newest, OLD_RETAINED, OLD_HELD}, dry
    assert kept[newest]["why"] == "the newest finished backup is always kept"
    assert kept[OLD_RETAINED]["why"].startswith("retained until "), kept
    assert "(COMPLIANCE)" in kept[OLD_RETAINED]["why"]
    assert kept[OLD_HELD]["why"].startswith("legal hold"), kept
    assert dry["skipped"] == [] and dry["aborted-uploads"] == []
    cli = a.cli("prune-backups", "--keep-days", "0")
    assert cli.returncode == 0, cli.stderr
    assert "DRY RUN" in cli.stdout and "would delete (3):" in cli.stdout, cli.stdout
    assert f"{OLD_HELD}  finished: legal hold" in cli.stdout, cli.stdout
    assert json.loads(a.cli("prune-backups", "--keep-days", "0", "--json").stdout) == dry
    assert _listing(moto, bucket) == before
    assert moto.delete_attempts(bucket) == []

    # For real: the same decisions, and exactly those versions are deleted.
    done = a.request("prune-backups", {"keep-days": 0, "confirm": True}).expect_ok()
    assert done["dry-run"] is False
    assert done["deleted"] == dry["deleted"]
    assert [k["backup-id"] for k in done["kept"]] == [k["backup-id"] for k in dry["kept"]]
    versions, markers, uploads = _listing(moto, bucket)
    assert markers == [] and uploads == []
    gone = {older, OLD_FREE, OLD_FAILED}
    expected = [v for v in before[0] if not v[0].startswith(tuple(f"{prefix}{g}/" for g in gone))]
    assert versions == expected
    for key in foreign:
        assert any(v[0] == key for v in versions), key
    # DeleteObjects batches naming every version (so no delete marker is left), one per
    # step: the manifests (never a manifest without its snapshot), other records, the
    # snapshots, the failure records; no single DeleteObject.
    attempts = moto.delete_attempts(bucket)
    deleted_versions = [v for v in before[0] if v not in expected]
    assert len(deleted_versions) == sum(e["versions"] for e in done["deleted"])
    assert all(r.method == "POST" and "delete" in r.query_keys for r in attempts), attempts
    assert all(r.status == 200 for r in attempts), attempts
    assert len(attempts) == 4, attempts

    listed = a.request("list-backups").expect_ok()["backups"]
    assert [(b["backup-id"], b["status"]) for b in listed] == [
        (newest, "finished"),
        (OLD_HELD, "finished"),
        (OLD_RETAINED, "finished"),
    ]
    # Nothing is left to prune; a second confirmed run deletes nothing.
    again = a.request("prune-backups", {"keep-days": 0, "confirm": True}).expect_ok()
    assert again["deleted"] == [] and len(moto.delete_attempts(bucket)) == len(attempts)


def test_compliance_default_retention_keeps_every_backup(agent, valkey_server, moto, aged):
    bucket = moto.create_object_lock_bucket(mode="COMPLIANCE", days=1)
    a, params = _backup_agent(
        agent, valkey_server, moto, bucket, "locked.valkey", endpoint=aged(moto).endpoint
    )
    first, newest = backups_in_order(a)
    _copy_backup(moto.client(), bucket, prefix_of(params), newest, OLD_FREE)
    before = _listing(moto, bucket)
    out = a.request("prune-backups", {"keep-last": 1, "confirm": True}).expect_ok()
    assert out["deleted"] == [] and out["skipped"] == []
    kept = _by_id(out["kept"])
    assert kept[newest]["why"] == "the newest finished backup"
    for locked in (first, OLD_FREE):
        why = kept[locked]["why"]
        assert why.startswith("retained until ") and "(COMPLIANCE)" in why, why
        assert "the policy alone would delete it (not the newest finished backup)" in why
    assert _listing(moto, bucket) == before
    assert moto.delete_attempts(bucket) == []


class _HeadDenyingProxy:
    """An HTTP proxy in front of a real S3 server that answers HeadObject on keys holding
    `needle` with 403, as a store does for a key without s3:GetObject, and
    GetObjectLockConfiguration with 403 too (so the agent cannot tell the bucket has no
    Object Lock and must read every version's lock state); everything else is forwarded
    untouched. (moto's own IAM cannot serve here: its signature check refuses
    any listing whose prefix holds a '/', and the agent's always does.)"""

    def __init__(self, upstream: str, needle: str):
        target = urllib.parse.urlsplit(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "HEAD" and needle in urllib.parse.unquote(self.path):
                    proxy.denied.append(self.path)
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                query = urllib.parse.urlsplit(self.path).query
                if self.command == "GET" and "object-lock" in query:
                    denied = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(denied)))
                    self.end_headers()
                    self.wfile.write(denied)
                    return
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                skip = {"connection", "expect", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response_only(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() in skip or (k.lower() == "content-length" and not self._head):
                        continue
                    self.send_header(k, v)
                if not self._head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not self._head:
                    self.wfile.write(data)

            @property
            def _head(self) -> bool:
                return self.command == "HEAD"

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.denied: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_lock_state_that_cannot_be_read_skips_the_backup(
    agent, valkey_server, moto, moto_bucket, aged
):
    s3 = moto.client()
    proxy = _HeadDenyingProxy(aged(moto).endpoint, needle=OLD_RETAINED)
    try:
        a, params = _backup_agent(
            agent, valkey_server, moto, moto_bucket, "blind.valkey", endpoint=proxy.endpoint
        )
        prefix = prefix_of(params)
        newest = a.request("create-backup").expect_ok()["backup-id"]
        _copy_backup(s3, moto_bucket, prefix, newest, OLD_FREE)
        _copy_backup(s3, moto_bucket, prefix, newest, OLD_RETAINED)
        before = _listing(moto, moto_bucket)
        for confirm in (False, True):
            out = a.request("prune-backups", {"keep-days": 0, "confirm": confirm}).expect_ok()
            assert [d["backup-id"] for d in out["deleted"]] == [OLD_FREE], out
            assert [k["backup-id"] for k in out["kept"]] == [newest]
            [skipped] = out["skipped"]
            assert skipped["backup-id"] == OLD_RETAINED
            why = skipped["why"]
            assert "lock state of" in why and "cannot be read" in why and "403" in why, why
            assert "nothing deleted" in why
        assert proxy.denied
    finally:
        proxy.close()
    after = _listing(moto, moto_bucket)
    assert after[0] == [v for v in before[0] if f"/{OLD_FREE}/" not in v[0]]
    # Batched deletes only (which versions went is the listing above).
    assert all(r.method == "POST" for r in moto.delete_attempts(moto_bucket))


def test_prune_on_garage_deletes_plain_objects_and_defaults_to_delete_older_than_days(
    agent, valkey_server, garage, aged
):
    bucket = garage.create_bucket()
    a, params = _backup_agent(
        agent,
        valkey_server,
        garage,
        bucket,
        "garage.valkey",
        **{"delete-older-than-days": "7", "endpoint": aged(garage).endpoint},
    )
    s3 = garage.client()
    prefix = prefix_of(params)
    first, newest = backups_in_order(a)
    _copy_backup(s3, bucket, prefix, newest, OLD_FREE)
    _put(s3, bucket, f"{prefix}{OLD_FAILED}/failure.json", _failure_record(OLD_FAILED))

    # No rule given: the s3-integrator's delete-older-than-days is keep-days.
    out = a.request("prune-backups", {"confirm": True}).expect_ok()
    assert out["policy"]["keep-days"] == 7 and out["policy"]["keep-days-from"] == (
        "s3.delete-older-than-days"
    )
    assert {d["backup-id"]: d["why"] for d in out["deleted"]} == {
        OLD_FREE: "older than 7 days",
        OLD_FAILED: "failed backup older than 7 days",
    }
    assert {k["backup-id"]: k["why"] for k in out["kept"]} == {
        first: "younger than 7 days",
        newest: "younger than 7 days",
    }
    state = bucket_state(s3, bucket, prefix)
    assert not [k for k in state.keys if OLD_FREE in k or OLD_FAILED in k], state.keys

    out = a.request("prune-backups", {"keep-last": 1, "confirm": True}).expect_ok()
    assert [d["backup-id"] for d in out["deleted"]] == [first]
    assert out["deleted"][0]["why"] == "not the newest finished backup"
    state = bucket_state(s3, bucket, prefix)
    assert {k.split("/")[2] for k in state.keys} == {newest}


def test_prune_params_are_checked(agent, valkey_server, moto, moto_bucket):
    a, _ = _backup_agent(agent, valkey_server, moto, moto_bucket, "params.valkey")
    err = a.request("prune-backups").expect_error("bad-request")
    assert "give keep-last or keep-days" in err.message
    for bad in (
        {"keep-last": 0},
        {"keep-days": -1},
        {"keep-last": 1, "abandoned-after-hours": -1},
        {"keep-last": 1, "cluster": "other.valkey"},
        {"keep-last": "3"},
    ):
        a.request("prune-backups", bad).expect_error("bad-request")
    out = a.cli("prune-backups", "--keep-last", "0")
    assert out.returncode == 1 and "bad-request" in out.stderr


def test_upload_left_by_a_killed_agent_is_abandoned_then_aborted(
    agent, valkey_server, moto, moto_bucket, tmp_path
):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=12, dbs=(0,), seed=13)
    marker = tmp_path / "go"
    paused = cli_wrapper(tmp_path, server.cli, "pause", after_bytes=6 * MiB, marker=str(marker))
    params = configure_params(
        server, moto, moto_bucket, cluster="killed.valkey", backup={"part-size-bytes": 5 * MiB}
    )
    s3 = moto.client()
    slow = agent()
    slow.request(
        "configure", dict(params, valkey=dict(params["valkey"], cli=str(paused), source="cli"))
    ).expect_ok()
    pending = slow.request_async("create-backup")

    def upload_open():
        return (
            marker.with_name("go.reached").exists()
            and bucket_state(s3, moto_bucket, prefix_of(params)).uploads
        )

    [key] = wait_until(upload_open, timeout=30, what="an open multipart upload")
    backup_id = key.split("/")[2]
    # While the backup runs, a confirmed prune goes on (it does not take the unit lock)
    # and leaves the running backup and its upload alone; a dry run reports too.
    during = slow.request("prune-backups", {"keep-last": 1, "confirm": True}).expect_ok()
    assert _by_id(during["kept"])[backup_id]["why"].startswith("running"), during
    assert during["deleted"] == [] and during["aborted-uploads"] == []
    assert bucket_state(s3, moto_bucket, prefix_of(params)).uploads == [key]
    dry = slow.request("prune-backups", {"keep-last": 1, "abandoned-after-hours": 0})
    assert [e["backup-id"] for e in dry.expect_ok()["aborted-uploads"]] == [backup_id]

    slow.kill()  # SIGKILL: nothing aborts the upload
    marker.touch()  # let the paused wrapper run into the closed pipe and exit
    with pytest.raises(AgentProtocolError):
        pending.result(timeout=30)

    a = agent()
    a.request("configure", params).expect_ok()

    def listed(hours):
        out = a.request("list-backups", {"abandoned-after-hours": hours}).expect_ok()
        return [(b["backup-id"], b["status"]) for b in out["backups"]]

    assert listed(24) == [(backup_id, "running")]
    assert listed(0) == [(backup_id, "abandoned")]
    [entry] = a.request("list-backups", {"abandoned-after-hours": 0}).expect_ok()["backups"]
    assert "prune-backups aborts it" in entry["reason"]

    # Young uploads stay (default: 24 hours).
    out = a.request("prune-backups", {"keep-last": 1, "confirm": True}).expect_ok()
    assert out["aborted-uploads"] == []
    assert _by_id(out["kept"])[backup_id]["why"].startswith("running")
    before = _listing(moto, moto_bucket)
    assert len(before[2]) == 1

    dry = a.request("prune-backups", {"keep-last": 1, "abandoned-after-hours": 0}).expect_ok()
    [would] = dry["aborted-uploads"]
    assert (would["backup-id"], would["key"]) == (backup_id, key)
    assert would["initiated"] and "its agent is gone" in would["why"]
    assert dry["kept"] == [] and dry["deleted"] == []
    assert _listing(moto, moto_bucket) == before
    cli = a.cli("prune-backups", "--keep-last", "1", "--abandoned-after-hours", "0")
    assert "would abort uploads (1):" in cli.stdout, cli.stdout

    done = a.request(
        "prune-backups", {"keep-last": 1, "abandoned-after-hours": 0, "confirm": True}
    ).expect_ok()
    assert done["aborted-uploads"] == dry["aborted-uploads"]
    assert listed(0) == []
    assert s3.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", []) == []
    aborts = [
        r
        for r in moto.requests(moto_bucket)
        if r.method == "DELETE" and "uploadId" in r.query_keys and r.key == key
    ]
    assert len(aborts) == 1 and aborts[0].status == 204, aborts
    assert moto.delete_attempts(moto_bucket) == []


@pytest.mark.parametrize("damage", ["data-removed", "manifest-truncated", "data-truncated"])
def test_prune_never_deletes_the_newest_restorable_backup(
    damage, agent, valkey_server, moto, moto_bucket, aged
):
    # The newest backup has a manifest but cannot be restored; the only intact backup is
    # older. keep-last 1 must keep the intact one, and list-backups must say which is which.
    s3 = moto.client()
    a, params = _backup_agent(
        agent, valkey_server, moto, moto_bucket, "damaged.valkey", endpoint=aged(moto).endpoint
    )
    prefix = prefix_of(params)
    newest = a.request("create-backup").expect_ok()["backup-id"]
    _copy_backup(s3, moto_bucket, prefix, newest, OLD_FREE)  # intact, older
    data_key, manifest_key = f"{prefix}{newest}/data.rdb", f"{prefix}{newest}/manifest.json"
    if damage == "data-removed":
        s3.delete_object(Bucket=moto_bucket, Key=data_key)
    elif damage == "manifest-truncated":
        body = s3.get_object(Bucket=moto_bucket, Key=manifest_key)["Body"].read()
        _put(s3, moto_bucket, manifest_key, body[: len(body) // 2])
    else:
        body = s3.get_object(Bucket=moto_bucket, Key=data_key)["Body"].read()
        _put(s3, moto_bucket, data_key, body[:-100])

    listed = {b["backup-id"]: b for b in a.request("list-backups").expect_ok()["backups"]}
    assert listed[OLD_FREE]["status"] == "finished"
    assert listed[newest]["status"] == "damaged"
    assert listed[newest]["reason"].startswith("not restorable: "), listed[newest]

    out = a.request("prune-backups", {"keep-last": 1, "confirm": True}).expect_ok()
    assert out["deleted"] == []
    kept = {k["backup-id"]: k for k in out["kept"]}
    assert kept[OLD_FREE]["why"] == "the newest finished backup"
    assert kept[newest]["status"] == "damaged"
    assert "not restorable" in kept[newest]["why"]
    keys = bucket_state(s3, moto_bucket).keys
    assert f"{prefix}{OLD_FREE}/data.rdb" in keys and f"{prefix}{OLD_FREE}/manifest.json" in keys
    # The intact backup is what a restore gets.
    a.request("verify-backup", {"backup-id": OLD_FREE}).expect_ok()


def test_a_new_backup_from_a_unit_whose_clock_runs_behind_is_kept_by_the_stores_time(
    agent, valkey_server, moto, moto_bucket, aged
):
    # A real backup copied under an id a year back, with no backdating, is what a unit whose
    # clock runs a year behind writes today: by the store's word it is new. Beside it,
    # honest backups ten and twenty days old. By their ids the new one is the oldest:
    # retention keeps it by the store's time, beside the newest by id, and deletes the
    # twenty-day-old one.
    s3 = moto.client()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    honest = backup_id(now - dt.timedelta(days=10), "valkey/0")
    older = backup_id(now - dt.timedelta(days=20), "valkey/0")
    behind = backup_id(now - dt.timedelta(days=365), "valkey/1")
    proxy = aged(moto, honest, older)
    a, params = _backup_agent(
        agent, valkey_server, moto, moto_bucket, "behind.valkey", endpoint=proxy.endpoint
    )
    prefix = prefix_of(params)
    real = a.request("create-backup").expect_ok()["backup-id"]
    for bid in (honest, older, behind):
        _copy_backup(s3, moto_bucket, prefix, real, bid)
    for key in [k for k in bucket_state(s3, moto_bucket).keys if f"/{real}/" in k]:
        s3.delete_object(Bucket=moto_bucket, Key=key)

    listed = a.request("list-backups").expect_ok()["backups"]
    assert [(b["backup-id"], b["status"]) for b in listed] == [
        (honest, "finished"),
        (older, "finished"),
        (behind, "finished"),
    ]
    warning = listed[2]["warning"]
    assert "behind the store" in warning and "either time keeps it" in warning, warning
    assert "warning" not in listed[0] and "warning" not in listed[1]
    assert listed[0]["stored-at"] == (id_time(honest) + dt.timedelta(minutes=5)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    cli = a.cli("list-backups")
    assert cli.returncode == 0 and "behind the store" in cli.stdout, cli.stdout

    dry = a.request("prune-backups", {"keep-days": 7}).expect_ok()
    assert {k["backup-id"]: k["why"] for k in dry["kept"]} == {
        honest: "the newest finished backup is always kept",
        behind: "younger than 7 days by the store's time",
    }
    assert {d["backup-id"]: d["why"] for d in dry["deleted"]} == {older: "older than 7 days"}
    assert "behind the store" in _by_id(dry["kept"])[behind]["warning"]

    done = a.request("prune-backups", {"keep-last": 1, "confirm": True}).expect_ok()
    assert {k["backup-id"]: k["why"] for k in done["kept"]} == {
        honest: "the newest finished backup",
        behind: "the newest finished backup by the store's time",
    }
    assert [d["backup-id"] for d in done["deleted"]] == [older]
    assert {k.split("/")[2] for k in bucket_state(s3, moto_bucket, prefix).keys} == {
        behind,
        honest,
    }
    # What is kept is what a restore gets: today's snapshot, intact.
    a.request("verify-backup", {"backup-id": behind}).expect_ok()


def test_an_upload_left_under_a_far_future_id_is_abandoned_and_aborted(
    agent, valkey_server, moto, moto_bucket
):
    # A unit whose clock said 2099 opened an upload 30 hours ago by the store's clock, and
    # died. Its id must not make the upload look young for ever.
    s3 = moto.client()
    forged = "20990101T000000Z-valkey-9-abcdef"
    opened = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=30)
    with S3Proxy(moto.endpoint) as proxy:
        proxy.restamp(lambda key: opened if f"/{forged}/" in key else None)
        a, params = _backup_agent(
            agent, valkey_server, moto, moto_bucket, "future.valkey", endpoint=proxy.endpoint
        )
        key = f"{prefix_of(params)}{forged}/data.rdb"
        s3.create_multipart_upload(Bucket=moto_bucket, Key=key)
        [entry] = a.request("list-backups").expect_ok()["backups"]
        assert (entry["backup-id"], entry["status"]) == (forged, "abandoned"), entry
        done = a.request("prune-backups", {"keep-last": 1, "confirm": True}).expect_ok()
        [aborted] = done["aborted-uploads"]
        assert (aborted["backup-id"], aborted["key"]) == (forged, key)
        assert aborted["initiated"] == opened.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert s3.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", []) == []


def test_a_live_upload_from_a_unit_two_hours_fast_is_not_aborted(
    agent, valkey_server, moto, moto_bucket
):
    # A unit whose clock runs two hours fast is uploading right now; moto reports the
    # upload's Initiated as a fixed date in 2010. The id's time is its floor: it is young.
    s3 = moto.client()
    a, params = _backup_agent(agent, valkey_server, moto, moto_bucket, "fast.valkey")
    kept = a.request("create-backup").expect_ok()["backup-id"]
    fast = backup_id(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2), "valkey/1")
    key = f"{prefix_of(params)}{fast}/data.rdb"
    upload = s3.create_multipart_upload(Bucket=moto_bucket, Key=key)["UploadId"]
    [initiated] = [u["Initiated"] for u in s3.list_multipart_uploads(Bucket=moto_bucket)["Uploads"]]
    assert initiated.year < 2020, initiated  # the store's bogus date this test is about
    statuses = {
        b["backup-id"]: b["status"] for b in a.request("list-backups").expect_ok()["backups"]
    }
    assert statuses == {kept: "finished", fast: "running"}
    done = a.request("prune-backups", {"keep-last": 1, "confirm": True}).expect_ok()
    assert done["aborted-uploads"] == [] and done["deleted"] == []
    uploads = s3.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [(key, upload)]
