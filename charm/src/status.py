"""The unit's status, computed from observed facts in one place.

The charm gathers the facts on every hook (config, secret, relations, the agent's own
``status`` answer, the outcome of the last ``configure``) and this module decides. No
handler sets a status of its own, except an action marking the unit busy while it runs,
since collect-status only runs when the action ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import ops

from presentation import human_age, parse_time

AGENT_LOG_HINT = "see journalctl -u valkey-backup-agent"
INTEGRATE_HINT = "run: juju integrate valkey-backup s3-integrator"

# Short, stable texts for configure rejections an operator fixes on the S3 side. Other
# codes show the agent's own (sanitised) message.
CONFIGURE_PHRASES = {
    "s3-no-bucket": "bucket does not exist and cannot be created",
    "s3-access-denied": "s3 credentials rejected",
    "s3-unreachable": "s3 endpoint unreachable",
}
CONFIGURE_HINTS = {
    "s3-no-bucket": "check the s3-integrator's bucket and the key's rights",
    "s3-access-denied": "check the s3-integrator's credentials secret",
    "s3-unreachable": "check the s3-integrator's endpoint and tls-ca-chain",
}

# configure checks the Valkey server the way a backup would (connect, AUTH, INFO and
# CONFIG GET, the replication rights, the role; and the Sentinel group) and the agent
# reports the outcome as ``valkey-check`` in its ``configure`` and ``status`` results.
# Each failure blocks the unit with what is wrong, which user and server it concerns
# and what to do, in the charm's option names; ``{detail}`` is the agent's sanitised
# message without its advice (which names protocol fields). Valkey answers a wrong user
# and a wrong password alike (WRONGPASS), so one text covers both.
VALKEY_CHECK_MESSAGES = {
    "valkey-unreachable": (
        "cannot reach Valkey at {where}: {detail}; check valkey-host, valkey-port, valkey-tls"
    ),
    "valkey-auth": (
        "Valkey rejected user {user} at {where} (wrong user or password): check "
        "valkey-username and the valkey-password secret"
    ),
    "valkey-permission": (
        "Valkey user {user} lacks rights a backup needs: {detail}; use charmed-operator "
        "or grant +sync +replconf +info +config|get (+del for restores)"
    ),
    "valkey-error": "Valkey at {where} refused a backup's commands: {detail}",
    "sentinel-error": (
        "Sentinel at {where} cannot protect a restore: {detail}; restore-backup is refused "
        "until it can (check the Sentinel credentials in the valkey-password secret)"
    ),
}


@dataclass(frozen=True)
class StatusFacts:
    """Everything the status depends on. Built fresh by the charm on every hook."""

    removing: bool = False
    #: The configuration (including the password secret) is unusable: why.
    config_problem: str | None = None
    #: The principal unit is known (juju-info relation joined).
    principal_known: bool = True
    #: The charm was packed with the agent binary.
    agent_packed: bool = True
    #: The agent could not be asked for its status: why.
    agent_problem: str | None = None
    #: The agent's ``status`` result (when it answered).
    agent_status: Mapping[str, Any] | None = None
    #: ``(code, message)`` of the last rejected ``configure``, if the last one failed.
    configure_error: tuple[str, str] | None = None
    #: The Valkey user and address the unit resolved (``valkey_target``), for messages.
    valkey_user: str = ""
    valkey_address: str = ""
    #: The agent's last check of the server (``valkey-check`` of ``status``), or None.
    valkey_check: Mapping[str, Any] | None = None
    #: The snap's Sentinel listens only with TLS (client TLS on): named in the text when
    #: its check fails.
    sentinel_tls_only: bool = False
    #: The s3-credentials relation exists.
    s3_related: bool = False
    #: The relation carries usable credentials and a bucket.
    s3_ready: bool = False
    #: The newest backup this unit knows of (``backup-id``, ``status``, ``finished-at``…).
    last_backup: Mapping[str, Any] | None = None


def compute_status(facts: StatusFacts, now: datetime) -> ops.StatusBase:
    """The one status that describes the unit, the most urgent problem first."""
    if facts.removing:
        return ops.MaintenanceStatus("removing the agent")
    if facts.config_problem:
        return ops.BlockedStatus(facts.config_problem)
    if not facts.agent_packed:
        return ops.BlockedStatus(
            "agent binary missing from the charm: rebuild it with charmcraft pack"
        )
    if facts.agent_problem:
        return ops.BlockedStatus(f"agent unhealthy: {facts.agent_problem}; {AGENT_LOG_HINT}")
    if not facts.principal_known:
        return ops.WaitingStatus("waiting for the principal unit (juju-info relation)")
    if facts.configure_error:
        code, message = facts.configure_error
        return ops.BlockedStatus(
            configure_error_message(
                code, message, user=facts.valkey_user, address=facts.valkey_address
            )
        )
    problem = valkey_check_problem(
        facts.valkey_check, user=facts.valkey_user, sentinel_tls_only=facts.sentinel_tls_only
    )
    if problem:
        return ops.BlockedStatus(problem)
    if not facts.s3_related:
        return ops.BlockedStatus(f"no S3 storage: {INTEGRATE_HINT}")
    if not facts.s3_ready:
        return ops.WaitingStatus("waiting for S3 credentials and bucket from s3-integrator")
    running = (facts.agent_status or {}).get("running")
    if isinstance(running, Mapping):
        return ops.MaintenanceStatus(running_message(running))
    schedule = (facts.agent_status or {}).get("schedule")
    if isinstance(schedule, Mapping) and schedule.get("too-old") is True:
        return ops.BlockedStatus(too_old_message(schedule, now))
    return ops.ActiveStatus(last_backup_message(facts.last_backup, now))


def too_old_message(schedule: Mapping[str, Any], now: datetime) -> str:
    """Blocked text when the cluster's newest success is older than its schedule allows.

    The agent decides (``schedule.too-old``: the schedule's longest gap plus a margin,
    the same rule as the ``ValkeyBackupTooOld`` alert); this only words it.
    """
    allowed = schedule.get("allowed-age-seconds")
    allows = f" (the schedule allows {human_age(float(allowed))})" if allowed else ""
    last = parse_time(schedule.get("last-success-at"))
    if last is None:
        head = "no successful scheduled backup yet"
    else:
        head = f"last successful backup {human_age(max(0.0, (now - last).total_seconds()))} ago"
    return f"{head}{allows}: see list-backups and the agent's journal"


def configure_error_message(code: str, message: str, *, user: str = "", address: str = "") -> str:
    """Blocked text for a rejected configuration, e.g. ``s3 credentials rejected: …``.

    ``user`` and ``address`` (``host:port``) name the Valkey server the unit resolved,
    so that a Valkey failure says which one; the user is ``default`` when none is set.
    """
    phrase = CONFIGURE_PHRASES.get(code)
    if phrase:
        return f"{phrase}: {CONFIGURE_HINTS[code]}"
    template = VALKEY_CHECK_MESSAGES.get(code)
    if template:
        detail = message.rstrip(".") or code
        return template.format(
            user=user or "default", where=address or "the configured address", detail=detail
        )
    return f"agent rejected the configuration: {message} [{code}]"


def valkey_check_problem(
    check: Mapping[str, Any] | None, *, user: str = "", sentinel_tls_only: bool = False
) -> str | None:
    """Blocked text for a failed check of the server or of its Sentinel, else None.

    The server comes first: a backup needs it. A Sentinel that cannot be used blocks
    too, because a restore would then be refused (the agent never stops a watched
    server it cannot protect from a failover).
    """
    if not isinstance(check, Mapping):
        return None
    if check.get("ok") is False:
        return configure_error_message(
            str(check.get("code") or "valkey-error"),
            _without_advice(str(check.get("message") or "")),
            user=user,
            address=str(check.get("addr") or ""),
        )
    sentinel = check.get("sentinel")
    if isinstance(sentinel, Mapping) and sentinel.get("ok") is False:
        if sentinel_tls_only:
            return (
                f"Sentinel at {sentinel.get('addr')} (TLS only: client TLS is on) failed its "
                f"check: {_without_advice(str(sentinel.get('message') or ''))}; "
                "restore-backup is refused; backups work"
            )
        return configure_error_message(
            "sentinel-error",
            str(sentinel.get("message") or ""),
            address=str(sentinel.get("addr") or ""),
        )
    return None


def _without_advice(message: str) -> str:
    """The agent's ``<what failed>; <advice>`` without the advice part.

    For a refused command only the server's own answer (``NOPERM …``) is kept: the
    charm's text already says what to grant.
    """
    text = message.rsplit("; ", 1)[0] if "; " in message else message
    return text[text.index("NOPERM") :] if "NOPERM" in text else text


def running_message(running: Mapping[str, Any]) -> str:
    """Maintenance text for the agent's ``running`` entry, e.g. ``backup <id> running``."""
    op = str(running.get("op") or "operation")
    what = {"create-backup": "backup", "restore-backup": "restore"}.get(op, op)
    backup_id = running.get("backup-id")
    return f"{what} {backup_id} running" if backup_id else f"{what} running"


def last_backup_message(last: Mapping[str, Any] | None, now: datetime) -> str:
    """``last backup 3h ago``, ``last backup failed 5m ago (s3-unreachable)`` or ``""``."""
    if not last:
        return ""
    when = parse_time(last.get("finished-at")) or parse_time(last.get("started-at"))
    if when is not None:
        age = human_age(max(0.0, (now - when).total_seconds()))
        suffix = f" {age}" if age == "just now" else f" {age} ago"
    else:
        backup_id = last.get("backup-id")
        suffix = f" {backup_id}" if backup_id else ""
    if last.get("status") == "failed":
        code = last.get("code")
        return f"last backup failed{suffix}" + (f" ({code})" if code else "")
    return f"last backup{suffix}"


def newest_backup(*candidates: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The candidate with the latest finish (or start) time; ties keep the first."""
    best: Mapping[str, Any] | None = None
    best_time: datetime | None = None
    for candidate in candidates:
        if not candidate:
            continue
        when = parse_time(candidate.get("finished-at")) or parse_time(candidate.get("started-at"))
        if best is None or (when is not None and (best_time is None or when > best_time)):
            best, best_time = candidate, when
    return best
