"""create-backup and list-backups through the charm: real snapshots land in the bucket."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

from harness import (  # pyright: ignore[reportMissingImports]
    assert_same_dataset,
    dataset_fingerprint,
    load_dataset,
)
from ops import testing

from charm_world import CharmUnit


def test_create_backup_streams_the_dataset_into_the_bucket(charm_unit, valkey_server, tmp_path):
    unit: CharmUnit = charm_unit()
    load_dataset(unit.server, size_mb=1, dbs=(0, 2), seed=3)
    expected = dataset_fingerprint(unit.server)
    unit.configure()

    results = unit.action("create-backup")

    backup_id = results["backup-id"]
    assert results["status"] == "finished"
    assert results["cluster"] == unit.cluster
    assert results["data-key"] == f"{unit.prefix}{backup_id}/data.rdb"
    assert results["source-kind"] == "valkey"
    logs = unit.ctx.action_logs
    assert logs[0] == "starting a backup"
    assert any(line.startswith(f"backup {backup_id} finished: ") for line in logs)
    # The object is the snapshot the result describes, with its manifest beside it.
    assert set(unit.objects()) == {
        f"{unit.prefix}{backup_id}/data.rdb",
        f"{unit.prefix}{backup_id}/manifest.json",
    }
    data = unit.get_object(results["data-key"])
    assert len(data) == int(results["size-bytes"])
    assert hashlib.sha256(data).hexdigest() == results["sha256"]
    manifest = unit.get_json(f"{unit.prefix}{backup_id}/manifest.json")
    assert manifest["sha256"] == results["sha256"]
    assert manifest["unit"] == "valkey/0"
    # And it holds the data: a fresh server started on it has the same dataset.
    rdb = tmp_path / "backup.rdb"
    rdb.write_bytes(data)
    fresh = valkey_server.from_rdb("valkey8", rdb)
    assert_same_dataset(expected, dataset_fingerprint(fresh), what="backed-up dataset")

    assert unit.state.unit_status == testing.ActiveStatus("last backup just now")
    assert unit.agent_status()["last-backup"]["backup-id"] == backup_id
    unit.assert_no_secrets(unit.agent.log_text())


def test_list_backups_shows_what_is_in_the_bucket(charm_unit):
    unit: CharmUnit = charm_unit("redis7")
    unit.server.client().set("k", "v")
    unit.configure()
    first = unit.action("create-backup")["backup-id"]
    second = unit.action("create-backup")["backup-id"]

    table = unit.action("list-backups")
    assert table["cluster"] == unit.cluster
    assert table["count"] == "2" and table["shown"] == "2"
    lines = table["backups"].splitlines()
    assert lines[0].startswith("ID") and lines[0].endswith("LAST VERIFY")
    # Newest first; two backups started in the same second sort by their random suffix.
    rows = sorted(line.split()[:3] for line in lines[1:])
    assert rows == sorted([[first, "finished", "valkey/0"], [second, "finished", "valkey/0"]])

    listed = unit.action("list-backups", output="json", limit=1)
    assert listed["count"] == "2" and listed["shown"] == "1"
    (entry,) = json.loads(listed["backups"])
    assert entry["backup-id"] == lines[1].split()[0] and entry["status"] == "finished"
    assert unit.server.version() in entry["source-version"]
    # The agent answered one page; the action names the next one.
    assert (
        "showing backups 1 to 1 of 2 (newest first); offset=1 for the next page"
        in unit.ctx.action_logs
    )
    rest = unit.action("list-backups", output="json", offset=1)
    assert rest["count"] == "2" and rest["shown"] == "1"
    (older,) = json.loads(rest["backups"])
    assert older["backup-id"] != entry["backup-id"]

    other = unit.action("list-backups", cluster="another-model.valkey")
    assert other["cluster"] == "another-model.valkey" and other["count"] == "0"
    unit.assert_no_secrets()


def test_wrong_password_fails_with_the_agents_code_then_a_rotated_secret_works(charm_unit):
    unit: CharmUnit = charm_unit(password="vk-right-Pa55word", secret_password="vk-wrong-Pa55word")
    unit.server.client().set("k", "v")
    state = unit.configure()
    # configure stores the configuration and checks the server: blocked before any backup.
    assert unit.agent_status()["configured"] is True
    assert state.unit_status == testing.BlockedStatus(
        f"Valkey rejected user default at 127.0.0.1:{unit.server.port} (wrong user or "
        "password): check valkey-username and the valkey-password secret"
    )

    message = unit.fail("create-backup")
    assert "[valkey-auth]" in message
    assert "check valkey-username and the valkey-password secret" in message
    assert unit.ctx.action_results == {"error-code": "valkey-auth"}
    # The agent recorded the failure in the bucket; list-backups and the status show it.
    failed = unit.agent_status()["last-backup"]
    assert failed["status"] == "failed" and failed["code"] == "valkey-auth"
    record = unit.get_json(f"{unit.prefix}{failed['backup-id']}/failure.json")
    assert record["code"] == "valkey-auth"
    listing = unit.action("list-backups")["backups"]
    assert f"{failed['backup-id']}  failed (valkey-auth)" in listing
    assert isinstance(unit.state.unit_status, testing.BlockedStatus)

    # The operator updates the user secret: secret-changed reconfigures the agent.
    assert unit.password_secret is not None
    rotated = replace(
        unit.password_secret,
        tracked_content={"password": "vk-right-Pa55word"},
        latest_content={"password": "vk-right-Pa55word"},
    )
    unit.with_state(secrets=[s for s in unit.state.secrets if s.id != rotated.id] + [rotated])
    unit.run(unit.ctx.on.secret_changed(rotated))
    results = unit.action("create-backup")
    assert results["status"] == "finished"
    assert unit.state.unit_status == testing.ActiveStatus("last backup just now")
    unit.assert_no_secrets(unit.agent.log_text())
    text = "\n".join([*unit.seen, unit.agent.log_text()])
    assert "vk-wrong-Pa55word" not in text


def test_prune_is_a_dry_run_until_confirmed(charm_unit):
    unit: CharmUnit = charm_unit()
    unit.server.client().set("k", "v")
    unit.configure()
    ids = {unit.action("create-backup")["backup-id"] for _ in range(2)}
    before = unit.objects()

    dry = unit.action("prune-backups", **{"keep-last": 1})
    assert dry["dry-run"] == "true"
    assert dry["deleted-count"] == "1" and dry["kept-count"] == "1"
    logs = unit.ctx.action_logs
    assert "dry run: 1 backup(s) would be deleted; re-run with confirm=true" in logs
    assert unit.objects() == before  # nothing changed

    done = unit.action("prune-backups", **{"keep-last": 1, "confirm": True})
    assert done["dry-run"] == "false"
    (deleted,) = json.loads(done["deleted"])
    (kept,) = json.loads(done["kept"])
    assert {deleted["backup-id"], kept["backup-id"]} == ids
    assert {key.split("/")[2] for key in unit.objects()} == {kept["backup-id"]}
    assert "deleted 1 backup(s)" in unit.ctx.action_logs
    unit.assert_no_secrets()


def test_a_backup_while_a_restore_holds_the_unit_is_refused_as_busy(charm_unit):
    unit: CharmUnit = charm_unit()
    unit.server.client().set("k", "v")
    unit.configure()
    backup_id = unit.action("create-backup")["backup-id"]
    # A restore prepared from the machine's CLI (same socket) holds the unit's lock.
    prepared = unit.agent.request(
        "restore-backup", {"step": "prepare", "backup-id": backup_id}
    ).expect_ok()

    message = unit.fail("create-backup")
    assert message.startswith(f"another restore-backup is running on this unit ({backup_id}")
    assert "[busy]; another backup or restore runs on this unit; wait for it to finish" in message
    state = unit.run(unit.ctx.on.update_status())
    assert state.unit_status == testing.MaintenanceStatus(f"restore {backup_id} running")

    unit.agent.request(
        "restore-backup", {"step": "abort", "restore-id": prepared["restore-id"]}
    ).expect_ok()
    state = unit.run(unit.ctx.on.update_status())
    assert isinstance(state.unit_status, testing.ActiveStatus)
    unit.action("create-backup")
    unit.assert_no_secrets()
