"""Action results, tables and progress lines: what an operator sees."""

from __future__ import annotations

from presentation import (
    ProgressLog,
    Redactor,
    action_results,
    backups_table,
    format_progress,
    human_age,
    human_size,
    last_verify_cell,
    stored_cell,
)


def no_redact(text: str) -> str:
    return text


def test_results_are_juju_shaped_strings():
    results = action_results(
        {
            "backup-id": "b1",
            "size-bytes": 123,
            "ok": True,
            "loaded": False,
            "code": None,
            "keys": {"db0": 12, "db1": 3},
            "deleted": ["a", "b"],
            "duration-seconds": 1.5,
        },
        no_redact,
    )
    assert results == {
        "backup-id": "b1",
        "size-bytes": "123",
        "ok": "true",
        "loaded": "false",
        "keys": {"db0": "12", "db1": "3"},
        "deleted": '["a","b"]',
        "duration-seconds": "1.5",
    }


def test_results_drop_keys_juju_would_refuse():
    results = action_results(
        {"Bad_Key": 1, "stdout": "x", "-lead": 1, "fine-key": 1, "empty": {}}, no_redact
    )
    assert results == {"fine-key": "1"}


def test_redactor_replaces_every_secret_including_inside_json():
    redact = Redactor(["hunter22", "s3cr3t/key", None, "ab"])
    assert redact("pw hunter22 and s3cr3t/key") == "pw *** and ***"
    assert redact("ab stays: too short to be a secret") == "ab stays: too short to be a secret"
    results = action_results({"note": ["hunter22"], "msg": "x hunter22"}, redact)
    assert "hunter22" not in str(results)


def test_redactor_replaces_the_longest_secret_first():
    assert Redactor(["abcd", "abcdefgh"])("abcdefgh") == "***"


def test_human_sizes_and_ages():
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(104857600) == "100.0 MiB"
    assert human_size(None) == "-"
    assert human_size(True) == "-"
    assert human_size(5 * 1024**5) == "5120.0 TiB"
    assert human_age(10) == "just now"
    assert human_age(300) == "5m"
    assert human_age(3 * 3600) == "3h"
    assert human_age(5 * 86400) == "5d"


def test_table_has_the_documented_columns_and_one_row_per_backup():
    table = backups_table(
        [
            {
                "backup-id": "b2",
                "status": "finished",
                "unit": "valkey/0",
                "size-bytes": 2048,
                "compression": "zstd",
                "encrypted": True,
                "started-at": "2026-11-21T19:30:00Z",
                "finished-at": "2026-11-21T19:30:02Z",
                "last-verify": {"checked-at": "2026-11-22T01:00:00Z", "ok": True},
            },
            {"backup-id": "b1", "status": "failed", "code": "s3-unreachable", "unit": "valkey/1"},
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "UNIT",
        "SIZE",
        "STORED",
        "STARTED",
        "FINISHED",
        "LAST",
        "VERIFY",
    ]
    assert lines[1].split()[:4] == ["b2", "finished", "valkey/0", "2.0"]
    assert lines[1].endswith("2026-11-22T01:00:00Z ok")
    assert "failed (s3-unreachable)" in lines[2]
    assert lines[1].split()[5] == "zstd+age"
    assert lines[2].rstrip().endswith("-")
    # Columns line up: every row's UNIT starts where the header's does.
    column = lines[0].index("UNIT")
    assert all(line[column:].startswith(("UNIT", "valkey/")) for line in lines)


def test_empty_table_is_just_the_header():
    assert backups_table([]).split() == [
        "ID",
        "STATUS",
        "UNIT",
        "SIZE",
        "STORED",
        "STARTED",
        "FINISHED",
        "LAST",
        "VERIFY",
    ]


def test_stored_cell_says_compression_and_encryption():
    assert stored_cell({"compression": "lz4", "encrypted": False}) == "lz4"
    assert stored_cell({"compression": "none", "encrypted": True}) == "none+age"
    assert stored_cell({"compression": "zstd"}) == "zstd"
    # Older agents say nothing about it.
    assert stored_cell({}) == "-"


def test_last_verify_cell_shapes():
    assert last_verify_cell({"last-verify": {"checked-at": "t", "ok": False}}) == "t FAILED"
    assert last_verify_cell({"last-verify": {"checked-at": "t"}}) == "t"
    assert last_verify_cell({"last-verify": "2026-11-22T01:00:00Z"}) == "2026-11-22T01:00:00Z"
    # Agents that only count verification records.
    assert last_verify_cell({"verify-records": 0}) == "never"
    assert last_verify_cell({"verify-records": 3}) == "3 run(s)"
    assert last_verify_cell({}) == "-"


def test_progress_line_is_readable():
    line = format_progress(
        {
            "event": "progress",
            "phase": "streaming",
            "bytes-done": 8388608,
            "rate-bytes-per-sec": 104857600,
            "parts-uploaded": 1,
        }
    )
    assert line == "streaming: 8.0 MiB at 100.0 MiB/s 1 part(s) uploaded"
    assert format_progress({"event": "progress"}) == "working"


def test_progress_log_throttles_within_a_phase_but_never_hides_a_phase_change():
    now = [0.0]
    lines: list[str] = []
    log = ProgressLog(lines.append, no_redact, interval=5.0, clock=lambda: now[0])
    log({"phase": "streaming", "bytes-done": 1})
    now[0] = 1.0
    log({"phase": "streaming", "bytes-done": 2})  # throttled
    now[0] = 2.0
    log({"phase": "completing"})  # new phase: shown at once
    now[0] = 8.0
    log({"phase": "completing", "bytes-done": 3})  # interval passed
    assert lines == ["streaming: 1 B", "completing", "completing: 3 B"]


def test_progress_log_redacts():
    lines: list[str] = []
    ProgressLog(lines.append, Redactor(["hunter22"]))({"phase": "x", "message": "hunter22"})
    assert lines == ["x: ***"]
