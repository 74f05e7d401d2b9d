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


VALKEY_USER = {"valkey_user": "charmed-operator"}


def check(code: str | None, message: str | None = None, **extra) -> dict:
    """A ``valkey-check`` as the agent's status reports it."""
    return {
        "ok": code is None,
        "code": code,
        "message": message,
        "addr": "10.0.0.4:6379",
        "role": "primary",
        "server": "valkey 9.1.2",
        "sentinel": None,
        "checked-at": "2026-11-21T22:29:00Z",
        **extra,
    }


@pytest.mark.parametrize(
    ("code", "detail", "expected"),
    [
        (
            "valkey-auth",
            "Valkey rejected the credentials; check valkey.username and valkey.password",
            "Valkey rejected user charmed-operator at 10.0.0.4:6379 (wrong user or password): "
            "check valkey-username and the valkey-password secret",
        ),
        (
            "valkey-unreachable",
            "connection refused; check valkey.host and valkey.port",
            "cannot reach Valkey at 10.0.0.4:6379: connection refused; "
            "check valkey-host, valkey-port, valkey-tls",
        ),
        (
            "valkey-permission",
            "NOPERM no rights to run 'sync'; give the user +sync",
            "Valkey user charmed-operator lacks rights a backup needs: NOPERM no rights to run "
            "'sync'; use charmed-operator or grant +sync +replconf +info +config|get "
            "(+del for restores)",
        ),
        (
            "valkey-error",
            "ERR unknown command 'REPLCONF'; see the agent's log",
            "Valkey at 10.0.0.4:6379 refused a backup's commands: ERR unknown command 'REPLCONF'",
        ),
    ],
)
def test_valkey_check_failures_block_naming_the_user_and_server(code, detail, expected):
    facts = {"valkey_check": check(code, detail), **VALKEY_USER}
    assert status(**facts) == ops.BlockedStatus(expected)


def test_the_valkey_check_comes_before_the_s3_relation():
    result = status(valkey_check=check("valkey-auth", "x"), s3_related=False, s3_ready=False)
    assert isinstance(result, ops.BlockedStatus)
    assert result.message.startswith("Valkey rejected user default at 10.0.0.4:6379")


def test_a_sentinel_that_cannot_protect_a_restore_blocks():
    sentinel = {
        "ok": False,
        "code": "sentinel-error",
        "message": "no master watched by the Sentinel is this server",
        "addr": "10.0.0.4:26379",
    }
    result = status(valkey_check=check(None, sentinel=sentinel))
    assert result == ops.BlockedStatus(
        "Sentinel at 10.0.0.4:26379 cannot protect a restore: no master watched by the "
        "Sentinel is this server; restore-backup is refused until it can (check the "
        "Sentinel credentials in the valkey-password secret)"
    )


def test_a_passed_check_is_active():
    sentinel = {"ok": True, "addr": "10.0.0.4:26379", "master-name": "primary", "sentinels": 3}
    assert status(valkey_check=check(None, sentinel=sentinel)) == ops.ActiveStatus("")


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


def test_a_failing_tls_only_sentinel_is_named_as_the_reason_restores_are_refused():
    sentinel = {"ok": False, "code": "sentinel-error", "message": "x", "addr": "10.0.0.4:26380"}
    result = status(valkey_check=check(None, sentinel=sentinel), sentinel_tls_only=True)
    assert result == ops.BlockedStatus(
        "Sentinel at 10.0.0.4:26380 (TLS only: client TLS is on) failed its check: x; "
        "restore-backup is refused; backups work"
    )
