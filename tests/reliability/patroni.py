"""A PostgreSQL cluster run by Patroni, with etcd as its consensus store, on loopback.

Debian's packages (`patroni`, `etcd-server`; `.ci/run` installs them): one etcd, and per
cluster two Patroni nodes, each running a PostgreSQL 15 (the Debian binaries) that Patroni
initialises, starts and, when the leader disappears, promotes. As root, etcd and Patroni run
as `postgres` (PostgreSQL refuses root). Every port is a free loopback one; everything lives in
a temporary directory (tmpfs when there is one) removed at the end.

Timing, as DESIGN.md measured it: `ttl: 10, loop_wait: 1, retry_timeout: 4`, so a leader that
dies (Patroni and postmaster killed) loses its key within 10 s and the replica takes over.
`synchronous: True` turns on Patroni's `synchronous_mode`: Patroni names the replica in
`synchronous_standby_names`, so with `synchronous_commit = on` (the default) a commit returns
only once the replica has it, and Patroni promotes only a synchronous replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.clusters import PG_BIN, missing_postgres_user
from tests.serving import LOOPBACK
from tests.support import free_port

PATRONI = shutil.which("patroni") or "/usr/bin/patroni"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def patroni_unavailable() -> str | None:
    """None when Patroni + etcd can run here; otherwise why not (a skip reason)."""
    if not os.access(PATRONI, os.X_OK) or not os.access(ETCD, os.X_OK):
        return "patroni / etcd not installed (apt-get install -y patroni etcd-server)"
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN}"
    return missing_postgres_user("Patroni")


def _spawn(command: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Run `command` as `postgres` when we are root, as its own process (not under runuser,
    which would stand between us and it: a SIGKILL must reach the program itself)."""
    as_postgres: dict[str, object] = {}
    if os.geteuid() == 0:
        as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["HOME"] = str(cwd)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=cwd,
            env=env,
            **as_postgres,  # type: ignore[call-overload]
        )


def own(path: Path) -> None:
    """Give `path` to `postgres` when we are root (it runs etcd, Patroni, PostgreSQL)."""
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _base() -> Path:
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path("/tmp")
    base = Path(tempfile.mkdtemp(prefix="tutorials-patroni-", dir=parent))
    base.chmod(0o755)
    own(base)
    return base


def _get_json(url: str, timeout: float = 2) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            loaded = json.loads(answer.read())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


@dataclass
class Etcd:
    base: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    def start(self, within: float = 30) -> None:
        data = self.base / "etcd"
        client = f"http://{self.endpoint}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        command = [
            ETCD, "--name", "e1", "--data-dir", str(data),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"e1={peer}", "--log-level", "warn",
        ]  # fmt: skip
        self.process = _spawn(command, self.base / "etcd.log", self.base)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            health = _get_json(f"{client}/health")
            if health is not None and health.get("health") == "true":
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not start:\n{_tail(self.base / 'etcd.log')}")

    def stop(self) -> None:
        _stop(self.process)


@dataclass
class PatroniNode:
    name: str
    base: Path
    rest_port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base / f"{self.name}-data"

    @property
    def log_file(self) -> Path:
        return self.base / f"{self.name}.log"

    def configure(self, scope: str, etcd: Etcd, password: str, synchronous: bool) -> Path:
        sockets = self.base / f"{self.name}-sock"
        sockets.mkdir()
        own(sockets)
        config = {
            "scope": scope,
            "name": self.name,
            "log": {"level": "WARNING"},
            "restapi": {
                "listen": f"{LOOPBACK}:{self.rest_port}",
                "connect_address": f"{LOOPBACK}:{self.rest_port}",
            },
            "etcd3": {"hosts": etcd.endpoint},
            "watchdog": {"mode": "off"},
            "bootstrap": {
                "dcs": {
                    "ttl": 10,
                    "loop_wait": 1,
                    "retry_timeout": 4,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": synchronous,
                    "postgresql": {
                        "use_pg_rewind": False,
                        "parameters": {
                            "max_connections": 200,
                            "wal_keep_size": "128MB",
                            "synchronous_commit": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
                "pg_hba": [
                    "local all all trust",
                    f"host replication replicator {LOOPBACK}/32 scram-sha-256",
                    f"host all all {LOOPBACK}/32 scram-sha-256",
                ],
            },
            "postgresql": {
                "listen": f"{LOOPBACK}:{self.pg_port}",
                "connect_address": f"{LOOPBACK}:{self.pg_port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.base / f"{self.name}-pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": password},
                    "replication": {"username": "replicator", "password": password},
                },
                "parameters": {"unix_socket_directories": str(sockets)},
            },
        }
        path = self.base / f"{self.name}.yml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        own(path)
        return path

    def start(self, config: Path) -> None:
        self.process = _spawn([PATRONI, str(config)], self.log_file, self.base)

    def state(self) -> dict[str, object] | None:
        """Patroni's view of this node (`role`: master / replica, `state`: running ...)."""
        return _get_json(f"http://{LOOPBACK}:{self.rest_port}/patroni", timeout=1)

    def is_leader(self) -> bool:
        state = self.state()
        return state is not None and state.get("role") in ("master", "primary")

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def kill(self) -> None:
        """The machine dies: Patroni and its postmaster killed at once (SIGKILL)."""
        postmaster = self.postmaster_pid()
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self) -> None:
        """Patroni stops its PostgreSQL on SIGTERM; whatever is left is killed."""
        postmaster = self.postmaster_pid()
        _stop(self.process, timeout=20)
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)


@dataclass
class PatroniCluster:
    """Two Patroni nodes of one scope: a leader and a streaming replica."""

    base: Path
    nodes: list[PatroniNode]
    password: str
    scope: str

    @classmethod
    def start(cls, etcd: Etcd, base: Path, *, synchronous: bool) -> PatroniCluster:
        scope = f"tutorials-{uuid.uuid4().hex[:8]}"
        password = secrets.token_urlsafe(16)
        nodes = [PatroniNode(f"node{index}", base) for index in (1, 2)]
        cluster = cls(base, nodes, password, scope)
        for index, node in enumerate(nodes):
            node.start(node.configure(scope, etcd, password, synchronous))
            if index == 0:
                time.sleep(0.5)  # the first one bootstraps; the other becomes its replica
        return cluster

    def wait_ready(self, within: float = 60) -> PatroniNode:
        """Until one node leads and the other replicates (running); the leader."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            members = _get_json(f"http://{LOOPBACK}:{self.nodes[0].rest_port}/cluster") or {}
            found = members.get("members")
            if isinstance(found, list) and len(found) == 2:
                roles = {m.get("name"): (m.get("role"), m.get("state")) for m in found}
                leaders = [n for n, (role, state) in roles.items() if role == "leader"]
                replicas = [
                    n
                    for n, (role, state) in roles.items()
                    if role in ("replica", "sync_standby") and state in ("running", "streaming")
                ]
                if leaders and replicas and roles[leaders[0]][1] == "running":
                    return next(node for node in self.nodes if node.name == leaders[0])
            time.sleep(0.2)
        logs = "\n".join(_tail(node.log_file) for node in self.nodes)
        raise RuntimeError(f"the Patroni cluster did not come up in {within} s:\n{logs}")

    def url(self, database: str, attrs: str = "read-write") -> str:
        """A multi-host URL naming both nodes: libpq (and asyncpg) try each in turn and keep
        the one that matches `target_session_attrs`."""
        hosts = ",".join(f"{LOOPBACK}:{node.pg_port}" for node in self.nodes)
        return (
            f"postgresql://postgres:{self.password}@{hosts}/{database}?target_session_attrs={attrs}"
        )

    def node_dsn(self, node: PatroniNode, database: str) -> str:
        return f"postgresql://postgres:{self.password}@{LOOPBACK}:{node.pg_port}/{database}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _stop(process: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return f"--- {path.name}\n" + path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def new_base() -> Path:
    return _base()


#: Every replication-cutting rule carries this comment, so one a killed run left is found.
CUT_COMMENT = "tutorials-failover-cut"


def _cut_rule(leader_port: int, receiver_port: int) -> list[str]:
    return [
        "INPUT", "-i", "lo", "-p", "tcp", "--sport", str(leader_port),
        "--dport", str(receiver_port), "-m", "comment", "--comment", CUT_COMMENT, "-j", "DROP",
    ]  # fmt: skip


def remove_stale_cuts() -> None:
    """Delete replication cuts a killed run left behind (ours only, by their comment)."""
    listed = subprocess.run(
        ["iptables", "-w", "5", "-S", "INPUT"], capture_output=True, text=True, timeout=30
    )
    for line in listed.stdout.splitlines():
        if f"--comment {CUT_COMMENT}" in line:
            spec = line.replace("-A INPUT", "INPUT", 1).split()
            subprocess.run(["iptables", "-w", "5", "-D", *spec], capture_output=True, timeout=30)


@contextlib.contextmanager
def replication_cut(leader_port: int, receiver_port: int) -> Iterator[None]:
    """The leader's WAL stops reaching the replica (its packets to the WAL receiver's port are
    dropped); everything else, clients included, goes on. Always undone."""
    rule = _cut_rule(leader_port, receiver_port)
    subprocess.run(["iptables", "-w", "5", "-I", *rule], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "5", "-D", *rule], check=True, capture_output=True)
