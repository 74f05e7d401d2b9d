"""Backup, verify, restore and prune through a lossy network: a proxy in front of a real
S3 server (moto) answers 5xx, resets the connection before forwarding, or lets the store
carry a write out and then drops the answer — the faults a real store cannot be made to
produce on command. Seeded and repeatable.

After every operation the reported outcome is compared with what the bucket holds:
- a backup reported finished has its manifest and its exact data (size and SHA-256);
- a backup reported failed has no data object and no manifest;
- no multipart upload is ever left open;
- a verification reported with a record has that record, and one reported failed because
  the store failed left none;
- a restore that failed left the live dump as it was;
- a prune never loses a finished backup it reported kept, and a backup it reported
  deleted has no object left.

`VB_FAULT_ROUNDS` (default 6) sets how many rounds of each operation run; the CI run uses
the default. `scripts/fault-soak.sh` runs a long one.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass

import pytest
from checks import bucket_state, get_json, prefix_of, sha256_hex
from harness import configure_params, load_dataset
from harness.s3proxy import Action, Request, S3Proxy

MiB = 1024 * 1024
ROUNDS = int(os.environ.get("VB_FAULT_ROUNDS", "6"))
SEED = int(os.environ.get("VB_FAULT_SEED", "20261130"))
KINDS = ("503", "500", "reset", "lose-answer")


def classify(r: Request) -> str:
    """The S3 operation a path-style request is."""
    q = r.query
    if r.method == "POST" and "uploads" in q:
        return "CreateMultipartUpload"
    if r.method == "PUT" and "partNumber" in q:
        return "UploadPart"
    if r.method == "POST" and "uploadId" in q:
        return "CompleteMultipartUpload"
    if r.method == "POST" and "delete" in q:
        return "DeleteObjects"
    if r.method == "DELETE" and "uploadId" in q:
        return "AbortMultipartUpload"
    if r.method == "PUT":
        return "PutObject"
    if r.method == "DELETE":
        return "DeleteObject"
    if r.method == "HEAD":
        return "HeadObject"
    if r.method == "GET" and "uploads" in q:
        return "ListMultipartUploads"
    if r.method == "GET" and ("list-type" in q or "versions" in q or r.path.count("/") <= 1):
        return "List"
    return "GetObject"


@dataclass(frozen=True)
class Fault:
    op: str
    nth: int  # the nth request of that op in this round (0-based)
    kind: str

    def action(self) -> Action:
        if self.kind == "reset":
            return Action.reset()
        if self.kind == "lose-answer":
            return Action.lose_answer()
        return Action.status(int(self.kind))


class FaultPlan:
    """Injects each planned fault once, on its op's nth request; counts what it did."""

    def __init__(self, proxy: S3Proxy):
        self.faults: list[Fault] = []
        self.seen: Counter[str] = Counter()
        self.injected: list[Fault] = []
        proxy.rule(self._rule)

    def arm(self, faults: list[Fault]) -> None:
        self.faults = list(faults)
        self.seen = Counter()

    def _rule(self, r: Request) -> Action | None:
        op = classify(r)
        n = self.seen[op]
        self.seen[op] += 1
        for f in self.faults:
            if f.op == op and f.nth == n:
                self.faults.remove(f)
                self.injected.append(f)
                return f.action()
        return None


@pytest.fixture
def lossy(moto, moto_bucket):
    with S3Proxy(moto.endpoint) as proxy:
        yield proxy, FaultPlan(proxy)


def _agent_through(agent, server, moto, bucket, proxy, cluster):
    a = agent()
    params = configure_params(
        server,
        moto,
        bucket,
        cluster=cluster,
        s3_extra={"endpoint": proxy.endpoint},
        backup={"part-size-bytes": 5 * MiB},
    )
    a.request("configure", params).expect_ok()
    return a, params


def _open_uploads(s3, bucket) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _check_backup_outcome(s3, bucket, prefix, resp, agent) -> str:
    """The invariants of one create-backup; returns 'finished' or the error code."""
    if resp.ok:
        result = resp.expect_ok()
        bid = result["backup-id"]
    else:
        bid = agent.request("status").expect_ok()["last-backup"]["backup-id"]
    state = bucket_state(s3, bucket, prefix)
    objects = state.objects_of(bid)
    assert not _open_uploads(s3, bucket), f"{bid}: an upload was left open"
    if resp.ok:
        assert {"data.rdb", "manifest.json"} <= objects, (bid, objects)
        manifest = get_json(s3, bucket, f"{prefix}{bid}/manifest.json")
        data = s3.get_object(Bucket=bucket, Key=f"{prefix}{bid}/data.rdb")["Body"].read()
        assert len(data) == manifest["stored-size-bytes"] == result["size-bytes"]
        assert sha256_hex(data) == manifest["sha256"] == result["sha256"]
        assert "failure.json" not in objects, (bid, objects)
        return "finished"
    code = resp.error.code
    assert "data.rdb" not in objects, f"{bid}: reported {code} but a data object exists"
    assert "manifest.json" not in objects, f"{bid}: reported {code} but a manifest exists"
    return code


def test_backups_through_a_lossy_network_report_exactly_what_the_bucket_holds(
    valkey_server, agent, moto, moto_bucket, lossy
):
    proxy, plan = lossy
    rng = random.Random(SEED)
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=11, dbs=(0,), seed=1)  # three 5 MiB parts
    a, params = _agent_through(agent, server, moto, moto_bucket, proxy, "lossy.valkey")
    s3, prefix = moto.client(), prefix_of(params)
    write_ops = (
        ["CreateMultipartUpload"] * 3
        + ["UploadPart"] * 3
        + ["CompleteMultipartUpload"] * 3
        + ["PutObject"] * 3
        + ["AbortMultipartUpload"]
    )
    outcomes: Counter[str] = Counter()
    for _ in range(ROUNDS * 3):
        faults = {
            Fault(
                rng.choice(write_ops),
                rng.choice((0, 0, 1)),
                rng.choice(KINDS),
            )
            for _ in range(rng.choice((1, 2, 3)))
        }
        if rng.random() < 0.4:
            # A burst: one op fails on every attempt the client makes, so the retries
            # give up and the backup must fail cleanly.
            op, kind = rng.choice(write_ops), rng.choice(KINDS)
            faults |= {Fault(op, n, kind) for n in range(6)}
        plan.arm(sorted(faults, key=repr))
        resp = a.request("create-backup", timeout=300)
        outcomes[_check_backup_outcome(s3, moto_bucket, prefix, resp, a)] += 1
    print(f"backup outcomes: {dict(outcomes)}; faults injected: {len(plan.injected)}")
    assert len(plan.injected) >= ROUNDS * 3
    assert outcomes["finished"] >= 1  # the store is reachable: some must succeed
    assert sum(outcomes.values()) > outcomes["finished"], "no burst made a backup fail"


def test_a_retried_request_is_logged_and_the_backup_still_finishes(
    valkey_server, agent, moto, moto_bucket, lossy
):
    proxy, plan = lossy
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=11, dbs=(0,), seed=4)  # three 5 MiB parts
    a, params = _agent_through(agent, server, moto, moto_bucket, proxy, "retried.valkey")
    # The first UploadPart request gets a 503, the second a reset connection (two parts
    # are in flight: the same part's retry or the other part's first attempt); the client
    # retries each and the backup finishes.
    plan.arm([Fault("UploadPart", 0, "503"), Fault("UploadPart", 1, "reset")])
    resp = a.request("create-backup", timeout=300)
    outcome = _check_backup_outcome(moto.client(), moto_bucket, prefix_of(params), resp, a)
    assert outcome == "finished", resp
    assert len(plan.injected) == 2
    warnings = [
        line for line in a.log_text().splitlines() if "an S3 request attempt failed" in line
    ]
    assert any("the store answered 503" in w for w in warnings), warnings
    assert any("the connection failed" in w for w in warnings), warnings
    assert all('operation="UploadPart"' in w and "max_attempts=3" in w for w in warnings), warnings
    assert sorted(w.split("attempt=")[1][0] for w in warnings) in (["1", "1"], ["1", "2"])
    assert len(warnings) == 2, warnings


def _verify_records(s3, bucket, prefix, bid) -> set[str]:
    return {k for k in bucket_state(s3, bucket, prefix).keys if f"/{bid}/verify/" in k}


def test_verify_and_restore_through_a_lossy_network_never_misreport(
    valkey_server, agent, moto, moto_bucket, lossy
):
    proxy, plan = lossy
    rng = random.Random(SEED + 1)
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=6, dbs=(0,), seed=2)
    a, params = _agent_through(agent, server, moto, moto_bucket, proxy, "lossy-read.valkey")
    s3, prefix = moto.client(), prefix_of(params)
    bid = a.request("create-backup").expect_ok()["backup-id"]
    outcomes: Counter[str] = Counter()

    for _ in range(ROUNDS):
        before = _verify_records(s3, moto_bucket, prefix, bid)
        faults = {
            Fault(rng.choice(["GetObject", "GetObject", "PutObject"]), rng.choice((0, 1)), k)
            for k in rng.sample(KINDS, rng.choice((1, 2)))
        }
        if rng.random() < 0.4:
            op, kind = rng.choice(["GetObject", "PutObject"]), rng.choice(KINDS)
            faults |= {Fault(op, n, kind) for n in range(6)}
        plan.arm(sorted(faults, key=repr))
        resp = a.request("verify-backup", {"backup-id": bid})
        after = _verify_records(s3, moto_bucket, prefix, bid)
        new = after - before
        if resp.ok:
            result = resp.expect_ok()
            assert result["record-key"] in new, (result, new)
            assert get_json(s3, moto_bucket, result["record-key"])["ok"] is True
            outcomes["verified"] += 1
        else:
            # A store failure is no verdict: nothing may claim the backup was checked.
            assert resp.error.code.startswith("s3-"), resp.error
            assert not new, f"verify reported {resp.error.code} but wrote {new}"
            outcomes[resp.error.code] += 1
        assert not _open_uploads(s3, moto_bucket)

    # Restores: a failed download leaves the live data exactly as it was.
    c = server.client()
    for _ in range(ROUNDS):
        c.flushall()
        c.set("live", "yes")
        kind = rng.choice(KINDS)
        burst = 6 if rng.random() < 0.4 else 1
        faults = {Fault("GetObject", n, kind) for n in range(burst)}
        plan.arm(sorted(faults, key=repr))
        resp = a.request("restore-backup", {"step": "prepare", "backup-id": bid})
        if resp.ok:
            rid = resp.expect_ok()["restore-id"]
            a.request("restore-backup", {"step": "abort", "restore-id": rid}).expect_ok()
            outcomes["restore-prepared"] += 1
        else:
            outcomes[f"restore-{resp.error.code}"] += 1
        assert c.get("live") == b"yes"
        assert not [n for n in os.listdir(server.dir) if n.endswith(".tmp")]
    print(f"read outcomes: {dict(outcomes)}; faults injected: {len(plan.injected)}")
    assert len(plan.injected) >= ROUNDS


def test_prune_through_a_lossy_network_loses_no_kept_backup(
    valkey_server, agent, moto, moto_bucket, lossy
):
    proxy, plan = lossy
    rng = random.Random(SEED + 2)
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=0.3, dbs=(0,), seed=3)
    a, params = _agent_through(agent, server, moto, moto_bucket, proxy, "lossy-prune.valkey")
    s3, prefix = moto.client(), prefix_of(params)
    for _ in range(ROUNDS):
        for _ in range(3):
            a.request("create-backup").expect_ok()
        # The backup retention must never delete: the newest finished one by its id's time,
        # ties by id. A round takes under a second, so an earlier round's kept backup can
        # share this round's second and outrank all three by its random suffix.
        before = bucket_state(s3, moto_bucket, prefix)
        newest = max(k.split("/")[-2] for k in before.keys if k.endswith("/manifest.json"))
        faults = {
            Fault(rng.choice(["DeleteObjects", "GetObject", "List"]), rng.choice((0, 1, 2)), k)
            for k in rng.sample(KINDS, 2)
        }
        plan.arm(sorted(faults, key=repr))
        resp = a.request("prune-backups", {"keep-last": 1, "confirm": True})
        state = bucket_state(s3, moto_bucket, prefix)
        # Whatever happened, the newest backup is whole and restorable.
        assert {"data.rdb", "manifest.json"} <= state.objects_of(newest)
        a.request("verify-backup", {"backup-id": newest}).expect_ok()
        if resp.ok:
            out = resp.expect_ok()
            for d in out["deleted"]:
                assert not state.objects_of(d["backup-id"]), d
            for k in out["kept"]:
                if k["status"] == "finished":
                    assert {"data.rdb", "manifest.json"} <= state.objects_of(k["backup-id"])
        else:
            assert resp.error.code.startswith("s3-"), resp.error
        # No backup is ever left as a manifest without its data.
        for key in state.keys:
            if key.endswith("/manifest.json"):
                assert key.replace("manifest.json", "data.rdb") in state.keys, key
    print(f"prune faults injected: {len(plan.injected)}")
