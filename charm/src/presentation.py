"""Turning agent answers into what Juju shows: action results, tables, log lines.

Juju action results are a flat map of kebab-case keys to strings (nested maps become
dotted keys), limited to about 100 KB in all. Agent results are already kebab-case, so
they pass through with only their values converted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

# What Juju accepts as a result key. Keys from a newer agent that do not fit are dropped
# rather than failing the whole action.
RESULT_KEY_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
# Juju adds these itself to every action's results.
RESERVED_RESULT_KEYS = frozenset({"stdout", "stderr", "stdout-encoding", "stderr-encoding"})

REDACTED = "***"


class Redactor:
    """Replaces known secret values in text that leaves the charm.

    The agent promises never to echo credentials; this is the charm's own guarantee on
    top, for action results, failure messages and log lines.
    """

    def __init__(self, secrets: Iterable[str | None] = ()):
        # Longest first, so a secret containing another is replaced whole. Very short
        # values are skipped: replacing every "a" would make output unreadable and such
        # a value protects nothing anyway.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` with every known secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


def action_results(data: Mapping[str, Any], redact: Callable[[str], str]) -> dict[str, Any]:
    """Convert an agent result into Juju action results.

    Scalars become strings, nested maps stay maps (ops flattens them to dotted keys),
    lists become JSON strings, and null values are left out.
    """
    results: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if not RESULT_KEY_RE.match(key) or key in RESERVED_RESULT_KEYS:
            continue
        converted = _result_value(value, redact)
        if converted is not None:
            results[key] = converted
    return results


def _result_value(value: Any, redact: Callable[[str], str]) -> Any:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        nested = action_results(value, redact)
        return nested or None
    if isinstance(value, (list, tuple)):
        return redact(json.dumps(value, separators=(",", ":"), sort_keys=True))
    return redact(str(value))


def human_size(size: Any) -> str:
    """``123456789`` → ``117.7 MiB``; anything that is not a number → ``-``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"  # unreachable


def human_age(seconds: float) -> str:
    """A short age: ``just now``, ``5m``, ``3h``, ``2d``."""
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400 * 2:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 UTC time as the agent writes it (``2026-11-21T19:30:05Z``), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


TABLE_COLUMNS = ("ID", "STATUS", "UNIT", "SIZE", "STORED", "STARTED", "FINISHED", "LAST VERIFY")


def backups_table(backups: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of list-backups entries, one per line, newest first."""
    rows = [TABLE_COLUMNS] + [
        (
            str(entry.get("backup-id") or "-"),
            _status_cell(entry),
            str(entry.get("unit") or "-"),
            human_size(entry.get("size-bytes")),
            stored_cell(entry),
            str(entry.get("started-at") or "-"),
            str(entry.get("finished-at") or "-"),
            last_verify_cell(entry),
        )
        for entry in backups
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def stored_cell(entry: Mapping[str, Any]) -> str:
    """How a backup is stored: its compression, ``+age`` when encrypted (``zstd+age``)."""
    compression = entry.get("compression")
    if not isinstance(compression, str) or not compression:
        return "-"
    return f"{compression}+age" if entry.get("encrypted") is True else compression


def _status_cell(entry: Mapping[str, Any]) -> str:
    status = str(entry.get("status") or "-")
    code = entry.get("code")
    return f"{status} ({code})" if status == "failed" and code else status


def last_verify_cell(entry: Mapping[str, Any]) -> str:
    """The LAST VERIFY cell of a list entry.

    An entry may carry its newest verification as an object
    (``{"checked-at": …, "ok": true}``) or just its time; failing that, the number of
    verification records the agent found next to the backup.
    """
    value = entry.get("last-verify")
    if isinstance(value, Mapping):
        when = str(value.get("checked-at") or "?")
        ok = value.get("ok")
        if ok is True:
            return f"{when} ok"
        if ok is False:
            return f"{when} FAILED"
        return when
    if isinstance(value, str) and value:
        return value
    count = entry.get("verify-records")
    if isinstance(count, int) and not isinstance(count, bool):
        return "never" if count == 0 else f"{count} run(s)"
    return "-"


class ProgressLog:
    """Writes agent progress events to the action log, at most every ``interval`` seconds.

    A phase change is always written, so the log shows each step of a backup or restore
    even when it is quick.
    """

    def __init__(
        self,
        log: Callable[[str], None],
        redact: Callable[[str], str],
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._log = log
        self._redact = redact
        self._interval = interval
        self._clock = clock
        self._last_phase: object = None
        self._last_time = float("-inf")

    def __call__(self, event: Mapping[str, Any]) -> None:
        """Log ``event`` unless a line for the same phase was written moments ago."""
        phase = event.get("phase")
        now = self._clock()
        if phase == self._last_phase and now - self._last_time < self._interval:
            return
        self._last_phase = phase
        self._last_time = now
        self._log(self._redact(format_progress(event)))


def format_progress(event: Mapping[str, Any]) -> str:
    """One readable line for a progress event, e.g. ``streaming: 8.0 MiB at 100.0 MiB/s``."""
    parts = [str(event.get("phase") or "working")]
    details = []
    if "bytes-done" in event:
        details.append(human_size(event.get("bytes-done")))
    if "bytes-total" in event:
        details.append(f"of {human_size(event.get('bytes-total'))}")
    rate = event.get("rate-bytes-per-sec")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
        details.append(f"at {human_size(rate)}/s")
    if "parts-uploaded" in event:
        details.append(f"{event.get('parts-uploaded')} part(s) uploaded")
    if event.get("message"):
        details.append(str(event.get("message")))
    if details:
        parts.append(" ".join(details))
    return ": ".join(parts)


def schedule_summary(schedule: Any) -> str:
    """One line about the agent's ``schedule`` object, or ``""`` without a schedule.

    ``0 3 * * * (UTC) from replica; next 2026-12-01T03:00:00Z; last slot
    2026-11-30T03:00:00Z: backed-up by valkey/1``; the agent's CLI prints the same.
    """
    if not isinstance(schedule, Mapping) or not schedule.get("cron"):
        return ""
    line = f"{schedule['cron']} (UTC) from {schedule.get('from') or '-'}"
    if schedule.get("next-slot"):
        line += f"; next {schedule['next-slot']}"
    last = schedule.get("last-scheduled")
    if isinstance(last, Mapping) and last.get("slot") and last.get("result"):
        line += f"; last slot {last['slot']}: {last['result']}"
        if last.get("taken-by"):
            line += f" by {last['taken-by']}"
        if last.get("code"):
            line += f" ({last['code']})"
    if schedule.get("too-old") is True:
        line += "; LATE: no success within the schedule"
    missed = schedule.get("recent-missed-slots")
    if isinstance(missed, list) and missed:
        line += f"; {len(missed)} recently missed slot(s)"
    return line
