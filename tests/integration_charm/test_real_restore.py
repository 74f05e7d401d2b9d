"""restore-backup and verify-backup through the charm, against the real agent.

The data comes back exactly; every failure leaves the server running with its data
and the unit free for the next operation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import (  # pyright: ignore[reportMissingImports]
    SERVER_KINDS,
    assert_same_dataset,
    dataset_fingerprint,
    load_dataset,
    wait_until,
)
from ops import testing

from charm_world import VALKEY_UNIT, CharmUnit

STOP = f"stop {VALKEY_UNIT}"
START = f"start {VALKEY_UNIT}"


def backed_up(unit: CharmUnit, *, size_mb: float = 1, seed: int = 7) -> tuple[str, Any]:
    """Load a dataset, configure, back it up through the charm: (backup id, fingerprint)."""
    load_dataset(unit.server, size_mb=size_mb, dbs=(0, 1, 3), seed=seed)
    expected = dataset_fingerprint(unit.server)
    unit.configure()
    return unit.action("create-backup")["backup-id"], expected


def change_everything(unit: CharmUnit) -> None:
    for db in (0, 1, 3):
        client = unit.server.client(db)
        client.flushdb()
        client.set(f"after-backup-{db}", "x")


def save_live_dump(unit: CharmUnit) -> None:
    """SAVE the live data, which the restore must keep aside.

    Waits for the fork that served the backup's snapshot to exit first: a server refuses
    SAVE while one runs.
    """
    client = unit.server.client()
    wait_until(
        lambda: client.info("persistence")["rdb_bgsave_in_progress"] == 0,
        timeout=30,
        what="the snapshot fork to exit",
    )
    client.save()


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_restore_brings_back_exactly_the_backed_up_dataset(charm_unit, kind):
    unit: CharmUnit = charm_unit(kind)
    backup_id, expected = backed_up(unit)
    change_everything(unit)
    save_live_dump(unit)
    live = (unit.server.dir / "dump.rdb").read_bytes()

    results = unit.action("restore-backup", **{"backup-id": backup_id})

    assert_same_dataset(expected, dataset_fingerprint(unit.server))
    assert unit.systemd.verbs() == [STOP, START]
    assert results["backup-id"] == backup_id
    assert results["service"] == VALKEY_UNIT
    assert results["loaded"] == "true" and results["keys-match"] == "true"
    assert results["keys"] == {f"db{db}": str(n) for db, (n, _) in expected.keyspace.items()}
    assert results["target"] == str(unit.server.dir / "dump.rdb")
    assert results["previous"] == str(unit.server.dir / "dump.rdb.pre-restore")
    assert (unit.server.dir / "dump.rdb.pre-restore").read_bytes() == live
    assert "next" not in results  # the agent's hint for manual step-by-step restores
    logs = unit.ctx.action_logs
    assert logs[0] == f"downloading and verifying {backup_id}"
    assert f"stopping {VALKEY_UNIT}" in logs and f"starting {VALKEY_UNIT}" in logs
    assert logs[-1] == f"restore of {backup_id} finished"
    assert testing.MaintenanceStatus(f"restoring {backup_id}") in unit.ctx.unit_status_history
    assert unit.state.unit_status == testing.ActiveStatus("last backup just now")
    assert unit.agent_status()["busy"] is False
    unit.action("create-backup")  # the unit lock was released
    unit.assert_no_secrets(unit.agent.log_text())


def test_verify_with_load_writes_a_record_that_list_backups_shows(charm_unit):
    unit: CharmUnit = charm_unit()
    backup_id, expected = backed_up(unit)

    results = unit.action("verify-backup", **{"backup-id": backup_id, "load": True})

    assert results["ok"] == "true"
    assert results["load"]["loaded"] == "true" and results["load"]["keys-match"] == "true"
    assert results["load"]["keys"] == {
        f"db{db}": str(n) for db, (n, _) in expected.keyspace.items()
    }
    key = results["record-key"]
    assert key.startswith(f"{unit.prefix}{backup_id}/verify/")
    record = unit.get_json(key)
    assert record["ok"] is True and record["checked-at"] == results["checked-at"]
    assert unit.systemd.verbs() == []  # the live server is never touched

    listed = json.loads(unit.action("list-backups", output="json")["backups"])
    assert listed[0]["last-verify"]["ok"] is True
    assert listed[0]["last-verify"]["checked-at"] == record["checked-at"]
    table = unit.action("list-backups")["backups"]
    assert table.splitlines()[1].endswith(f"{record['checked-at']} ok")

    # Each run writes a record of its own; nothing is overwritten.
    unit.action("verify-backup", **{"backup-id": backup_id})
    assert sum("/verify/" in k for k in unit.objects()) == 2
    unit.assert_no_secrets(unit.agent.log_text())


def test_a_damaged_backup_fails_verify_and_restore_without_touching_the_server(charm_unit):
    unit: CharmUnit = charm_unit()
    backup_id, _ = backed_up(unit)
    data_key = f"{unit.prefix}{backup_id}/data.rdb"
    data = bytearray(unit.get_object(data_key))
    data[len(data) // 2] ^= 0x01  # bit rot in the store
    unit.client().put_object(Bucket=unit.bucket, Key=data_key, Body=bytes(data))
    change_everything(unit)
    live = dataset_fingerprint(unit.server)

    message = unit.fail("verify-backup", **{"backup-id": backup_id})
    assert "[stream-invalid]" in message
    assert unit.ctx.action_results == {"error-code": "stream-invalid"}
    records = [k for k in unit.objects() if "/verify/" in k]
    assert len(records) == 1 and unit.get_json(records[0])["ok"] is False

    message = unit.fail("restore-backup", **{"backup-id": backup_id})
    assert "[stream-invalid]" in message
    assert unit.systemd.verbs() == []  # refused while downloading: the server never stopped
    assert_same_dataset(live, dataset_fingerprint(unit.server), what="live dataset")
    assert unit.agent_status()["busy"] is False
    unit.assert_no_secrets(unit.agent.log_text())


def test_restore_on_a_replica_is_refused_before_stopping_it(charm_unit, valkey_server):
    primary = valkey_server("valkey8")
    load_dataset(primary, size_mb=0.2, dbs=(0,), seed=1)
    replica = valkey_server("valkey8")
    client = replica.client()
    client.replicaof(primary.host, primary.port)
    # A replica serves snapshots (the backup) only once its own link to the primary is up.
    wait_until(
        lambda: client.info("replication").get("master_link_status") == "up",
        timeout=30,
        what="the replica's sync with its primary",
    )
    unit: CharmUnit = charm_unit(server=replica, password=None)
    unit.configure()
    backup_id = unit.action("create-backup")["backup-id"]

    message = unit.fail("restore-backup", **{"backup-id": backup_id})

    assert "[valkey-replica]" in message
    assert "restore on the primary's unit" in message
    assert unit.systemd.verbs() == []
    assert client.info("replication")["role"] == "slave"
    assert unit.agent_status()["busy"] is False
    unit.assert_no_secrets()


def test_a_failed_stop_aborts_the_restore_and_frees_the_unit(charm_unit):
    unit: CharmUnit = charm_unit()
    backup_id, _ = backed_up(unit)
    change_everything(unit)
    live = dataset_fingerprint(unit.server)
    unit.systemd.fail("stop")

    message = unit.fail("restore-backup", **{"backup-id": backup_id})

    assert message.startswith("restore failed while stopping: ")
    assert message.endswith("[service-error]")
    assert "restore aborted" in unit.ctx.action_logs
    assert unit.systemd.verbs() == [STOP]  # never stopped, so not started either
    assert_same_dataset(live, dataset_fingerprint(unit.server), what="live dataset")
    assert not [p for p in unit.server.dir.iterdir() if p.name.endswith(".tmp")]
    assert unit.agent_status()["busy"] is False
    unit.action("create-backup")
    unit.assert_no_secrets()


def test_a_stop_that_leaves_the_server_running_is_caught_by_the_agent(charm_unit):
    # e.g. valkey-service names a unit that is not the server: systemctl says stopped,
    # but the server still answers. The agent refuses to place the dump under it.
    unit: CharmUnit = charm_unit()
    backup_id, _ = backed_up(unit)
    change_everything(unit)
    live = dataset_fingerprint(unit.server)
    unit.systemd.ignore("stop")

    message = unit.fail("restore-backup", **{"backup-id": backup_id})

    assert message.startswith("restore failed while placing the dump: ")
    assert "[valkey-running]" in message
    assert unit.systemd.verbs() == [STOP, START]  # started again after the abort
    assert_same_dataset(live, dataset_fingerprint(unit.server), what="live dataset")
    assert not [p for p in unit.server.dir.iterdir() if p.name.endswith(".tmp")]
    assert unit.agent_status()["busy"] is False
    unit.assert_no_secrets()
