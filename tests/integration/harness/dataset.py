"""Deterministic test datasets and a way to prove two servers hold the same one.

`load_dataset` fills several databases with every core data type in both their compact
and their large encodings (listpack/intset vs. quicklist/hashtable/skiplist), binary keys
and values, integers, streams with a consumer group, and keys with absolute expiry times
far in the future, so an RDB round trip exercises most of the format. Values are mostly
random bytes (incompressible: the RDB is about `size_mb`) plus some repetitive text.

`dataset_fingerprint` captures what must survive a backup and restore: `DEBUG DIGEST`
(checked on Valkey 8.1, Valkey 9.1 and Redis 7.0 to cover every database, expiry
presence included, and to give equal digests for equal data across those versions),
per-db key/expiry counts, and per key its `DEBUG DIGEST-VALUE`, type and absolute
`PEXPIRETIME`, which make a mismatch readable.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

MiB = 1024 * 1024

#: Absolute expiry for TTL keys: 2100-01-01T00:00:00Z in ms. Absolute so that the
#: dataset (and PEXPIRETIME) is identical on every run and after a restore.
FAR_FUTURE_MS = 4_102_444_800_000

ClientFactory = Callable[[int], Any]  # db -> valkey.Valkey


class _HasClient(Protocol):
    def client(self, db: int = 0, **kwargs: Any) -> Any: ...


@dataclass
class DatasetInfo:
    """What `load_dataset` wrote: key counts per db and approximate payload bytes."""

    seed: int
    keys_per_db: dict[int, int] = field(default_factory=dict)
    payload_bytes: int = 0


class _Writer:
    """Writes one db's share of the dataset through non-transactional pipelines.

    Commands are flushed every `limit` commands or ~1 MiB. `budget` is this db's byte
    target; each type gets a share of it and stops once the running byte count passes
    its share.
    """

    SHARES: ClassVar[dict[str, float]] = {
        "bin": 0.45, "text": 0.08, "list": 0.12, "hash": 0.12,
        "set": 0.07, "zset": 0.08, "stream": 0.08,
    }  # fmt: skip
    WORDS = (b"valkey", b"backup", b"snapshot", b"stream", b"object", b"store", b"rdb")

    def __init__(self, client: Any, budget: int, rng: random.Random, limit: int = 500):
        self.client = client
        self.pipe = client.pipeline(transaction=False)
        self.budget = budget
        self.rng = rng
        self.limit = limit
        self.pending = 0
        self.pending_bytes = 0
        self.written = 0
        self.keys = 0

    def add(self, *args: Any, size: int = 0) -> None:
        self.pipe.execute_command(*args)
        self.pending += 1
        self.pending_bytes += size
        self.written += size
        if self.pending >= self.limit or self.pending_bytes >= MiB:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.pipe.execute()
            self.pending = 0
            self.pending_bytes = 0

    def target(self, kind: str) -> int:
        return self.written + int(self.budget * self.SHARES[kind])

    def blob(self, lo: int, hi: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def strings(self) -> None:
        """Binary values (some under binary key names, some expiring), ints, text."""
        rng, target, i = self.rng, self.target("bin"), 0
        while self.written < target:
            key = b"bin:%d" % i if i % 7 else b"bin:\x00\xff\xfe:%d" % i
            value = self.blob(256, 4096)
            self.add("SET", key, value, size=len(value) + len(key))
            if i % 20 == 0:
                self.add("PEXPIREAT", key, FAR_FUTURE_MS + i)
            self.keys += 1
            i += 1
        edges = [0, -1, 1, 2**63 - 1, -(2**63), 10**12]
        for j in range(300):
            v = edges[j] if j < len(edges) else rng.randint(-(2**40), 2**40)
            self.add("SET", b"int:%d" % j, str(v))
        self.add("INCRBY", b"counter", 42)
        self.keys += 301
        target, i = self.target("text"), 0
        while self.written < target:
            value = b" ".join(rng.choice(self.WORDS) for _ in range(rng.randint(50, 400)))
            self.add("SET", b"text:%d" % i, value, size=len(value))
            self.keys += 1
            i += 1

    def lists(self) -> None:
        """Many small lists (listpack) and a few big ones (quicklist)."""
        for j in range(50):
            items = [self.blob(1, 40) for _ in range(self.rng.randint(1, 20))]
            self.add("RPUSH", b"list:small:%d" % j, *items, size=sum(map(len, items)))
        self.keys += 50
        self._grow("list", b"list:big:%d", "RPUSH", 20, lambda: [self.blob(50, 400)])

    def hashes(self) -> None:
        """Small hashes (listpack) and big ones (hashtable)."""
        for j in range(100):
            mapping: list[bytes] = []
            for f in range(self.rng.randint(1, 10)):
                mapping += [b"f%d" % f, self.blob(1, 60)]
            self.add("HSET", b"hash:small:%d" % j, *mapping)
        self.keys += 100
        counter = iter(range(10**9))
        self._grow(
            "hash",
            b"hash:big:%d",
            "HSET",
            10,
            lambda: [b"field:%d" % next(counter), self.blob(20, 300)],
        )

    def sets(self) -> None:
        """Intsets, small listpack sets and big hashtable sets."""
        rng = self.rng
        for j in range(30):
            self.add("SADD", b"set:int:%d" % j, *[rng.randint(-(10**9), 10**9) for _ in range(50)])
            self.add("SADD", b"set:small:%d" % j, *[rng.randbytes(8).hex() for _ in range(10)])
        self.keys += 60
        self._grow("set", b"set:big:%d", "SADD", 10, lambda: [self.blob(16, 200)])

    def zsets(self) -> None:
        """Small sorted sets with odd scores (±inf, 0) and big skiplist ones."""
        rng = self.rng
        for j in range(30):
            args: list[Any] = []
            for m in range(10):
                args += [rng.choice([rng.uniform(-1e6, 1e6), 0, "-inf", "+inf"]), b"m%d" % m]
            self.add("ZADD", b"zset:small:%d" % j, *args)
        self.keys += 30
        self._grow(
            "zset",
            b"zset:big:%d",
            "ZADD",
            10,
            lambda: [rng.uniform(-1e9, 1e9), self.blob(16, 160)],
        )

    def streams(self) -> None:
        """A stream with explicit (deterministic) ids and a consumer group, and a tiny one."""
        target, n, stream = self.target("stream"), 0, b"stream:events"
        while self.written < target or n == 0:
            payload = self.blob(50, 400)
            entry_id = f"{1_700_000_000_000 + n}-0"
            self.add("XADD", stream, entry_id, "n", n, "payload", payload, size=len(payload))
            n += 1
        self.add("XADD", b"stream:small", "1-1", "k", "v")
        self.flush()
        self.client.execute_command("XGROUP", "CREATE", stream, "readers", "0")
        self.keys += 2

    def expiries(self) -> None:
        """Far-future expiry on keys of every non-string type too."""
        for k in (
            b"list:small:0",
            b"hash:small:0",
            b"set:int:0",
            b"zset:small:0",
            b"stream:small",
        ):
            self.add("PEXPIREAT", k, FAR_FUTURE_MS)
        self.flush()

    def _grow(
        self, kind: str, key_fmt: bytes, cmd: str, per_key: int, item: Callable[[], list[Any]]
    ) -> None:
        """Send `cmd key item…` in batches of 200 items until `kind`'s share is spent.

        Each key receives `per_key` batches, so big collections span several keys.
        """
        target, j = self.target(kind), 0
        while self.written < target:
            args: list[Any] = []
            for _ in range(200):
                args += item()
            size = sum(len(a) if isinstance(a, bytes) else 8 for a in args)
            self.add(cmd, key_fmt % (j // per_key), *args, size=size)
            if j % per_key == 0:
                self.keys += 1
            j += 1


def _fill_db(client: Any, db: int, budget: int, rng: random.Random, info: DatasetInfo) -> None:
    w = _Writer(client, budget, rng)
    w.strings()
    w.lists()
    w.hashes()
    w.sets()
    w.zsets()
    w.streams()
    w.expiries()
    info.keys_per_db[db] = w.keys
    info.payload_bytes += w.written


def load_dataset(
    client_factory: ClientFactory | _HasClient,
    size_mb: float,
    dbs: Sequence[int] = (0, 1, 3),
    seed: int = 1,
) -> DatasetInfo:
    """Write a deterministic dataset of about `size_mb` MiB of RDB across `dbs`.

    `client_factory` is `db -> valkey.Valkey` or anything with `.client(db)` (such as a
    `ValkeyServer`). The same seed and size always give the same data (DEBUG DIGEST is
    equal). The first db gets half the bytes, the others share the rest. Existing keys
    are not flushed. Returns a DatasetInfo with the number of keys written per db.
    """
    factory = _as_factory(client_factory)
    budget = int(size_mb * MiB)
    rng = random.Random(seed)
    info = DatasetInfo(seed=seed)
    dbs = list(dbs)
    for idx, db in enumerate(dbs):
        share = (
            0.5 if len(dbs) > 1 and idx == 0 else (0.5 / (len(dbs) - 1) if len(dbs) > 1 else 1.0)
        )
        client = factory(db)
        try:
            _fill_db(client, db, int(budget * share), rng, info)
        finally:
            client.close()
    return info


def _as_factory(obj: ClientFactory | _HasClient) -> ClientFactory:
    if hasattr(obj, "client"):
        return lambda db: obj.client(db)  # type: ignore[union-attr]
    return obj  # type: ignore[return-value]


# --------------------------------------------------------------------------- fingerprint


@dataclass
class Fingerprint:
    """What a dataset looks like from outside, comparable across servers and versions.

    `digest` is DEBUG DIGEST (all dbs) or, for a logical fingerprint, "logical:<sha256>";
    `keyspace` maps db → (keys, keys with expiry); `keys` maps db → {key: (type, value
    digest, PEXPIRETIME or -1)}. Compare two fingerprints of the same mode.
    """

    digest: str
    keyspace: dict[int, tuple[int, int]]
    keys: dict[int, dict[bytes, tuple[str, str, int]]] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        same = self.digest == other.digest and self.keyspace == other.keyspace
        if self.keys is not None and other.keys is not None:
            same = same and self.keys == other.keys
        return same


def _digest(client: Any) -> str:
    raw = client.execute_command("DEBUG", "DIGEST")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def dataset_fingerprint(
    server: ClientFactory | _HasClient, *, per_key: bool = True, logical: bool = False
) -> Fingerprint:
    """Fingerprint the whole dataset of a server (every non-empty db).

    Default: `digest` is the server's DEBUG DIGEST and each key carries its
    DEBUG DIGEST-VALUE. That is exact and equal across Valkey 8.1 and 9.1, but Redis 7.0
    digests sorted-set scores differently from Valkey (same data, other digest), so
    compare a Redis 7 source with a Valkey target using `logical=True`: values are read
    back (GET, LRANGE, HGETALL, SMEMBERS, ZRANGE WITHSCORES as floats, XRANGE and stream
    groups) and hashed by the harness, and `digest` is a hash over all keys.

    `per_key=False` skips the per-key pass (DEBUG DIGEST and counts only) for very large
    datasets; the per-key pass costs a SCAN plus a few pipelined commands per key.
    """
    factory = _as_factory(server)
    c0 = factory(0)
    try:
        digest = "" if logical else _digest(c0)
        keyspace_info = c0.info("keyspace")
    finally:
        c0.close()
    keyspace = {
        int(name[2:]): (int(v["keys"]), int(v["expires"]))
        for name, v in keyspace_info.items()
        if name.startswith("db")
    }
    keys: dict[int, dict[bytes, tuple[str, str, int]]] | None = None
    if per_key or logical:
        keys = {}
        for db in sorted(keyspace):
            c = factory(db)
            try:
                keys[db] = _per_key(c, logical)
            finally:
                c.close()
    if logical:
        h = hashlib.sha256()
        for db in sorted(keys or {}):
            for k, (t, vd, exp) in sorted((keys or {})[db].items()):
                h.update(b"%d\0%s\0%s\0%s\0%d\n" % (db, k, t.encode(), vd.encode(), exp))
        digest = "logical:" + h.hexdigest()
    return Fingerprint(digest=digest, keyspace=keyspace, keys=keys)


def _per_key(client: Any, logical: bool) -> dict[bytes, tuple[str, str, int]]:
    names = sorted(client.scan_iter(count=1000))
    out: dict[bytes, tuple[str, str, int]] = {}
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for k in chunk:
            pipe.type(k)
            if not logical:
                pipe.execute_command("DEBUG", "DIGEST-VALUE", k)
            pipe.execute_command("PEXPIRETIME", k)
        res = pipe.execute()
        step = 2 if logical else 3
        for i, k in enumerate(chunk):
            row = res[step * i : step * i + step]
            t = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
            if logical:
                vd = _logical_value_digest(client, k, t)
            else:
                dv = row[1][0] if isinstance(row[1], list) else row[1]
                vd = dv.decode() if isinstance(dv, bytes) else str(dv)
            out[k] = (t, vd, int(row[-1]))
    return out


def _logical_value_digest(client: Any, key: bytes, type_: str) -> str:
    """A server-version-independent hash of one key's value."""
    if type_ == "string":
        value: Any = client.get(key)
    elif type_ == "list":
        value = client.lrange(key, 0, -1)
    elif type_ == "hash":
        value = sorted(client.hgetall(key).items())
    elif type_ == "set":
        value = sorted(client.smembers(key))
    elif type_ == "zset":
        value = [(m, repr(float(s))) for m, s in client.zrange(key, 0, -1, withscores=True)]
    elif type_ == "stream":
        entries = client.xrange(key)
        groups = sorted(
            (g["name"], g["last-delivered-id"], g["pending"], g["consumers"])
            for g in client.xinfo_groups(key)
        )
        value = (entries, groups)
    else:
        value = client.dump(key)
    return hashlib.sha256(repr(value).encode()).hexdigest()


def _key_diff(
    db: int, k: bytes, e: tuple[str, str, int] | None, a: tuple[str, str, int] | None
) -> str:
    name = f"db{db} {k[:60]!r}"
    if a is None:
        return f"{name}: missing (expected {e[0] if e else '?'})"
    if e is None:
        return f"{name}: unexpected {a[0]}"
    what = []
    if e[0] != a[0]:
        what.append(f"type {e[0]}→{a[0]}")
    if e[1] != a[1]:
        what.append("value differs")
    if e[2] != a[2]:
        what.append(f"pexpiretime {e[2]}→{a[2]}")
    return f"{name}: {', '.join(what)}"


def fingerprint_diff(expected: Fingerprint, actual: Fingerprint, *, limit: int = 20) -> list[str]:
    """Human-readable differences between two fingerprints (empty when equal)."""
    lines: list[str] = []
    if expected.digest != actual.digest:
        lines.append(f"DEBUG DIGEST: expected {expected.digest}, got {actual.digest}")
    for db in sorted(set(expected.keyspace) | set(actual.keyspace)):
        e, a = expected.keyspace.get(db, (0, 0)), actual.keyspace.get(db, (0, 0))
        if e != a:
            lines.append(f"db{db}: expected {e[0]} keys / {e[1]} with expiry, got {a[0]} / {a[1]}")
    if expected.keys is None or actual.keys is None:
        return lines
    differing = [
        _key_diff(db, k, ek.get(k), ak.get(k))
        for db in sorted(set(expected.keys) | set(actual.keys))
        for ek, ak in [(expected.keys.get(db, {}), actual.keys.get(db, {}))]
        for k in sorted(set(ek) | set(ak))
        if ek.get(k) != ak.get(k)
    ]
    lines += differing[:limit]
    if len(differing) > limit:
        lines.append(f"… and {len(differing) - limit} more keys differ")
    return lines


def assert_same_dataset(
    expected: Fingerprint, actual: Fingerprint, *, what: str = "restored dataset"
) -> None:
    """Fail with a readable diff unless two fingerprints are equal."""
    diff = fingerprint_diff(expected, actual)
    if diff:
        raise AssertionError(f"{what} differs from the original:\n  " + "\n  ".join(diff))
