"""A hostile neighbour: the owner of the server's data directory (not root) tries to make
the root agent change files it does not own, by swapping names during a restore."""

from __future__ import annotations

import json
import os
import stat
import sys

from checks import get_json, prefix_of
from harness import configure_params, load_dataset, wait_until
from harness.s3proxy import Action, Gate, S3Proxy

NOBODY = 65534


def _temp_names(server) -> list[str]:
    return [n for n in os.listdir(server.dir) if n.startswith(".dump.rdb.restore-")]


def test_a_symlink_swapped_in_during_the_download_is_never_chowned_or_placed(
    valkey_server, agent, moto, moto_bucket, tmp_path
):
    # A root-only file the attacker would like to own.
    victim = tmp_path / "root-only"
    victim.write_bytes(b"secret")
    victim.chmod(0o600)
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=2, seed=3)
    os.chown(server.dir, NOBODY, NOBODY)  # the data dir belongs to the "attacker"

    gate = Gate()
    with S3Proxy(moto.endpoint) as proxy:
        proxy.rule(
            lambda r: (
                Action.pause(64 * 1024, gate)
                if r.method == "GET" and r.path.endswith("/data.rdb")
                else None
            )
        )
        a = agent()
        params = configure_params(
            server,
            moto,
            moto_bucket,
            cluster="hostile.valkey",
            s3_extra={"endpoint": proxy.endpoint},
        )
        a.request("configure", params).expect_ok()
        backup_id = a.request("create-backup").expect_ok()["backup-id"]

        pending = a.request_async("restore-backup", {"step": "prepare", "backup-id": backup_id})
        assert gate.reached.wait(60), "the restore never started downloading"
        [temp] = _temp_names(server)
        os.rename(server.dir / temp, server.dir / "moved-away")
        os.symlink(victim, server.dir / temp)
        gate.release.set()
        prepared = pending.result(120).expect_ok()

    st = os.lstat(victim)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    assert victim.read_bytes() == b"secret"
    # The file the agent verified is what it gave away; it kept its checked bytes.
    assert os.lstat(server.dir / "moved-away").st_size == prepared["size-bytes"]

    server.stop()
    err = a.request(
        "restore-backup", {"step": "commit", "restore-id": prepared["restore-id"]}
    ).expect_error("internal")
    assert "moved or replaced" in err.message
    # Nothing was placed: the planted symlink did not become the dump.
    assert not (server.dir / "dump.rdb").is_symlink()
    a.request("restore-backup", {"step": "abort", "restore-id": prepared["restore-id"]}).expect_ok()
    assert (server.dir / temp).is_symlink()  # abort removes only what it created
    assert victim.read_bytes() == b"secret"


def test_the_restored_dump_gets_the_owner_and_mode_of_the_dump_it_replaces(
    valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("valkey9")
    load_dataset(server, size_mb=1, seed=4)
    a = agent()
    a.request("configure", configure_params(server, moto, moto_bucket, cluster="own.valkey"))
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    c = server.client()
    wait_until(
        lambda: c.info("persistence")["rdb_bgsave_in_progress"] == 0,
        timeout=30,
        what="the replication fork to exit",
    )
    c.save()
    dump = server.dir / "dump.rdb"
    os.chown(dump, NOBODY, NOBODY)
    dump.chmod(0o640)

    prepared = a.request("restore-backup", {"step": "prepare", "backup-id": backup_id}).expect_ok()
    server.stop()
    a.request(
        "restore-backup", {"step": "commit", "restore-id": prepared["restore-id"]}
    ).expect_ok()
    st = os.lstat(dump)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o640)
    server.start_again()
    finished = a.request(
        "restore-backup", {"step": "finish", "restore-id": prepared["restore-id"]}
    ).expect_ok()
    assert finished["keys-match"] is True


_SLOW_SERVER = """#!{python}
import os, sys, time
marker = {marker!r}
if sys.argv[1:] == ["--version"]:  # the agent asks what it loads before using it
    os.execv({real!r}, [{real!r}, "--version"])
with open(marker + ".reached", "w") as fh:
    fh.write(str(os.getpid()))
while not os.path.exists(marker):
    time.sleep(0.01)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_sigkill_during_verify_load_leaves_no_scratch_server_and_a_restart_cleans_up(
    valkey_server, agent, moto, moto_bucket, components, tmp_path
):
    server = valkey_server("valkey8")
    load_dataset(server, size_mb=1, seed=6)
    a = agent()
    a.request("configure", configure_params(server, moto, moto_bucket, cluster="kill.valkey"))
    backup_id = a.request("create-backup").expect_ok()["backup-id"]
    # A scratch "server" that waits before it becomes the real one: the moment to kill.
    marker = tmp_path / "go"
    wrapper = tmp_path / "slow-server"
    wrapper.write_text(
        _SLOW_SERVER.format(
            python=sys.executable, marker=str(marker), real=str(components.server_for("valkey8"))
        )
    )
    wrapper.chmod(0o755)
    a.request_async("verify-backup", {"backup-id": backup_id, "load": True, "server": str(wrapper)})
    reached = tmp_path / "go.reached"
    wait_until(lambda: reached.exists() and reached.read_text(), timeout=60, what="scratch start")
    scratch_pid = int(reached.read_text())
    scratch_dirs = [p for p in a.state_dir.iterdir() if p.name.startswith("verify-")]
    assert scratch_dirs and (scratch_dirs[0] / "dump.rdb").exists()
    try:
        a.kill()
        wait_until(lambda: not _alive(scratch_pid), timeout=10, what="the scratch server to die")
        a.start()
        assert not [p for p in a.state_dir.iterdir() if p.name.startswith("verify-")]
        assert "removing a scratch directory" in a.log_text()
    finally:
        if _alive(scratch_pid):
            os.kill(scratch_pid, 9)


def test_stray_or_foreign_verification_records_do_not_hide_the_real_one(
    valkey_server, agent, moto, moto_bucket
):
    server = valkey_server("redis7")
    server.client().set("k", "v")
    a = agent()
    params = configure_params(server, moto, moto_bucket, cluster="stray.valkey")
    a.request("configure", params).expect_ok()
    bid = a.request("create-backup").expect_ok()["backup-id"]
    real = a.request("verify-backup", {"backup-id": bid}).expect_ok()
    s3 = moto.client()
    base = f"{prefix_of(params)}{bid}/verify/"
    foreign = get_json(s3, moto_bucket, real["record-key"])
    foreign.update({"backup-id": "20200101T000000Z-valkey-0-abcdef", "ok": False})
    for name, body in [
        ("zzzz.json", b"not a record"),  # sorts after every real name
        ("29991231T235959Z-ffffff.json", b"{truncated"),
        ("29991231T235958Z-fffffe.json", json.dumps(foreign).encode()),
    ]:
        s3.put_object(Bucket=moto_bucket, Key=base + name, Body=body)
    [entry] = a.request("list-backups").expect_ok()["backups"]
    assert entry["status"] == "finished"
    assert entry["last-verify"] == {
        "checked-at": get_json(s3, moto_bucket, real["record-key"])["checked-at"],
        "ok": True,
        "code": None,
    }
