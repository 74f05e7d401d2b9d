"""charmcraft itself accepts the project and both parts (no LXD needed).

Run with ``tox -e charmcraft``, which installs charmcraft from PyPI. Packing needs LXD
(or Multipass); this is the part of ``charmcraft pack`` that can run anywhere: loading
charmcraft.yaml with metadata/actions/config merged in, and validating each part
against its plugin's schema.
"""

from __future__ import annotations

from pathlib import Path

# Imported, not importorskip'ed: scripts/test.sh runs this in the venv setup.sh made, and a
# missing charmcraft must fail there rather than pass as "skipped".
import charmcraft.models.project as charmcraft_project
import craft_parts
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_project_loads_with_metadata_actions_and_config():
    project = charmcraft_project.CharmcraftProject.from_yaml_file(ROOT / "charmcraft.yaml")
    assert project.name == "valkey-backup"
    assert set(project.actions) >= {"create-backup", "restore-backup"}
    assert "valkey-password" in project.config["options"]


def test_every_part_validates_against_its_plugin():
    from charmcraft.parts import plugins as charmcraft_plugins
    from craft_parts import plugins

    plugins.register(
        {"python": charmcraft_plugins.PythonPlugin, "charm": charmcraft_plugins.CharmPlugin}
    )
    parts = yaml.safe_load((ROOT / "charmcraft.yaml").read_text())["parts"]
    for part in parts.values():
        craft_parts.validate_part(dict(part))


def test_a_misspelt_part_key_is_caught():
    from charmcraft.parts import plugins as charmcraft_plugins
    from craft_parts import plugins

    plugins.register({"python": charmcraft_plugins.PythonPlugin})
    part = dict(yaml.safe_load((ROOT / "charmcraft.yaml").read_text())["parts"]["charm"])
    part["python-requirement"] = part.pop("python-requirements")
    with pytest.raises(Exception, match="python-requirement"):
        craft_parts.validate_part(part)
