"""One valkey-backup unit wired to real processes, for the charm's integration tests.

``CharmUnit`` holds the charm under ``ops.testing`` together with the real agent, Valkey
server and S3 bucket it drives; ``ServerSystemd`` stands in for systemd so that
``restore-backup`` stops and starts the test's server. conftest.py builds both (the
``charm_unit`` fixture); tests import the names they assert with from here.

This module puts charm/src (the charm) and tests/integration (the real-server harness)
on ``sys.path``; it has a name of its own so that importing it never picks up another
directory's conftest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INTEGRATION = ROOT / "tests" / "integration"
for _path in (ROOT / "charm" / "src", INTEGRATION):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from ops import testing  # noqa: E402

import charm as charm_module  # noqa: E402
import snap_layout  # noqa: E402
from service import SOCKET_ENV, Systemctl  # noqa: E402

META = yaml.safe_load((ROOT / "metadata.yaml").read_text())
ACTIONS = yaml.safe_load((ROOT / "actions.yaml").read_text())
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())

MODEL = "charm-it"
PRINCIPAL_APP = "valkey"
VALKEY_UNIT = "valkey-server.service"
S3_PATH = "valkey"


# --------------------------------------------------------------------------- systemd


class ServerSystemd:
    """A ``run`` for ``Systemctl`` that maps the Valkey unit onto a harness server.

    ``show`` says the unit is loaded, ``stop`` is ``server.stop()``, ``start`` is
    ``server.start_again()`` (same port and dir, waits until the server has loaded its
    data, as ``systemctl start`` of a notify unit would) and does nothing when the server
    runs already, like ``systemctl start`` of an active unit. ``fail(verb)`` makes that
    verb exit 1 without touching the server; ``ignore(verb)`` makes it exit 0 without
    touching it (a unit that is not really the server's). Every argv is recorded.
    """

    def __init__(self, server: Any, unit: str = VALKEY_UNIT):
        self.server = server
        self.unit = unit
        self.argvs: list[list[str]] = []
        self.failing: set[str] = set()
        self.ignored: set[str] = set()
        #: Called after ``stop`` has stopped the server, e.g. to keep it down for longer
        #: than Sentinel's down-after-milliseconds, as a slow stop or a long restore does.
        self.after_stop: Callable[[], None] | None = None

    def fail(self, verb: str) -> None:
        self.failing.add(verb)

    def ignore(self, verb: str) -> None:
        self.ignored.add(verb)

    def __call__(self, argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.argvs.append(list(argv))
        verb, unit = argv[1], argv[-1]
        if verb == "show":
            state = "loaded" if unit == self.unit else "not-found"
            return subprocess.CompletedProcess(argv, 0, stdout=f"{state}\n", stderr="")
        if unit != self.unit:
            return subprocess.CompletedProcess(argv, 5, stdout="", stderr=f"{unit} not found")
        if verb in self.failing:
            return subprocess.CompletedProcess(
                argv, 1, stdout="", stderr=f"Job for {unit} failed (test)"
            )
        if verb in self.ignored:
            pass
        elif verb == "stop":
            self.server.stop()
            if self.after_stop is not None:
                self.after_stop()
        elif verb == "start":
            if not self.server_running():
                self.server.start_again()
        else:
            raise AssertionError(f"unexpected systemctl call {argv}")
        return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")

    def server_running(self) -> bool:
        return self.server.proc is not None and self.server.proc.alive()

    def verbs(self) -> list[str]:
        """``["stop valkey-server.service", …]``: every call other than ``show``."""
        return [" ".join(argv[1:]) for argv in self.argvs if argv[1] != "show"]


# --------------------------------------------------------------------------- one unit


@dataclass
class CharmUnit:
    """One valkey-backup unit: the charm under ops.testing, its agent, server and bucket.

    ``state`` is the unit's current ``testing.State``; ``run``/``action``/``fail`` feed it
    to the next event and keep the output, as Juju would between hooks.
    """

    ctx: testing.Context[charm_module.ValkeyBackupCharm]
    server: Any  # harness.ValkeyServer
    agent: Any  # harness.Agent
    s3: Any  # harness.MotoServer
    bucket: str
    systemd: ServerSystemd
    valkey_password: str | None
    access_key: str
    secret_key: str
    state: testing.State
    s3_relation: testing.Relation
    password_secret: testing.Secret | None
    monkeypatch: pytest.MonkeyPatch
    #: The filesystem root this unit's machine has (the charmed-valkey snap or nothing).
    snap_root: Path
    principal_unit: str = f"{PRINCIPAL_APP}/0"
    seen: list[str] = field(default_factory=list)

    @property
    def cluster(self) -> str:
        return f"{MODEL}.{PRINCIPAL_APP}"

    @property
    def prefix(self) -> str:
        """``<path>/<cluster>/``: where this unit's backups live in the bucket."""
        return f"{S3_PATH}/{self.cluster}/"

    @property
    def secrets(self) -> tuple[str, ...]:
        values = (self.valkey_password, self.access_key, self.secret_key)
        return tuple(v for v in values if v)

    # -- events -------------------------------------------------------------------------

    def activate(self) -> None:
        """Point the charm's process-wide seams at this unit: socket, systemd, snap root.

        Several units share the test process; each event runs as if on its own machine.
        """
        self.monkeypatch.setenv(SOCKET_ENV, str(self.agent.socket_path))
        systemd = self.systemd
        self.monkeypatch.setattr(charm_module, "Systemctl", lambda: Systemctl(run=systemd))
        self.monkeypatch.setattr(snap_layout, "SNAP_ROOT", self.snap_root)

    def run(self, event: Any) -> testing.State:
        self.activate()
        try:
            self.state = self.ctx.run(event, self.state)
        finally:
            self._record()
        return self.state

    @property
    def s3_rel(self) -> testing.Relation:
        """The s3-credentials relation as it is in the current state."""
        relation = self.state.get_relation(self.s3_relation.id)
        assert isinstance(relation, testing.Relation)
        return relation

    def configure(self) -> testing.State:
        """Deliver the s3 relation's data (relation-changed): the charm sends configure."""
        return self.run(self.ctx.on.relation_changed(self.s3_rel, remote_unit=0))

    def action(self, name: str, **params: Any) -> dict[str, Any]:
        """Run an action that must succeed; return a copy of its results."""
        self.run(self.ctx.on.action(name, params=params))
        return dict(self.ctx.action_results or {})

    def fail(self, name: str, **params: Any) -> str:
        """Run an action that must fail; return its failure message."""
        self.activate()
        with pytest.raises(testing.ActionFailed) as info:
            self.ctx.run(self.ctx.on.action(name, params=params), self.state)
        self._record()
        # ActionFailed.state is typed as the older Harness State; it is ops.testing's.
        state: Any = info.value.state
        assert isinstance(state, testing.State)
        self.state = state
        return info.value.message

    def _record(self) -> None:
        self.seen.append(json.dumps(self.ctx.action_results or {}))
        self.seen.extend(self.ctx.action_logs)
        self.seen.extend(line.message for line in self.ctx.juju_log)
        self.seen.extend(status.message for status in self.ctx.unit_status_history)
        self.seen.append(self.state.unit_status.message)

    def assert_no_secrets(self, *extra: str) -> None:
        """No secret in any result, action log, charm log line or status seen so far."""
        text = "\n".join([*self.seen, *extra])
        for value in self.secrets:
            assert value not in text, "a secret leaked into what the charm showed"

    def with_state(self, **changes: Any) -> testing.State:
        self.state = replace(self.state, **changes)
        return self.state

    # -- the real world -----------------------------------------------------------------

    def agent_status(self) -> dict[str, Any]:
        return self.agent.request("status").expect_ok()

    def client(self) -> Any:
        """A boto3 client for the S3 server (admin credentials, not the charm's)."""
        return self.s3.client()

    def objects(self) -> dict[str, int]:
        """Every object under this unit's prefix, with its size."""
        out: dict[str, int] = {}
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def get_object(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_json(self, key: str) -> dict[str, Any]:
        return json.loads(self.get_object(key))


def s3_relation(
    schema: str, moto_server: Any, bucket: str, access_key: str, secret_key: str
) -> tuple[testing.Relation, list[testing.Secret]]:
    """The s3-integrator's side of the relation, on schema v1 (secret) or v0 (databag)."""
    data = {
        "bucket": bucket,
        "endpoint": moto_server.endpoint,
        "path": S3_PATH,
        "region": moto_server.region,
        "s3-uri-style": "path",
    }
    if schema == "v1":
        secret = testing.Secret({"access-key": access_key, "secret-key": secret_key})
        data.update({"version": "1", "secret-extra": secret.id})
        relation = testing.Relation(
            "s3-credentials", remote_app_name="s3-integrator", remote_app_data=data
        )
        return relation, [secret]
    data.update({"access-key": access_key, "secret-key": secret_key})
    relation = testing.Relation(
        "s3-credentials", remote_app_name="s3-integrator", remote_app_data=data
    )
    return relation, []


# --------------------------------------------------------------------------- the snap


def write_snap_root(
    root: Path,
    server: Any,
    *,
    sentinel: tuple[int, str, str] | None = None,
    tls: dict[str, Any] | None = None,
) -> Path:
    """A machine root holding the charmed-valkey snap's files for ``server``.

    ``$SNAP_DATA/etc/valkey/valkey.conf`` names the server's port, bind address and dir
    as the valkey charm writes them; ``sentinel`` = ``(port, sentinel-user,
    sentinel-pass)`` adds a sentinel.conf; ``tls`` = ``{"port", "ca_dir", "cert_file",
    "key_file"}`` closes the plain port (``port 0``) and names the TLS port and files.
    The snap's binaries (``$SNAP/usr/bin/valkey-cli`` and ``valkey-server``) are links
    to the server's own.
    """
    data = root / "var/snap/charmed-valkey/current"
    (data / "etc/valkey").mkdir(parents=True, exist_ok=True)
    lines = [f"bind {server.host}", f"dir {server.dir}"]
    if tls is None:
        lines += [f"port {server.port}"]
    else:
        lines += [
            "port 0",
            f"tls-port {tls['port']}",
            f"tls-ca-cert-dir {tls['ca_dir']}",
            f"tls-cert-file {tls['cert_file']}",
            f"tls-key-file {tls['key_file']}",
        ]
    (data / "etc/valkey/valkey.conf").write_text("\n".join(lines) + "\n")
    if sentinel is not None:
        port, user, password = sentinel
        (data / "etc/valkey/sentinel.conf").write_text(
            f"port {port}\nsentinel sentinel-user {user}\nsentinel sentinel-pass {password}\n"
        )
    bindir = root / "snap/charmed-valkey/current/usr/bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name, target in (("valkey-cli", server.cli), ("valkey-server", server.server_bin)):
        link = bindir / name
        if not link.exists():
            link.symlink_to(target)
    return root
