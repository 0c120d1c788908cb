"""A real container engine for integration tests: reuse one that answers, else start our own.

Two kinds, each on its own socket, run dir and data root: Docker's `dockerd`, and Podman's
Docker-compatible API service (`podman system service`), so the engine suites run on both.

Owns: finding an answering engine (DOCKER_HOST, then the project's test socket), starting
`dockerd` on the test socket, data root and pidfile when none answers, and stopping it again when
the last test session using it ends. Parallel pytest sessions coordinate through two fcntl locks
in the run dir: `engine.lock` (exclusive, held while probing/starting/stopping) and
`engine.users` (shared, held by every session for as long as it uses the test-socket engine).

`engine.started` records who started the engine: `owner` "tests" (a test session, or a bench
run that leases like one) or another owner such as "demo", whose engine must keep running after
it exits (the demo leaves its app up to be tried). A lease with another owner that reuses an
engine the tests started claims it, so the tests' session that started it leaves it running.

Must not: stop an engine the test sessions did not start (only one recorded in `engine.started`
with owner "tests" by this code, whose pid still matches the pidfile, is ever signalled); start a
second dockerd while one answers or is still booting (two engines on one machine fight over the
bridge and iptables); install packages (scripts/install.sh does, before the tests run).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

DEFAULT_RUN_DIR = Path("/run/reconciler-test")
DEFAULT_DATA_ROOT = Path("/var/lib/reconciler-test/docker")
DOCKER, PODMAN = "docker", "podman"  # the engines the tests run against
# Environment overrides, so the start path can be exercised beside an engine that already runs
# (e.g. in a separate network namespace) without touching it.
RUN_DIR_ENV = "RECONCILER_TEST_RUN_DIR"
DATA_ROOT_ENV = "RECONCILER_TEST_DATA_ROOT"
PODMAN_HOST_ENV = "RECONCILER_TEST_PODMAN_HOST"  # an answering Podman API to use instead

TESTS = "tests"  # the owner whose engine the last test session's release stops
_LOCK_WAIT = 180.0  # a peer may be booting an engine (up to the start timeout) or stopping one
_HANDED_OVER: list[subprocess.Popen[bytes]] = []  # dockerds another session will stop


class EngineUnavailable(Exception):
    """No engine answers and this machine cannot start one (not root, dockerd missing)."""


class EngineStartError(Exception):
    """dockerd was started but did not answer in time, or died; the message has its log tail."""


@dataclass(frozen=True)
class EngineLayout:
    """Where the test engine lives: socket, pidfile, data root, its own exec root and locks.

    `kind` PODMAN: Podman's Docker-compatible API service (`podman system service`), rootful,
    with its own storage under the data root and its own containers.conf, registries.conf and
    network config dir under the run dir, so nothing of the machine's Podman is touched.
    """

    run_dir: Path = DEFAULT_RUN_DIR
    data_root: Path = DEFAULT_DATA_ROOT
    kind: str = DOCKER

    @classmethod
    def from_env(cls, env: Mapping[str, str], kind: str = DOCKER) -> EngineLayout:
        run_dir = Path(env.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)
        data_root = Path(env.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)
        if kind == PODMAN:  # beside the dockerd's, never inside its data root
            return cls(run_dir=run_dir / PODMAN, data_root=data_root.parent / PODMAN, kind=kind)
        return cls(run_dir=run_dir, data_root=data_root)

    @property
    def program(self) -> str:
        """The engine's executable, as it shows in /proc/PID/cmdline."""
        return "dockerd" if self.kind == DOCKER else "podman"

    @property
    def socket(self) -> Path:
        return self.run_dir / f"{self.kind}.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.kind}.pid"

    @property
    def exec_root(self) -> Path:
        # Its own exec root gives it its own containerd socket and runc state.
        return self.run_dir / "exec"

    @property
    def marker(self) -> Path:
        return self.run_dir / "engine.started"

    def argv(self) -> list[str]:
        """The command that runs the engine on our socket, storage and pidfile."""
        if self.kind == PODMAN:
            return [
                "podman",
                "--root",
                str(self.data_root / "root"),
                "--runroot",
                str(self.run_dir / "run"),
                "system",
                "service",
                "--time",
                "0",  # serve until stopped, not 5 s after the last request
                self.url,
            ]
        return self.dockerd_argv()

    def environment(self) -> dict[str, str]:
        """The engine process's environment: Podman's config files are named by variables."""
        if self.kind != PODMAN:
            return dict(os.environ)
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.run_dir / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.run_dir / "registries.conf"),
        }

    def write_config(self) -> None:
        """Podman's settings for this machine (see the module docstring); nothing for dockerd."""
        if self.kind != PODMAN:
            return
        (self.run_dir / "containers.conf").write_text(
            "[containers]\n"
            # Podman raises NOFILE and NPROC past what this sandbox allows ("error setting
            # rlimit type 7"): keep them at values it accepts.
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[network]\n"
            'network_backend = "netavark"\n'  # network aliases (DNS by container name)
            f'network_config_dir = "{self.data_root / "networks"}"\n'
            "[engine]\n"
            'events_logger = "file"\n'  # no journald here
        )
        # Registries on loopback speak plain HTTP, as Docker allows for 127.0.0.0/8.
        (self.run_dir / "registries.conf").write_text(
            'unqualified-search-registries = []\n[[registry]]\nlocation = "127.0.0.1"\n'
            "insecure = true\n"
        )

    def dockerd_argv(self) -> list[str]:
        return [
            "dockerd",
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "-H",
            self.url,
            "--pidfile",
            str(self.pidfile),
            # A network per app: the default pools hold only ~30 networks, too few for the
            # 100-app benchmark and for parallel test sessions (256 /24s here).
            "--default-address-pool",
            "base=10.213.0.0/16,size=24",
        ]


def answers(url: str, *, timeout: float = 3.0, from_env: bool = False) -> bool:
    """True when an engine at `url` answers /_ping (from_env: use DOCKER_* incl. TLS)."""
    if url.startswith("unix://"):  # TLS settings never apply to a unix socket
        return _ping_unix(url.removeprefix("unix://"), timeout=timeout)
    import docker

    client = None
    try:
        client = (
            docker.from_env(timeout=timeout)
            if from_env
            else docker.DockerClient(base_url=url, timeout=timeout)
        )
        return bool(client.ping())
    except Exception:  # any failure to talk means "does not answer"
        return False
    finally:
        if client is not None:
            client.close()


def _ping_unix(path: str, *, timeout: float) -> bool:
    # By hand: the SDK leaks its socket when connect() fails, which pytest reports as an error.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        except OSError:
            return False
    status, _, _ = reply.partition(b"\r\n")
    return status.split(b" ")[1:2] == [b"200"] and reply.endswith(b"OK")


@dataclass
class EngineLease:
    """One session's use of an engine; `release()` stops it if the tests started it and this is
    the last session using it."""

    url: str
    from_env: bool = False
    started_here: bool = False
    layout: EngineLayout | None = None
    owner: str = TESTS
    _users: IO[bytes] | None = field(default=None, repr=False)
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def release(self, *, stop_timeout: float = 60.0) -> bool:
        """Drop our use; returns True when this call stopped the engine."""
        if self._users is None or self.layout is None:
            return False
        layout, users = self.layout, self._users
        self._users = None
        with _locked(layout.run_dir / "engine.lock"):
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                users.close()
                self._hand_over()
                return False  # another session still uses it; the last one stops it
            try:
                if self.owner != TESTS:
                    self._hand_over()
                    return False  # started, or claimed, to keep running
                stopped = _stop_if_ours(layout, self._process, timeout=stop_timeout)
                if not stopped:
                    self._hand_over()  # claimed meanwhile (see _claim): it keeps running
                return stopped
            finally:
                users.close()

    def _hand_over(self) -> None:
        if self._process is not None:
            # The engine outlives this handle: keep it referenced, or Popen.__del__ warns
            # "still running" into whichever test happens to run the GC.
            _HANDED_OVER.append(self._process)
            self._process = None


def acquire(
    *,
    env: Mapping[str, str] | None = None,
    start_timeout: float = 60.0,
    owner: str = TESTS,
    kind: str = DOCKER,
) -> EngineLease:
    """An answering engine: DOCKER_HOST if it answers, else the test socket, else a new dockerd.

    `kind` PODMAN: RECONCILER_TEST_PODMAN_HOST if it answers, else Podman's test socket, else a
    new `podman system service` there (beside the dockerd: both can run on one machine).

    `owner` other than TESTS (e.g. "demo"): the engine keeps running after this lease, whether
    started here or reused (a test-started engine is then claimed: see the module docstring).
    Raises EngineUnavailable when none answers and none can be started here, EngineStartError
    when a started dockerd does not come up.
    """
    env = os.environ if env is None else env
    given = env.get(PODMAN_HOST_ENV if kind == PODMAN else "DOCKER_HOST", "")
    if given and answers(given, from_env=kind == DOCKER):
        return EngineLease(url=given, from_env=kind == DOCKER)

    layout = EngineLayout.from_env(env, kind)
    try:
        layout.run_dir.mkdir(parents=True, exist_ok=True)
        (layout.run_dir / "engine.lock").open("ab").close()
        users = (layout.run_dir / "engine.users").open("ab")
    except OSError as exc:
        if answers(layout.url):
            return EngineLease(url=layout.url)  # usable, but we cannot coordinate: never stop it
        raise EngineUnavailable(
            f"no {_name(layout)} answers at {layout.url} and its run dir is not usable here: {exc}"
        ) from exc

    try:
        with _locked(layout.run_dir / "engine.lock"):
            # Nobody holds users exclusively without engine.lock, so this does not block.
            fcntl.flock(users, fcntl.LOCK_SH)
            lease = EngineLease(url=layout.url, layout=layout, owner=owner, _users=users)
            if answers(layout.url):
                _claim(layout, owner)
                return lease
            booting = _live_engine_pid(layout)
            if booting is not None:
                # An engine that has not answered yet (ours from a crashed session, or anyone's):
                # wait for it rather than fight it with a second one.
                _wait_until_answers(layout, None, booting, timeout=start_timeout)
                _claim(layout, owner)
                return lease
            lease._process = _start(layout, owner=owner, timeout=start_timeout)
            lease.started_here = True
            return lease
    except BaseException:
        users.close()
        raise


def log_tail(path: Path, *, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# --- internals ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path, *, wait: float = _LOCK_WAIT) -> Iterator[None]:
    with path.open("ab") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EngineStartError(
                        f"{path}: still locked by another session after {wait:.0f}s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _claim(layout: EngineLayout, owner: str) -> None:
    """Make an engine the tests started keep running for `owner` (called under engine.lock)."""
    if owner == TESTS:
        return
    try:
        record = json.loads(layout.marker.read_text())
    except (OSError, ValueError):
        return  # started by hand or by someone else: never stopped by the tests anyway
    if isinstance(record, dict) and record.get("owner") == TESTS:
        layout.marker.write_text(json.dumps({**record, "owner": owner}))


def _start(layout: EngineLayout, *, owner: str, timeout: float) -> subprocess.Popen[bytes]:
    if os.geteuid() != 0:
        raise EngineUnavailable(
            f"no {_name(layout)} answers at {layout.url} and starting {layout.program} needs root"
        )
    if shutil.which(layout.program) is None:
        raise EngineUnavailable(
            f"no {_name(layout)} answers at {layout.url} and "
            f"{layout.program} is not installed (run scripts/install.sh as root)"
        )
    layout.data_root.mkdir(parents=True, exist_ok=True)
    layout.write_config()
    log_dir = Path(tempfile.mkdtemp(prefix=f"reconciler-{layout.program}-"))
    log_path = log_dir / f"{layout.program}.log"
    with log_path.open("wb") as log:
        # Own session: a Ctrl-C in pytest must not take the engine down mid-teardown.
        process = subprocess.Popen(
            layout.argv(),
            env=layout.environment(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = {"pid": process.pid, "log_dir": str(log_dir), "owner": owner}
    layout.marker.write_text(json.dumps(record))
    if layout.kind == PODMAN:  # `podman system service` writes no pidfile of its own
        layout.pidfile.write_text(f"{process.pid}\n")
    try:
        _wait_until_answers(layout, process, process.pid, timeout=timeout, log_path=log_path)
    except BaseException:
        # The error names the log; a failed start is stopped whoever asked for it.
        _stop_if_ours(layout, process, timeout=30.0, keep_log=True, owner=owner)
        raise
    return process


def _wait_until_answers(
    layout: EngineLayout,
    process: subprocess.Popen[bytes] | None,
    pid: int,
    *,
    timeout: float,
    log_path: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(layout.url, timeout=2.0):
            return
        if (process.poll() is not None) if process is not None else not _alive(pid):
            raise EngineStartError(
                f"{layout.program} (pid {pid}) exited before answering at {layout.url}; log "
                f"{log_path}:\n{log_tail(log_path) if log_path else '(not ours)'}"
            )
        time.sleep(0.2)
    raise EngineStartError(
        f"{layout.program} (pid {pid}) did not answer at {layout.url} within {timeout:.0f}s; log "
        f"{log_path}:\n{log_tail(log_path) if log_path else '(not ours)'}"
    )


def _stop_if_ours(
    layout: EngineLayout,
    process: subprocess.Popen[bytes] | None,
    *,
    timeout: float,
    keep_log: bool = False,
    owner: str = TESTS,
) -> bool:
    """Stop the engine recorded in the marker, if `owner` started it and it is still the one in
    the pidfile. Another owner's live engine keeps running, and its marker stays."""
    try:
        record = json.loads(layout.marker.read_text())
        pid = int(record.get("pid", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return False  # not started by this code: never ours to stop
    pidfile_pid = _read_pid(layout.pidfile)
    live = pid > 0 and (pidfile_pid in (None, pid)) and _alive(pid) and _runs(pid, layout.program)
    if process is not None and process.pid == pid:
        live = process.poll() is None
    # A marker without an owner predates owners: the demo and the tests wrote the same one.
    if live and record.get("owner") != owner:
        return False
    stopped = False
    if live:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, process, timeout=timeout):
            os.kill(pid, signal.SIGKILL)  # a hung shutdown must not hang the test session
            _wait_gone(pid, process, timeout=10.0)
        stopped = True
    elif process is not None:
        process.wait()
    layout.marker.unlink(missing_ok=True)
    if record.get("log_dir") and not keep_log:
        shutil.rmtree(record["log_dir"], ignore_errors=True)
    return stopped


def _wait_gone(pid: int, process: subprocess.Popen[bytes] | None, *, timeout: float) -> bool:
    if process is not None and process.pid == pid:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited already


def _runs(pid: int, program: str) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return Path(argv0.decode(errors="replace")).name == program


def _live_engine_pid(layout: EngineLayout) -> int | None:
    pid = _read_pid(layout.pidfile)
    return pid if pid is not None and _alive(pid) and _runs(pid, layout.program) else None


def _name(layout: EngineLayout) -> str:
    """How messages name the engine: Docker's test engine, or Podman's (with its variable)."""
    if layout.kind == PODMAN:
        return f"Podman API service (or {PODMAN_HOST_ENV})"
    return "Docker engine (or DOCKER_HOST)"
