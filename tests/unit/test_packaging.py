"""charmcraft.yaml, metadata, actions and requirements agree with the code.

``charmcraft pack`` needs LXD, so this checks statically what packing relies on: the
parts build the Python charm from charm/ and the agent from the Cargo workspace, and
put the binary where the charm looks for it.
"""

from __future__ import annotations

import os
import re
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from charm import ValkeyBackupCharm
from service import PACKED_AGENT

ROOT = Path(__file__).resolve().parents[2]
CHARMCRAFT = yaml.safe_load((ROOT / "charmcraft.yaml").read_text())
METADATA = yaml.safe_load((ROOT / "metadata.yaml").read_text())
ACTIONS = yaml.safe_load((ROOT / "actions.yaml").read_text())
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_charmcraft_builds_a_charm_for_ubuntu_24_04():
    assert CHARMCRAFT["type"] == "charm"
    assert CHARMCRAFT["base"] == "ubuntu@24.04"
    assert CHARMCRAFT["platforms"]
    # Metadata, actions and config live in their own files, not duplicated here.
    for key in ("name", "actions", "config", "requires"):
        assert key not in CHARMCRAFT


def test_charm_part_packs_the_python_source_from_charm_dir():
    part = CHARMCRAFT["parts"]["charm"]
    assert part["plugin"] == "python"
    source = ROOT / part["source"]
    assert source == ROOT / "charm"
    for requirements in part["python-requirements"]:
        assert (source / requirements).is_file()
    # The python plugin copies src/ into the charm; dispatch runs src/charm.py.
    entrypoint = source / "src" / "charm.py"
    assert entrypoint.read_text().startswith("#!/usr/bin/env python3")
    assert os.access(entrypoint, os.X_OK)


def test_agent_part_builds_the_workspace_binary_into_the_charm():
    part = CHARMCRAFT["parts"]["agent"]
    assert part["source"] == "."
    script = part["override-build"]
    assert re.search(r"cargo build --release --locked -p valkey-backup-agent\b", script)
    installed = f'"$CRAFT_PART_INSTALL/{PACKED_AGENT}"'
    assert installed in script
    assert part["stage"] == [str(PACKED_AGENT)]


def test_agent_part_matches_the_cargo_workspace():
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert "agent" in workspace["workspace"]["members"]
    crate = tomllib.loads((ROOT / "agent" / "Cargo.toml").read_text())
    assert crate["package"]["name"] == "valkey-backup-agent"
    assert {b["name"] for b in crate.get("bin", [])} == {"valkey-backup-agent"}
    assert (ROOT / "Cargo.lock").is_file()  # --locked needs it


def test_agent_part_pins_a_toolchain_new_enough_for_the_workspace():
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = version_tuple(workspace["workspace"]["package"]["rust-version"])
    match = re.search(
        r"rustup default (\d+\.\d+(?:\.\d+)?)", CHARMCRAFT["parts"]["agent"]["override-build"]
    )
    assert match, "the agent part must pin its Rust toolchain"
    assert version_tuple(match.group(1)) >= needed


def test_metadata_declares_a_subordinate_on_juju_info_with_one_s3_relation():
    assert METADATA["name"] == "valkey-backup"
    assert METADATA["subordinate"] is True
    juju_info = METADATA["requires"]["juju-info"]
    assert juju_info == {"interface": "juju-info", "scope": "container"}
    s3 = METADATA["requires"]["s3-credentials"]
    assert s3["interface"] == "s3"
    assert s3["limit"] == 1


def test_every_action_refuses_unknown_parameters_and_has_a_handler():
    assert set(ACTIONS) == {
        "create-backup",
        "list-backups",
        "restore-backup",
        "verify-backup",
        "prune-backups",
    }
    for name, spec in ACTIONS.items():
        assert spec.get("additionalProperties") is False, name
        assert spec.get("description"), name
        handler = f"_on_{name.replace('-', '_')}"
        assert callable(getattr(ValkeyBackupCharm, handler, None)), handler


# Which actions run without the machine lock (Juju's `parallel`). Restore stops and
# starts the principal's server, so it must never run beside the principal's hooks; the
# others only stream from the server and talk to the store (see actions.yaml).
MACHINE_LOCK = {
    "create-backup": False,
    "list-backups": False,
    "verify-backup": False,
    "prune-backups": False,
    "restore-backup": True,
}


def test_every_actions_machine_lock_setting():
    assert set(MACHINE_LOCK) == set(ACTIONS)
    for name, spec in ACTIONS.items():
        # Juju's default is parallel: false; restore says so explicitly.
        assert "parallel" in spec, name
        assert spec["parallel"] is (not MACHINE_LOCK[name]), name


def test_metadata_assumes_the_juju_that_s3_integrator_2_needs():
    assert METADATA["assumes"] == ["juju >= 3.4"]


def test_action_parameters_required_by_the_issue():
    assert ACTIONS["list-backups"]["params"]["output"]["enum"] == ["table", "json"]
    assert ACTIONS["restore-backup"]["required"] == ["backup-id"]
    assert "source-cluster" in ACTIONS["restore-backup"]["params"]
    assert ACTIONS["verify-backup"]["params"]["load"]["type"] == "boolean"
    assert set(ACTIONS["prune-backups"]["params"]) == {"keep-last", "keep-days", "confirm"}


def test_backup_id_pattern_accepts_agent_ids_and_refuses_options():
    pattern = re.compile(ACTIONS["restore-backup"]["params"]["backup-id"]["pattern"])
    assert pattern.match("20261121T193000Z-valkey-0-1a2b3c")
    assert not pattern.match("--help")
    assert not pattern.match("../x")


def test_password_is_a_secret_option_and_every_option_is_documented():
    options = CONFIG["options"]
    assert options["valkey-password"]["type"] == "secret"
    for name, option in options.items():
        assert option.get("description"), name
        assert option["type"] in {"string", "int", "boolean", "secret", "float"}, name


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{line} is not pinned"
        pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_charm_requirements_pin_every_transitive_dependency():
    # charmcraft's python plugin installs with --no-deps: a missing pin is a missing
    # module at run time.
    pins = _pins(ROOT / "charm" / "requirements.txt")
    for name in pins:
        try:
            declared = requires(name) or []
        except PackageNotFoundError:
            pytest.fail(f"{name} is pinned but not installed in the test environment")
        for text in declared:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            assert req.name.lower().replace("_", "-") in pins, f"{name} needs {req.name}"
