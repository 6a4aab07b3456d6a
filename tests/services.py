"""Real services on loopback for the cluster tests: an S3-protocol server (moto in server mode),
a PostgreSQL server, an `mlflow server` whose backend store is a database on it, and a Ray
cluster of `ray start` nodes. Each runs in its own process group
(session) and is stopped by killing that group, so a failing test leaves nothing running and
nothing outside the group is touched (`ray stop` would stop every Ray on the machine).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import pytest

BIN = os.path.dirname(sys.executable)  # the venv's bin: ray, mlflow, moto_server, understudy


_PORTS_GIVEN: set[int] = set()
_PORT_CHOICE = random.SystemRandom()


def free_port() -> int:
    """A port no socket holds now, never given before in this process, from between Ray's worker
    ports (10002-19999) and the kernel's ephemeral range (32768 up). A port from the ephemeral
    range (what binding port 0 gives) can be handed again to another socket, an outgoing
    connection or a server bound to port 0, before the server it was chosen for binds it: the
    two-node tests choose the worker's ports while the head starts dozens of sockets."""
    for _ in range(1000):
        port = _PORT_CHOICE.randrange(20000, 32768)
        if port in _PORTS_GIVEN:
            continue
        try:
            for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                with socket.socket(family) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free port between 20000 and 32767")


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: str | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{_tail(log)}")
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001  (not up yet)
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s\n{_tail(log)}")


def _tail(path: str | None, lines: int = 40) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return reply.status == 200


@contextmanager
def process_group(cmd: list[str], env: dict, log: str, cwd: str | None = None, grace: float = 5.0,
                  stop_signal: int = signal.SIGTERM):
    """Run `cmd` as the leader of a new session; on exit, `stop_signal` then SIGKILL the group."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
    try:
        yield proc
    finally:
        kill_group(proc, grace, stop_signal)


def kill_group(proc: subprocess.Popen, grace: float, stop_signal: int = signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, stop_signal)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # children may outlive the leader: kill whatever is left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=5)


# ---- a gate in front of a server, to take it off the network and back ------------------------

class TcpGate:
    """Forwards a loopback port to a server's port. `close()` stops listening and cuts every
    connection, so clients see what they see when that server stops (connection refused);
    `open()` listens again on the same port. The server behind it keeps running and keeps
    what it holds (a stopped moto server would lose its buckets)."""

    def __init__(self, target_port: int):
        import threading

        self.target_port, self.port = target_port, free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = None
        self.open()

    def open(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


# ---- S3 (moto server) ------------------------------------------------------------------------

@dataclass
class S3Server:
    endpoint: str
    env: dict  # AWS_* settings a client needs (dummy credentials: moto accepts any)
    proc: subprocess.Popen | None = None  # the server process (e.g. to stop it for a while)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> str:
        name = f"understudy-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def moto_server(workdir: str, check_credentials: bool = False):
    """moto in server mode on a free loopback port. By default it accepts any credentials;
    check_credentials=True makes it refuse keys it does not know, as S3 does."""
    port = free_port()
    log = os.path.join(workdir, f"moto-{port}.log")
    env = dict(os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {}))
    cmd = [os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with process_group(cmd, env, log) as proc:
        endpoint = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{endpoint}/moto-api/"), 60, "moto server", proc, log)
        yield S3Server(endpoint, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                  "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}, proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-protocol server (moto) for the whole session."""
    with moto_server(str(tmp_path_factory.mktemp("moto"))) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process talks to the moto server through the standard AWS_* variables."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


# ---- PostgreSQL ------------------------------------------------------------------------------

def postgres_program(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian's `postgresql` package puts it
    (`./dev setup` installs it)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"PostgreSQL's `{name}` is not installed (neither on PATH nor in "
                           "/usr/lib/postgresql/*/bin): run ./dev setup, which installs the server")
    return found


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str

    def database(self, name: str) -> str:
        """A database of this name (created if missing), as a SQLAlchemy URI for `mlflow server`."""
        import psycopg

        # autocommit: CREATE DATABASE runs outside a transaction
        with psycopg.connect(host=self.host, port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as db:
            if db.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
                db.execute(f'create database "{name}"')
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def database_for(self, workdir: str) -> str:
        """The database of a workdir: the same workdir again, the same database (and runs)."""
        return self.database("mlflow_" + hashlib.sha1(os.path.abspath(workdir).encode()).hexdigest()[:12])


def query(uri: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of a query straight from a PostgreSQL database (not through MLflow)."""
    import psycopg

    with psycopg.connect(uri) as db:
        return db.execute(sql, params).fetchall()


@contextmanager
def postgres_server(workdir: str):
    """A throwaway PostgreSQL cluster: initdb into a fresh folder, the server on a free loopback
    port with its socket in that folder, trust authentication for loopback only. PostgreSQL
    refuses to run as root, so as root it runs as the `postgres` user (or nobody)."""
    as_user: list[str] = []
    user = None
    if os.geteuid() == 0:
        user = "postgres" if _user_exists("postgres") else "nobody"
        as_user = [shutil.which("runuser") or "runuser", "-u", user, "--"]
    # Not under pytest's tmp folders: those are private to root, and the server user must write here.
    data = tempfile.mkdtemp(prefix="uspg-", dir="/tmp")
    if user:
        shutil.chown(data, user=user)
    log = os.path.join(workdir, "postgres.log")
    try:
        init = subprocess.run([*as_user, postgres_program("initdb"), "-D", f"{data}/db", "-U", "understudy",
                               "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C"],
                              capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stdout}{init.stderr}")
        port = free_port()
        cmd = [*as_user, postgres_program("postgres"), "-D", f"{data}/db", "-h", "127.0.0.1",
               "-p", str(port), "-k", data,
               # a throwaway cluster: durability is not needed, speed is
               "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for clients to leave).
        with process_group(cmd, dict(os.environ), log, stop_signal=signal.SIGINT) as proc:
            server = PostgresServer("127.0.0.1", port, "understudy")
            wait_until(lambda: server.database("postgres"), 60, "postgres", proc, log)
            yield server
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL server for the whole session (the MLflow servers' backend store)."""
    with postgres_server(str(tmp_path_factory.mktemp("postgres"))) as server:
        yield server


# ---- mlflow server ---------------------------------------------------------------------------

@dataclass
class MlflowServer:
    uri: str
    backend_store_uri: str  # the server's database backend store (PostgreSQL)
    artifacts: str  # --artifacts-destination
    proc: subprocess.Popen
    log: str

    def wait_ready(self) -> "MlflowServer":
        wait_until(lambda: http_ok(f"{self.uri}/health"), 120, "mlflow server", self.proc, self.log)
        return self


@contextmanager
def mlflow_server(workdir: str, artifacts_destination: str, env: dict, backend_store_uri: str,
                  wait: bool = True, port: int | None = None):
    """`mlflow server` with a database backend store (`backend_store_uri`, e.g.
    `postgres.database_for(workdir)`, as in k8s/mlflow.yaml) and proxied artifacts on
    `artifacts_destination`. wait=False returns at once (call wait_ready() later) so other
    services can start meanwhile. The same database and port again: the same server back after
    it went away."""
    port = port or free_port()
    log = os.path.join(workdir, "mlflow-server.log")
    cmd = [os.path.join(BIN, "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", backend_store_uri,
           "--artifacts-destination", artifacts_destination]
    # No GenAI job runners: they are several extra processes this platform does not use.
    env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with process_group(cmd, env, log, cwd=workdir) as proc:
        server = MlflowServer(f"http://127.0.0.1:{port}", backend_store_uri, artifacts_destination, proc, log)
        yield server.wait_ready() if wait else server


# ---- a Ray cluster of `ray start` nodes ------------------------------------------------------

@dataclass
class RayCluster:
    gcs_address: str
    dashboard_url: str
    temp_dir: str
    env: dict
    logs: list = field(default_factory=list)

    def ray(self, *args: str, timeout: float = 120, cwd: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """The `ray` CLI against this cluster (by default with the nodes' environment)."""
        return subprocess.run([os.path.join(BIN, "ray"), *args], env=env or self.env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def nodes(self) -> list[dict]:
        out = self.ray("list", "nodes", "--address", self.dashboard_url, "--format", "json",
                       timeout=60)
        return json.loads(out.stdout) if out.returncode == 0 else []

    def kill_raylet(self, node: str = "w") -> list[int]:
        """SIGKILL the raylet of a worker node (by its temp dir), as when its machine dies."""
        killed = []
        for pid, cmdline in _processes_with(f"{self.temp_dir}/{node}/".encode()):
            if b"raylet" in cmdline.split(b"\0")[0]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    def add_worker(self, node: str, cpus: int, resources: dict | None = None) -> subprocess.Popen:
        """One more worker node (a replacement, as Kubernetes starts a new pod); stopped with
        the cluster's other processes at its end."""
        log = os.path.join(self.temp_dir, f"{node}.log")
        self.logs.append(log)
        cmd = _worker_cmd(self.gcs_address, cpus, resources or {}, f"{self.temp_dir}/{node}")
        with open(log, "ab") as out:
            return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)


def _node_ports() -> list[str]:
    # Two raylets share one machine: every port a node opens must differ between them.
    return ["--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--node-manager-port", str(free_port()),
            "--object-manager-port", str(free_port())]


COMMON_NODE_ARGS = ["--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                    "--object-store-memory", str(200 * 1024 ** 2)]


def _worker_cmd(gcs_address: str, cpus: int, resources: dict, temp_dir: str) -> list[str]:
    return [os.path.join(BIN, "ray"), "start", "--address", gcs_address, "--num-cpus", str(cpus),
            "--resources", json.dumps(resources), "--temp-dir", temp_dir, *COMMON_NODE_ARGS, *_node_ports()]


@contextmanager
def ray_cluster(env: dict, head_cpus: int, worker_cpus: int, worker_resources: dict):
    """A head and one worker node, each `ray start --block` in its own process group, on
    127.0.0.1. Each node gets its own temp dir, as on two machines: with a shared one, a
    node's runtime-env cleanup deletes the other node's copy of the job's working dir. (Short
    paths: Ray's Unix sockets have a length limit.)"""
    temp_dir = tempfile.mkdtemp(prefix="usray-", dir="/tmp")
    gcs, dashboard = free_port(), free_port()
    head = [os.path.join(BIN, "ray"), "start", "--head", "--port", str(gcs),
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
            "--num-cpus", str(head_cpus), "--temp-dir", f"{temp_dir}/h", *COMMON_NODE_ARGS, *_node_ports()]
    cluster = RayCluster(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", temp_dir, env,
                         [os.path.join(temp_dir, "head.log"), os.path.join(temp_dir, "worker.log")])
    try:
        with process_group(head, env, cluster.logs[0]) as head_proc:
            wait_until(lambda: http_ok(f"{cluster.dashboard_url}/api/version"), 120,
                       "ray head (dashboard)", head_proc, cluster.logs[0])
            with _joined_worker(cluster, worker_cpus, worker_resources):
                yield cluster
    finally:
        _kill_leftovers(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def _joined_worker(cluster: RayCluster, cpus: int, resources: dict, attempts: int = 2):
    """The worker node, started until it joins (at most `attempts` times, as Kubernetes restarts
    a pod whose `ray start` failed). A failed start is not hidden: it is a warning in the test
    summary, with the node's own logs, and the last one is the error."""
    for attempt in range(1, attempts + 1):
        node_dir = f"{cluster.temp_dir}/w"
        stack = ExitStack()
        proc = stack.enter_context(process_group(
            _worker_cmd(cluster.gcs_address, cpus, resources, node_dir), cluster.env, cluster.logs[1]))
        try:
            wait_until(lambda: len([n for n in cluster.nodes() if n["state"] == "ALIVE"]) == 2,
                       90, "ray worker node", proc, cluster.logs[1])
            break
        except (RuntimeError, TimeoutError) as failed:
            stack.close()
            _kill_leftovers(node_dir)
            report = f"{failed}\n{_node_logs(cluster.temp_dir)}"
            shutil.rmtree(node_dir, ignore_errors=True)
            if attempt == attempts:
                raise RuntimeError(f"ray worker node: no start of {attempts} joined\n{report}") from None
            warnings.warn(f"ray worker node: start {attempt} of {attempts} failed, starting it again\n"
                          f"{report}", stacklevel=2)
    with stack:
        yield proc


def _node_logs(temp_dir: str, lines: int = 15) -> str:
    """The tails of the logs that say why a node did not join: its raylet's and the GCS's."""
    paths = sorted(glob.glob(f"{temp_dir}/w/session_2*/logs/raylet.*")
                   + glob.glob(f"{temp_dir}/h/session_2*/logs/gcs_server.*"))
    return "\n".join(f"--- {path}\n{_tail(path, lines)}" for path in paths)


def _processes_with(needle: bytes):
    """(pid, command line) of every process whose command line holds `needle`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline:
            yield int(pid), cmdline


def _kill_leftovers(temp_dir: str) -> None:
    """Ray processes of this cluster that left the process groups: found by the cluster's
    own temp dir in their command line, nothing else."""
    for pid, _ in _processes_with(temp_dir.encode()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
