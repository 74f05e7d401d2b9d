"""Shared setup for running the charm's handlers against the real agent.

These tests drive ``ValkeyBackupCharm`` through ``ops.testing`` like the unit tests, but
with the real ``valkey-backup-agent`` binary listening on a real socket, a real Valkey
and a real S3 server (scripts/setup.sh installs them). The charm is pointed at the test
agent by its two seams:

- ``VALKEY_BACKUP_SOCKET``: the socket the charm's ``AgentClient`` connects to
  (``service.SOCKET_ENV``); set it with ``monkeypatch.setenv`` before running an event.
- ``charm.Systemctl``: replace it (``monkeypatch.setattr``) with a ``Systemctl`` whose
  ``run`` stops and starts the test's Valkey server, so that ``restore-backup`` can be
  exercised without systemd.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "charm" / "src"))
