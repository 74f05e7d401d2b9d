"""The compression options and the encryption-key secret, through ops.testing."""

from __future__ import annotations

import dataclasses

import pytest
from ops import testing

from config_model import CharmConfig, InvalidConfigError, encryption_params
from fakes import full_state, password_secret, principal, s3_v1

# Test keys made with age-keygen for these tests only.
KEY_A = "AGE-SECRET-KEY-1S8D700SZYFWPGR75K9HCEQ5YQ9PL05A3W3UY2JR8E3V7A3P8DLYSPSSWXU"
KEY_B = "AGE-SECRET-KEY-1LGKKCD0KLQZ4T5HHC5EJU0VH53ZUGVGMQFX43L68LSMJSPERF5ASZJ480W"
PUBLIC_B = "age1eguf8t64z2z3nen7zp0df8pah6enruf0z5h4avz3y0mmutqr0pwsagxeny"
KEY_FILE_A = (
    "# created: 2026-11-30T20:38:17Z\n"
    "# public key: age1w8hnuwg4h4psarcut5y9rcjcn97pgfqsz0ndxrcwcxf0048ewfnqvzsacz\n"
    f"{KEY_A}\n"
)


def configures(agent) -> list[dict]:
    return [p for p in agent.params_of("configure") if p is not None]


def with_key(content: dict[str, str]) -> testing.State:
    """A full unit whose encryption-key option names a secret with ``content``."""
    key = testing.Secret(content)
    password = password_secret()
    s3, s3_secret = s3_v1()
    return testing.State(
        relations=[principal(), s3],
        secrets=[password, s3_secret, key],
        config={"valkey-password": password.id, "encryption-key": key.id},
        model=testing.Model(name="test-model"),
    )


def test_default_is_plain_and_clear(ctx, agent):
    ctx.run(ctx.on.config_changed(), full_state())
    params = configures(agent)[-1]
    assert params["backup"]["compression"] == "none"
    assert "compression-level" not in params["backup"]
    assert "encryption" not in params


@pytest.mark.parametrize(
    ("config", "backup"),
    [
        ({"compression": "lz4"}, {"compression": "lz4"}),
        ({"compression": "zstd"}, {"compression": "zstd", "compression-level": 3}),
        (
            {"compression": "zstd", "zstd-level": 19},
            {"compression": "zstd", "compression-level": 19},
        ),
        ({"compression": "lz4", "zstd-level": 9}, {"compression": "lz4"}),
    ],
)
def test_compression_options_reach_the_agent(ctx, agent, config, backup):
    ctx.run(ctx.on.config_changed(), full_state(config=config))
    sent = configures(agent)[-1]["backup"]
    assert {k: v for k, v in sent.items() if "compression" in k} == backup


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"compression": "gzip"}, "compression 'gzip' is not one of none, lz4, zstd"),
        ({"compression": "zstd", "zstd-level": 22}, "zstd-level 22 is not between 1 and 19"),
    ],
)
def test_bad_compression_blocks(ctx, agent, config, fragment):
    state = ctx.run(ctx.on.config_changed(), full_state(config=config))
    assert "configure" not in agent.ops()
    assert state.unit_status == testing.BlockedStatus(fragment)


def test_the_key_file_becomes_identities_and_never_leaks(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), with_key({"identities": KEY_FILE_A}))
    assert configures(agent)[-1]["encryption"] == {"identities": [KEY_A]}
    assert state.unit_status == testing.ActiveStatus("")
    assert KEY_A not in str(ctx.juju_log)


def test_rotation_sends_new_then_old_and_explicit_recipients(ctx, agent):
    content = {"identities": f"{KEY_B}\n{KEY_A}\n", "recipients": PUBLIC_B}
    ctx.run(ctx.on.config_changed(), with_key(content))
    assert configures(agent)[-1]["encryption"] == {
        "identities": [KEY_B, KEY_A],
        "recipients": [PUBLIC_B],
    }


def test_a_rotated_secret_is_sent_on_secret_changed(ctx, agent):
    state = ctx.run(ctx.on.config_changed(), with_key({"identities": KEY_A}))
    old = next(s for s in state.secrets if s.tracked_content.get("identities") == KEY_A)
    rotated = dataclasses.replace(old, latest_content={"identities": f"{KEY_B}\n{KEY_A}"})
    state = dataclasses.replace(
        state, secrets=[rotated if s.id == old.id else s for s in state.secrets]
    )
    ctx.run(ctx.on.secret_changed(rotated), state)
    assert configures(agent)[-1]["encryption"]["identities"] == [KEY_B, KEY_A]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ({"identity": KEY_A}, "encryption-key secret has no 'identities' key"),
        ({"identities": PUBLIC_B}, "line 1 of 'identities' is not an age secret key"),
        ({"identities": KEY_A, "recipients": KEY_B}, "item 1 of 'recipients' is not"),
    ],
)
def test_an_unusable_key_blocks_without_quoting_it(ctx, agent, content, fragment):
    state = ctx.run(ctx.on.config_changed(), with_key(content))
    assert "configure" not in agent.ops()
    assert isinstance(state.unit_status, testing.BlockedStatus)
    assert fragment in state.unit_status.message
    for value in content.values():
        assert value not in state.unit_status.message
        assert value not in str(ctx.juju_log)


def test_a_key_secret_not_granted_blocks_with_the_grant_command(ctx, agent):
    state = full_state(config={"encryption-key": "secret:d0erdgfmp25c762i8np9"})
    state = ctx.run(ctx.on.config_changed(), state)
    assert "configure" not in agent.ops()
    assert state.unit_status == testing.BlockedStatus(
        "encryption-key secret not found or not granted: "
        "run juju grant-secret <secret> valkey-backup"
    )


def test_agent_messages_echoing_the_key_are_redacted(ctx, agent):
    from agent_client import AgentError

    agent.responses["configure"] = AgentError("bad-request", f"odd key {KEY_A}")
    state = ctx.run(ctx.on.config_changed(), with_key({"identities": KEY_A}))
    assert KEY_A not in state.unit_status.message
    assert "***" in state.unit_status.message


def test_encryption_params_pure():
    assert encryption_params({"identities": f"# comment\n\n {KEY_A} \n"}) == {
        "identities": [KEY_A]
    }
    with pytest.raises(InvalidConfigError):
        encryption_params({})
    config = CharmConfig.from_mapping({"compression": "zstd", "zstd-level": 5})
    assert config.backup_params()["compression-level"] == 5
