"""Config, the password secret, and the statuses they lead to, through ops.testing."""

from __future__ import annotations

import dataclasses

import pytest
from ops import testing

from agent_client import AgentError
from fakes import VALKEY_PASSWORD, full_state, principal, s3_v1


def configures(agent) -> list[dict]:
    return [p for p in agent.params_of("configure") if p is not None]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"valkey-port": 70000}, "valkey-port 70000 is not between 1 and 65535"),
        ({"valkey-host": "redis://x"}, "valkey-host"),
        ({"cluster-name": "a/b"}, "cluster-name must start with"),
        ({"upload-concurrency": 99}, "upload-concurrency 99"),
        ({"part-size-mib": 1}, "part-size-mib 1"),
        ({"valkey-cli-path": "/nonexistent/valkey-cli"}, "is not an executable file"),
        ({"valkey-tls": True, "valkey-tls-ca-file": "/nonexistent/ca.pem"}, "does not exist"),
    ],
)
def test_bad_config_blocks_with_the_reason_and_sends_nothing(ctx, agent, config, fragment):
    state = ctx.run(ctx.on.config_changed(), full_state(config=config))
    assert "configure" not in agent.ops()
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert fragment in state.unit_status.message


def test_fixing_the_config_unblocks(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), full_state(config={"valkey-port": 0}))
    state = dataclasses.replace(state, config={**state.config, "valkey-port": 6380})
    state = ctx.run(ctx.on.config_changed(), state)
    assert configures(agent)[-1]["valkey"]["port"] == 6380
    assert state.unit_status == testing.ActiveStatus("")


def test_no_cli_on_the_machine_blocks_the_cli_source_only(ctx, agent, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    state = ctx.run(ctx.on.config_changed(), full_state(config={"valkey-source": "cli"}))
    assert state.unit_status == testing.BlockedStatus(
        "no valkey-cli or redis-cli found on this machine; install one or set valkey-cli-path"
    )
    assert configures(agent) == []
    # The agent's own client needs no cli: the default source configures without one.
    state = ctx.run(ctx.on.config_changed(), full_state())
    sent = configures(agent)[-1]["valkey"]
    assert sent["source"] == "auto" and "cli" not in sent
    assert state.unit_status == testing.ActiveStatus("")


@pytest.mark.parametrize("source", ["native", "cli"])
def test_the_configured_source_is_sent(ctx, agent, source):
    ctx.run(ctx.on.config_changed(), full_state(config={"valkey-source": source}))
    assert configures(agent)[-1]["valkey"]["source"] == source


def test_an_unknown_source_blocks(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), full_state(config={"valkey-source": "redis"}))
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert "valkey-source" in state.unit_status.message
    assert configures(agent) == []


def test_redis_cli_is_used_when_there_is_no_valkey_cli(ctx, agent, cli_dir):
    (cli_dir / "valkey-cli").rename(cli_dir / "redis-cli")
    ctx.run(ctx.on.config_changed(), full_state())
    assert configures(agent)[-1]["valkey"]["cli"] == str(cli_dir / "redis-cli")


def test_password_comes_from_the_user_secret(ctx, agent):
    ctx.run(ctx.on.config_changed(), full_state())
    assert configures(agent)[-1]["valkey"]["password"] == VALKEY_PASSWORD


def test_no_password_secret_configures_without_a_password(ctx, agent):
    relation, s3_secret = s3_v1()
    state = testing.State(relations=[principal(), relation], secrets=[s3_secret])
    state = ctx.run(ctx.on.config_changed(), state)
    assert "password" not in configures(agent)[-1]["valkey"]
    assert state.unit_status == testing.ActiveStatus("")


def test_secret_not_granted_blocks_with_the_grant_command(ctx, agent):
    state = full_state(config={"valkey-password": "secret:d0erdgfmp25c762i8np0"})
    state = ctx.run(ctx.on.config_changed(), state)
    assert "configure" not in agent.ops()
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert "juju grant-secret" in state.unit_status.message


def test_secret_without_a_password_key_blocks(ctx, agent):
    secret = testing.Secret({"pass": VALKEY_PASSWORD})
    relation, s3_secret = s3_v1()
    state = testing.State(
        relations=[principal(), relation],
        secrets=[secret, s3_secret],
        config={"valkey-password": secret.id},
    )
    state = ctx.run(ctx.on.config_changed(), state)
    assert state.unit_status == testing.BlockedStatus(
        "valkey-password secret has no 'default' or 'password' key"
    )
    assert VALKEY_PASSWORD not in state.unit_status.message


def test_rotated_password_is_sent_on_secret_changed(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), full_state())
    old = next(s for s in state.secrets if s.tracked_content.get("password") == VALKEY_PASSWORD)
    rotated = dataclasses.replace(old, latest_content={"password": "rotated-Pa55"})
    state = dataclasses.replace(
        state, secrets=[rotated if s.id == old.id else s for s in state.secrets]
    )
    ctx.run(ctx.on.secret_changed(rotated), state)
    assert configures(agent)[-1]["valkey"]["password"] == "rotated-Pa55"


def test_unchanged_configuration_is_not_sent_twice(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), full_state())
    ctx.run(ctx.on.config_changed(), state)
    assert len(configures(agent)) == 1


def test_a_changed_option_is_sent(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), full_state())
    state = dataclasses.replace(state, config={**state.config, "upload-concurrency": 5})
    ctx.run(ctx.on.config_changed(), state)
    assert [c["backup"]["upload-concurrency"] for c in configures(agent)] == [2, 5]


def test_tls_options_are_sent(ctx, agent, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    config = {"valkey-tls": True, "valkey-tls-ca-file": str(ca), "valkey-tls-sni": "vk.local"}
    ctx.run(ctx.on.config_changed(), full_state(config=config))
    assert configures(agent)[-1]["valkey"]["tls"] == {
        "enabled": True,
        "insecure": False,
        "ca-file": str(ca),
        "sni": "vk.local",
    }


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (
            "s3-no-bucket",
            "bucket does not exist and cannot be created: "
            "check the s3-integrator's bucket and the key's rights",
        ),
        (
            "s3-access-denied",
            "s3 credentials rejected: check the s3-integrator's credentials secret",
        ),
        (
            "s3-unreachable",
            "s3 endpoint unreachable: check the s3-integrator's endpoint and tls-ca-chain",
        ),
        (
            "bad-request",
            "agent rejected the configuration: endpoint must be http(s) [bad-request]",
        ),
    ],
)
def test_rejected_configuration_blocks(ctx, agent, code, status):
    agent.responses["configure"] = AgentError(code, "endpoint must be http(s)")
    state = ctx.run(ctx.on.config_changed(), full_state())
    assert state.unit_status == testing.BlockedStatus(status)


def test_rejection_is_cleared_once_a_configuration_is_accepted(ctx, agent):
    agent.responses["configure"] = AgentError("s3-access-denied", "InvalidAccessKeyId")
    state = ctx.run(ctx.on.config_changed(), full_state())
    agent.responses.pop("configure")
    state = dataclasses.replace(state, config={**state.config, "upload-concurrency": 4})
    state = ctx.run(ctx.on.config_changed(), state)
    assert state.unit_status == testing.ActiveStatus("")


def test_agent_down_blocks_as_unhealthy(ctx, agent):
    agent.down = True
    state = ctx.run(ctx.on.config_changed(), full_state())
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert state.unit_status.message.startswith("agent unhealthy:")


def test_a_backup_running_on_the_unit_is_maintenance(ctx, agent):
    agent.responses["status"] = {
        **agent.responses["status"],
        "busy": True,
        "running": {
            "op": "create-backup",
            "backup-id": "b9",
            "started-at": "2026-11-21T19:30:00Z",
        },
    }
    state = ctx.run(ctx.on.update_status(), full_state())
    assert state.unit_status == testing.MaintenanceStatus("backup b9 running")


def test_active_status_shows_the_agents_last_backup(ctx, agent):
    agent.responses["status"] = {
        **agent.responses["status"],
        "last-backup": {
            "backup-id": "b1",
            "status": "finished",
            "finished-at": "2000-01-01T00:00:00Z",
        },
    }
    state = ctx.run(ctx.on.update_status(), full_state())
    assert isinstance(state.unit_status, testing.ActiveStatus)
    assert state.unit_status.message.startswith("last backup ")
    assert state.unit_status.message.endswith("d ago")


def test_config_problems_never_leak_the_password(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), full_state(config={"valkey-port": 0}))
    assert VALKEY_PASSWORD not in state.unit_status.message
    assert VALKEY_PASSWORD not in str(ctx.juju_log)


def test_agent_messages_echoing_a_secret_are_redacted(ctx, agent):
    agent.responses["configure"] = AgentError("bad-request", f"bad password {VALKEY_PASSWORD}")
    state = ctx.run(ctx.on.config_changed(), full_state())
    assert VALKEY_PASSWORD not in state.unit_status.message
    assert "***" in state.unit_status.message
    assert VALKEY_PASSWORD not in str(ctx.juju_log)
