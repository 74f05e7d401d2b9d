"""The agent's systemd unit and files, and finding the principal's Valkey unit."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from fakes import FakeSystemd
from service import (
    AGENT_UNIT,
    AgentPaths,
    AgentService,
    ServiceError,
    Systemctl,
    find_valkey_service,
    render_unit,
)


@pytest.fixture
def packed(tmp_path: Path) -> Path:
    binary = tmp_path / "packed" / "valkey-backup-agent"
    binary.parent.mkdir()
    binary.write_bytes(b"agent v1")
    return binary


def test_unit_runs_serve_with_the_socket_and_state_dir_and_a_private_socket_dir():
    unit = render_unit(AgentPaths())
    assert (
        "ExecStart=/usr/local/bin/valkey-backup-agent serve "
        "--socket /run/valkey-backup-agent/agent.sock "
        "--state-dir /var/lib/valkey-backup-agent"
    ) in unit
    assert "RuntimeDirectory=valkey-backup-agent\n" in unit
    assert "RuntimeDirectoryMode=0700\n" in unit
    assert "StateDirectory=valkey-backup-agent\n" in unit
    assert "StateDirectoryMode=0700\n" in unit
    assert "UMask=0077\n" in unit
    assert "KillMode=mixed\n" in unit
    # Longer than the agent's own 60 s shutdown grace: systemd must not cut the cleanup.
    [stop] = [line for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    assert int(stop.split("=")[1]) > 60
    assert "Restart=on-failure\n" in unit
    assert "WantedBy=multi-user.target" in unit


def test_install_copies_the_binary_writes_the_unit_and_starts_it(tmp_path, packed):
    systemd = FakeSystemd()
    paths = AgentPaths(
        binary=tmp_path / "bin" / "agent",
        unit_file=tmp_path / "units" / AGENT_UNIT,
        state_dir=tmp_path / "state",
    )
    AgentService(paths, Systemctl(run=systemd)).install(packed)
    assert paths.binary.read_bytes() == b"agent v1"
    assert stat.S_IMODE(paths.binary.stat().st_mode) == 0o755
    assert paths.unit_file.read_text() == render_unit(paths)
    assert stat.S_IMODE(paths.unit_file.stat().st_mode) == 0o644
    assert systemd.verbs() == ["daemon-reload", f"enable --now {AGENT_UNIT}"]
    # No temporary files are left beside the installed ones.
    assert sorted(p.name for p in paths.binary.parent.iterdir()) == ["agent"]


def test_upgrade_replaces_the_binary_and_restarts(tmp_path, packed):
    systemd = FakeSystemd()
    paths = AgentPaths(binary=tmp_path / "agent", unit_file=tmp_path / AGENT_UNIT)
    paths.binary.write_bytes(b"agent v0")
    AgentService(paths, Systemctl(run=systemd)).upgrade(packed)
    assert paths.binary.read_bytes() == b"agent v1"
    assert systemd.verbs() == [
        "daemon-reload",
        f"enable --now {AGENT_UNIT}",
        f"restart {AGENT_UNIT}",
    ]


def test_remove_stops_the_agent_and_deletes_its_files_and_stored_secrets(tmp_path, packed):
    systemd = FakeSystemd()
    paths = AgentPaths(
        binary=tmp_path / "agent", unit_file=tmp_path / AGENT_UNIT, state_dir=tmp_path / "state"
    )
    service = AgentService(paths, Systemctl(run=systemd))
    service.install(packed)
    paths.state_dir.mkdir()
    (paths.state_dir / "config.json").write_text('{"secret-key": "x"}')
    systemd.argvs.clear()
    service.remove()
    assert systemd.verbs() == [f"disable --now {AGENT_UNIT}", "daemon-reload"]
    assert not paths.binary.exists()
    assert not paths.unit_file.exists()
    assert not paths.state_dir.exists()


def test_remove_twice_is_harmless(tmp_path):
    paths = AgentPaths(binary=tmp_path / "a", unit_file=tmp_path / "u", state_dir=tmp_path / "s")
    service = AgentService(paths, Systemctl(run=FakeSystemd()))
    service.remove()
    service.remove()


def test_systemctl_failure_carries_its_stderr():
    systemd = FakeSystemd()
    systemd.fail("stop", "valkey-server.service", "Failed to stop: access denied")
    with pytest.raises(ServiceError, match="exited 1: Failed to stop: access denied"):
        Systemctl(run=systemd).stop("valkey-server.service")


def test_systemctl_that_cannot_run_is_a_service_error():
    def missing(*_args, **_kwargs):
        raise FileNotFoundError("systemctl")

    with pytest.raises(ServiceError, match="failed"):
        Systemctl(run=missing).daemon_reload()


def test_is_active_reads_the_exit_status():
    def run(argv, **_):
        return subprocess.CompletedProcess(argv, 0 if argv[-1] == "up.service" else 3, "", "")

    systemctl = Systemctl(run=run)
    assert systemctl.is_active("up.service")
    assert not systemctl.is_active("down.service")


def test_valkey_service_found_in_candidate_order():
    both = Systemctl(run=FakeSystemd(units=("redis-server.service", "valkey-server.service")))
    assert find_valkey_service(both, "") == "valkey-server.service"
    snap = Systemctl(
        run=FakeSystemd(units=("valkey-server.service", "snap.charmed-valkey.server.service"))
    )
    assert find_valkey_service(snap, "") == "snap.charmed-valkey.server.service"
    assert find_valkey_service(Systemctl(run=FakeSystemd(units=())), "") is None


def test_configured_valkey_service_must_exist():
    systemctl = Systemctl(run=FakeSystemd(units=("custom.service", "valkey-server.service")))
    assert find_valkey_service(systemctl, "custom.service") == "custom.service"
    assert find_valkey_service(systemctl, "other.service") is None


def test_wait_until_ready_polls_until_the_probe_succeeds_or_time_runs_out():
    now = [0.0]
    answers = iter([False, False, True])
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    service = AgentService(AgentPaths(), Systemctl(run=FakeSystemd()))
    assert service.wait_until_ready(
        lambda: next(answers), timeout=10, sleep=sleep, clock=lambda: now[0]
    )
    assert sleeps == [0.5, 0.5]
    assert not service.wait_until_ready(
        lambda: False, timeout=2, sleep=sleep, clock=lambda: now[0]
    )


def test_socket_path_can_be_pointed_elsewhere_for_tests(monkeypatch):
    monkeypatch.setenv("VALKEY_BACKUP_SOCKET", "/tmp/x/agent.sock")
    assert AgentPaths.from_env().socket == Path("/tmp/x/agent.sock")
    monkeypatch.delenv("VALKEY_BACKUP_SOCKET")
    assert AgentPaths.from_env().socket == Path("/run/valkey-backup-agent/agent.sock")
