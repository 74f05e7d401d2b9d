"""compute_status: one status from the facts, most urgent problem first."""

from __future__ import annotations

from datetime import datetime, timezone

import ops
import pytest

from status import StatusFacts, compute_status, last_backup_message, newest_backup

NOW = datetime(2026, 11, 21, 22, 30, tzinfo=timezone.utc)
READY = StatusFacts(s3_related=True, s3_ready=True, agent_status={"running": None})


def status(**changes) -> ops.StatusBase:
    facts = StatusFacts(**{**READY.__dict__, **changes})
    return compute_status(facts, NOW)


def test_ready_unit_is_active():
    assert status() == ops.ActiveStatus("")


def test_removing_wins_over_everything():
    assert isinstance(status(removing=True, config_problem="x"), ops.MaintenanceStatus)


def test_config_problem_blocks_with_the_reason():
    assert status(config_problem="valkey-port 0 is not between 1 and 65535") == ops.BlockedStatus(
        "valkey-port 0 is not between 1 and 65535"
    )


def test_missing_agent_binary_blocks():
    result = status(agent_packed=False, agent_problem="not running")
    assert isinstance(result, ops.BlockedStatus)
    assert "charmcraft pack" in result.message


def test_unhealthy_agent_blocks_and_points_at_the_journal():
    result = status(agent_problem="the agent is not running")
    assert isinstance(result, ops.BlockedStatus)
    assert result.message.startswith("agent unhealthy: the agent is not running")
    assert "journalctl -u valkey-backup-agent" in result.message


def test_unknown_principal_waits():
    assert isinstance(status(principal_known=False), ops.WaitingStatus)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("s3-no-bucket", "bucket does not exist and cannot be created"),
        ("s3-access-denied", "s3 credentials rejected"),
        ("s3-unreachable", "s3 endpoint unreachable"),
    ],
)
def test_rejected_configuration_blocks_with_a_stable_phrase(code, expected):
    result = status(configure_error=(code, "whatever the agent said"))
    assert isinstance(result, ops.BlockedStatus)
    assert result.message.startswith(expected)


def test_other_rejections_show_the_agents_message_and_code():
    result = status(configure_error=("bad-request", "valkey.tls.key-file: not a key"))
    assert result == ops.BlockedStatus(
        "agent rejected the configuration: valkey.tls.key-file: not a key [bad-request]"
    )


VALKEY = {"valkey_user": "charmed-operator", "valkey_address": "10.0.0.4:6379"}


@pytest.mark.parametrize(
    ("code", "detail", "expected"),
    [
        (
            "valkey-auth",
            "Valkey rejected the credentials",
            "Valkey rejected user charmed-operator at 10.0.0.4:6379 (wrong user or password): "
            "check valkey-username and the valkey-password secret",
        ),
        (
            "valkey-unreachable",
            "connection refused.",
            "cannot reach Valkey at 10.0.0.4:6379: connection refused; "
            "check valkey-host, valkey-port, valkey-tls",
        ),
        (
            "valkey-permission",
            "user charmed-operator may not run SYNC",
            "Valkey user charmed-operator lacks rights a backup needs: user charmed-operator "
            "may not run SYNC; use charmed-operator or grant +sync +psync +replconf +info "
            "+config|get",
        ),
    ],
)
def test_valkey_check_failures_block_naming_the_user_and_server(code, detail, expected):
    assert status(configure_error=(code, detail), **VALKEY) == ops.BlockedStatus(expected)


def test_valkey_auth_without_a_user_names_the_default_user():
    result = status(configure_error=("valkey-auth", "x"), valkey_address="127.0.0.1:6379")
    assert isinstance(result, ops.BlockedStatus)
    assert result.message.startswith("Valkey rejected user default at 127.0.0.1:6379")


def test_missing_relation_blocks_with_the_command_to_run():
    result = status(s3_related=False, s3_ready=False)
    assert result == ops.BlockedStatus(
        "no S3 storage: run: juju integrate valkey-backup s3-integrator"
    )


def test_incomplete_relation_waits():
    assert isinstance(status(s3_ready=False), ops.WaitingStatus)


def test_running_backup_or_restore_is_maintenance():
    running = {"op": "create-backup", "backup-id": "b1", "started-at": "2026-11-21T22:29:00Z"}
    assert status(agent_status={"running": running}) == ops.MaintenanceStatus("backup b1 running")
    restore = {"op": "restore-backup", "backup-id": "b0"}
    assert status(agent_status={"running": restore}) == ops.MaintenanceStatus("restore b0 running")


def test_active_shows_the_last_backups_age():
    # 3h01m: ages are rounded down, like "3h" on a dashboard.
    last = {"backup-id": "b1", "status": "finished", "finished-at": "2026-11-21T19:29:00Z"}
    assert status(last_backup=last) == ops.ActiveStatus("last backup 3h ago")


def test_active_shows_a_failed_last_backup_with_its_code():
    last = {"status": "failed", "finished-at": "2026-11-21T22:25:00Z", "code": "s3-unreachable"}
    assert status(last_backup=last) == ops.ActiveStatus(
        "last backup failed 5m ago (s3-unreachable)"
    )


def test_last_backup_message_edge_cases():
    assert last_backup_message(None, NOW) == ""
    assert (
        last_backup_message({"finished-at": "2026-11-21T22:29:50Z"}, NOW) == "last backup just now"
    )
    assert last_backup_message({"backup-id": "b1"}, NOW) == "last backup b1"
    # A clock skew never shows a negative age.
    assert (
        last_backup_message({"finished-at": "2026-11-22T00:00:00Z"}, NOW) == "last backup just now"
    )


def test_newest_backup_picks_the_latest_time():
    old = {"backup-id": "old", "finished-at": "2026-11-20T00:00:00Z"}
    new = {"backup-id": "new", "finished-at": "2026-11-21T00:00:00Z"}
    assert newest_backup(old, new) is new
    assert newest_backup(new, old) is new
    assert newest_backup(None, old) is old
    assert newest_backup(None, None) is None
