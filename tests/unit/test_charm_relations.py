"""The s3-credentials relation (v0 and v1 providers) and the juju-info principal."""

from __future__ import annotations

import base64
import json

import pytest
from ops import testing

from fakes import (
    BUCKET,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    VALKEY_PASSWORD,
    full_state,
    password_secret,
    principal,
    s3_v0,
    s3_v1,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----"


def state_with(*relations, secrets=(), leader=False, config=None) -> testing.State:
    secret = password_secret()
    return testing.State(
        relations=[principal(), *relations],
        secrets=[secret, *secrets],
        config={"valkey-password": secret.id, **(config or {})},
        leader=leader,
        model=testing.Model(name="test-model"),
    )


def last_configure(agent) -> dict:
    sent = agent.params_of("configure")
    assert sent, "no configure was sent"
    return sent[-1]


def test_v1_relation_joined_announces_the_schema_version_as_leader(ctx):
    relation = testing.Relation("s3-credentials", remote_app_name="s3-integrator")
    state = ctx.run(
        ctx.on.relation_joined(relation, remote_unit=0), state_with(relation, leader=True)
    )
    assert state.get_relation(relation.id).local_app_data.get("version") == "1"


def test_v1_credentials_from_the_relation_secret_are_sent(ctx, agent):
    relation, secret = s3_v1()
    state = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), state_with(relation, secrets=[secret])
    )
    s3 = last_configure(agent)["s3"]
    assert s3 == {
        "endpoint": "http://127.0.0.1:9000",
        "bucket": BUCKET,
        "path": "valkey",
        "region": "us-east-1",
        "access-key": S3_ACCESS_KEY,
        "secret-key": S3_SECRET_KEY,
        "s3-uri-style": "path",
    }
    assert state.unit_status == testing.ActiveStatus("")


def test_v0_plaintext_credentials_are_sent(ctx, agent):
    relation = s3_v0()
    state = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state_with(relation))
    s3 = last_configure(agent)["s3"]
    assert (s3["access-key"], s3["secret-key"], s3["bucket"]) == (
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
        BUCKET,
    )
    assert state.unit_status == testing.ActiveStatus("")


def test_v0_provider_as_leader_still_configures_on_the_first_change(ctx, agent):
    # With a v0 provider the library spends the leader's first relation-changed on
    # writing a bucket request; the charm configures the agent all the same.
    relation = s3_v0()
    state = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), state_with(relation, leader=True)
    )
    assert state.get_relation(relation.id).local_app_data.get("bucket")
    assert last_configure(agent)["s3"]["secret-key"] == S3_SECRET_KEY


def test_tls_ca_chain_and_retention_reach_the_agent(ctx, agent):
    b64 = base64.b64encode(PEM.encode()).decode()
    relation = s3_v0(**{"tls-ca-chain": json.dumps([b64]), "delete-older-than-days": "14"})
    ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state_with(relation))
    params = last_configure(agent)
    assert params["s3"]["tls-ca-chain"] == [b64]
    assert params["s3"]["delete-older-than-days"] == 14


def test_pem_ca_chain_is_passed_as_pem(ctx, agent):
    relation, secret = s3_v1({"tls-ca-chain": json.dumps([PEM])})
    ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), state_with(relation, secrets=[secret])
    )
    assert last_configure(agent)["s3"]["tls-ca-chain"] == [PEM]


def test_incomplete_relation_waits_and_tells_the_agent_there_is_no_storage(ctx, agent):
    relation = testing.Relation(
        "s3-credentials", remote_app_name="s3-integrator", remote_app_data={"version": "1"}
    )
    state = ctx.run(ctx.on.config_changed(), state_with(relation))
    assert last_configure(agent)["s3"] is None
    assert isinstance(state.unit_status, testing.WaitingStatus)


@pytest.mark.parametrize("schema", ["v0", "v1"])
def test_relation_broken_tells_the_agent_and_blocks(ctx, agent, schema):
    if schema == "v1":
        relation, secret = s3_v1()
        state = state_with(relation, secrets=[secret])
    else:
        relation = s3_v0()
        state = state_with(relation)
    state = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)
    assert last_configure(agent)["s3"] is not None

    state = ctx.run(ctx.on.relation_broken(state.get_relation(relation.id)), state)
    assert last_configure(agent)["s3"] is None
    assert state.unit_status == testing.BlockedStatus(
        "no S3 storage: run: juju integrate valkey-backup s3-integrator"
    )


def test_rotated_relation_secret_is_sent_on_secret_changed(ctx, agent):
    relation, secret = s3_v1()
    state = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), state_with(relation, secrets=[secret])
    )
    rotated = testing.Secret(
        {"access-key": S3_ACCESS_KEY, "secret-key": S3_SECRET_KEY},
        latest_content={"access-key": "AKIANEW", "secret-key": "new-secret-key"},
        id=secret.id,
        label=f"s3-credentials.{relation.id}.extra.secret",
    )
    state = testing.State(
        relations=state.relations,
        secrets=[s for s in state.secrets if s.id != secret.id] + [rotated],
        config=state.config,
        model=state.model,
        stored_states=state.stored_states,
    )
    ctx.run(ctx.on.secret_changed(rotated), state)
    assert last_configure(agent)["s3"]["secret-key"] == "new-secret-key"


def test_unreadable_relation_secret_waits(ctx, agent):
    # The provider grants its secret before naming it in the databag, so this is only a
    # moment's race; the charm treats it as "not yet" rather than failing the hook.
    relation, _secret = s3_v1()  # the secret is not in the state: not readable
    state = ctx.run(ctx.on.config_changed(), state_with(relation))
    assert last_configure(agent)["s3"] is None
    assert isinstance(state.unit_status, testing.WaitingStatus)


def test_cluster_defaults_to_model_and_principal_app(ctx, agent):
    ctx.run(ctx.on.config_changed(), full_state())
    params = last_configure(agent)
    assert params["cluster"] == "test-model.valkey"
    assert params["unit"] == "valkey/0"


def test_cluster_name_can_be_overridden(ctx, agent):
    ctx.run(ctx.on.config_changed(), full_state(config={"cluster-name": "prod.cache"}))
    assert last_configure(agent)["cluster"] == "prod.cache"


def test_principal_joining_configures_the_agent(ctx, agent):
    relation, secret = s3_v1()
    state = state_with(relation, secrets=[secret])
    juju_info = next(r for r in state.relations if r.endpoint == "juju-info")
    ctx.run(ctx.on.relation_joined(juju_info, remote_unit=0), state)
    assert last_configure(agent)["unit"] == "valkey/0"


def test_without_a_principal_the_unit_waits_and_sends_nothing(ctx, agent):
    secret = password_secret()
    state = testing.State(config={"valkey-password": secret.id}, secrets=[secret])
    state = ctx.run(ctx.on.config_changed(), state)
    assert "configure" not in agent.ops()
    assert state.unit_status == testing.WaitingStatus(
        "waiting for the principal unit (juju-info relation)"
    )


def test_relation_data_never_reaches_the_logs(ctx):
    relation, secret = s3_v1()
    ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0), state_with(relation, secrets=[secret])
    )
    logged = str(ctx.juju_log)
    for value in (S3_SECRET_KEY, S3_ACCESS_KEY, VALKEY_PASSWORD):
        assert value not in logged
