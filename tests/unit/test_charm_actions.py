"""Each action's success and failure paths, through ops.testing with a fake agent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ops import testing

from agent_client import AgentError
from fakes import (
    BACKUP_ID,
    CREATE_RESULT,
    LIST_RESULT,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    VALKEY_PASSWORD,
    full_state,
    principal,
)

SECRETS = (VALKEY_PASSWORD, S3_SECRET_KEY, S3_ACCESS_KEY)


def run_action(
    ctx, name: str, params: dict[str, Any] | None = None, *, state: testing.State | None = None
) -> testing.State:
    return ctx.run(ctx.on.action(name, params=params or {}), state or full_state())


def fail_action(
    ctx, name: str, params: dict[str, Any] | None = None, *, state: testing.State | None = None
) -> str:
    with pytest.raises(testing.ActionFailed) as info:
        run_action(ctx, name, params, state=state)
    return info.value.message


def assert_nothing_secret(ctx) -> None:
    """No secret in results, the action log or the charm's own log."""
    seen = json.dumps(ctx.action_results) + "\n".join(ctx.action_logs) + str(ctx.juju_log)
    for secret in SECRETS:
        assert secret not in seen


def no_s3_state() -> testing.State:
    return full_state(relations=[principal()])


# -- create-backup ----------------------------------------------------------------------


def test_create_backup_streams_progress_and_returns_the_backup(ctx, agent):
    agent.progress["create-backup"] = [
        {"event": "progress", "phase": "streaming", "bytes-done": 8388608, "parts-uploaded": 1},
        {"event": "progress", "phase": "completing", "bytes-done": 104857600},
    ]
    # The agent reports the backup it just took in its status.
    last = {k: CREATE_RESULT[k] for k in ("backup-id", "status", "started-at", "finished-at")}
    agent.responses["status"]["last-backup"] = last
    state = run_action(ctx, "create-backup")
    results = ctx.action_results
    assert results["backup-id"] == BACKUP_ID
    assert results["size-bytes"] == "104857600"
    assert results["duration-seconds"] == "1.52"
    assert results["status"] == "finished"
    assert "streaming: 8.0 MiB 1 part(s) uploaded" in ctx.action_logs
    assert "completing: 100.0 MiB" in ctx.action_logs
    assert any(
        line.startswith(f"backup {BACKUP_ID} finished: 100.0 MiB") for line in ctx.action_logs
    )
    assert agent.params_of("create-backup") == [{}]
    # Busy while it ran, active (with the backup's age) after.
    assert testing.MaintenanceStatus("creating a backup") in ctx.unit_status_history
    assert isinstance(state.unit_status, testing.ActiveStatus)
    assert state.unit_status.message.startswith("last backup")
    # It runs in parallel with hooks: it must not write the charm's stored state.
    stored = [s for s in state.stored_states if s.name == "_stored"]
    assert all(not s.content.get("last_backup") for s in stored)
    assert_nothing_secret(ctx)


def test_create_backup_failure_carries_the_agents_message_code_and_a_hint(ctx, agent):
    agent.responses["create-backup"] = AgentError(
        "busy", f"a backup is already running on this unit ({BACKUP_ID})"
    )
    message = fail_action(ctx, "create-backup")
    assert message == (
        f"a backup is already running on this unit ({BACKUP_ID}) [busy]; "
        "another backup or restore runs on this unit; wait for it to finish"
    )
    assert ctx.action_results == {"error-code": "busy"}


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("valkey-auth", "check valkey-username and the valkey-password secret"),
        ("valkey-unreachable", "check valkey-host"),
        ("s3-access-denied", "credentials secret"),
        ("stream-invalid", None),
        ("agent-unavailable", "systemctl status valkey-backup-agent"),
        ("unknown-op", "upgrade the charm"),
    ],
)
def test_create_backup_failures_by_code(ctx, agent, code, hint):
    agent.responses["create-backup"] = AgentError(code, "it went wrong")
    message = fail_action(ctx, "create-backup")
    assert message.startswith(f"it went wrong [{code}]")
    if hint:
        assert hint in message


def test_create_backup_without_s3_fails_clearly_without_asking_the_agent(ctx, agent):
    message = fail_action(ctx, "create-backup", state=no_s3_state())
    assert message.startswith("no S3 storage is related [not-configured]")
    assert "juju integrate valkey-backup s3-integrator" in message
    assert "create-backup" not in agent.ops()


def test_create_backup_when_the_agent_is_down(ctx, agent):
    agent.down = True
    message = fail_action(ctx, "create-backup")
    assert "[agent-unavailable]" in message


def test_agent_error_echoing_secrets_is_redacted(ctx, agent):
    agent.responses["create-backup"] = AgentError(
        "valkey-auth", f"AUTH {VALKEY_PASSWORD} failed for key {S3_SECRET_KEY}"
    )
    message = fail_action(ctx, "create-backup")
    assert "AUTH *** failed for key ***" in message
    assert_nothing_secret(ctx)


def test_results_echoing_secrets_are_redacted(ctx, agent):
    agent.responses["create-backup"] = {"backup-id": "b1", "note": f"pw={VALKEY_PASSWORD}"}
    run_action(ctx, "create-backup")
    assert ctx.action_results["note"] == "pw=***"
    assert_nothing_secret(ctx)


# -- list-backups -----------------------------------------------------------------------


def test_list_backups_as_a_table(ctx, agent):
    run_action(ctx, "list-backups")
    results = ctx.action_results
    assert results["count"] == "2"
    assert results["cluster"] == "test-model.valkey"
    lines = results["backups"].splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "UNIT",
        "SIZE",
        "STORED",
        "STARTED",
        "FINISHED",
        "LAST",
        "VERIFY",
    ]
    assert lines[1].startswith(BACKUP_ID)
    assert "2026-11-22T01:00:00Z ok" in lines[1]
    assert "failed (s3-unreachable)" in lines[2]
    assert results["counts"] == "failed 1, finished 1"
    assert agent.params_of("list-backups") == [{"limit": 100}]


def test_list_backups_as_json(ctx, agent):
    run_action(ctx, "list-backups", {"output": "json"})
    backups = json.loads(ctx.action_results["backups"])
    assert [b["backup-id"] for b in backups] == [BACKUP_ID, "20261120T193000Z-valkey-0-0f0f0f"]


def test_list_backups_of_another_cluster_a_page_at_a_time(ctx, agent):
    # The agent answers one page (here: the newest of two); the action passes the page on.
    page = dict(LIST_RESULT, backups=LIST_RESULT["backups"][:1], total=2, **{"next-offset": 1})
    agent.responses["list-backups"] = page
    run_action(ctx, "list-backups", {"cluster": "other.valkey", "limit": 1})
    assert agent.params_of("list-backups") == [{"cluster": "other.valkey", "limit": 1}]
    assert ctx.action_results["count"] == "2"
    assert ctx.action_results["shown"] == "1"
    assert len(ctx.action_results["backups"].splitlines()) == 2
    assert "showing backups 1 to 1 of 2 (newest first); offset=1 for the next page" in (
        ctx.action_logs
    )
    agent.responses["list-backups"] = dict(
        LIST_RESULT, backups=LIST_RESULT["backups"][1:], total=2, offset=1
    )
    run_action(ctx, "list-backups", {"offset": 1, "status": "failed"})
    assert agent.params_of("list-backups")[-1] == {"limit": 100, "offset": 1, "status": "failed"}
    assert ctx.action_results["shown"] == "1"


def test_list_backups_keeps_results_within_jujus_size_limit(ctx, agent):
    entry = dict(agent.responses["list-backups"]["backups"][0])
    agent.responses["list-backups"] = {
        "cluster": "c",
        "backups": [{**entry, "reason": "x" * 500} for _ in range(1000)],
    }
    run_action(ctx, "list-backups", {"output": "json", "limit": 1000})
    assert len(ctx.action_results["backups"]) <= 60_000
    assert ctx.action_results["count"] == "1000"


def test_list_backups_failure(ctx, agent):
    agent.responses["list-backups"] = AgentError("s3-unreachable", "connection refused")
    message = fail_action(ctx, "list-backups")
    assert message.startswith("connection refused [s3-unreachable]")


def test_list_backups_without_s3(ctx, agent):
    assert "[not-configured]" in fail_action(ctx, "list-backups", state=no_s3_state())


# -- restore-backup ---------------------------------------------------------------------


def test_restore_stops_the_server_places_the_dump_starts_it_and_checks_it(ctx, agent, systemd):
    state = run_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert [op for op in agent.ops() if op.startswith("restore")] == [
        "restore-backup:prepare",
        "restore-backup:commit",
        "restore-backup:finish",
    ]
    assert agent.params_of("restore-backup:prepare") == [
        {"step": "prepare", "backup-id": BACKUP_ID, "sentinel": "suppress"}
    ]
    assert agent.params_of("restore-backup:commit") == [{"step": "commit", "restore-id": "r-123"}]
    assert systemd.verbs() == ["stop valkey-server.service", "start valkey-server.service"]
    results = ctx.action_results
    assert results["backup-id"] == BACKUP_ID
    assert results["restore-id"] == "r-123"
    assert results["previous"] == "/var/lib/valkey/dump.rdb.pre-restore"
    assert results["keys"] == {"db0": "123"}
    assert results["loaded"] == "true"
    assert results["service"] == "valkey-server.service"
    assert testing.MaintenanceStatus(f"restoring {BACKUP_ID}") in ctx.unit_status_history
    assert isinstance(state.unit_status, testing.ActiveStatus)
    assert_nothing_secret(ctx)


def test_restore_order_is_prepare_stop_commit_start_finish(ctx, agent, systemd):
    order: list[str] = []
    for step in ("prepare", "commit", "finish"):
        result = agent.responses[f"restore-backup:{step}"]
        agent.responses[f"restore-backup:{step}"] = lambda _params, step=step, result=result: (
            order.append(step) or result
        )
    systemd.listeners.append(lambda argv: argv[1] in ("stop", "start") and order.append(argv[1]))
    run_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert order == ["prepare", "stop", "commit", "start", "finish"]


def test_restore_from_another_cluster_passes_the_source(ctx, agent):
    run_action(ctx, "restore-backup", {"backup-id": BACKUP_ID, "source-cluster": "prod.valkey"})
    assert agent.params_of("restore-backup:prepare")[0]["source-cluster"] == "prod.valkey"


def test_restore_on_a_replica_is_refused_before_touching_the_server(ctx, agent, systemd):
    agent.responses["restore-backup:prepare"] = AgentError(
        "valkey-replica", "this server is a replica of 10.0.0.5:6379"
    )
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert message.startswith("this server is a replica of 10.0.0.5:6379 [valkey-replica]")
    assert "restore on the primary's unit" in message
    assert systemd.verbs() == []


def test_restore_of_a_missing_backup(ctx, agent, systemd):
    agent.responses["restore-backup:prepare"] = AgentError("not-found", "no backup nope")
    message = fail_action(ctx, "restore-backup", {"backup-id": "nope"})
    assert "[not-found]" in message
    assert "list-backups" in message
    assert systemd.verbs() == []


def test_restore_commit_failure_aborts_and_starts_the_server_again(ctx, agent, systemd):
    agent.responses["restore-backup:commit"] = AgentError("internal", "rename failed")
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert message.startswith("restore failed while placing the dump: rename failed [internal]")
    assert agent.params_of("restore-backup:abort") == [{"step": "abort", "restore-id": "r-123"}]
    assert systemd.verbs() == ["stop valkey-server.service", "start valkey-server.service"]
    # Started before the abort: the agent puts Sentinel back only once it hears the server.
    logs = ctx.action_logs
    assert logs.index("started valkey-server.service again") < logs.index("restore aborted")


def test_restore_stop_failure_aborts_without_starting(ctx, agent, systemd):
    systemd.fail("stop", "valkey-server.service", "access denied")
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert message.startswith("restore failed while stopping:")
    assert "[service-error]" in message
    assert "restore-backup:commit" not in agent.ops()
    assert "restore-backup:abort" in agent.ops()
    assert systemd.verbs() == ["stop valkey-server.service"]


def test_restore_start_failure_aborts_and_tries_to_start_again(ctx, agent, systemd):
    systemd.fail("start", "valkey-server.service", "bad dump")
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert message.startswith("restore failed while starting:")
    assert "restore-backup:abort" in agent.ops()
    assert systemd.verbs() == [
        "stop valkey-server.service",
        "start valkey-server.service",
        "start valkey-server.service",
    ]
    assert any("could not start valkey-server.service again" in line for line in ctx.action_logs)


def test_restore_finish_failure_aborts(ctx, agent, systemd):
    agent.responses["restore-backup:finish"] = AgentError("valkey-error", "server did not load")
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert message.startswith("restore failed while checking the loaded data: server did not load")
    assert "restore-backup:abort" in agent.ops()
    # The server runs already: it is not started a second time.
    assert systemd.verbs() == ["stop valkey-server.service", "start valkey-server.service"]


def test_restore_abort_failure_is_logged_not_raised(ctx, agent):
    agent.responses["restore-backup:commit"] = AgentError("internal", "disk full")
    agent.responses["restore-backup:abort"] = AgentError("internal", "abort failed too")
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert "disk full" in message


def test_restore_without_a_known_valkey_service_fails_before_downloading(ctx, agent, systemd):
    systemd.units.clear()
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert "[service-not-found]" in message
    assert "set valkey-service" in message
    assert "restore-backup:prepare" not in agent.ops()


def test_restore_uses_the_configured_service(ctx, agent, systemd):
    systemd.units.add("my-valkey.service")
    state = full_state(config={"valkey-service": "my-valkey.service"})
    run_action(ctx, "restore-backup", {"backup-id": BACKUP_ID}, state=state)
    assert systemd.verbs() == ["stop my-valkey.service", "start my-valkey.service"]


def test_restore_with_the_snap_service(ctx, agent, systemd):
    systemd.units.clear()
    systemd.units.add("snap.charmed-valkey.server.service")
    run_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert systemd.verbs() == [
        "stop snap.charmed-valkey.server.service",
        "start snap.charmed-valkey.server.service",
    ]


def test_restore_without_a_restore_id_stops_nothing(ctx, agent, systemd):
    agent.responses["restore-backup:prepare"] = {"backup-id": BACKUP_ID}
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert "[agent-protocol]" in message
    assert systemd.verbs() == []


def test_restore_with_bad_config_fails(ctx, agent):
    message = fail_action(
        ctx,
        "restore-backup",
        {"backup-id": BACKUP_ID},
        state=full_state(config={"valkey-port": -1}),
    )
    assert "[bad-config]" in message


def test_restore_without_s3(ctx, agent):
    assert "[not-configured]" in fail_action(
        ctx, "restore-backup", {"backup-id": BACKUP_ID}, state=no_s3_state()
    )


# -- verify-backup ----------------------------------------------------------------------


def test_verify_backup_success(ctx, agent):
    run_action(ctx, "verify-backup", {"backup-id": BACKUP_ID, "load": True})
    assert agent.params_of("verify-backup") == [{"backup-id": BACKUP_ID, "load": True}]
    assert ctx.action_results["ok"] == "true"
    assert ctx.action_results["checked-at"] == "2026-11-22T01:00:00Z"
    assert ctx.action_results["record-key"].endswith(".json")


def test_verify_backup_of_another_cluster_defaults_load_to_false(ctx, agent):
    run_action(ctx, "verify-backup", {"backup-id": BACKUP_ID, "source-cluster": "prod.valkey"})
    assert agent.params_of("verify-backup") == [
        {"backup-id": BACKUP_ID, "load": False, "source-cluster": "prod.valkey"}
    ]


def test_verify_backup_failed_check(ctx, agent):
    agent.responses["verify-backup"] = AgentError("stream-invalid", "sha256 mismatch")
    message = fail_action(ctx, "verify-backup", {"backup-id": BACKUP_ID})
    assert message == "sha256 mismatch [stream-invalid]"


def test_verify_backup_result_saying_not_ok_fails_the_action(ctx, agent):
    agent.responses["verify-backup"] = {"backup-id": BACKUP_ID, "ok": False}
    message = fail_action(ctx, "verify-backup", {"backup-id": BACKUP_ID})
    assert "[stream-invalid]" in message


def test_verify_backup_without_s3(ctx, agent):
    assert "[not-configured]" in fail_action(
        ctx, "verify-backup", {"backup-id": "b"}, state=no_s3_state()
    )


# -- prune-backups ----------------------------------------------------------------------


def test_prune_is_a_dry_run_by_default(ctx, agent):
    run_action(ctx, "prune-backups", {"keep-last": 3})
    assert agent.params_of("prune-backups") == [{"confirm": False, "keep-last": 3}]
    results = ctx.action_results
    assert results["dry-run"] == "true"
    assert json.loads(results["deleted"]) == ["20261101T000000Z-valkey-0-aaaaaa"]
    assert results["deleted-count"] == "1"
    assert results["kept-count"] == "1"
    assert any("dry run: 1 backup(s) would be deleted" in line for line in ctx.action_logs)


def test_prune_confirmed_deletes(ctx, agent):
    agent.responses["prune-backups"] = {"dry-run": False, "deleted": ["a", "b"], "kept": []}
    run_action(ctx, "prune-backups", {"keep-days": 30, "confirm": True})
    assert agent.params_of("prune-backups") == [{"confirm": True, "keep-days": 30}]
    assert "deleted 2 backup(s)" in ctx.action_logs
    assert ctx.action_results["deleted-count"] == "2"


def test_prune_of_a_long_history_stays_within_jujus_size_limit(ctx, agent):
    entry = {"backup-id": BACKUP_ID, "status": "finished", "objects": 2, "versions": 2}
    agent.responses["prune-backups"] = {
        "dry-run": False,
        "deleted": [{**entry, "why": "x" * 200} for _ in range(10_000)],
        "kept": [{**entry, "why": "kept"} for _ in range(7)],
        "skipped": [],
        "aborted-uploads": [],
    }
    run_action(ctx, "prune-backups", {"keep-last": 7, "confirm": True})
    results = ctx.action_results
    assert results["deleted-count"] == "10000" and results["kept-count"] == "7"
    assert 0 < len(json.loads(results["deleted"])) <= 100
    assert len(json.loads(results["kept"])) == 7
    assert sum(len(str(v)) for v in results.values()) < 60_000
    assert any("deleted: showing" in line for line in ctx.action_logs)


def test_prune_without_rules_leaves_the_default_to_the_agent(ctx, agent):
    run_action(ctx, "prune-backups")
    assert agent.params_of("prune-backups") == [{"confirm": False}]


def test_prune_failure(ctx, agent):
    agent.responses["prune-backups"] = AgentError("bad-request", "no retention rule given")
    assert fail_action(ctx, "prune-backups") == "no retention rule given [bad-request]"


def test_prune_without_s3(ctx, agent):
    assert "[not-configured]" in fail_action(ctx, "prune-backups", state=no_s3_state())


# -- the wrapper every action shares ------------------------------------------------------

# action -> (params, the fake agent's response key of its first request)
ACTIONS = {
    "create-backup": ({}, "create-backup"),
    "list-backups": ({}, "list-backups"),
    "verify-backup": ({"backup-id": BACKUP_ID}, "verify-backup"),
    "prune-backups": ({"keep-last": 1}, "prune-backups"),
    "restore-backup": ({"backup-id": BACKUP_ID}, "restore-backup:prepare"),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_refuses_without_s3_before_asking_the_agent(ctx, agent, action):
    params, _ = ACTIONS[action]
    message = fail_action(ctx, action, params, state=no_s3_state())
    assert message.startswith("no S3 storage is related [not-configured]"), message
    assert [op for op in agent.ops() if op != "status"] == [], agent.ops()
    assert ctx.action_results == {"error-code": "not-configured"}


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_action_fails_with_the_agents_code_hint_and_no_secret(ctx, agent, action, systemd):
    params, key = ACTIONS[action]
    agent.responses[key] = AgentError("s3-access-denied", f"denied for {S3_SECRET_KEY}")
    message = fail_action(ctx, action, params)
    assert "denied for *** [s3-access-denied]" in message, message
    assert "check the s3-integrator's credentials secret" in message
    assert ctx.action_results["error-code"] == "s3-access-denied"
    assert_nothing_secret(ctx)


def test_restore_can_leave_sentinel_alone_and_bound_its_wait(ctx, agent):
    params = {"backup-id": BACKUP_ID, "sentinel": "ignore", "timeout-seconds": 30}
    run_action(ctx, "restore-backup", params)
    assert agent.params_of("restore-backup:prepare")[0]["sentinel"] == "ignore"
    assert agent.params_of("restore-backup:finish") == [
        {"step": "finish", "restore-id": "r-123", "timeout-seconds": 30}
    ]


def test_restore_reports_the_cluster_and_fails_when_a_failover_discarded_it(ctx, agent):
    finished = {
        "loaded": True,
        "keys": {"db0": 3},
        "role": "primary",
        "writable": True,
        "replicas": [
            {"addr": "10.0.0.6:6379", "state": "online", "in-sync": True, "keys-match": True}
        ],
        "sentinel": {"master-name": "primary", "restored": True, "error": None},
    }
    agent.responses["restore-backup:finish"] = finished
    run_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    logs = ctx.action_logs
    assert "this server is the primary and takes writes" in logs
    assert "replica 10.0.0.6:6379: online, in sync, keys match" in logs
    assert "sentinel settings of primary: restored" in logs
    assert json.loads(ctx.action_results["replicas"])[0]["addr"] == "10.0.0.6:6379"

    agent.responses["restore-backup:finish"] = {**finished, "role": "replica", "replicas": []}
    message = fail_action(ctx, "restore-backup", {"backup-id": BACKUP_ID})
    assert "came back as a replica" in message and "[valkey-replica]" in message
