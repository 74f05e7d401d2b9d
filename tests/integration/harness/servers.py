"""Real servers on loopback: Valkey/Redis, the moto S3 server, and Garage.

Each class starts its server on free 127.0.0.1 ports inside a directory of its own,
waits until the server answers its real protocol (PING/INFO, an HTTP request, the
Garage CLI), and stops it by killing its process group. All of them are context managers
and their `stop()` is idempotent, so fixtures can call it in any teardown.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .components import Components, load_components
from .process import ManagedProcess, StartupError, free_port, wait_until
from .tls import CertAuthority, make_test_ca

LOOPBACK = "127.0.0.1"


# =========================================================================== Valkey / Redis


class ValkeyServer:
    """A Valkey 8/9 or Redis 7 server on a free loopback port.

    Started with `--save ""` and `--appendonly no` so nothing is written behind a test's
    back, `--enable-debug-command yes` so DEBUG DIGEST / DEBUG RELOAD work, and
    `--repl-diskless-sync-delay 0` so an `--rdb` snapshot starts at once instead of
    after the default 5 s wait for more replicas (pass
    `extra_args=["--repl-diskless-sync-delay", "5"]` to test the real default).

    Authentication options:
    - `password` alone sets `requirepass` (the `default` user's password);
    - `username` + `password` creates an ACL user with all permissions; the default user
      is then switched off, so only that user can connect (no spaces in the password).
    `extra_args` are appended to the server's command line (e.g. `["--appendonly", "yes"]`).
    `host` is the only address the server binds (another loopback address such as
    127.0.0.2 proves a client does not assume 127.0.0.1); `port` fixes the port (the
    topology gives every unit the same one, as Canonical's charm does) instead of a free
    one.
    """

    def __init__(
        self,
        kind: str,
        workdir: Path,
        *,
        password: str | None = None,
        username: str | None = None,
        extra_args: Sequence[str] = (),
        components: Components | None = None,
        rdb_path: Path | None = None,
        startup_timeout: float = 30.0,
        host: str = LOOPBACK,
        port: int = 0,
    ):
        comps = components or load_components()
        self.kind = kind
        self.server_bin = comps.server_for(kind)
        self.cli = comps.cli_for(kind)
        self.host = host
        self.port = port
        self.fixed_port = port != 0
        self.password = password
        self.username = username
        self.extra_args = list(extra_args)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.startup_timeout = startup_timeout
        self.proc: ManagedProcess | None = None
        if rdb_path is not None:
            shutil.copyfile(rdb_path, self.dir / "dump.rdb")

    # -- lifecycle ----------------------------------------------------------------------

    def _argv(self) -> list[str]:
        argv = [
            str(self.server_bin),
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.dir),
            "--dbfilename", "dump.rdb",
            "--save", "",
            "--appendonly", "no",
            "--enable-debug-command", "yes",
            "--daemonize", "no",
            "--logfile", "",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.username and self.password:
            # Each word is its own argv item: the server joins the words after `--user`
            # into one config line (a single quoted item would be taken as the name).
            argv += ["--user", self.username, "on", f">{self.password}"]
            argv += ["~*", "&*", "+@all", "--user", "default", "off"]
        elif self.password:
            argv += ["--requirepass", self.password]
        return argv + self.extra_args

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def start(self) -> ValkeyServer:
        """Start on a free port (retrying if another process takes it) and wait for ready."""
        if self.fixed_port:
            return self.start_again()
        for _attempt in range(3):
            self.port = free_port(self.host)
            self.proc = ManagedProcess(
                self._argv(),
                self.log_path,
                cwd=self.dir,
                name=f"{self.kind}-server:{self.port}",
            ).start()
            try:
                self.wait_ready(self.startup_timeout)
                return self
            except StartupError:
                if self.proc.bind_failed():
                    continue
                self.proc.kill()
                raise
            except BaseException:
                self.proc.kill()
                raise
        raise StartupError(f"{self.kind}: could not bind a free port in 3 attempts")

    def start_again(self) -> ValkeyServer:
        """Start once more on the same port and dir (after `stop()`), as a service restart
        does: the agent under test keeps its configured address."""
        assert self.port, "start() first"
        self.proc = ManagedProcess(
            self._argv(), self.log_path, cwd=self.dir, name=f"{self.kind}-server:{self.port}"
        ).start()
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.proc.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until the server answers INFO and has finished loading its dataset."""
        assert self.proc is not None

        def ready() -> bool:
            self.proc.check_alive("readiness")  # type: ignore[union-attr]
            with self.client(socket_timeout=1.0) as c:
                return c.info("persistence").get("loading") == 0

        try:
            wait_until(ready, timeout=timeout, what=f"{self.kind} on port {self.port}")
        except TimeoutError as exc:
            raise StartupError(f"{exc}\n--- log tail ---\n{self.proc.log_tail()}") from None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def __enter__(self) -> ValkeyServer:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access -------------------------------------------------------------------------

    def client(self, db: int = 0, **kwargs: Any):  # -> valkey.Valkey
        """A Python `valkey.Valkey` client for database `db` (bytes responses)."""
        import valkey  # imported lazily so the harness imports without the package

        return valkey.Valkey(
            host=self.host,
            port=self.port,
            db=db,
            username=self.username,
            password=self.password,
            **kwargs,
        )

    def client_factory(self):
        """`db -> client`, the shape `dataset.load_dataset` takes."""
        return lambda db=0: self.client(db)

    def cli_env(self) -> dict[str, str]:
        """Environment for running `self.cli` with the password kept off argv."""
        env = dict(os.environ)
        if self.password:
            env["REDISCLI_AUTH"] = self.password
            env["VALKEYCLI_AUTH"] = self.password
        return env

    def cli_argv(self, *args: str) -> list[str]:
        """Command line for `self.cli` against this server (password goes via `cli_env`)."""
        argv = [str(self.cli), "-h", self.host, "-p", str(self.port)]
        if self.username:
            argv += ["--user", self.username]
        return argv + list(args)

    def run_cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """Run the matching cli against this server and return its CompletedProcess."""
        return subprocess.run(
            self.cli_argv(*args),
            check=False,
            env=self.cli_env(),
            capture_output=True,
            timeout=timeout,
        )

    def dump_rdb(self, target: Path, timeout: float = 120) -> Path:
        """Take an RDB of this server with `<cli> --rdb <file>` (a file, not stdout)."""
        res = self.run_cli("--rdb", str(target), timeout=timeout)
        if res.returncode != 0 or not target.is_file():
            err = res.stderr.decode(errors="replace")
            raise RuntimeError(f"{self.cli} --rdb failed ({res.returncode}): {err}")
        return target

    def version(self) -> str:
        with self.client() as c:
            info = c.info("server")
        return str(info.get("valkey_version") or info.get("redis_version"))

    def connection_params(self) -> dict[str, Any]:
        """The `valkey` section of the agent's `configure` params for this server."""
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "cli": str(self.cli),
        }
        if self.username:
            params["username"] = self.username
        if self.password:
            params["password"] = self.password
        return params

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def __repr__(self) -> str:
        return f"ValkeyServer({self.kind!r}, port={self.port})"


def start_from_rdb(kind: str, rdb_path: Path, workdir: Path, **kwargs: Any) -> ValkeyServer:
    """Start a fresh server of `kind` whose dir holds `rdb_path` as dump.rdb.

    Proves a backup loads: the server exits at startup (StartupError with its log) when
    the file is not an RDB it can load.
    """
    return ValkeyServer(kind, workdir, rdb_path=rdb_path, **kwargs).start()


# =========================================================================== S3: shared bits


def _s3_client(
    endpoint: str,
    region: str,
    access_key: str,
    secret_key: str,
    verify: str | bool | None = None,
    **cfg: Any,
):
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        **cfg,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
        verify=verify,
    )


def unique_bucket_name(prefix: str = "vb") -> str:
    """A bucket name unique within a test run (lowercase, DNS-safe, < 63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def _http_ok(
    url: str,
    data: bytes | None = None,
    timeout: float = 2.0,
    cafile: Path | None = None,
) -> tuple[int, bytes]:
    """GET (or POST `data` to) an http(s) URL; return (status, body)."""
    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        conn = http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    try:
        # Not form-encoded: moto's /moto-api/reset-auth reads the raw body.
        headers = {"Content-Type": "application/octet-stream"} if data is not None else {}
        conn.request("POST" if data is not None else "GET", parts.path, data, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# =========================================================================== moto


class MotoServer:
    """moto's standalone S3 server (`python -m moto.server -H 127.0.0.1 -p PORT`).

    moto keeps every object version, supports Object Lock and `If-None-Match`, and logs
    every HTTP request line, which `requests()` parses so tests can prove that no DELETE
    was ever sent.

    **Authentication** — moto accepts any key by default. With `auth=True` it checks
    SigV4 signatures and IAM policies: moto only enforces IAM once its global
    `INITIAL_NO_AUTH_ACTION_COUNT` is exhausted, and `POST /moto-api/reset-auth` with body
    `0` sets it to 0 at run time. So this class starts moto open, creates an IAM user
    `admin` with an allow-everything policy and an access key through moto's IAM API,
    then switches auth on. From then on:
    - unknown access key → `InvalidAccessKeyId`; wrong secret → `SignatureDoesNotMatch`;
    - `create_key(deny=[...])` makes a user whose policy allows `s3:*` but denies the
      listed actions (e.g. `s3:CreateBucket`) → `AccessDenied` for those.
    `self.access_key`/`self.secret_key` are the admin credentials in auth mode and
    "testing"/"testing" otherwise. Auth is process-global in moto, so an auth server and
    an open one are separate processes.

    **TLS** — `tls=True` serves HTTPS with a certificate for 127.0.0.1 signed by a fresh
    private CA: `self.ca` has its PEM (`ca.ca_pem`, for `tls-ca-chain`) and path;
    clients from `client()` trust it.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        auth: bool = False,
        tls: bool = False,
        region: str = "us-east-1",
    ):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.auth = auth
        self.region = region
        self.host = LOOPBACK
        self.port = 0
        self.access_key = "testing"
        self.secret_key = "testing"
        self.proc: ManagedProcess | None = None
        self.ca: CertAuthority | None = None
        if tls:
            self.ca = make_test_ca(self.dir / "tls")

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.ca else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def _verify(self) -> str | None:
        return str(self.ca.ca_path) if self.ca else None

    @property
    def _ca_file(self) -> Path | None:
        return self.ca.ca_path if self.ca else None

    @property
    def log_path(self) -> Path:
        return self.dir / "moto.log"

    def start(self, timeout: float = 60.0) -> MotoServer:
        env = dict(os.environ)
        # moto must start open: the admin user is created through its IAM API first.
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        env.setdefault("AWS_DEFAULT_REGION", self.region)
        for _attempt in range(3):
            self.port = free_port()
            argv = [
                sys.executable,
                "-m",
                "moto.server",
                "-H",
                self.host,
                "-p",
                str(self.port),
            ]
            if self.ca:
                argv += ["-c", str(self.ca.cert_path), "-k", str(self.ca.key_path)]
            self.proc = ManagedProcess(argv, self.log_path, env=env, name=f"moto:{self.port}")
            self.proc.start()
            try:
                wait_until(self._answers, timeout=timeout, what=f"moto on port {self.port}")
                break
            except StartupError:
                if self.proc.bind_failed():
                    continue
                self.proc.kill()
                raise
            except BaseException as exc:
                self.proc.kill()
                if isinstance(exc, TimeoutError):
                    raise StartupError(f"{exc}\n{self.proc.log_tail()}") from None
                raise
        else:
            raise StartupError("moto: could not bind a free port in 3 attempts")
        if self.auth:
            try:
                self._enable_auth()
            except BaseException:
                self.proc.kill()
                raise
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        self.proc.check_alive("moto to answer HTTP")
        status, _ = _http_ok(f"{self.endpoint}/moto-api/", timeout=1.0, cafile=self._ca_file)
        return status < 500

    def _enable_auth(self) -> None:
        iam = self.iam_client("bootstrap", "bootstrap")
        iam.create_user(UserName="admin")
        iam.put_user_policy(
            UserName="admin",
            PolicyName="everything",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        status, body = _http_ok(
            f"{self.endpoint}/moto-api/reset-auth", data=b"0", cafile=self._ca_file
        )
        if status != 200:
            raise StartupError(f"moto reset-auth answered {status}: {body[:200]!r}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def __enter__(self) -> MotoServer:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients ------------------------------------------------------------------------

    def client(
        self,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        verify: str | bool | None = "ca",
        **cfg: Any,
    ):
        """boto3 S3 client (path style), with the admin credentials unless given others.

        With TLS it trusts the private CA; `verify=None` uses the system's CAs instead
        (and so fails), `verify=False` skips verification. `cfg` goes to botocore Config.
        """
        return _s3_client(
            self.endpoint,
            self.region,
            access_key or self.access_key,
            secret_key or self.secret_key,
            verify=self._verify if verify == "ca" else verify,
            **cfg,
        )

    def iam_client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3

        return boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            verify=self._verify,
        )

    @property
    def credentials(self) -> S3Credentials:
        return S3Credentials(self.access_key, self.secret_key)

    def create_key(
        self,
        *,
        deny: Iterable[str] = (),
        allow: Iterable[str] = ("s3:*",),
        name: str | None = None,
    ) -> S3Credentials:
        """Create an IAM user + access key allowed `allow` and denied `deny` (auth mode).

        Example: `create_key(deny=["s3:CreateBucket"])` is a key that can use existing
        buckets but not create one. Without `auth=True` moto ignores policies.
        """
        if not self.auth:
            raise RuntimeError("create_key needs MotoServer(auth=True); moto ignores IAM otherwise")
        statements: list[dict[str, Any]] = [
            {"Effect": "Allow", "Action": list(allow), "Resource": "*"}
        ]
        if deny:
            statements.append({"Effect": "Deny", "Action": list(deny), "Resource": "*"})
        user = name or f"user-{uuid.uuid4().hex[:10]}"
        iam = self.iam_client()
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user,
            PolicyName="test-policy",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return S3Credentials(key["AccessKeyId"], key["SecretAccessKey"])

    @staticmethod
    def unknown_credentials() -> S3Credentials:
        """Credentials no server knows (AKIA-prefixed like real IAM keys)."""
        return S3Credentials("AKIA" + secrets.token_hex(8).upper(), secrets.token_hex(20))

    # -- buckets ------------------------------------------------------------------------

    def create_bucket(self, name: str | None = None, *, versioning: bool = False) -> str:
        """Create a bucket (admin credentials) and return its name."""
        name = name or unique_bucket_name()
        s3 = self.client()
        s3.create_bucket(Bucket=name)
        if versioning:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def create_object_lock_bucket(
        self, name: str | None = None, *, mode: str = "GOVERNANCE", days: int = 1
    ) -> str:
        """A bucket with Object Lock (hence versioning) and a default retention rule.

        Every object written to it is retained `days` days in `mode` ("GOVERNANCE" or
        "COMPLIANCE"); a write-once agent must work here untouched.
        """
        name = name or unique_bucket_name("vb-lock")
        s3 = self.client()
        s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        s3.put_object_lock_configuration(
            Bucket=name,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
            },
        )
        return name

    def object_versions(self, bucket: str, prefix: str = "") -> dict[str, list[dict[str, Any]]]:
        """{"Versions": [...], "DeleteMarkers": [...]} for a bucket (all pages)."""
        s3 = self.client()
        out: dict[str, list[dict[str, Any]]] = {"Versions": [], "DeleteMarkers": []}
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            out["Versions"] += page.get("Versions", [])
            out["DeleteMarkers"] += page.get("DeleteMarkers", [])
        return out

    def requests(self, bucket: str | None = None) -> list[MotoRequest]:
        """Every HTTP request moto has logged so far (optionally only for `bucket`).

        Parsed from werkzeug's access log lines in moto's output, so it includes requests
        moto rejected (e.g. a DELETE refused by Object Lock).
        """
        out = []
        for line in self.proc.log_text().splitlines() if self.proc else []:
            req = MotoRequest.parse(line)
            if req is None:
                continue
            if bucket is None or req.bucket == bucket:
                out.append(req)
        return out

    def delete_attempts(self, bucket: str) -> list[MotoRequest]:
        """Requests that delete or overwrite-by-delete in `bucket`, excluding multipart aborts.

        DeleteObject (DELETE /bucket/key), DeleteObjects (POST /bucket?delete) and
        DeleteBucket count; AbortMultipartUpload (DELETE ...?uploadId=) does not, since
        aborting an unfinished upload is how a failed backup cleans up.
        """
        return [
            r
            for r in self.requests(bucket)
            if (r.method == "DELETE" and "uploadId=" not in r.query)
            or (r.method == "POST" and "delete" in r.query_keys)
        ]

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""


@dataclass(frozen=True)
class MotoRequest:
    """One line of moto's access log: `127.0.0.1 - - [date] "PUT /b/k?x HTTP/1.1" 200 -`."""

    method: str
    path: str
    query: str
    status: int

    @property
    def bucket(self) -> str:
        return self.path.lstrip("/").split("/", 1)[0]

    @property
    def key(self) -> str:
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) > 1 else ""

    @property
    def query_keys(self) -> set[str]:
        return {p.split("=", 1)[0] for p in self.query.split("&") if p}

    @classmethod
    def parse(cls, line: str) -> MotoRequest | None:
        start = line.find('"')
        end = line.find('"', start + 1)
        if start < 0 or end < 0:
            return None
        request_line = line[start + 1 : end].split(" ")
        rest = line[end + 1 :].split()
        if len(request_line) != 3 or not rest or not rest[0].isdigit():
            return None
        method, target, _ = request_line
        path, _, query = target.partition("?")
        from urllib.parse import unquote

        return cls(method, unquote(path), query, int(rest[0]))


# =========================================================================== Garage


class GarageServer:
    """A single-node Garage 2.x with one key and one bucket, ready for S3 requests.

    Setup, all with Garage's own CLI against the generated `garage.toml`:
    1. `garage server` (LMDB metadata, replication_factor 1, RPC/S3/admin on free
       loopback ports, random rpc_secret and admin token);
    2. poll `garage status` until the node answers RPC;
    3. `garage node id -q` → `garage layout assign -z dc1 -c 1G <id>` →
       `garage layout apply --version 1`;
    4. `garage json-api CreateKey {"name": ...}` (JSON output: accessKeyId,
       secretAccessKey);
    5. `garage bucket create <bucket>` → `garage bucket allow --read --write --owner
       <bucket> --key <key id>`;
    6. poll HeadBucket with the key until the S3 API serves it.
    Garage ignores `If-None-Match` and has no Object Lock; path-style addressing and
    region "garage" are required.
    """

    region = "garage"

    def __init__(
        self,
        workdir: Path,
        *,
        components: Components | None = None,
        bucket: str | None = None,
    ):
        comps = components or load_components()
        self.binary = comps.require("garage")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "garage.toml"
        self.host = LOOPBACK
        self.s3_port = self.rpc_port = self.admin_port = 0
        self.bucket = bucket or unique_bucket_name("vb-garage")
        self.access_key = ""
        self.secret_key = ""
        self.key_id = ""
        self.admin_token = secrets.token_hex(16)
        self.proc: ManagedProcess | None = None
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def admin_endpoint(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "garage.log"

    def _write_config(self) -> None:
        self.config_path.write_text(
            f"""\
metadata_dir = "{self.dir / "meta"}"
data_dir = "{self.dir / "data"}"
db_engine = "lmdb"
replication_factor = 1

rpc_bind_addr = "{self.host}:{self.rpc_port}"
rpc_public_addr = "{self.host}:{self.rpc_port}"
rpc_secret = "{secrets.token_hex(32)}"

[s3_api]
s3_region = "{self.region}"
api_bind_addr = "{self.host}:{self.s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "{self.host}:{self.admin_port}"
admin_token = "{self.admin_token}"
"""
        )
        self.config_path.chmod(0o600)

    def cli(
        self, *args: str, timeout: float = 30, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `garage -c garage.toml ARGS` and return its CompletedProcess (text)."""
        res = subprocess.run(
            [str(self.binary), "-c", str(self.config_path), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"garage {' '.join(args)} failed ({res.returncode}):\n{res.stderr}{res.stdout}"
            )
        return res

    def start(self, timeout: float = 60.0) -> GarageServer:
        for _attempt in range(3):
            self.rpc_port, self.s3_port, self.admin_port = (
                free_port(),
                free_port(),
                free_port(),
            )
            self._write_config()
            self.proc = ManagedProcess(
                [str(self.binary), "-c", str(self.config_path), "server"],
                self.log_path,
                env={
                    **os.environ,
                    "RUST_LOG": os.environ.get("VB_GARAGE_LOG", "garage=info"),
                    "NO_COLOR": "1",
                },
                name=f"garage:{self.s3_port}",
            ).start()
            try:
                self._setup(timeout)
                return self
            except StartupError:
                if self.proc.bind_failed():
                    continue
                self.proc.kill()
                raise
            except BaseException as exc:
                self.proc.kill()
                if isinstance(exc, (TimeoutError, RuntimeError)):
                    raise StartupError(
                        f"{exc}\n--- garage log tail ---\n{self.proc.log_tail()}"
                    ) from None
                raise
        raise StartupError("garage: could not bind free ports in 3 attempts")

    def _setup(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        def rpc_up() -> bool:
            self.proc.check_alive("garage RPC")  # type: ignore[union-attr]
            return self.cli("status", check=False, timeout=10).returncode == 0

        wait_until(rpc_up, timeout=left(), what="garage status")
        node_id = self.cli("node", "id", "-q").stdout.strip().split("@", 1)[0]
        self.cli("layout", "assign", "-z", "dc1", "-c", "1G", node_id)
        self.cli("layout", "apply", "--version", "1")
        key = json.loads(self.cli("json-api", "CreateKey", json.dumps({"name": "vb-test"})).stdout)
        self.key_id = self.access_key = key["accessKeyId"]
        self.secret_key = key["secretAccessKey"]
        self.create_bucket(self.bucket, timeout=left())

    def create_bucket(self, name: str | None = None, *, timeout: float = 30.0) -> str:
        """Create a bucket with the CLI, allow the harness key on it, wait until S3 serves it."""
        name = name or unique_bucket_name("vb-garage")
        # Right after `layout apply` the new layout may still be propagating: retry.
        wait_until(
            lambda: (
                self.cli("bucket", "create", name, check=False).returncode == 0
                or self._bucket_exists_cli(name)
            ),
            timeout=timeout,
            what=f"garage bucket create {name}",
        )
        self.cli(
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            self.key_id,
        )
        s3 = self.client()
        wait_until(
            lambda: s3.head_bucket(Bucket=name) is not None,
            timeout=timeout,
            what=f"HeadBucket {name}",
        )
        return name

    def _bucket_exists_cli(self, name: str) -> bool:
        return self.cli("bucket", "info", name, check=False).returncode == 0

    def create_key(self, name: str | None = None) -> S3Credentials:
        """A new key with no permission on any bucket (for access-denied tests)."""
        out = self.cli(
            "json-api",
            "CreateKey",
            json.dumps({"name": name or unique_bucket_name("key")}),
        )
        key = json.loads(out.stdout)
        return S3Credentials(key["accessKeyId"], key["secretAccessKey"])

    def client(self, access_key: str | None = None, secret_key: str | None = None, **cfg: Any):
        """boto3 S3 client (path style, region "garage"), with the harness key by default."""
        client = _s3_client(
            self.endpoint,
            self.region,
            access_key or self.access_key,
            secret_key or self.secret_key,
            **cfg,
        )
        self._clients.add(client)
        return client

    @property
    def credentials(self) -> S3Credentials:
        return S3Credentials(self.access_key, self.secret_key)

    def stop(self) -> None:
        """Close the harness's S3 connections, then stop Garage.

        Garage's graceful shutdown waits for open HTTP keep-alive connections, so
        clients are closed first and SIGKILL follows after a few seconds anyway.
        """
        for client in list(self._clients):
            client.close()
        if self.proc is not None:
            self.proc.stop(timeout=3)

    def __enter__(self) -> GarageServer:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""


def s3_params(
    server: MotoServer | GarageServer,
    bucket: str,
    *,
    path: str = "valkey",
    credentials: S3Credentials | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The `s3` section of the agent's `configure` params for a bucket on `server`."""
    creds = credentials or server.credentials
    params: dict[str, Any] = {
        "endpoint": server.endpoint,
        "bucket": bucket,
        "path": path,
        "region": server.region,
        "access-key": creds.access_key,
        "secret-key": creds.secret_key,
        "s3-uri-style": "path",
    }
    params.update(extra)
    return params


def configure_params(
    valkey: ValkeyServer,
    s3: MotoServer | GarageServer | None,
    bucket: str | None = None,
    *,
    cluster: str = "testmodel.valkey",
    unit: str = "valkey/0",
    path: str = "valkey",
    credentials: S3Credentials | None = None,
    s3_extra: dict[str, Any] | None = None,
    source: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Params of a `configure` request for `valkey` and a bucket on `s3` (docs/protocol.md).

    `s3=None` gives a configuration without storage. `s3_extra` adds or overrides keys of
    the `s3` section; `source` sets `valkey.source` (`auto`, `native`, `cli`; unset means
    the agent's default); `extra` adds top-level sections such as `backup`.
    """
    params: dict[str, Any] = {
        "cluster": cluster,
        "unit": unit,
        "valkey": valkey.connection_params(),
    }
    if source is not None:
        params["valkey"]["source"] = source
    if s3 is not None:
        if bucket is None:
            bucket = s3.bucket if isinstance(s3, GarageServer) else s3.create_bucket()
        params["s3"] = s3_params(s3, bucket, path=path, credentials=credentials, **(s3_extra or {}))
    params.update(extra)
    return params
