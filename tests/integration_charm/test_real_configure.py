"""Juju state reaching the real agent: configure requests and the status they lead to."""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import unique_bucket_name  # pyright: ignore[reportMissingImports]
from ops import testing

from charm_world import MODEL, PRINCIPAL_APP, CharmUnit

INTEGRATE = "run: juju integrate valkey-backup s3-integrator"


def stored_config(unit: CharmUnit) -> dict[str, Any]:
    """The configuration the agent stored (its state dir), i.e. what it accepted."""
    return json.loads((unit.agent.state_dir / "config.json").read_text())


def config_inode(unit: CharmUnit) -> int:
    """Changes whenever the agent stores a configuration (temp file + rename)."""
    return (unit.agent.state_dir / "config.json").stat().st_ino


@pytest.mark.parametrize("schema", ["v1", "v0"])
def test_s3_relation_configures_the_real_agent(charm_unit, schema):
    unit: CharmUnit = charm_unit(schema=schema)
    assert unit.agent_status()["configured"] is False

    state = unit.configure()

    status = unit.agent_status()
    assert status["configured"] is True and status["s3-configured"] is True
    assert status["cluster"] == f"{MODEL}.{PRINCIPAL_APP}"
    assert status["unit"] == f"{PRINCIPAL_APP}/0"
    assert status["bucket"] == unit.bucket
    stored = stored_config(unit)
    assert stored["s3"]["endpoint"] == unit.s3.endpoint
    assert stored["s3"]["access-key"] == unit.access_key
    assert stored["valkey"]["port"] == unit.server.port
    assert stored["valkey"]["cli"] == str(unit.server.cli)
    assert state.unit_status == testing.ActiveStatus("")
    unit.assert_no_secrets(unit.agent.log_text())


def test_unchanged_config_is_not_resent_and_a_change_is(charm_unit):
    unit: CharmUnit = charm_unit()
    unit.configure()
    first = config_inode(unit)
    bound = unit.agent_status()["memory-bound-bytes"]

    unit.run(unit.ctx.on.config_changed())
    assert config_inode(unit) == first  # nothing sent: every configure costs a HeadBucket

    unit.with_state(config={**unit.state.config, "upload-concurrency": 1})
    state = unit.run(unit.ctx.on.config_changed())
    assert config_inode(unit) != first
    assert stored_config(unit)["backup"]["upload-concurrency"] == 1
    # part size x (concurrency + 1): 5 MiB x 2 instead of the default 5 MiB x 3
    assert bound == 3 * 5 * 1024 * 1024
    assert unit.agent_status()["memory-bound-bytes"] == 2 * 5 * 1024 * 1024
    assert state.unit_status == testing.ActiveStatus("")


def test_a_missing_bucket_is_created_by_the_agent(charm_unit, moto):
    bucket = unique_bucket_name("vb-charm")
    unit: CharmUnit = charm_unit(bucket=bucket)
    state = unit.configure()
    moto.client().head_bucket(Bucket=bucket)  # raises if it does not exist
    assert any(
        line.message == f"agent configured: cluster={unit.cluster} bucket={bucket} (created)"
        for line in unit.ctx.juju_log
    )
    assert state.unit_status == testing.ActiveStatus("")


def test_rejected_credentials_block_the_unit(charm_unit, moto_auth):
    unit: CharmUnit = charm_unit(s3_server=moto_auth, credentials=moto_auth.unknown_credentials())
    state = unit.configure()
    assert state.unit_status == testing.BlockedStatus(
        "s3 credentials rejected: check the s3-integrator's credentials secret"
    )
    assert unit.agent_status()["configured"] is False  # nothing was stored
    message = unit.fail("create-backup")
    assert "[not-configured]" in message
    unit.assert_no_secrets(unit.agent.log_text())


def test_a_bucket_created_later_clears_the_block_on_update_status(charm_unit, moto_auth):
    bucket = unique_bucket_name("vb-later")
    key = moto_auth.create_key(deny=["s3:CreateBucket"])
    unit: CharmUnit = charm_unit(s3_server=moto_auth, credentials=key, bucket=bucket)
    state = unit.configure()
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert state.unit_status.message.startswith("bucket does not exist and cannot be created")
    assert unit.agent_status()["configured"] is False

    moto_auth.create_bucket(bucket)  # the operator fixes it on the store's side
    state = unit.run(unit.ctx.on.update_status())
    assert state.unit_status == testing.ActiveStatus("")
    assert unit.agent_status()["bucket"] == bucket
    unit.assert_no_secrets(unit.agent.log_text())


def test_relation_broken_tells_the_agent_and_backups_fail_clearly(charm_unit):
    unit: CharmUnit = charm_unit()
    unit.configure()
    unit.action("create-backup")

    state = unit.run(unit.ctx.on.relation_broken(unit.s3_rel))
    status = unit.agent_status()
    assert status["configured"] is True and status["s3-configured"] is False
    assert "s3" not in stored_config(unit) or stored_config(unit)["s3"] is None
    assert state.unit_status == testing.BlockedStatus(f"no S3 storage: {INTEGRATE}")
    # The agent itself refuses now (e.g. its CLI on the machine), not only the charm.
    unit.agent.request("create-backup").expect_error("not-configured")

    # After relation-broken Juju no longer lists the relation.
    unit.with_state(relations=[r for r in unit.state.relations if r.id != unit.s3_relation.id])
    message = unit.fail("create-backup")
    assert message.startswith("no S3 storage is related [not-configured]")
    assert INTEGRATE in message
    assert unit.ctx.action_results == {"error-code": "not-configured"}
    unit.assert_no_secrets()


def test_agent_down_blocks_and_fails_actions_then_recovers(charm_unit):
    unit: CharmUnit = charm_unit()
    unit.configure()

    unit.agent.stop()
    state = unit.run(unit.ctx.on.update_status())
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert state.unit_status.message.startswith("agent unhealthy: the agent is not running")
    assert "journalctl -u valkey-backup-agent" in state.unit_status.message
    message = unit.fail("create-backup")
    assert "[agent-unavailable]" in message
    assert "systemctl status valkey-backup-agent" in message

    unit.agent.start()  # same socket and state dir: the stored configuration is back
    state = unit.run(unit.ctx.on.update_status())
    assert state.unit_status == testing.ActiveStatus("")
    unit.action("create-backup")
    unit.assert_no_secrets()
