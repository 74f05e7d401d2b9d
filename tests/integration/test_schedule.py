"""Scheduled backups against real servers: two agents of one cluster (a primary and a real
replica of it) share a schedule firing every two seconds; the write-once claim gives each
slot to exactly one unit, the replica while it lives, then the primary; retention runs
after every scheduled backup. Metrics are scraped over HTTP, and the alert rules the
charm hands to COS are evaluated by promtool against what was scraped."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from checks import backups_in_order, bucket_state, get_json, prefix_of
from harness import configure_params, free_port, load_dataset, wait_until
from harness.s3proxy import Action, S3Proxy

RULES = Path(__file__).resolve().parents[2] / "charm/src/prometheus_alert_rules/valkey_backup.rules"
CLUSTER = "sched.valkey"
KEEP = 3


def _claims(s3, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Slot name → claim record, for every claim in the bucket."""
    keys = bucket_state(s3, bucket, f"{prefix}claims/").keys
    return {k.rsplit("/", 1)[1][: -len(".json")]: get_json(s3, bucket, k) for k in keys}


def _finished(s3, bucket: str, prefix: str) -> list[str]:
    """Ids of the backups that have a manifest, oldest first."""
    keys = bucket_state(s3, bucket, prefix).keys
    return sorted(k[len(prefix) :].split("/")[0] for k in keys if k.endswith("/manifest.json"))


def _last_scheduled(agent) -> dict[str, Any] | None:
    return agent.request("status").expect_ok()["schedule"]["last-scheduled"]


def test_each_slot_is_backed_up_once_on_the_replica_then_on_the_primary_with_retention(
    agent, valkey_server, moto
):
    primary = valkey_server("valkey8")
    load_dataset(primary, size_mb=0.05, dbs=(0,), seed=3)
    replica = valkey_server("valkey8")
    replica.client().replicaof(primary.host, primary.port)
    wait_until(
        lambda: replica.client().info("replication")["master_link_status"] == "up",
        timeout=20,
        what="the replica to sync",
    )
    bucket = moto.create_bucket()
    # Slots 4 s apart and a 2 s head start for the replica: room for a loaded 2-core
    # machine to claim, back up and apply retention within each slot.
    schedule = {"cron": "*/4 * * * * *", "from": "replica", "primary-delay-seconds": 2}
    common = {"schedule": schedule, "retention": {"keep-last": KEEP}}
    p_params = configure_params(primary, moto, bucket, cluster=CLUSTER, unit="valkey/0", **common)
    r_params = configure_params(replica, moto, bucket, cluster=CLUSTER, unit="valkey/1", **common)
    # The charm leaves the cli out where none is installed: the scheduler must ask the
    # role through the built-in client then.
    for params in (p_params, r_params):
        del params["valkey"]["cli"]
    prefix = prefix_of(p_params)
    s3 = moto.client()
    on_primary, on_replica = agent(), agent()
    # The replica first: a unit schedules the slots after its configure, so a slot that
    # began between the two configures would otherwise be the primary's alone, and the
    # primary would rightly take it while the replica lives.
    on_replica.request("configure", r_params).expect_ok()
    on_primary.request("configure", p_params).expect_ok()

    status = on_replica.request("status").expect_ok()["schedule"]
    assert status["cron"] == "*/4 * * * * *" and status["from"] == "replica"
    assert status["period-seconds"] == 4 and status["next-slot"] is not None

    # Five slots on the replica; after each, retention has left the newest KEEP backups.
    seen: list[str] = []
    while len(seen) < 5:
        last = wait_until(
            lambda: (s := _last_scheduled(on_replica)) and s["slot"] not in seen and s,
            timeout=20,
            what="the replica's next scheduled slot",
        )
        assert last["result"] == "backed-up", last
        assert last["taken-by"] == "valkey/1" and last["role"] == "replica"
        assert last["retention"]["applied"] is True, last
        seen.append(last["slot"])
        claimed = [c["backup-id"] for _, c in sorted(_claims(s3, bucket, prefix).items())]
        finished = _finished(s3, bucket, prefix)
        # The newest KEEP claimed backups, except one the next slot may be writing now.
        upto = claimed[: claimed.index(last["backup-id"]) + 1]
        assert finished[: len(upto[-KEEP:])] == upto[-KEEP:], (finished, claimed)
        if len(seen) == 1:
            # The primary, which did not take the slot, learns of the replica's success
            # at its next wake-up, long before its look-back (which judges a slot only
            # primary-delay + 10 s after it): it is not shown late meanwhile.
            p_sched = wait_until(
                lambda slot=last["slot"]: (
                    (s := on_primary.request("status").expect_ok()["schedule"])
                    and (s["last-success-at"] or "") >= slot
                    and s
                ),
                timeout=10,
                what="the primary to learn of the replica's success",
            )
            assert p_sched["too-old"] is False
        primary_last = _last_scheduled(on_primary)
        if primary_last is not None and primary_last["slot"] == last["slot"]:
            assert primary_last["result"] == "taken-by-other"
            assert primary_last["taken-by"] == "valkey/1"
            assert primary_last["backup-id"] == last["backup-id"]

    # The replica's agent dies: the next slot goes to the primary, after its delay.
    on_replica.kill()
    taken = wait_until(
        lambda: (s := _last_scheduled(on_primary)) and s["result"] == "backed-up" and s,
        timeout=20,
        what="the primary to take a slot",
    )
    assert taken["taken-by"] == "valkey/0" and taken["role"] == "primary"
    manifest = get_json(s3, bucket, f"{prefix}{taken['backup-id']}/manifest.json")
    assert manifest["unit"] == "valkey/0"

    # One claim per slot and one backup per claim: every slot from the first on has a
    # claim (none missed), and each started exactly one data upload.
    claims = _claims(s3, bucket, prefix)
    slots = sorted(claims)
    first = time.strptime(slots[0], "%Y%m%dT%H%M%SZ")
    last_slot = time.strptime(slots[-1], "%Y%m%dT%H%M%SZ")
    expected = (time.mktime(last_slot) - time.mktime(first)) // 4 + 1
    assert len(slots) == expected, slots
    by_unit = {c["unit"] for c in claims.values()}
    assert by_unit == {"valkey/0", "valkey/1"}
    replica_slots = [s for s, c in claims.items() if c["unit"] == "valkey/1"]
    assert len(replica_slots) >= 5
    assert all(c["unit"] == "valkey/0" for s, c in claims.items() if s > max(replica_slots))
    # While the replica lived, it took every slot (the primary only stands in).
    by_slot = sorted((s, c["unit"]) for s, c in claims.items())
    assert all(c["unit"] == "valkey/1" for s, c in claims.items() if s <= max(replica_slots)), (
        by_slot
    )
    # A data object is created by one PutObject (small) or one CreateMultipartUpload.
    creates = [
        r
        for r in moto.requests(bucket)
        if r.key.endswith("/data.rdb")
        and (
            (r.method == "PUT" and "partNumber" not in r.query)
            or (r.method == "POST" and "uploads" in r.query)
        )
    ]
    ids = {c["backup-id"] for c in claims.values()}
    started = {r.key[len(prefix) :].split("/")[0] for r in creates}
    assert started == ids and len(creates) == len(ids), (started, ids)
    assert len(_finished(s3, bucket, prefix)) == KEEP
    assert on_primary.request("status").expect_ok()["schedule"]["recent-missed-slots"] == []


def _scrape(port: int) -> dict[str, float]:
    """`name{labels}` → value, from the agent's /metrics over HTTP."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-type").startswith("application/openmetrics-text")
        text = resp.read().decode()
    finally:
        conn.close()
    assert text.endswith("# EOF\n")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def _series(scrape: dict[str, float], name: str, **extra: str) -> float | None:
    labels = {"cluster": CLUSTER, "unit": "valkey/0", **extra}
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return scrape.get(f"{name}{{{inner}}}")


def _promtool_test(
    promtool: Path,
    tmp: Path,
    scrape: dict[str, float],
    scraped_at: float,
    evals: list[tuple[int, str, list[dict[str, str]]]],
    earlier: dict[str, float] | None = None,
):
    """Runs `promtool test rules`: the scrape's series, as seen from a Prometheus whose
    clock reads 3600 s at the scrape (times are shifted by the same amount), evaluated
    `offset` seconds after the scrape for each (offset, alert, expected alerts). With
    `earlier`, its values (a previous scrape) are the series' values before the scrape."""
    shift = 3600 - scraped_at
    series = []
    for key, value in scrape.items():
        if "timestamp_seconds" in key:
            value += shift
        # One sample a minute: the earlier scrape's value for the first hour, then this
        # scrape's for 26 hours.
        before = (earlier or {}).get(key, value)
        series.append({"series": key, "values": f"{before}x59 {value}x1560"})
    tests = [
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {
                    "eval_time": f"{3600 + offset}s",
                    "alertname": alert,
                    "exp_alerts": [{"exp_labels": labels} for labels in expected],
                }
                for offset, alert, expected in evals
            ],
        }
    ]
    # The expressions are what is under test: annotations (templates, checked by
    # `promtool check rules` below) are left out so that expected alerts need only labels.
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_file = tmp / "rules.yaml"
    rules_file.write_text(json.dumps(rules))
    test_file = tmp / "rules_test.yaml"
    # JSON is YAML: no YAML writer needed.
    test_file.write_text(json.dumps({"rule_files": [str(rules_file)], "tests": tests}))
    run = subprocess.run(
        [str(promtool), "test", "rules", str(test_file)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_metrics_move_with_a_success_and_a_failure_and_the_alert_rules_fire_on_them(
    agent, valkey_server, moto, components, tmp_path
):
    promtool = components.require("promtool")
    check = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=0.05, dbs=(0,), seed=4)
    port = free_port()
    a = agent()
    params = configure_params(
        server,
        moto,
        cluster=CLUSTER,
        unit="valkey/0",
        metrics={"listen": f"127.0.0.1:{port}"},
        # A schedule that will not fire during the test: it exports the period.
        schedule={"cron": "0 3 * * *", "from": "any"},
    )
    a.request("configure", params).expect_ok()
    before = wait_until(lambda: _scrape(port), timeout=10, what="the metrics endpoint")
    assert _series(before, "valkey_backup_last_success_timestamp_seconds") is None
    assert _series(before, "valkey_backup_running") == 0
    assert _series(before, "valkey_backup_schedule_period_seconds") == 86400
    assert _series(before, "valkey_backup_schedule_next_timestamp_seconds") > time.time()
    assert _series(before, "valkey_backup_failures_total", code="valkey-unreachable") is None

    # No success yet: too old once the period and its margin have passed since the unit
    # began following the schedule (a cluster that never succeeded must alert too).
    since_at = time.time()
    fresh = wait_until(
        lambda: (
            (s := _scrape(port))
            and _series(s, "valkey_backup_schedule_since_timestamp_seconds") is not None
            and s
        ),
        timeout=10,
        what="the schedule-since gauge",
    )
    since = _series(fresh, "valkey_backup_schedule_since_timestamp_seconds")
    assert abs(since - since_at) < 10, (since, since_at)
    lag = since_at - since
    _promtool_test(
        promtool,
        tmp_path,
        fresh,
        since_at,
        [
            (60, "ValkeyBackupTooOld", []),
            (int(86400 + 3600 - lag) - 60, "ValkeyBackupTooOld", []),
            (
                int(86400 + 3600 - lag) + 60,
                "ValkeyBackupTooOld",
                [{"cluster": CLUSTER, "severity": "critical"}],
            ),
        ],
    )

    done = a.request("create-backup").expect_ok()
    scraped_at = time.time()
    ok = _scrape(port)
    success = _series(ok, "valkey_backup_last_success_timestamp_seconds")
    assert success is not None and abs(success - scraped_at) < 5
    assert _series(ok, "valkey_backup_last_size_bytes") == done["size-bytes"]
    assert _series(ok, "valkey_backup_last_duration_seconds") > 0
    assert _series(ok, "valkey_backup_last_failed") == 0
    assert _series(ok, "valkey_backup_running") == 0
    attempt = _series(ok, "valkey_backup_last_attempt_timestamp_seconds")

    server.kill()
    a.request("create-backup").expect_error("valkey-unreachable")
    failed = _scrape(port)
    assert _series(failed, "valkey_backup_failures_total", code="valkey-unreachable") == 1
    assert _series(failed, "valkey_backup_last_failed") == 1
    assert _series(failed, "valkey_backup_last_success_timestamp_seconds") == success
    assert _series(failed, "valkey_backup_last_attempt_timestamp_seconds") >= attempt
    assert not [k for k in failed if "secret" in k.lower() or moto.endpoint in k]

    # The scrape after the success: "too old" only once the period plus its margin
    # (a tenth of a day: 8640 s, capped at one hour) has passed since the success.
    too_old = [{"cluster": CLUSTER, "severity": "critical"}]
    age = scraped_at - success
    _promtool_test(
        promtool,
        tmp_path,
        ok,
        scraped_at,
        [
            (60, "ValkeyBackupTooOld", []),
            (int(86400 + 3600 - age) - 60, "ValkeyBackupTooOld", []),
            (int(86400 + 3600 - age) + 60, "ValkeyBackupTooOld", too_old),
            (60, "ValkeyBackupFailing", []),
            (60, "ValkeyBackupMissedSlot", []),
        ],
    )
    # The scrape after the failure: failing now, not too old.
    failing = [{"cluster": CLUSTER, "unit": "valkey/0", "severity": "warning"}]
    _promtool_test(
        promtool,
        tmp_path,
        failed,
        time.time(),
        [
            (60, "ValkeyBackupFailing", failing),
            (60, "ValkeyBackupTooOld", []),
        ],
    )


def test_a_slot_no_unit_takes_is_recorded_as_missed_and_alerts(
    agent, valkey_server, moto, components, tmp_path
):
    promtool = components.require("promtool")
    primary = valkey_server("valkey8")
    replica = valkey_server("valkey8")
    replica.client().replicaof(primary.host, primary.port)
    port = free_port()
    # Only the primary may back up, and its unit has no agent: no unit takes any slot.
    a = agent()
    params = configure_params(
        replica,
        moto,
        cluster=CLUSTER,
        unit="valkey/0",
        schedule={"cron": "*/2 * * * * *", "from": "primary"},
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    a.request("configure", params).expect_ok()
    before = wait_until(lambda: _scrape(port), timeout=10, what="the metrics endpoint")
    assert _series(before, "valkey_backup_missed_slots_total") == 0
    status = wait_until(
        lambda: (s := a.request("status").expect_ok()["schedule"])["recent-missed-slots"] and s,
        # A slot is judged once every unit had its chance to claim it (10 s later).
        timeout=30,
        what="a missed slot",
    )
    assert status["last-scheduled"]["result"] == "not-eligible"
    assert status["last-scheduled"]["role"] in ("replica", "stale-replica")
    scraped_at = time.time()
    after = _scrape(port)
    missed = _series(after, "valkey_backup_missed_slots_total")
    assert missed >= 1
    prefix = prefix_of(params)
    bucket = params["s3"]["bucket"]
    assert not bucket_state(moto.client(), bucket, f"{prefix}claims/").keys
    _promtool_test(
        promtool,
        tmp_path,
        after,
        scraped_at,
        [(60, "ValkeyBackupMissedSlot", [{"cluster": CLUSTER, "severity": "warning"}])],
        earlier=before,
    )
    # Without the increase, the same numbers do not alert.
    _promtool_test(promtool, tmp_path, after, scraped_at, [(60, "ValkeyBackupMissedSlot", [])])


def test_a_verify_schedule_loads_the_newest_backup_and_records_it(
    agent, valkey_server, moto, tmp_path
):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=0.05, dbs=(0,), seed=5)
    port = free_port()
    a = agent()
    params = configure_params(
        server,
        moto,
        cluster=CLUSTER,
        unit="valkey/0",
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    a.request("configure", params).expect_ok()
    older, newest = backups_in_order(a)
    # Backups never fire here (03:00 daily); verification every two seconds.
    params["schedule"] = {"cron": "0 3 * * *", "from": "any", "verify-cron": "*/2 * * * * *"}
    a.request("configure", params).expect_ok()
    last = wait_until(
        lambda: (
            (v := a.request("status").expect_ok()["schedule"]["verify"])
            and v["last-scheduled"]
            and v["last-scheduled"]
        ),
        timeout=20,
        what="a scheduled verification",
    )
    assert last["result"] == "verified", last
    assert last["backup-id"] == newest and last["taken-by"] == "valkey/0"
    prefix = prefix_of(params)
    state = bucket_state(moto.client(), params["s3"]["bucket"], prefix)
    records = [k for k in state.keys if k.startswith(f"{prefix}{newest}/verify/")]
    assert records, state.keys
    record = get_json(moto.client(), params["s3"]["bucket"], records[0])
    assert record["ok"] is True and record["load"] is not None
    assert [k for k in state.keys if "/claims/verify-" in k]
    assert not [k for k in state.keys if k.startswith(f"{prefix}{older}/verify/")]
    scraped = _scrape(port)
    verified_at = _series(scraped, "valkey_backup_last_verify_success_timestamp_seconds")
    assert verified_at is not None and abs(verified_at - time.time()) < 30


def test_a_unit_busy_with_a_restore_does_not_claim_and_the_slot_is_missed(
    agent, valkey_server, moto
):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=0.05, dbs=(0,), seed=6)
    a = agent()
    params = configure_params(server, moto, cluster=CLUSTER, unit="valkey/0")
    a.request("configure", params).expect_ok()
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    # A prepared restore holds the unit lock until it is finished or aborted.
    prepared = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id})
    restore_id = prepared.expect_ok()["restore-id"]
    params["schedule"] = {"cron": "*/2 * * * * *", "from": "any"}
    a.request("configure", params).expect_ok()
    busy = wait_until(
        lambda: (s := _last_scheduled(a)) and s,
        timeout=10,
        what="a scheduled slot",
    )
    assert busy["result"] == "busy" and busy["code"] == "busy", busy
    assert "taken-by" not in busy
    prefix = prefix_of(params)
    bucket = params["s3"]["bucket"]
    assert not bucket_state(moto.client(), bucket, f"{prefix}claims/").keys
    # Once every unit had its chance (10 s), the unclaimed slot counts as missed.
    wait_until(
        lambda: a.request("status").expect_ok()["schedule"]["recent-missed-slots"],
        timeout=30,
        what="the busy slot to count as missed",
    )
    a.request("restore-backup", {"step": "abort", "restore-id": restore_id}).expect_ok()
    taken = wait_until(
        lambda: (s := _last_scheduled(a)) and s["result"] == "backed-up" and s,
        timeout=10,
        what="a slot taken once the lock is free",
    )
    assert taken["taken-by"] == "valkey/0"


def test_on_a_store_that_ignores_if_none_match_a_later_unit_never_takes_a_claimed_slot(
    agent, valkey_server, moto
):
    primary = valkey_server("valkey8")
    load_dataset(primary, size_mb=0.05, dbs=(0,), seed=7)
    replica = valkey_server("valkey8")
    replica.client().replicaof(primary.host, primary.port)
    wait_until(
        lambda: replica.client().info("replication")["master_link_status"] == "up",
        timeout=20,
        what="the replica to sync",
    )
    bucket = moto.create_bucket()
    # Garage's behaviour on moto: every claim PUT reaches the store without its condition.
    with S3Proxy(moto.endpoint) as proxy:
        proxy.rule(lambda r: Action.ignore_condition() if "/claims/" in r.path else None)
        schedule = {"cron": "*/4 * * * * *", "from": "replica", "primary-delay-seconds": 2}
        extra = {"schedule": schedule, "s3_extra": {"endpoint": proxy.endpoint}}
        p_params = configure_params(
            primary, moto, bucket, cluster=CLUSTER, unit="valkey/0", **extra
        )
        r_params = configure_params(
            replica, moto, bucket, cluster=CLUSTER, unit="valkey/1", **extra
        )
        on_primary, on_replica = agent(), agent()
        on_primary.request("configure", p_params).expect_ok()
        on_replica.request("configure", r_params).expect_ok()
        seen: list[str] = []
        while len(seen) < 3:
            last = wait_until(
                lambda: (s := _last_scheduled(on_primary)) and s["slot"] not in seen and s,
                timeout=20,
                what="the primary's next slot",
            )
            # The primary found the replica's claim and did not write its own over it.
            assert last["result"] == "taken-by-other" and last["taken-by"] == "valkey/1", last
            seen.append(last["slot"])
        claim_puts = [e for e in proxy.log if e[0] == "PUT" and "/claims/" in e[1]]
        assert claim_puts and all(e[3] == "ignore-condition" for e in claim_puts)
    prefix = prefix_of(p_params)
    claims = _claims(moto.client(), bucket, prefix)
    assert {c["unit"] for c in claims.values()} == {"valkey/1"}
    creates = [
        r
        for r in moto.requests(bucket)
        if r.key.endswith("/data.rdb")
        and r.method in ("PUT", "POST")
        and "partNumber" not in r.query
    ]
    started = {r.key[len(prefix) :].split("/")[0] for r in creates}
    assert started <= {c["backup-id"] for c in claims.values()}, started
    assert all("valkey-1" in i for i in started), started


def test_a_claim_whose_answer_was_lost_is_still_taken_by_its_writer(agent, valkey_server, moto):
    # The first claim PUT reaches the store but its answer is lost: the client's retry
    # gets 412. The unit reads the claim back, finds its own nonce and backs up.
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=0.02, dbs=(0,), seed=9)
    bucket = moto.create_bucket()
    lost: list[str] = []

    def lose_first_claim(r):
        if r.method == "PUT" and "/claims/" in r.path and not lost:
            lost.append(r.path)
            return Action.lose_answer()
        return None

    with S3Proxy(moto.endpoint) as proxy:
        proxy.rule(lose_first_claim)
        extra = {
            "schedule": {"cron": "*/2 * * * * *", "from": "any"},
            "s3_extra": {"endpoint": proxy.endpoint},
        }
        params = configure_params(server, moto, bucket, cluster=CLUSTER, unit="valkey/0", **extra)
        a = agent()
        a.request("configure", params).expect_ok()
        last = wait_until(
            lambda: (s := _last_scheduled(a)) and lost and s,
            timeout=10,
            what="the first scheduled slot",
        )
        # A slot decided before the lost write (none here) would not name it; the one
        # whose claim lost its answer must be backed up by this unit.
        assert last["result"] == "backed-up", last
        assert last["taken-by"] == "valkey/0"
        assert any(e[3] == "lose-answer" for e in proxy.log), proxy.log
    prefix = prefix_of(params)
    manifest = get_json(moto.client(), bucket, f"{prefix}{last['backup-id']}/manifest.json")
    assert manifest["unit"] == "valkey/0"
