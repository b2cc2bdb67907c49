"""A real local HTTP server that looks like MAST and like an stpubdata HTML mirror, for tests.

It serves every ``*_ffic.fits`` file found (recursively) below a directory, in two layouts:

- MAST: ``/missions/tess/download_scripts/sector/`` (HTML index of the bulk scripts),
  ``/missions/tess/download_scripts/sector/tesscurl_sector_{N}_ffic.sh`` (generated from the
  files, with URLs pointing to this server) and
  ``/api/v0.1/Download/file/?uri=mast:TESS/product/{file}``;
- stpubdata mirror: ``/tess/public/ffi/s{SSSS}/{YYYY}/{DDD}/{camera}-{ccd}/{file}`` with HTML
  directory indexes (``index_style`` = ``python`` | ``apache`` | ``nginx``).

Scripted faults per file name (the product/file/script name, or the full request path):
`MastServer.fail_times`, `truncate_times`, `not_found`, `delay`, `reset_times`. Request counts
are kept per request path (``requests``) and per name (``hits`` / `MastServer.count`).

Only the standard library is used (plus astropy/numpy in the FFI writer helpers). Usage::

    with MastServer(root) as srv:
        source = MastSource(base_url=srv.url)

or the ``mast_server`` pytest fixture below (import it explicitly in a test module).
"""

from __future__ import annotations

import collections
import html
import http.server
import os
import re
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tasks.ffi import FFI_NAME_RE, btjd_to_timestamp, ffi_file_name, parse_ffi_name

__all__ = [
    "MastServer",
    "closed_port_url",
    "make_tiny_sector",
    "mast_server",
    "write_tiny_ffi",
]

SCRIPT_DIR = "/missions/tess/download_scripts/sector/"
API_PATHS = ("/api/v0.1/Download/file/", "/api/v0.1/Download/file")
MIRROR_ROOT = "/tess/public/ffi/"
_CHUNK = 64 * 1024

# --------------------------------------------------------------------------- tiny FFI files

#: 30-min FFI cadence of sectors 1-26 [d]
TIMEDEL_30MIN = 1800.0 / 86400.0


def write_tiny_ffi(
    dest: str | os.PathLike[str],
    sector: int,
    camera: int,
    ccd: int,
    ffiindex: int | None,
    tstart: float,
    *,
    n: int = 12,
    timedel: float = TIMEDEL_30MIN,
    dquality: int = 0,
    barycorr: float = 0.0047,
    scver: int = 120,
    seed: int | None = None,
    image: np.ndarray | None = None,
    uncert: np.ndarray | None = None,
    primary: dict | None = None,
    header1: dict | None = None,
) -> Path:
    """Write a small but valid SPOC-format ``*_ffic.fits`` and return its path.

    ``dest`` is a directory (the SPOC file name is built from ``tstart``) or a file path.
    Arrays are (n+30) x (n+88) float32 (science area n x n at rows 0..n-1, cols 44..n+43),
    sky ~100 e-/s plus noise and one star. ``tstart``/``timedel`` in BTJD days.
    ``primary``/``header1`` override keywords of HDU 0/HDU 1 (a value of None deletes the
    keyword); ``ffiindex=None`` omits FFIINDEX.
    """
    rows, cols = n + 30, n + 88
    rng = np.random.default_rng(seed if seed is not None else (ffiindex or 0) + 1000 * ccd)
    if image is None:
        yy, xx = np.mgrid[0:rows, 0:cols]
        star = 5000.0 * np.exp(-((yy - n / 2) ** 2 + (xx - 44 - n / 2) ** 2) / 2.0)
        image = (100.0 + star + rng.normal(0.0, 3.0, (rows, cols))).astype(np.float32)
    if uncert is None:
        uncert = np.sqrt(np.abs(np.asarray(image, dtype=np.float64)) + 9.0).astype(np.float32)
    tstop = tstart + timedel
    h0 = fits.Header()
    h0["TELESCOP"] = "TESS"
    h0["INSTRUME"] = "TESS Photometer"
    h0["SECTOR"] = sector
    h0["CAMERA"] = camera
    h0["CCD"] = ccd
    if ffiindex is not None:
        h0["FFIINDEX"] = ffiindex
    h0["DATA_REL"] = 1
    h1 = fits.Header()
    h1["EXTNAME"] = f"CAMERA.CCD {camera}.{ccd} cal"
    h1["CAMERA"] = camera
    h1["CCD"] = ccd
    h1["TSTART"] = (tstart, "observation start time in BTJD")
    h1["TSTOP"] = (tstop, "observation stop time in BTJD")
    h1["BARYCORR"] = (barycorr, "[d] barycentric time correction")
    h1["DQUALITY"] = (dquality, "data quality flags")
    h1["EXPOSURE"] = (0.8 * timedel, "[d] time on source")
    h1["TIMEDEL"] = (timedel, "[d] time resolution of data")
    for k, v in (("GAINA", 5.2), ("GAINB", 5.2), ("GAINC", 5.2), ("GAIND", 5.2)):
        h1[k] = v
    for k in ("READNOIA", "READNOIB", "READNOIC", "READNOID"):
        h1[k] = 10.0
    h1["WCSAXES"] = 2
    h1["CTYPE1"], h1["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h1["CRVAL1"], h1["CRVAL2"] = 30.0 + camera, -30.0 - ccd
    h1["CRPIX1"], h1["CRPIX2"] = 44 + n / 2 + 1, n / 2 + 1
    h1["CD1_1"], h1["CD1_2"], h1["CD2_1"], h1["CD2_2"] = -0.0058, 0.0, 0.0, 0.0058
    for hdr, overrides in ((h0, primary), (h1, header1)):
        for k, v in (overrides or {}).items():
            if v is None:
                hdr.remove(k, ignore_missing=True)
            else:
                hdr[k] = v
    dest = Path(dest)
    if dest.is_dir() or not dest.suffix:
        dest.mkdir(parents=True, exist_ok=True)
        dest = dest / ffi_file_name(btjd_to_timestamp(tstop), sector, camera, ccd, scver)
    dest.parent.mkdir(parents=True, exist_ok=True)
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(header=h0),
            fits.ImageHDU(data=np.asarray(image, dtype=np.float32), header=h1),
            fits.ImageHDU(data=np.asarray(uncert, dtype=np.float32), name="UNCERT"),
        ]
    )
    hdul.writeto(dest, overwrite=True)
    return dest


def make_tiny_sector(
    root: str | os.PathLike[str],
    sector: int = 1,
    cameras: Iterable[int] = (1,),
    ccds: Iterable[int] = (1,),
    n_frames: int = 3,
    *,
    t0: float = 1325.30,
    timedel: float = TIMEDEL_30MIN,
    layout: str = "flat",
    n: int = 12,
) -> list[Path]:
    """Write ``n_frames`` tiny FFIs per camera/CCD of a sector below ``root``; return the paths.

    ``layout`` ``flat`` puts all files in ``root``; ``stpubdata`` uses
    ``s{SSSS}/{YYYY}/{DDD}/{cam}-{ccd}/`` subdirectories. FFIINDEX runs from 100.
    """
    root = Path(root)
    out: list[Path] = []
    for camera in cameras:
        for ccd in ccds:
            for i in range(n_frames):
                tstart = t0 + i * timedel
                name = ffi_file_name(btjd_to_timestamp(tstart + timedel), sector, camera, ccd)
                directory = root
                if layout == "stpubdata":
                    ts = parse_ffi_name(name).timestamp
                    directory = root / f"s{sector:04d}" / ts[:4] / ts[4:7] / f"{camera}-{ccd}"
                directory.mkdir(parents=True, exist_ok=True)
                out.append(
                    write_tiny_ffi(
                        directory / name, sector, camera, ccd, 100 + i, tstart, n=n, timedel=timedel
                    )
                )
    return sorted(out)


def closed_port_url() -> str:
    """``http://127.0.0.1:{port}`` of a port nobody listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------- server


class _Fault:
    def __init__(self, kind: str, times: int | None, **params) -> None:
        self.kind = kind
        self.times = times  # None = forever
        self.params = params


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeMAST/1.0"
    mast: MastServer  # set on the per-server subclass

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._handle(send_body=False)

    def do_GET(self) -> None:
        self._handle(send_body=True)

    # -- routing
    def _handle(self, send_body: bool) -> None:
        mast = self.mast
        parsed = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if path in API_PATHS:
            uri = (query.get("uri") or [""])[0]
            name = uri.rsplit("/", 1)[-1]
        mast._record(self.path, name)
        for fault in mast._take_faults(name, path):
            if fault.kind == "delay":
                if mast._stopping.wait(fault.params["seconds"]):
                    return self._reset()
            elif fault.kind == "reset":
                return self._reset()
            elif fault.kind == "status":
                return self._send_bytes(
                    fault.params["status"],
                    f"scripted error {fault.params['status']}\n".encode(),
                    "text/plain",
                    send_body,
                    extra={"Retry-After": "0"} if fault.params["status"] == 429 else None,
                )
            elif fault.kind == "not_found":
                return self._not_found(send_body)
            elif fault.kind == "truncate":
                return self._send_file(name, send_body, fraction=fault.params["fraction"])
        if path in API_PATHS:
            return self._send_file(name, send_body)
        if path == SCRIPT_DIR.rstrip("/") or path == SCRIPT_DIR:
            return self._script_index(send_body)
        if path.startswith(SCRIPT_DIR):
            return self._script(name, send_body)
        if path == MIRROR_ROOT.rstrip("/") or path.startswith(MIRROR_ROOT):
            return self._mirror(path, send_body)
        return self._not_found(send_body)

    # -- responses
    def _send_bytes(
        self,
        status: int,
        body: bytes,
        ctype: str,
        send_body: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _not_found(self, send_body: bool) -> None:
        self._send_bytes(404, b"not found\n", "text/plain", send_body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0 + close)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _send_file(self, name: str, send_body: bool, fraction: float = 1.0) -> None:
        path = self.mast.files().get(name)
        if path is None:
            return self._not_found(send_body)
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not send_body:
            return
        limit = size if fraction >= 1.0 else int(size * fraction)
        sent = 0
        with open(path, "rb") as f:
            while sent < limit:
                chunk = f.read(min(_CHUNK, limit - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)
        if sent < size:  # scripted truncation: close early after promising the full length
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _script_index(self, send_body: bool) -> None:
        sectors = sorted({parse_ffi_name(n).sector for n in self.mast.files()})
        entries = [f"tesscurl_sector_{s}_ffic.sh" for s in sectors]
        self._send_index(SCRIPT_DIR, entries, send_body)

    def _script(self, name: str, send_body: bool) -> None:
        m = re.fullmatch(r"tesscurl_sector_(\d+)_ffic\.sh", name)
        if m is None:
            return self._not_found(send_body)
        sector = int(m.group(1))
        names = sorted(n for n in self.mast.files() if parse_ffi_name(n).sector == sector)
        if not names:
            return self._not_found(send_body)
        lines = ["#!/bin/sh"]
        for n in names:
            lines.append(
                f"curl -C - -L -o {n} {self.mast.url}/api/v0.1/Download/file/"
                f"?uri=mast:TESS/product/{n}"
            )
        self._send_bytes(200, ("\n".join(lines) + "\n").encode(), "text/x-sh", send_body)

    def _mirror(self, path: str, send_body: bool) -> None:
        tree = self.mast.mirror_tree()
        if path.endswith("_ffic.fits"):
            name = path.rsplit("/", 1)[-1]
            if path in tree["files"]:
                return self._send_file(name, send_body)
            return self._not_found(send_body)
        directory = path if path.endswith("/") else path + "/"
        if directory not in tree["dirs"]:
            return self._not_found(send_body)
        if not path.endswith("/"):
            self.send_response(301)
            self.send_header("Location", directory)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_index(directory, sorted(tree["dirs"][directory]), send_body)

    def _send_index(self, directory: str, entries: list[str], send_body: bool) -> None:
        style = self.mast.index_style
        esc = html.escape
        if style == "apache":  # absolute hrefs, sort links, parent link, table
            rows = [
                '<tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a>'
                '</th><th><a href="?C=S;O=A">Size</a></th></tr>',
                f'<tr><td><a href="{esc(directory.rsplit("/", 2)[0])}/">Parent Directory</a>'
                "</td><td>&nbsp;</td><td>-</td></tr>",
            ]
            for e in entries:
                href = urllib.parse.quote(directory + e)
                rows.append(
                    f'<tr><td><a href="{href}">{esc(e)}</a></td>'
                    '<td align="right">2024-01-01 00:00  </td><td align="right"> - </td></tr>'
                )
            body = (
                f"<html><head><title>Index of {esc(directory)}</title></head><body>"
                f"<h1>Index of {esc(directory)}</h1><table>{''.join(rows)}</table></body></html>"
            )
        elif style == "nginx":
            lines = ['<a href="../">../</a>']
            for e in entries:
                lines.append(
                    f'<a href="{urllib.parse.quote(e)}">{esc(e)}</a>    01-Jan-2024 00:00    -'
                )
            body = (
                f"<html>\r\n<head><title>Index of {esc(directory)}</title></head>\r\n<body>\r\n"
                f"<h1>Index of {esc(directory)}</h1><hr><pre>"
                + "\r\n".join(lines)
                + "\r\n</pre><hr></body>\r\n</html>\r\n"
            )
        else:  # python http.server
            items = "".join(
                f'<li><a href="{urllib.parse.quote(e)}">{esc(e)}</a></li>\n' for e in entries
            )
            body = (
                '<!DOCTYPE HTML>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                f"<title>Directory listing for {esc(directory)}</title>\n</head>\n<body>\n"
                f"<h1>Directory listing for {esc(directory)}</h1>\n<hr>\n<ul>\n{items}</ul>\n"
                "<hr>\n</body>\n</html>\n"
            )
        self._send_bytes(200, body.encode(), "text/html; charset=utf-8", send_body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address) -> None:  # quiet on client aborts
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)


class MastServer:
    """Threaded HTTP server on 127.0.0.1 (random free port) serving the FFIs below ``root``.

    Faults are consumed in the order they were scripted; a fault applies to requests whose
    name (file/product/script name) or request path equals the key given.
    """

    def __init__(self, root: str | os.PathLike[str], *, index_style: str = "python") -> None:
        if index_style not in ("python", "apache", "nginx"):
            raise ValueError(f"unknown index_style {index_style!r}")
        self.root = Path(root)
        self.index_style = index_style
        self.requests: collections.Counter[str] = collections.Counter()
        self.hits: collections.Counter[str] = collections.Counter()
        self._faults: dict[str, list[_Fault]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> MastServer:
        """Start serving in a background thread."""
        handler = type("Handler", (_Handler,), {"mast": self})
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wake delayed handlers, shutdown, close the socket, join the thread."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> MastServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """TCP port of the running server."""
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43210`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def mirror_url(self) -> str:
        """Base URL of the stpubdata-style mirror (holds ``tess/public/ffi/...`` below it)."""
        return self.url + "/"

    # -- content
    def files(self) -> dict[str, Path]:
        """Served FFIs by file name (rescanned on every call)."""
        return {p.name: p for p in self.root.rglob("*_ffic.fits") if FFI_NAME_RE.match(p.name)}

    def mirror_tree(self) -> dict[str, dict]:
        """The virtual stpubdata tree: ``{'dirs': {dir: set(entries)}, 'files': {path: Path}}``."""
        dirs: dict[str, set[str]] = collections.defaultdict(set)
        files: dict[str, Path] = {}
        dirs[MIRROR_ROOT] = set()  # the root exists even when empty
        for name, p in self.files().items():
            f = parse_ffi_name(name)
            parts = [f"s{f.sector:04d}", f.timestamp[:4], f.timestamp[4:7], f"{f.camera}-{f.ccd}"]
            d = MIRROR_ROOT
            for part in parts:
                dirs[d].add(part + "/")
                d = d + part + "/"
            dirs[d].add(name)
            files[d + name] = p
        # the parents of MIRROR_ROOT, so a crawler may start at "/"
        dirs["/"].add("tess/")
        dirs["/tess/"].add("public/")
        dirs["/tess/public/"].add("ffi/")
        return {"dirs": dirs, "files": files}

    # -- faults
    def _add(self, key: str, fault: _Fault) -> None:
        with self._lock:
            self._faults[key].append(fault)

    def fail_times(self, name: str, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``name`` with HTTP ``status``."""
        self._add(name, _Fault("status", times, status=status))

    def truncate_times(self, name: str, nbytes_fraction: float = 0.5, times: int = 1) -> None:
        """Send the full Content-Length but only ``nbytes_fraction`` of the body, then close."""
        self._add(name, _Fault("truncate", times, fraction=nbytes_fraction))

    def not_found(self, name: str) -> None:
        """Answer every request for ``name`` with 404."""
        self._add(name, _Fault("not_found", None))

    def delay(self, name: str, seconds: float, times: int | None = None) -> None:
        """Wait ``seconds`` before answering requests for ``name`` (``times`` None = always)."""
        self._add(name, _Fault("delay", times, seconds=seconds))

    def reset_times(self, name: str, times: int = 1) -> None:
        """Reset the TCP connection (RST) on the next ``times`` requests for ``name``."""
        self._add(name, _Fault("reset", times))

    def clear_faults(self) -> None:
        """Forget every scripted fault."""
        with self._lock:
            self._faults.clear()

    def _take_faults(self, name: str, path: str) -> list[_Fault]:
        """Faults for this request: all pending delays, then at most one terminal fault."""
        out: list[_Fault] = []
        terminal_taken = False
        with self._lock:
            for key in dict.fromkeys((name, path)):
                queue = self._faults.get(key, [])
                for fault in list(queue):
                    if fault.kind != "delay":
                        if terminal_taken:
                            continue
                        terminal_taken = True
                    out.append(fault)
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            queue.remove(fault)
        out.sort(key=lambda f: f.kind != "delay")
        return out

    # -- bookkeeping
    def _record(self, raw_path: str, name: str) -> None:
        with self._lock:
            self.requests[raw_path] += 1
            self.hits[name] += 1

    def count(self, name: str) -> int:
        """Requests received for a file/product/script name."""
        with self._lock:
            return self.hits[name]


@pytest.fixture
def mast_server(tmp_path: Path) -> Iterator[MastServer]:
    """A running `MastServer` over a tiny sector 1 (cameras 1-2 x CCDs 1-2, 3 frames each)."""
    root = tmp_path / "served"
    make_tiny_sector(root, sector=1, cameras=(1, 2), ccds=(1, 2), n_frames=3)
    with MastServer(root) as srv:
        yield srv
