"""A lease lock per partition, so two runs never ingest the same CCD at the same time.

The lock is a small JSON file ``{lake}/_locks/{partition.label}.json`` with the holder's
host, pid (and the pid's start time, so a reused pid is not mistaken for the holder),
run key, a random token and a heartbeat time that a background thread refreshes every
``heartbeat`` seconds. A second run fails fast with `LeaseHeld` (one line naming the holder).
A lock is *stale* and is taken over when its holder is on this host and no longer runs
(e.g. it was killed with SIGKILL, so an interrupted run can simply be started again; or it
is this very process and that run has ended), or when its heartbeat is older than
``stale_after`` seconds (a holder on another host that died).

Local lake: the file is created atomically with ``O_CREAT | O_EXCL``; checking a stale lock
and taking it over happen under an ``flock`` on ``{label}.json.guard``, so two runs cannot
both take over the same stale lock.

S3 lake: S3 has no atomic create through s3fs, so the lock is written and read back after
``settle`` seconds; of two runs that write within that window the last writer wins and the
other one sees the foreign token and stops. **Weakness**: a run that stalls for longer than
``settle`` between its check and its write can still overlap with another one. Publication
itself stays safe (each Delta commit is atomic, see ``lakehouse.store``), and the flow
checks that it still holds the lease right before publishing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from lakehouse.store import Lakehouse, LakehouseError, Partition

log = logging.getLogger("tess_ffi.lease")

#: a lease whose heartbeat is older than this is stale [s]
STALE_AFTER = 600.0
#: heartbeat period [s]
HEARTBEAT = 30.0
#: S3: wait before reading the lock back [s]
SETTLE = 1.0
#: tokens of the leases this process holds now (a lock of this pid with another token is a
#: leftover of a finished run of this process, e.g. one whose release failed)
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


class LeaseHeld(LakehouseError):
    """Another live run holds the partition's lease (one-line message naming it)."""


class LeaseLost(LakehouseError):
    """This run's lease was taken over by another run (ours had gone stale)."""


def _pid_start(pid: int) -> str | None:
    """Start time of a process (clock ticks since boot) from /proc, None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int, start: str | None) -> bool:
    """True when ``pid`` runs and is the same process (same start time where known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):
            return False
    except OSError:
        pass
    now = _pid_start(pid)
    return not (start and now and start != now)


class Lease:
    """The lease of one partition for one run; use as a context manager."""

    def __init__(
        self,
        lake: Lakehouse | str | None,
        partition: Partition,
        run_key: str,
        *,
        stale_after: float = STALE_AFTER,
        heartbeat: float = HEARTBEAT,
        settle: float = SETTLE,
    ) -> None:
        self.lake = lake if isinstance(lake, Lakehouse) else Lakehouse(lake)
        self.partition = partition
        self.run_key = run_key
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.settle = settle
        self.path = self.lake.path("_locks", f"{partition.label}.json")
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    # ------------------------------------------------------------------ content
    def _record(self) -> dict:
        now = time.time()
        return {
            "partition": self.partition.label,
            "host": self.host,
            "pid": self.pid,
            "pid_start": _pid_start(self.pid),
            "run_key": self.run_key,
            "token": self.token,
            "heartbeat": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds"),
            "heartbeat_epoch": now,
        }

    def is_stale(self, holder: dict | None) -> bool:
        """True when ``holder`` (a lock's content) no longer protects anything."""
        if not holder or not isinstance(holder, dict):
            return True  # unreadable or empty: its writer died mid-write
        age = time.time() - float(holder.get("heartbeat_epoch") or 0)
        if age > self.stale_after:
            return True
        if holder.get("host") == self.host:
            try:
                pid = int(holder.get("pid"))
            except (TypeError, ValueError):
                return True
            if pid == self.pid:
                with _ACTIVE_LOCK:
                    return holder.get("token") not in _ACTIVE
            return not _pid_alive(pid, holder.get("pid_start"))
        return False

    def describe(self, holder: dict) -> str:
        """One-line description of a holder."""
        age = time.time() - float(holder.get("heartbeat_epoch") or 0)
        return (
            f"{self.partition.label} is being ingested by another run (pid {holder.get('pid')} "
            f"on {holder.get('host')}, run {holder.get('run_key')}, heartbeat {age:.0f} s ago); "
            f"wait for it, or remove {self.lake.url('_locks', self.partition.label + '.json')} "
            "if that run is gone"
        )

    # ------------------------------------------------------------------ I/O
    def _read(self) -> dict | None:
        try:
            with self.lake.fs.open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw.decode() or "null") or {}
        except (ValueError, UnicodeDecodeError):
            return {}

    def _write(self) -> None:
        data = json.dumps(self._record()).encode()
        if self.lake.is_s3:
            self.lake.fs.pipe_file(self.path, data)
            return
        tmp = f"{self.path}.tmp-{self.pid}-{threading.get_ident()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def _guard(self):
        """Local lake: an exclusive flock around check-and-take; S3: nothing."""
        if self.lake.is_s3:
            yield
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.guard", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ protocol
    def acquire(self) -> Lease:
        """Take the lease (raises `LeaseHeld` when a live run holds it)."""
        try:
            if self.lake.is_s3:
                self._acquire_s3()
            else:
                self._acquire_local()
        except LakehouseError:
            raise
        except Exception as exc:
            raise LakehouseError(
                f"cannot take the lease {self.lake.url('_locks', self.partition.label + '.json')}"
                f": {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            ) from None
        self._held = True
        with _ACTIVE_LOCK:
            _ACTIVE.add(self.token)
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _acquire_local(self) -> None:
        with self._guard():
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if not self.is_stale(holder):
                    raise LeaseHeld(self.describe(holder)) from None
                log.warning("taking over the stale lease of %s: %s", self.partition.label, holder)
                self._write()
                return
            with os.fdopen(fd, "wb") as fh:
                fh.write(json.dumps(self._record()).encode())

    def _acquire_s3(self) -> None:
        holder = self._read()
        if holder is not None and not self.is_stale(holder):
            raise LeaseHeld(self.describe(holder))
        self._write()
        time.sleep(self.settle)
        holder = self._read()
        if not holder or holder.get("token") != self.token:
            raise LeaseHeld(self.describe(holder or {}))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                with self._guard():
                    holder = self._read()
                    if not holder or holder.get("token") != self.token:
                        self.lost = True
                        log.error("lease of %s lost to %s", self.partition.label, holder)
                        return
                    self._write()
            except Exception as exc:  # the lake may be briefly unreachable: try again
                log.warning("lease heartbeat failed: %s", str(exc).splitlines()[0])

    def verify(self) -> None:
        """Raise `LeaseLost` unless this run still holds the lease (call before publishing)."""
        holder = self._read()
        if self.lost or not holder or holder.get("token") != self.token:
            raise LeaseLost(
                f"{self.partition.label}: this run's lease was taken over by another run "
                f"({(holder or {}).get('run_key')}); not publishing"
            )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self._held:
            return
        self._held = False
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self.token)
        try:
            with self._guard():
                holder = self._read()
                if holder and holder.get("token") == self.token:
                    self.lake.fs.rm(self.path)
        except Exception as exc:  # a stale lock is taken over by the next run anyway
            log.warning("lease of %s not released: %s", self.partition.label, exc)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
