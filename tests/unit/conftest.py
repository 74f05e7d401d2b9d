"""Fixtures for the charm's unit tests: an ops.testing context wired to fakes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "charm" / "src"))

from ops import testing  # noqa: E402

import charm as charm_module  # noqa: E402
import snap_layout  # noqa: E402
from fakes import FakeAgent, FakeClient, FakeSystemd  # noqa: E402
from service import AgentPaths, Systemctl  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    # object-storage-charmlib 1.0.0 calls a deprecated ops API; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:JujuVersion.from_environ:DeprecationWarning")


META = yaml.safe_load((ROOT / "metadata.yaml").read_text())
ACTIONS = yaml.safe_load((ROOT / "actions.yaml").read_text())
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def systemd() -> FakeSystemd:
    return FakeSystemd()


@pytest.fixture
def paths(tmp_path: Path) -> AgentPaths:
    return AgentPaths(
        binary=tmp_path / "usr-local-bin" / "valkey-backup-agent",
        unit_file=tmp_path / "systemd" / "valkey-backup-agent.service",
        socket=tmp_path / "run" / "agent.sock",
        state_dir=tmp_path / "state",
    )


@pytest.fixture
def cli_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH directory holding an executable ``valkey-cli``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    cli = bindir / "valkey-cli"
    cli.write_text("#!/bin/sh\nexit 0\n")
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


@pytest.fixture
def charm_root(tmp_path: Path) -> Path:
    """A charm directory as charmcraft packs it: the agent binary under bin/."""
    root = tmp_path / "charm-root"
    (root / "bin").mkdir(parents=True)
    binary = root / "bin" / "valkey-backup-agent"
    binary.write_bytes(b"\x7fELF fake agent binary")
    binary.chmod(0o755)
    return root


class FakeProbe:
    """Stands in for the TCP probe: answers True for the ``(host, port)`` in ``open``."""

    def __init__(self) -> None:
        self.open: set[tuple[str, int]] = set()
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> bool:
        self.calls.append((host, port))
        return (host, port) in self.open


@pytest.fixture
def probe() -> FakeProbe:
    return FakeProbe()


@pytest.fixture
def patched(
    monkeypatch: pytest.MonkeyPatch,
    agent: FakeAgent,
    systemd: FakeSystemd,
    paths: AgentPaths,
    cli_dir: Path,
    probe: FakeProbe,
) -> None:
    """Point the charm at the fakes.

    No snap layout (an empty root) and no server answering on loopback, unless a test
    says otherwise (``snap_root``, ``probe``): the tests never depend on the machine.
    """
    monkeypatch.setattr(snap_layout, "SNAP_ROOT", paths.state_dir.parent / "no-snap")
    monkeypatch.setattr(charm_module, "port_answers", probe)
    monkeypatch.setattr(
        charm_module, "AgentClient", lambda socket_path, **kw: FakeClient(agent, socket_path, **kw)
    )
    monkeypatch.setattr(charm_module, "Systemctl", lambda: Systemctl(run=systemd))
    monkeypatch.setattr(charm_module.AgentPaths, "from_env", classmethod(lambda cls: paths))


@pytest.fixture
def ctx(
    patched: None, charm_root: Path
) -> Iterator[testing.Context[charm_module.ValkeyBackupCharm]]:
    with testing.Context(
        charm_module.ValkeyBackupCharm,
        meta=META,
        actions=ACTIONS,
        config=CONFIG,
        charm_root=charm_root,
    ) as context:
        yield context
