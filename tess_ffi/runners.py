"""Task runners of the flows: threads in the flow's process, or Dask (local or remote cluster).

``--runner thread`` (default) runs mapped tasks in a thread pool of the flow's process.
``--runner dask`` runs them on Dask through prefect-dask: a ``LocalCluster`` of worker
processes on 127.0.0.1 when no address is given, else the scheduler at ``--dask-address``
(``tcp://HOST:PORT``). Served deployments take the same choice from the environment of
``tess-ffi serve`` (``TESS_FFI_RUNNER``, ``TESS_FFI_DASK_ADDRESS``, ``TESS_FFI_WORKERS``),
because each flow run starts in a fresh process that imports the flow module.
"""

from __future__ import annotations

import importlib.util
import os

RUNNERS = ("thread", "dask")
ENV_RUNNER = "TESS_FFI_RUNNER"
ENV_DASK_ADDRESS = "TESS_FFI_DASK_ADDRESS"
ENV_WORKERS = "TESS_FFI_WORKERS"
DEFAULT_WORKERS = 2


def make_task_runner(runner: str = "thread", workers: int = DEFAULT_WORKERS, dask_address=None):
    """A Prefect task runner: ``thread`` (ThreadPoolTaskRunner) or ``dask`` (DaskTaskRunner).

    For ``dask`` without an address: a LocalCluster of ``workers`` single-threaded worker
    processes, scheduler and workers bound to 127.0.0.1 (the dashboard too, when Bokeh is
    installed). Workers inherit this process's environment (AWS_* keys for an S3 lake); the
    workers of a remote cluster need the same variables and this package installed.
    """
    runner = (runner or "thread").lower()
    if runner not in RUNNERS:
        raise ValueError(f"unknown task runner {runner!r}: use thread or dask")
    if runner == "thread":
        if dask_address:
            raise ValueError("--dask-address needs --runner dask")
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        if not str(dask_address).startswith(("tcp://", "tls://", "inproc://", "ucx://")):
            raise ValueError(f"bad --dask-address {dask_address!r}: expected tcp://HOST:PORT")
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={"n_workers": workers})


def prefect_api_url() -> str:
    """The Prefect API this process talks to: PREFECT_API_URL, else its ephemeral server.

    Task runs on Dask workers report to the Prefect API; worker processes must use the
    flow's API, or each would start (and wait for) an ephemeral server of its own.
    """
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide instance a flow run already started
    server.start()
    return server.api_url


def local_cluster(n_workers: int = DEFAULT_WORKERS, **kwargs):
    """A ``distributed.LocalCluster`` on 127.0.0.1 whose workers use this flow's Prefect API.

    Called by prefect-dask when the flow starts (so the API URL is known by then):
    ``n_workers`` single-threaded worker processes; the dashboard on 127.0.0.1:8787 when
    Bokeh is installed.
    """
    from distributed import LocalCluster

    env = dict(kwargs.pop("env", None) or {})
    env.setdefault("PREFECT_API_URL", prefect_api_url())
    has_bokeh = importlib.util.find_spec("bokeh") is not None
    options = {
        "n_workers": n_workers,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:8787" if has_bokeh else None,
        "env": env,
    }
    options.update(kwargs)
    return LocalCluster(**options)


def default_task_runner():
    """The task runner the environment asks for (threads with 2 workers when unset)."""
    workers = int(os.environ.get(ENV_WORKERS) or DEFAULT_WORKERS)
    address = os.environ.get(ENV_DASK_ADDRESS) or None
    runner = os.environ.get(ENV_RUNNER) or ("dask" if address else "thread")
    return make_task_runner(runner, workers, address)
