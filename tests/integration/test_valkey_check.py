"""`configure` checks Valkey as a backup would, before any backup is tried: each way the
server can be wrong gives its own stable code in `valkey-check`, the configuration is
stored anyway (S3 settings are not lost to a server that is down for a minute), and
`status` repeats the check. Real servers, real ACLs."""

from __future__ import annotations

import pytest
from harness import configure_params, free_port

PW = "check-pw-5e1f"


def _configure(a, params) -> dict:
    result = a.request("configure", params).expect_ok()
    assert result["configured"] is True and result["s3-configured"] is True, result
    return result["valkey-check"]


def _assert_failed(check: dict, code: str, *, secrets: tuple[str, ...]) -> None:
    assert check["ok"] is False and check["code"] == code, check
    for s in secrets:
        assert s not in check["message"], check


@pytest.mark.parametrize("source", ["native", "cli"])
def test_a_working_server_checks_ok_with_role_and_version(
    source, valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey9", username="charmed-operator", password=PW)
    with server.client() as c:
        full_syncs = int(c.info("stats")["sync_full"])
    a = agent()
    check = _configure(a, configure_params(server, moto, moto_bucket, source=source))
    assert check["ok"] is True and check["code"] is None and check["message"] is None, check
    assert check["role"] == "primary" and check["server"].startswith("valkey 9."), check
    assert check["addr"] == f"{server.host}:{server.port}" and check["sentinel"] is None
    assert a.request("status").expect_ok()["valkey-check"] == check
    # The probe never starts a snapshot: the server counted no full sync (a transfer cut
    # off at once would still count) and has forked no child for a replica.
    with server.client() as c:
        assert int(c.info("stats")["sync_full"]) == full_syncs
        assert c.info("persistence")["rdb_bgsave_in_progress"] == 0
        assert c.info("replication")["connected_slaves"] == 0


def test_wrong_user_and_wrong_password_are_valkey_auth(valkey_server, agent, moto, moto_bucket):
    server = valkey_server("valkey9", username="charmed-operator", password=PW)
    a = agent()
    params = configure_params(server, moto, moto_bucket)
    params["valkey"]["username"] = "no-such-user"
    check = _configure(a, params)
    _assert_failed(check, "valkey-auth", secrets=(PW,))
    assert "valkey.username" in check["message"], check
    params = configure_params(server, moto, moto_bucket)
    params["valkey"]["password"] = "wrong-pw-77"
    check = _configure(a, params)
    _assert_failed(check, "valkey-auth", secrets=(PW, "wrong-pw-77"))
    # Stored anyway, and status says the same.
    status = a.request("status").expect_ok()
    assert status["configured"] and status["valkey-check"]["code"] == "valkey-auth", status


def test_unreachable_server_is_valkey_unreachable_and_s3_stays_configured(
    valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey9", username="charmed-operator", password=PW)
    a = agent()
    params = configure_params(server, moto, moto_bucket)
    params["valkey"]["port"] = free_port()
    check = _configure(a, params)
    _assert_failed(check, "valkey-unreachable", secrets=(PW,))
    assert str(params["valkey"]["port"]) in check["message"] and "valkey.host" in check["message"]
    assert check["role"] is None and check["server"] is None, check
    # The S3 side works: a listing succeeds while Valkey is unreachable.
    assert a.request("list-backups").expect_ok()["backups"] == []


@pytest.mark.parametrize("source", ["native", "cli"])
def test_a_user_without_replication_rights_is_valkey_permission(
    source, valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey9", username="charmed-operator", password=PW)
    with server.client() as c:
        c.execute_command(
            "ACL", "SETUSER", "stats", "on", ">stats-pw", "~*", "+@all", "-sync", "-psync"
        )
    a = agent()
    params = configure_params(server, moto, moto_bucket, source=source)
    params["valkey"].update(username="stats", password="stats-pw")
    check = _configure(a, params)
    _assert_failed(check, "valkey-permission", secrets=(PW, "stats-pw"))
    assert "NOPERM" in check["message"] and "+sync" in check["message"], check
    assert check["role"] == "primary", "INFO worked, so the role is known"
    # The same user with the right granted checks ok.
    with server.client() as c:
        c.execute_command("ACL", "SETUSER", "stats", "+sync")
    assert _configure(a, params)["ok"] is True


def test_a_least_privilege_backup_user_checks_ok_with_a_restore_warning(
    valkey_server, agent, moto, moto_bucket
):
    # Backups never send CONFIG GET: a user with only the replication rights can back up,
    # so the unit must not be blocked; the check warns that a restore would fail.
    server = valkey_server("valkey8", username="charmed-operator", password=PW)
    with server.client() as c:
        c.execute_command(
            "ACL", "SETUSER", "nocfg", "on", ">nocfg-pw",
            "+info", "+ping", "+sync", "+psync", "+replconf",
        )  # fmt: skip
    a = agent()
    params = configure_params(server, moto, moto_bucket, source="native")
    params["valkey"].update(username="nocfg", password="nocfg-pw")
    check = _configure(a, params)
    assert check["ok"] is True and check["code"] is None, check
    warning = check["restore-warning"]
    assert "NOPERM" in warning and "+config|get" in warning and "nocfg-pw" not in warning, check
    assert a.request("create-backup").expect_ok()["backup-id"]
    # The full user has no warning.
    assert _configure(a, configure_params(server, moto, moto_bucket))["restore-warning"] is None


def test_status_checks_again_only_when_asked(valkey_server, agent, moto, moto_bucket):
    server = valkey_server("valkey9", username="charmed-operator", password=PW)
    with server.client() as c:
        c.execute_command("ACL", "SETUSER", "backup", "on", ">first-pw", "~*", "+@all")
    a = agent()
    params = configure_params(server, moto, moto_bucket)
    params["valkey"].update(username="backup", password="first-pw")
    assert _configure(a, params)["ok"] is True
    # The principal rotates the password: a plain status still shows the last check...
    with server.client() as c:
        c.execute_command("ACL", "SETUSER", "backup", "resetpass", ">second-pw")
    assert a.request("status").expect_ok()["valkey-check"]["ok"] is True
    # ...and a status that checks again shows what the next backup would hit.
    checked = a.request("status", {"check-valkey": True}).expect_ok()["valkey-check"]
    _assert_failed(checked, "valkey-auth", secrets=("first-pw", "second-pw", PW))
    assert a.request("status").expect_ok()["valkey-check"] == checked
    a.request("status", {"check-valkey": "yes"}).expect_error("bad-request")
