"""Helpers of the platform tests: the real services on loopback, started and stopped by tests.

- `platform_config`: a `tess_ffi.platform.PlatformConfig` in a temporary folder with free
  ports (the tests run exactly the code of ``make up``/``make down``);
- `ServeProcess`: ``tess-ffi serve`` in a subprocess, stopped (with any flow-run process it
  left) by pid;
- `wait_flow_run`: bounded polling of a flow run through the Prefect API.

Every wait is bounded; every process started here is stopped here, by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from tess_ffi import platform

BIN = Path(sys.executable).parent
TESS_FFI = str(BIN / "tess-ffi")


def platform_config(root: Path) -> platform.PlatformConfig:
    """A platform in ``root`` on free loopback ports (never the defaults of ``make up``)."""
    prefect_port = platform.free_port()
    s3_port = platform.free_port({prefect_port})
    return platform.PlatformConfig(
        state_dir=root / "state",
        env_file=root / "tess-ffi.env",
        prefect_port=prefect_port,
        s3_port=s3_port,
        bucket="tess-test",
        prefix="lake",
    )


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an ``export K=V`` file (values written with shlex.quote)."""
    import shlex

    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out


def client_environ(env_file: Path, **extra: str) -> dict[str, str]:
    """This process's environment plus the platform's variables (for subprocesses)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("PREFECT_API_URL", None)
    env.update(read_env_file(env_file))
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run ``tess-ffi ARGS`` and return the completed process (text output)."""
    return subprocess.run(
        [TESS_FFI, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def stop_process_tree(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM a process we started, then any descendant it left; SIGKILL after ``timeout``."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


class ServeProcess:
    """``tess-ffi serve ARGS`` in a subprocess until the deployments exist on the server."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [TESS_FFI, "serve", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_for_deployments(self, client, names: list[str], timeout: float = 120) -> dict:
        """Deployments by name once all exist (they are created when serving starts)."""
        from prefect.exceptions import ObjectNotFound

        deadline = time.monotonic() + timeout
        found: dict = {}
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            for name in names:
                if name not in found:
                    with contextlib.suppress(ObjectNotFound):
                        found[name] = client.read_deployment_by_name(name)
            if len(found) == len(names):
                return found
            time.sleep(0.5)
        raise TimeoutError(f"deployments {names} not served after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            stop_process_tree(self.proc)


def wait_flow_run(client, flow_run_id, timeout: float = 240, poll: float = 1.0):
    """The flow run once it is in a final state (TimeoutError after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    flow_run_id = uuid.UUID(str(flow_run_id))
    while time.monotonic() < deadline:
        fr = client.read_flow_run(flow_run_id)
        if fr.state is not None and fr.state.is_final():
            return fr
        time.sleep(poll)
    raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout} s ({fr.state_name})")


def listening_addresses(pid: int) -> set[str]:
    """IP addresses a process (and its children) listens on with TCP."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    out = set()
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add(c.laddr.ip)
    return out
