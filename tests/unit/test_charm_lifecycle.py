"""Install, start, upgrade, remove and update-status through ops.testing."""

from __future__ import annotations

import pytest
from ops import testing

import charm as charm_module
from agent_client import AgentError
from fakes import VALKEY_PASSWORD, full_state
from service import AGENT_UNIT


def test_install_puts_the_agent_in_place_starts_it_and_configures_it(
    ctx, agent, systemd, paths, charm_root
):
    state = ctx.run(ctx.on.install(), full_state())

    assert paths.binary.read_bytes() == (charm_root / "bin" / "valkey-backup-agent").read_bytes()
    assert "RuntimeDirectoryMode=0700" in paths.unit_file.read_text()
    assert systemd.verbs() == ["daemon-reload", f"enable --now {AGENT_UNIT}"]
    # Waits for the agent to answer, then sends one configure.
    assert agent.ops()[:2] == ["status", "configure"]
    assert state.unit_status == testing.ActiveStatus("")
    # The charm talks to the socket named in the paths.
    assert set(agent.socket_paths) == {paths.socket}


def test_install_without_a_packed_agent_blocks_instead_of_crashing(
    ctx, agent, systemd, charm_root
):
    (charm_root / "bin" / "valkey-backup-agent").unlink()
    agent.down = True
    state = ctx.run(ctx.on.install(), full_state())
    assert systemd.verbs() == []
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert "charmcraft pack" in state.unit_status.message


def test_agent_that_never_answers_leaves_the_unit_blocked(ctx, agent, monkeypatch):
    monkeypatch.setattr(charm_module.ValkeyBackupCharm, "agent_start_timeout", 0.0)
    agent.down = True
    state = ctx.run(ctx.on.install(), full_state())
    assert "configure" not in agent.ops()
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert state.unit_status.message.startswith("agent unhealthy: the agent is not running")


def test_systemctl_failure_on_install_is_a_hook_error(ctx, systemd):
    systemd.fail("enable", AGENT_UNIT, "Unit is masked")
    with pytest.raises(testing.errors.UncaughtCharmError, match="Unit is masked"):
        ctx.run(ctx.on.install(), full_state())


def test_start_makes_sure_the_agent_runs_and_configures_it(ctx, agent, systemd, paths):
    paths.binary.parent.mkdir(parents=True)
    paths.binary.write_bytes(b"installed")
    state = ctx.run(ctx.on.start(), full_state())
    assert systemd.verbs() == [f"enable --now {AGENT_UNIT}"]
    assert "configure" in agent.ops()
    assert state.unit_status == testing.ActiveStatus("")


def test_upgrade_replaces_and_restarts_the_agent_and_resends_the_configuration(
    ctx, agent, systemd, paths, charm_root
):
    paths.binary.parent.mkdir(parents=True)
    paths.binary.write_bytes(b"old agent")
    (charm_root / "bin" / "valkey-backup-agent").write_bytes(b"new agent")
    # The configuration is unchanged since the last hook, yet it is sent again: the new
    # agent may store it differently.
    state = ctx.run(ctx.on.config_changed(), full_state())
    agent.calls.clear()
    systemd.argvs.clear()

    state = ctx.run(ctx.on.upgrade_charm(), state)
    assert paths.binary.read_bytes() == b"new agent"
    assert systemd.verbs() == [
        "daemon-reload",
        f"enable --now {AGENT_UNIT}",
        f"restart {AGENT_UNIT}",
    ]
    assert agent.ops().count("configure") == 1
    assert state.unit_status == testing.ActiveStatus("")


def test_remove_stops_the_agent_and_deletes_its_state(ctx, agent, systemd, paths):
    paths.binary.parent.mkdir(parents=True)
    paths.binary.write_bytes(b"installed")
    paths.state_dir.mkdir()
    (paths.state_dir / "config.json").write_text("{}")
    state = ctx.run(ctx.on.remove(), full_state())
    assert systemd.verbs() == [f"disable --now {AGENT_UNIT}", "daemon-reload"]
    assert not paths.binary.exists()
    assert not paths.state_dir.exists()
    assert state.unit_status == testing.MaintenanceStatus("removing the agent")
    assert "configure" not in agent.ops()


def test_remove_survives_a_failing_systemctl(ctx, systemd):
    systemd.fail("daemon-reload", "daemon-reload", "bus error")
    state = ctx.run(ctx.on.remove(), full_state())
    assert state.unit_status == testing.MaintenanceStatus("removing the agent")


def test_update_status_does_not_resend_an_accepted_configuration(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), full_state())
    agent.calls.clear()
    ctx.run(ctx.on.update_status(), state)
    assert "configure" not in agent.ops()


def test_update_status_resends_when_the_agent_lost_its_configuration(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), full_state())
    agent.calls.clear()
    agent.responses["status"] = {**agent.responses["status"], "configured": False}
    ctx.run(ctx.on.update_status(), state)
    assert agent.ops().count("configure") == 1


def test_update_status_retries_a_rejected_configuration(ctx, agent):
    agent.responses["configure"] = AgentError("s3-no-bucket", "bucket backups does not exist")
    state = ctx.run(ctx.on.config_changed(), full_state())
    assert state.unit_status.message.startswith("bucket does not exist and cannot be created")

    agent.responses.pop("configure")  # the bucket has been created since
    state = ctx.run(ctx.on.update_status(), state)
    assert state.unit_status == testing.ActiveStatus("")


def test_update_status_retries_after_the_agent_was_unreachable(ctx, agent):
    agent.down = True
    state = ctx.run(ctx.on.config_changed(), full_state())
    assert isinstance(state.unit_status, testing.BlockedStatus)
    agent.down = False
    agent.calls.clear()
    state = ctx.run(ctx.on.update_status(), state)
    assert "configure" in agent.ops()
    assert state.unit_status == testing.ActiveStatus("")


def test_nothing_secret_is_logged_by_lifecycle_hooks(ctx):
    state = ctx.run(ctx.on.install(), full_state())
    ctx.run(ctx.on.update_status(), state)
    assert VALKEY_PASSWORD not in str(ctx.juju_log)
