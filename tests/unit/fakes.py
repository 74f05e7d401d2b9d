"""Fakes and state builders shared by the unit tests.

The agent is not the subject of these tests, so ``AgentClient`` is replaced by
``FakeAgent`` (which records every request and answers from a script); systemd is a
fake ``run`` behind the real ``Systemctl`` wrapper, so its argv building is exercised.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ops import testing

from agent_client import AgentClient, AgentError, AgentUnavailableError

VALKEY_PASSWORD = "vk-Pa55word-do-not-leak"
S3_ACCESS_KEY = "AKIAEXAMPLEACCESS42"
S3_SECRET_KEY = "s3cr3t/KEY+never-shown"
BUCKET = "backups"

BACKUP_ID = "20261121T193000Z-valkey-0-1a2b3c"

CREATE_RESULT = {
    "backup-id": BACKUP_ID,
    "cluster": "test-model.valkey",
    "status": "finished",
    "size-bytes": 104857600,
    "sha256": "ab" * 32,
    "crc64": "0123456789abcdef",
    "rdb-version": 11,
    "source-kind": "valkey",
    "source-version": "8.1.8",
    "parts": 13,
    "part-size-bytes": 8388608,
    "duration-seconds": 1.52,
    "started-at": "2026-11-21T19:30:00Z",
    "finished-at": "2026-11-21T19:30:02Z",
    "data-key": f"valkey/test-model.valkey/{BACKUP_ID}/data.rdb",
}

LIST_RESULT = {
    "cluster": "test-model.valkey",
    "backups": [
        {
            "backup-id": BACKUP_ID,
            "status": "finished",
            "unit": "valkey/0",
            "size-bytes": 104857600,
            "started-at": "2026-11-21T19:30:00Z",
            "finished-at": "2026-11-21T19:30:02Z",
            "source-version": "8.1.8",
            "code": None,
            "reason": None,
            "last-verify": {"checked-at": "2026-11-22T01:00:00Z", "ok": True},
        },
        {
            "backup-id": "20261120T193000Z-valkey-0-0f0f0f",
            "status": "failed",
            "unit": "valkey/0",
            "size-bytes": None,
            "started-at": "2026-11-20T19:30:00Z",
            "finished-at": "2026-11-20T19:30:09Z",
            "code": "s3-unreachable",
            "reason": "connection refused",
        },
    ],
    "total": 2,
    "offset": 0,
    "counts": {"failed": 1, "finished": 1},
}


def default_responses() -> dict[str, Any]:
    """What a healthy, configured agent answers, keyed by op (restore: op:step)."""
    return {
        "status": {
            "agent-version": "0.1.0",
            "configured": True,
            "s3-configured": True,
            "cluster": "test-model.valkey",
            "unit": "valkey/0",
            "bucket": BUCKET,
            "busy": False,
            "running": None,
            "last-backup": None,
        },
        "configure": {"configured": True, "cluster": "test-model.valkey", "bucket": BUCKET},
        "create-backup": CREATE_RESULT,
        "list-backups": LIST_RESULT,
        "restore-backup:prepare": {
            "restore-id": "r-123",
            "backup-id": BACKUP_ID,
            "target": "/var/lib/valkey/dump.rdb",
            "size-bytes": 104857600,
            "appendonly": False,
        },
        "restore-backup:commit": {
            "target": "/var/lib/valkey/dump.rdb",
            "previous": "/var/lib/valkey/dump.rdb.pre-restore",
        },
        "restore-backup:finish": {"keys": {"db0": 123}, "loaded": True},
        "restore-backup:abort": {"aborted": True},
        "verify-backup": {
            "backup-id": BACKUP_ID,
            "ok": True,
            "checked-at": "2026-11-22T01:00:00Z",
            "record-key": f"valkey/test-model.valkey/{BACKUP_ID}/verify/20261122T010000Z.json",
        },
        "prune-backups": {
            "dry-run": True,
            "deleted": ["20261101T000000Z-valkey-0-aaaaaa"],
            "kept": [{"backup-id": BACKUP_ID, "why": "keep-last"}],
            "aborted-uploads": [],
            "skipped": [],
        },
    }


class FakeAgent:
    """Stands in for the agent: records requests, answers from ``responses``.

    A response may be a dict (the result), an ``AgentError`` (raised) or a callable
    taking the params and returning either.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any] | None]] = []
        self.responses: dict[str, Any] = default_responses()
        self.progress: dict[str, list[dict[str, Any]]] = {}
        self.socket_paths: list[Path] = []
        self.down = False

    def key(self, op: str, params: Mapping[str, Any] | None) -> str:
        if op == "restore-backup" and params:
            return f"{op}:{params.get('step')}"
        return op

    def handle(
        self,
        op: str,
        params: Mapping[str, Any] | None,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> dict[str, Any]:
        self.calls.append((op, copy.deepcopy(dict(params)) if params is not None else None))
        if self.down:
            raise AgentUnavailableError("the agent is not running (no listener on /fake)")
        key = self.key(op, params)
        for event in self.progress.get(key, []):
            if on_progress is not None:
                on_progress(event)
        response = self.responses.get(key, {})
        if callable(response):
            response = response(params)
        if isinstance(response, AgentError):
            raise response
        assert isinstance(response, dict), f"scripted response for {key} is not a dict"
        return copy.deepcopy(response)

    def ops(self) -> list[str]:
        return [self.key(op, params) for op, params in self.calls]

    def params_of(self, op: str) -> list[dict[str, Any] | None]:
        return [params for name, params in self.calls if self.key(name, params) == op]


class FakeClient(AgentClient):
    """The real client's methods over a ``FakeAgent`` instead of a socket."""

    def __init__(self, agent: FakeAgent, socket_path: str | Path, **kwargs: Any):
        super().__init__(socket_path, **kwargs)
        self.agent = agent
        agent.socket_paths.append(Path(socket_path))

    def call(
        self,
        op: str,
        params: Mapping[str, Any] | None = None,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return self.agent.handle(op, params, on_progress)


class FakeSystemd:
    """A fake ``run`` for ``Systemctl``: records argv, knows which units exist."""

    def __init__(self, units: tuple[str, ...] = ("valkey-server.service",)) -> None:
        self.units = set(units)
        self.argvs: list[list[str]] = []
        self.failing: dict[tuple[str, str], str] = {}
        self.listeners: list[Callable[[list[str]], object]] = []

    def fail(self, verb: str, unit: str, stderr: str = "Job failed") -> None:
        self.failing[(verb, unit)] = stderr

    def __call__(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.argvs.append(list(argv))
        for listener in self.listeners:
            listener(list(argv))
        verb, unit = argv[1], argv[-1]
        if verb == "show":
            state = "loaded" if unit in self.units else "not-found"
            return subprocess.CompletedProcess(argv, 0, stdout=f"{state}\n", stderr="")
        if (verb, unit) in self.failing:
            return subprocess.CompletedProcess(
                argv, 1, stdout="", stderr=self.failing[(verb, unit)]
            )
        return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")

    def verbs(self) -> list[str]:
        return [" ".join(argv[1:]) for argv in self.argvs if argv[1] != "show"]


# -- state builders ---------------------------------------------------------------------


def principal() -> testing.SubordinateRelation:
    return testing.SubordinateRelation("juju-info", remote_app_name="valkey", remote_unit_id=0)


def password_secret(password: str = VALKEY_PASSWORD, **kwargs: Any) -> testing.Secret:
    return testing.Secret({"password": password}, **kwargs)


def s3_v1(
    extra: Mapping[str, str] | None = None, *, secret_content: dict[str, str] | None = None
) -> tuple[testing.Relation, testing.Secret]:
    """An s3-integrator on schema v1: credentials in a secret named in the databag."""
    secret = testing.Secret(
        secret_content or {"access-key": S3_ACCESS_KEY, "secret-key": S3_SECRET_KEY}
    )
    data = {
        "version": "1",
        "bucket": BUCKET,
        "endpoint": "http://127.0.0.1:9000",
        "path": "valkey",
        "region": "us-east-1",
        "s3-uri-style": "path",
        "secret-extra": secret.id,
        **(extra or {}),
    }
    return testing.Relation(
        "s3-credentials", remote_app_name="s3-integrator", remote_app_data=data
    ), secret


def s3_v0(**extra: str) -> testing.Relation:
    """An s3-integrator on schema v0: everything in plain databag fields."""
    data = {
        "bucket": BUCKET,
        "endpoint": "http://127.0.0.1:9000",
        "path": "valkey",
        "region": "us-east-1",
        "access-key": S3_ACCESS_KEY,
        "secret-key": S3_SECRET_KEY,
        **extra,
    }
    return testing.Relation(
        "s3-credentials", remote_app_name="s3-integrator", remote_app_data=data
    )


def full_state(**kwargs: Any) -> testing.State:
    """A unit with a principal, a password secret and a v1 s3 relation."""
    secret = password_secret()
    s3, s3_secret = s3_v1()
    relations = kwargs.pop("relations", [principal(), s3])
    secrets = kwargs.pop("secrets", [secret, s3_secret])
    config = {"valkey-password": secret.id, **kwargs.pop("config", {})}
    return testing.State(
        relations=relations,
        secrets=secrets,
        config=config,
        model=testing.Model(name="test-model"),
        **kwargs,
    )


# -- the charmed-valkey snap's layout ---------------------------------------------------

SNAP_VALKEY_CONF = """\
# written by the valkey charm
bind 10.20.30.4
port 6379
tls-port 6380
tls-cert-file /var/snap/charmed-valkey/current/tls/client.pem
tls-key-file /var/snap/charmed-valkey/current/tls/client.key
tls-ca-cert-dir /var/snap/charmed-valkey/current/tls/ca_certs
aclfile /var/snap/charmed-valkey/current/etc/valkey/users.acl
dir /var/snap/charmed-valkey/common/var/lib/charmed-valkey
"""

SNAP_SENTINEL_CONF = """\
port 26379
tls-port 26380
sentinel monitor primary 10.20.30.4 6380 2
sentinel auth-user primary charmed-sentinel-valkey
sentinel auth-pass primary sv-pass
sentinel sentinel-user charmed-sentinel-peers
sentinel sentinel-pass "peers-Pa55"
sentinel down-after-milliseconds primary 30000
"""


def make_snap_root(
    root: Path,
    *,
    valkey_conf: str = SNAP_VALKEY_CONF,
    sentinel_conf: str | None = SNAP_SENTINEL_CONF,
    conf_dir: str = "etc/valkey",
    binaries: tuple[str, ...] = ("valkey-cli", "valkey-server"),
) -> Path:
    """A filesystem root with the charmed-valkey snap's files, as the valkey charm writes them.

    Configuration, TLS directory and the snap's binaries (scripts that exit 0).
    """
    data = root / "var/snap/charmed-valkey/current"
    (data / conf_dir).mkdir(parents=True, exist_ok=True)
    (data / conf_dir / "valkey.conf").write_text(valkey_conf)
    if sentinel_conf is not None:
        (data / conf_dir / "sentinel.conf").write_text(sentinel_conf)
    (data / "tls" / "ca_certs").mkdir(parents=True, exist_ok=True)
    for name in ("client.pem", "client.key"):
        (data / "tls" / name).write_text("-----BEGIN TEST-----\n")
    bindir = root / "snap/charmed-valkey/current/usr/bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name in binaries:
        binary = bindir / name
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    return root
