"""Secrets never leave the agent: not on any argv, in its log, in answers, or in the bucket.

The S3 secret key and the Valkey password (and a wrong one) are recognisable random
strings; the test drives every op over the socket and through the CLI while sampling
the argv of every process on the machine, then looks for the strings everywhere the
agent writes.

Run: python -m pytest tests/integration/test_secrets.py -q
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import AgentResponse, S3Credentials, configure_params

CLUSTER = "secrets.valkey"
PREFIX = f"valkey/{CLUSTER}/"
MiB = 1024 * 1024


@contextlib.contextmanager
def sample_rdb_env(port: int, period: float = 0.005) -> Iterator[dict[int, dict[str, str]]]:
    """Read the environment of every `--rdb` process streaming from `port` while it runs.

    Yields {pid: environment}, filled while the block runs. Like ArgvSampler (a
    measurement rate, not a synchronisation sleep), but only for the cli: it proves how
    the password reached it.
    """
    seen: dict[int, dict[str, str]] = {}
    stop = threading.Event()
    wanted = str(port).encode()

    def run() -> None:
        while not stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit() or int(entry.name) in seen:
                    continue
                try:
                    argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                    if b"--rdb" not in argv or wanted not in argv:
                        continue
                    raw = Path(entry.path, "environ").read_bytes()
                except OSError:
                    continue
                env = dict(
                    item.decode(errors="replace").partition("=")[::2]
                    for item in raw.split(b"\0")
                    if item
                )
                if env:
                    seen[int(entry.name)] = env
            stop.wait(period)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def _leaks(text: str | bytes, needles: list[str]) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return [n for n in needles if n in text]


@pytest.mark.parametrize("source", ["native", "cli"])
def test_secrets_never_appear_anywhere(
    source, agent, valkey_server, moto, moto_bucket, argv_sampler
):
    password = "vbpw-" + secrets.token_hex(12)
    wrong_password = "vbwrongpw-" + secrets.token_hex(12)
    secret_key = "vbsecret-" + secrets.token_hex(16)
    needles = [password, wrong_password, secret_key]

    server = valkey_server("valkey8", password=password)
    with server.client() as c:
        c.mset({f"key:{i}": f"value:{i}" for i in range(200)})
        # Incompressible values so that each `--rdb` stream spans several 5 MiB parts;
        # with one upload at a time the cli lives long enough for the sampler to see it.
        for i in range(12):
            c.set(f"blob:{i}", os.urandom(MiB))
    # Debug logging is where a careless `{:?}` of the configuration would show up.
    a = agent(env={"VALKEY_BACKUP_LOG": "debug"})
    creds = S3Credentials("AKIAVBTEST" + secrets.token_hex(5).upper(), secret_key)
    good = configure_params(
        server,
        moto,
        moto_bucket,
        cluster=CLUSTER,
        credentials=creds,
        backup={"part-size-bytes": 5 * MiB, "upload-concurrency": 1},
        source=source,
    )
    wrong = json.loads(json.dumps(good))
    wrong["valkey"]["password"] = wrong_password

    responses: list[AgentResponse] = []
    cli_runs: list[Any] = []

    def ask(op: str, params: Any = None) -> AgentResponse:
        resp = a.request(op, params, timeout=120)
        responses.append(resp)
        return resp

    with argv_sampler() as sampler, sample_rdb_env(server.port) as cli_envs:
        assert ask("configure", good).expect_ok()["configured"] is True
        ok = ask("create-backup").expect_ok()
        assert ask("configure", wrong).expect_ok()["configured"] is True
        failed = ask("create-backup").expect_error("valkey-auth")
        assert ask("configure", good).ok
        listed = ask("list-backups").expect_ok()
        status = ask("status").expect_ok()
        # A refused configure that carries the secrets in its params.
        bad = json.loads(json.dumps(good))
        bad["s3"]["bucket"] = "No_Such_Bucket"
        ask("configure", bad).expect_error("bad-request")

        # The CLI, including a configure read from stdin (never from argv).
        cli_runs.append(a.cli("configure", "--file", "-", input=json.dumps(good)))
        cli_runs.append(a.cli("status"))
        cli_runs.append(a.cli("list-backups"))
        cli_runs.append(a.cli("list-backups", "--json"))
        cli_runs.append(a.cli("create-backup"))

    # The operations did what they should, so the secrets really went through them.
    assert ok["status"] == "finished" and ok["size-bytes"] > 0
    assert "WRONGPASS" in failed.message or "credentials" in failed.message, failed
    by_id = {b["backup-id"]: b for b in listed["backups"]}
    assert by_id[ok["backup-id"]]["status"] == "finished"
    failed_entries = [b for b in listed["backups"] if b["status"] == "failed"]
    assert [b["code"] for b in failed_entries] == ["valkey-auth"], listed
    assert status["last-backup"]["code"] == "valkey-auth"
    for run in cli_runs:
        assert run.returncode == 0, (run.args[1:], run.stderr)
    assert CLUSTER in cli_runs[1].stdout

    rdb_argvs = [argv for argv in sampler.argvs() if "--rdb" in argv]
    assert sampler.leaks(needles) == []
    if source == "native":
        # The built-in client runs no process at all: the password went only into AUTH.
        # (The sampler sees the whole machine: other tests' clis are for other ports.)
        ours = [argv for argv in rdb_argvs if str(server.port) in argv]
        assert ours == [] and cli_envs == {}, ours
    else:
        _cli_got_the_password_in_its_environment_only(
            rdb_argvs, cli_envs, server, password, secret_key
        )
    _nothing_the_agent_wrote_holds_a_secret(a, responses, cli_runs, moto, moto_bucket, needles)


def _cli_got_the_password_in_its_environment_only(
    rdb_argvs, cli_envs, server, password, secret_key
) -> None:
    # The sampler was looking: it saw the cli streaming, without any password flag.
    assert rdb_argvs, "the argv sampler never saw a `--rdb` process"
    assert any(str(server.port) in argv for argv in rdb_argvs)
    for argv in rdb_argvs:
        assert not {"-a", "--pass", "--askpass"} & set(argv), argv

    # The password reached the cli through its environment (and only the variables the
    # cli needs are passed on: not the agent's own environment)...
    assert cli_envs, "never caught a --rdb process to read its environment"
    for env in cli_envs.values():
        assert env.get("REDISCLI_AUTH") == password, sorted(env)
        assert env.get("VALKEYCLI_AUTH") == password, sorted(env)
        assert "VALKEY_BACKUP_LOG" not in env, sorted(env)
        assert not _leaks("\n".join(env.values()), [secret_key]), sorted(env)


def _nothing_the_agent_wrote_holds_a_secret(a, responses, cli_runs, moto, moto_bucket, needles):
    # ...and the server demands it: both backups taken with the right one (socket and
    # CLI) finished.
    after = a.request("list-backups").expect_ok()["backups"]
    assert sorted(b["status"] for b in after) == ["failed", "finished", "finished"], after

    log = a.log_text()
    assert "DEBUG" in log, "debug logging was not enabled"
    assert _leaks(log, needles) == []
    for resp in responses:
        assert _leaks(resp.raw, needles) == [], resp.lines
    for run in cli_runs:
        assert _leaks(run.stdout, needles) == [], run.args
        assert _leaks(run.stderr, needles) == [], run.args

    s3 = moto.client()
    records = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=moto_bucket, Prefix=PREFIX)
        for o in page.get("Contents", [])
        if o["Key"].endswith(("manifest.json", "failure.json"))
    ]
    assert sum(k.endswith("manifest.json") for k in records) == 2, records
    assert sum(k.endswith("failure.json") for k in records) == 1, records
    for key in records:
        body = s3.get_object(Bucket=moto_bucket, Key=key)["Body"].read()
        assert _leaks(body, needles) == [], key
        json.loads(body)


@pytest.mark.parametrize(
    ("endpoint", "secret"),
    [
        ("http://user:pw@127.0.0.1:1", "pw"),
        ("https://backup:vbendpointpw-7f3a9c@127.0.0.1:1/", "vbendpointpw-7f3a9c"),
        ("http://vbendpointuser-51c2e8@127.0.0.1:1", "vbendpointuser-51c2e8"),
    ],
    ids=["user-pw", "https-password", "user-only"],
)
def test_endpoint_with_credentials_is_refused_without_echoing_them(
    agent, valkey_server, moto, endpoint, secret
):
    a = agent()
    server = valkey_server("valkey8")
    params = configure_params(server, moto, "some-bucket", s3_extra={"endpoint": endpoint})
    resp = a.request("configure", params, timeout=60)
    err = resp.expect_error("bad-request")
    assert "s3.endpoint" in err.message, err
    assert secret not in err.message, err
    assert secret not in resp.raw.decode(errors="replace")
    userinfo = endpoint.split("//", 1)[1].split("@", 1)[0]
    log = a.log_text()
    assert userinfo not in log
    if len(secret) > 4:
        assert secret not in log
    status = a.request("status").expect_ok()
    assert status["configured"] is False


@pytest.mark.parametrize("where", ["valkey.password", "s3.secret-key"])
def test_secret_of_the_wrong_type_is_not_echoed(agent, valkey_server, moto, where):
    a = agent()
    server = valkey_server("valkey8")
    params = configure_params(server, moto, "some-bucket")
    secret = 918273645546372819
    section, field = where.split(".")
    params[section][field] = secret
    resp = a.request("configure", params, timeout=60)
    err = resp.expect_error("bad-request")
    assert str(secret) not in resp.raw.decode(errors="replace"), err
    assert str(secret) not in a.log_text()
    assert field in err.message, err
