"""Where FFIs come from: one `FrameSource` interface over MAST, S3, an HTTP mirror or a directory.

``open_source(spec)`` picks the implementation from a spec string:

============================  =================================================================
``mast``                      `MastSource`: the sector bulk-download script, then the MAST
                              Download API (``TESS_FFI_MAST_URL`` overrides both base URLs)
``s3``                        `S3Source` on the AWS Open Data bucket ``stpubdata`` (anonymous)
``s3://bucket/prefix``        `S3Source`: the same key layout below another bucket/prefix
``http://...``/``https://...``  `HttpMirrorSource`: the stpubdata layout below a base URL,
                              listed through HTML directory indexes
a directory path              `LocalSource`: recursive glob; ``fetch`` returns the file itself
============================  =================================================================

Every source lists the frames of one sector/camera/CCD sorted by file name (= time) and
fetches one frame into a directory: the bytes go to ``{name}.part``, are verified with
`tasks.ffi.verify_frame` and only then renamed to ``{name}``; the ``.part`` file never
survives a failure. Transient failures are retried (`RetryPolicy`): connection errors,
timeouts, HTTP 5xx and 429, truncated bodies and downloads that fail verification as
incomplete/damaged. A 404, another 4xx or a complete file with the wrong content (other
sector/camera/CCD, missing keywords, empty image) fails at once.

Errors: `SourceError` (transport, missing remote file, bad spec) and `tasks.ffi.FrameError`
(the delivered file is not the requested frame); both carry a one-line message. Credentials
are never logged nor put into messages.
"""

from __future__ import annotations

import abc
import html
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import httpx

from tasks.ffi import FFI_NAME_RE, FITS_BLOCK, FrameError, hdu_spans, parse_ffi_name, verify_frame

__all__ = [
    "DEFAULT_MAST_API_URL",
    "DEFAULT_MAST_URL",
    "SOURCES",
    "FrameRef",
    "FrameSource",
    "HttpMirrorSource",
    "LocalSource",
    "MastSource",
    "NotFoundError",
    "RetryPolicy",
    "S3Source",
    "SourceError",
    "open_source",
    "stpubdata_key",
]

log = logging.getLogger(__name__)

DEFAULT_MAST_URL = "https://archive.stsci.edu"
DEFAULT_MAST_API_URL = "https://mast.stsci.edu"
#: one base URL for both the bulk scripts and the Download API (local mirrors, tests)
MAST_URL_ENV = "TESS_FFI_MAST_URL"
STPUBDATA_BUCKET = "stpubdata"
STPUBDATA_ENDPOINT = "https://s3.us-east-1.amazonaws.com"
_CHUNK = 1 << 20
_USER_AGENT = "tess-ffi/0.1 (+https://github.com/; httpx)"


class SourceError(RuntimeError):
    """A frame source failed: unreachable, missing remote file, bad spec, retries exhausted."""


class NotFoundError(SourceError):
    """The remote file or listing does not exist (HTTP 404, no such S3 key)."""


# --------------------------------------------------------------------------- helpers


@dataclass
class FrameRef:
    """One FFI available from a source (``location``: URL, S3 key or local path)."""

    file_name: str
    location: str
    sector: int
    camera: int
    ccd: int
    size: int | None = None  # bytes, when the listing tells


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: wait ``min(max_delay, base_delay * 2**k)`` s after failure k (0-based).

    ``attempts`` is the total number of tries (>= 1). With the defaults (4, 0.5 s, 8 s) a
    failing transfer is tried at t = 0, 0.5, 1.5 and 3.5 s (plus the transfer times).
    """

    attempts: int = 4
    base_delay: float = 0.5  # [s]
    max_delay: float = 8.0  # [s]

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must be >= 0")

    def delay(self, failure: int) -> float:
        """Seconds to wait after the ``failure``-th failed attempt (0-based)."""
        return min(self.max_delay, self.base_delay * (2.0**failure))


class _Retry(Exception):
    """A transient failure: try again (``wait`` overrides the backoff delay, in s)."""

    def __init__(
        self,
        message: str,
        *,
        unreachable: bool = False,
        wait: float | None = None,
        origin: str = "",
        reason: str = "",
    ):
        super().__init__(message)
        self.unreachable = unreachable  # the connection itself failed
        self.wait = wait
        self.origin = origin  # scheme://host[:port] that could not be reached
        self.reason = reason or message


T = TypeVar("T")


def stpubdata_key(file_name: str) -> str:
    """Key of an FFI in the stpubdata layout.

    ``tess/public/ffi/s{SSSS}/{YYYY}/{DDD}/{camera}-{ccd}/{file}`` (year and day of year of
    the file-name timestamp).
    """
    f = parse_ffi_name(file_name)
    return (
        f"tess/public/ffi/s{f.sector:04d}/{f.timestamp[:4]}/{f.timestamp[4:7]}/"
        f"{f.camera}-{f.ccd}/{file_name}"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def _frame_refs(
    names_locations: Iterator[tuple[str, str, int | None]], sector: int, camera: int, ccd: int
) -> list[FrameRef]:
    """FrameRefs of the names that are FFIs of sector/camera/ccd, sorted and deduplicated."""
    refs: dict[str, FrameRef] = {}
    for name, location, size in names_locations:
        if not FFI_NAME_RE.match(name):
            continue
        f = parse_ffi_name(name)
        if (f.sector, f.camera, f.ccd) != (sector, camera, ccd):
            continue
        refs.setdefault(name, FrameRef(name, location, sector, camera, ccd, size))
    return [refs[k] for k in sorted(refs)]


def _check_ids(sector: int, camera: int, ccd: int) -> None:
    if not (1 <= int(sector) <= 9999 and 1 <= int(camera) <= 4 and 1 <= int(ccd) <= 4):
        raise SourceError(f"bad sector/camera/ccd {sector}/{camera}/{ccd}")


def _sectors_of(entries: list[str]) -> list[int]:
    """Sector numbers of ``s{SSSS}`` directory entries (with or without a trailing ``/``)."""
    out = set()
    for e in entries:
        m = re.fullmatch(r"s(\d{4})/?", e.rstrip("/").rsplit("/", 1)[-1] + "/")
        if m and int(m.group(1)) >= 1:
            out.add(int(m.group(1)))
    return sorted(out)


def _ccds_of(names: list[str], sector: int) -> list[tuple[int, int]]:
    """(camera, ccd) pairs of the FFI file names of ``sector``."""
    out = set()
    for n in names:
        if FFI_NAME_RE.match(n):
            f = parse_ffi_name(n)
            if f.sector == sector:
                out.add((f.camera, f.ccd))
    return sorted(out)


# --------------------------------------------------------------------------- base class


class FrameSource(abc.ABC):
    """Lists and fetches SPOC ``*_ffic.fits`` frames of one sector/camera/CCD."""

    #: short label used in messages (e.g. "MAST")
    label: ClassVar[str] = "source"

    def __init__(
        self,
        *,
        attempts: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 8.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy(attempts, base_delay, max_delay)

    @abc.abstractmethod
    def list_frames(self, sector: int, camera: int, ccd: int) -> list[FrameRef]:
        """Frames of ``sector``/``camera``/``ccd`` available here, sorted by file name (= time)."""

    def available_sectors(self) -> list[int]:
        """Sectors with at least one FFI at this source, sorted (for scheduled discovery)."""
        raise SourceError(f"{self.describe()} cannot list its sectors")

    def available_ccds(self, sector: int) -> list[tuple[int, int]]:
        """(camera, ccd) pairs with FFIs of ``sector``, sorted.

        The default lists each of the 16 CCDs; sources override it with one cheaper listing.
        """
        return [
            (cam, ccd)
            for cam in range(1, 5)
            for ccd in range(1, 5)
            if self.list_frames(sector, cam, ccd)
        ]

    def fetch(self, ref: FrameRef, dest_dir: Path) -> Path:
        """Download ``ref`` into ``dest_dir`` and return the verified file's path.

        Streams to ``dest_dir/{name}.part``, verifies it (`verify_frame`), renames it to
        ``dest_dir/{name}``. An existing verified ``{name}`` is reused without downloading.
        Retries transient failures per ``self.retry``. Raises `SourceError` or `FrameError`.
        """
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        final = dest_dir / ref.file_name
        if final.exists():
            try:
                verify_frame(final, ref.sector, ref.camera, ref.ccd)
                return final
            except FrameError as exc:
                log.warning("re-fetching %s: %s", ref.file_name, exc)
                final.unlink(missing_ok=True)
        part = dest_dir / (ref.file_name + ".part")

        def attempt() -> Path:
            try:
                self._download(ref, part)
                try:
                    verify_frame(part, ref.sector, ref.camera, ref.ccd, file_name=ref.file_name)
                except FrameError as exc:
                    if exc.retryable:
                        raise _Retry(str(exc).removeprefix(ref.file_name + ": ")) from None
                    raise
                os.replace(part, final)
                return final
            except BaseException:
                part.unlink(missing_ok=True)
                raise

        return self._with_retries(attempt, what=ref.file_name)

    @abc.abstractmethod
    def _download(self, ref: FrameRef, part: Path) -> None:
        """Write the bytes of ``ref`` to ``part``; raise `_Retry` for transient failures."""

    def _with_retries(self, func: Callable[[], T], *, what: str) -> T:
        last: _Retry | None = None
        for k in range(self.retry.attempts):
            try:
                return func()
            except _Retry as exc:
                last = exc
                if k + 1 < self.retry.attempts:
                    wait = self.retry.delay(k) if exc.wait is None else exc.wait
                    wait = min(wait, self.retry.max_delay)
                    log.warning(
                        "%s: %s; retry %d/%d in %.1f s",
                        what,
                        exc,
                        k + 1,
                        self.retry.attempts - 1,
                        wait,
                    )
                    time.sleep(wait)
        assert last is not None
        if last.unreachable:
            raise SourceError(self._unreachable_message(last))
        raise SourceError(f"{what}: failed after {self.retry.attempts} attempts: {last}")

    def _unreachable_message(self, exc: _Retry) -> str:
        return f"cannot reach {self.label}: {exc}"

    def describe(self) -> str:
        """Human-readable description for messages."""
        return self.label

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release network clients (optional)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- HTTP


class _HttpSource(FrameSource):
    """Shared httpx plumbing: streaming downloads, status classification, retries."""

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        client: httpx.Client | None = None,
        **retry_options: Any,
    ) -> None:
        super().__init__(**retry_options)
        self._own_client = client is None
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=True,
            headers={"User-Agent": _USER_AGENT},
        )

    def close(self) -> None:
        """Close the HTTP client (if this source created it)."""
        if self._own_client:
            self.client.close()

    def _base_for_messages(self) -> str:
        return ""

    def _unreachable_message(self, exc: _Retry) -> str:
        where = exc.origin or self._base_for_messages()
        return f"cannot reach {self.label} at {where}: {exc.reason} (offline?)"

    @staticmethod
    def _classify(response: httpx.Response, what: str) -> None:
        """Raise for a non-2xx response: _Retry for 429/5xx, SourceError otherwise."""
        status = response.status_code
        if status < 300:
            return
        url = str(response.request.url)
        if status == 429 or status >= 500:
            wait = None
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.strip().isdigit():
                wait = float(retry_after)
            raise _Retry(f"HTTP {status} from {url}", wait=wait)
        if status == 404:
            raise NotFoundError(f"{what}: not found (HTTP 404) at {url}")
        raise SourceError(f"{what}: HTTP {status} {response.reason_phrase} at {url}")

    def _transport_retry(self, exc: httpx.TransportError, url: str) -> _Retry:
        unreachable = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        reason = f"{type(exc).__name__}: {_one_line(exc)}"
        parts = urllib.parse.urlsplit(url)
        return _Retry(
            f"{reason} ({url})",
            unreachable=unreachable,
            origin=f"{parts.scheme}://{parts.netloc}",
            reason=reason,
        )

    def _get_text(self, url: str, what: str) -> str:
        """GET a small text document with retries."""

        def attempt() -> str:
            try:
                response = self.client.get(url)
            except httpx.TransportError as exc:
                raise self._transport_retry(exc, url) from None
            self._classify(response, what)
            return response.text

        return self._with_retries(attempt, what=what)

    def _stream_to(self, url: str, part: Path, what: str, size: int | None = None) -> None:
        """Stream ``url`` into ``part``; _Retry on transport errors and short bodies."""
        try:
            with self.client.stream("GET", url) as response:
                self._classify(response, what)
                declared = response.headers.get("Content-Length")
                with open(part, "wb") as out:
                    for chunk in response.iter_bytes(_CHUNK):
                        out.write(chunk)
                received = response.num_bytes_downloaded
        except httpx.TransportError as exc:
            raise self._transport_retry(exc, url) from None
        expected = int(declared) if declared and declared.isdigit() else size
        if expected is not None and received != expected:
            raise _Retry(f"truncated download: {received} of {expected} bytes")


class MastSource(_HttpSource):
    """TESS FFIs from MAST: sector bulk-download scripts + the MAST Download API.

    ``base_url`` serves ``/missions/tess/download_scripts/sector/tesscurl_sector_{N}_ffic.sh``
    (default https://archive.stsci.edu), ``api_url`` serves
    ``/api/v0.1/Download/file/?uri=mast:TESS/product/{file}`` (default https://mast.stsci.edu).
    The environment variable ``TESS_FFI_MAST_URL`` replaces both defaults with one base URL;
    explicit arguments win over it. ``timeout``/``connect_timeout`` in seconds.
    """

    label = "MAST"

    def __init__(
        self,
        base_url: str | None = None,
        api_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        env = os.environ.get(MAST_URL_ENV, "").strip()
        self.base_url = (base_url or env or DEFAULT_MAST_URL).rstrip("/")
        self.api_url = (api_url or base_url or env or DEFAULT_MAST_API_URL).rstrip("/")
        self._scripts: dict[int, str] = {}

    def _base_for_messages(self) -> str:
        return self.base_url

    def describe(self) -> str:
        """E.g. ``MAST (https://archive.stsci.edu)``."""
        return f"MAST ({self.base_url})"

    def script_url(self, sector: int) -> str:
        """URL of the sector's FFI bulk-download script."""
        scripts = f"{self.base_url}/missions/tess/download_scripts/sector"
        return f"{scripts}/tesscurl_sector_{sector}_ffic.sh"

    def download_url(self, file_name: str) -> str:
        """MAST Download API URL of one FFI."""
        return f"{self.api_url}/api/v0.1/Download/file/?uri=mast:TESS/product/{file_name}"

    def _script(self, sector: int) -> str:
        if sector not in self._scripts:
            try:
                self._scripts[sector] = self._get_text(
                    self.script_url(sector), what=f"FFI bulk script of sector {sector}"
                )
            except NotFoundError:
                raise NotFoundError(
                    f"MAST has no FFI bulk script for sector {sector} "
                    f"(HTTP 404 at {self.script_url(sector)})"
                ) from None
        return self._scripts[sector]

    def list_frames(self, sector: int, camera: int, ccd: int) -> list[FrameRef]:
        """FFIs of one camera/CCD named in the sector's bulk script, sorted by name (= time)."""
        _check_ids(sector, camera, ccd)
        script = self._script(sector)
        found = re.findall(r"-o\s+(\S+_ffic\.fits)\s", script + "\n")
        return _frame_refs(((n, self.download_url(n), None) for n in found), sector, camera, ccd)

    def available_sectors(self) -> list[int]:
        """Sectors with an FFI bulk script, from the directory index of the scripts."""
        index = self._get_text(
            f"{self.base_url}/missions/tess/download_scripts/sector/",
            what="MAST bulk-script index",
        )
        return sorted({int(s) for s in re.findall(r"tesscurl_sector_(\d+)_ffic\.sh", index)})

    def available_ccds(self, sector: int) -> list[tuple[int, int]]:
        """(camera, ccd) pairs named in the sector's bulk script (one request)."""
        _check_ids(sector, 1, 1)
        names = re.findall(r"-o\s+(\S+_ffic\.fits)\s", self._script(sector) + "\n")
        return _ccds_of(names, sector)

    def _download(self, ref: FrameRef, part: Path) -> None:
        self._stream_to(ref.location, part, ref.file_name, ref.size)


_HREF_RE = re.compile(r"""<a\s[^>]*?href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.I)


def parse_index_links(page: str, base_url: str) -> list[str]:
    """Entries of an HTML directory index (Apache, nginx, python http.server, ...).

    Returns the child names (directories end with ``/``) of ``base_url`` (which must end with
    ``/``), ignoring parent links, sort links and links elsewhere.
    """
    out: dict[str, None] = {}
    base_path = urllib.parse.urlsplit(base_url).path
    for m in _HREF_RE.finditer(page):
        href = html.unescape(next(g for g in m.groups() if g is not None))
        url = urllib.parse.urljoin(base_url, href)
        parts = urllib.parse.urlsplit(url)
        path = urllib.parse.unquote(parts.path)
        if not path.startswith(urllib.parse.unquote(base_path)):
            continue
        child = path[len(urllib.parse.unquote(base_path)) :]
        if not child or child.startswith("/") or "/" in child.rstrip("/"):
            continue
        out[child] = None
    return list(out)


class HttpMirrorSource(_HttpSource):
    """An HTTP(S) server holding the stpubdata layout below ``base_url``, with HTML indexes.

    Files live at ``{base_url}/tess/public/ffi/s{SSSS}/{YYYY}/{DDD}/{cam}-{ccd}/{file}``;
    listing walks the directory indexes of ``s{SSSS}/``, its year and day directories and the
    ``{cam}-{ccd}/`` directories only. ``timeout``/``connect_timeout`` in seconds.
    """

    label = "HTTP mirror"

    def __init__(self, base_url: str, **options: Any) -> None:
        super().__init__(**options)
        self.base_url = base_url.rstrip("/") + "/"

    def _base_for_messages(self) -> str:
        return self.base_url

    def describe(self) -> str:
        """E.g. ``HTTP mirror (https://example.org/)``."""
        return f"HTTP mirror ({self.base_url})"

    def _index(self, url: str) -> list[str]:
        return parse_index_links(self._get_text(url, what="directory index"), url)

    def list_frames(self, sector: int, camera: int, ccd: int) -> list[FrameRef]:
        """FFIs of one camera/CCD found in the mirror's directory indexes, sorted by name."""
        _check_ids(sector, camera, ccd)
        sector_url = urllib.parse.urljoin(self.base_url, f"tess/public/ffi/s{sector:04d}/")
        found: list[tuple[str, str, int | None]] = []
        for year in self._index(sector_url):
            if not re.fullmatch(r"\d{4}/", year):
                continue
            year_url = sector_url + year
            for day in self._index(year_url):
                if not re.fullmatch(r"\d{3}/", day):
                    continue
                day_url = year_url + day
                if f"{camera}-{ccd}/" not in self._index(day_url):
                    continue
                ccd_url = f"{day_url}{camera}-{ccd}/"
                for name in self._index(ccd_url):
                    found.append((name, ccd_url + urllib.parse.quote(name), None))
        return _frame_refs(iter(found), sector, camera, ccd)

    def available_sectors(self) -> list[int]:
        """Sectors with an ``s{SSSS}/`` directory in the index of ``tess/public/ffi/``."""
        root = urllib.parse.urljoin(self.base_url, "tess/public/ffi/")
        return _sectors_of(self._index(root))

    def available_ccds(self, sector: int) -> list[tuple[int, int]]:
        """(camera, ccd) directories below the sector's year/day directories."""
        _check_ids(sector, 1, 1)
        sector_url = urllib.parse.urljoin(self.base_url, f"tess/public/ffi/s{sector:04d}/")
        found: set[tuple[int, int]] = set()
        try:
            years = self._index(sector_url)
        except NotFoundError:
            return []
        for year in years:
            if not re.fullmatch(r"\d{4}/", year):
                continue
            for day in self._index(sector_url + year):
                if not re.fullmatch(r"\d{3}/", day):
                    continue
                for entry in self._index(sector_url + year + day):
                    m = re.fullmatch(r"([1-4])-([1-4])/", entry)
                    if m:
                        found.add((int(m.group(1)), int(m.group(2))))
        return sorted(found)

    def _download(self, ref: FrameRef, part: Path) -> None:
        self._stream_to(ref.location, part, ref.file_name, ref.size)


# --------------------------------------------------------------------------- S3


class S3Source(FrameSource):
    """FFIs in an S3 bucket with the stpubdata key layout (default: public ``stpubdata``).

    Anonymous access unless ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` are set;
    ``AWS_ENDPOINT_URL`` and ``AWS_REGION`` are honoured (e.g. a local S3 server). Any fsspec
    filesystem can be injected with ``fs=`` (then paths are ``{bucket}/{prefix}/...``).
    """

    label = "S3"

    def __init__(
        self,
        bucket: str = STPUBDATA_BUCKET,
        prefix: str = "",
        *,
        fs: Any = None,
        anon: bool | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        **retry_options: Any,
    ) -> None:
        super().__init__(**retry_options)
        self.bucket = bucket.strip("/")
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        if fs is None:
            fs = self._make_fs(anon, region, connect_timeout, read_timeout)
        self.fs = fs

    def _make_fs(
        self, anon: bool | None, region: str | None, connect_timeout: float, read_timeout: float
    ) -> Any:
        import s3fs

        key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if anon is None:
            anon = not (key and secret)
        client_kwargs: dict[str, Any] = {}
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client_kwargs["region_name"] = region
        elif self.bucket == STPUBDATA_BUCKET and not self.endpoint_url:
            client_kwargs["region_name"] = "us-east-1"
        if self.endpoint_url:
            client_kwargs["endpoint_url"] = self.endpoint_url
        kwargs: dict[str, Any] = {
            "anon": anon,
            "client_kwargs": client_kwargs,
            "config_kwargs": {
                "connect_timeout": connect_timeout,
                "read_timeout": read_timeout,
                "retries": {"max_attempts": 1},
            },
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }
        if not anon and key and secret:
            kwargs["key"] = key
            kwargs["secret"] = secret
        return s3fs.S3FileSystem(**kwargs)

    def _root(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def describe(self) -> str:
        """E.g. ``S3 (s3://stpubdata)`` (never shows credentials)."""
        where = f" via {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3 (s3://{self._root()}{where})"

    def _unreachable_message(self, exc: _Retry) -> str:
        return f"cannot reach {self.describe()}: {exc.reason} (offline?)"

    def list_frames(self, sector: int, camera: int, ccd: int) -> list[FrameRef]:
        """FFIs of one camera/CCD under ``s{SSSS}/*/*/{cam}-{ccd}/``, sorted by name."""
        _check_ids(sector, camera, ccd)
        pattern = f"{self._root()}/tess/public/ffi/s{sector:04d}/*/*/{camera}-{ccd}/*_ffic.fits"

        def attempt() -> dict[str, Any]:
            try:
                return self.fs.glob(pattern, detail=True)
            except (FileNotFoundError, PermissionError) as exc:
                raise SourceError(f"cannot list {pattern}: {_one_line(exc)}") from None
            except Exception as exc:
                raise _Retry(
                    f"{type(exc).__name__}: {_one_line(exc)}", unreachable=_is_connect(exc)
                ) from None

        entries = self._with_retries(attempt, what=f"listing s3://{pattern}")
        if isinstance(entries, list):  # filesystems that ignore detail=True
            entries = {p: {} for p in entries}
        return _frame_refs(
            ((p.rsplit("/", 1)[-1], p, (info or {}).get("size")) for p, info in entries.items()),
            sector,
            camera,
            ccd,
        )

    def _ls(self, path: str) -> list[str]:
        """Child names (last path component) of an S3 "directory"; [] when absent."""

        def attempt() -> list[str]:
            try:
                entries = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []
            except PermissionError as exc:
                raise SourceError(f"cannot list s3://{path}: {_one_line(exc)}") from None
            except Exception as exc:
                raise _Retry(
                    f"{type(exc).__name__}: {_one_line(exc)}", unreachable=_is_connect(exc)
                ) from None
            return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]

        return self._with_retries(attempt, what=f"listing s3://{path}")

    def available_sectors(self) -> list[int]:
        """Sectors with an ``s{SSSS}/`` prefix below ``tess/public/ffi/``."""
        return _sectors_of(self._ls(f"{self._root()}/tess/public/ffi"))

    def available_ccds(self, sector: int) -> list[tuple[int, int]]:
        """(camera, ccd) prefixes below the sector's year/day prefixes."""
        _check_ids(sector, 1, 1)
        base = f"{self._root()}/tess/public/ffi/s{sector:04d}"
        found: set[tuple[int, int]] = set()
        for year in self._ls(base):
            if not re.fullmatch(r"\d{4}", year):
                continue
            for day in self._ls(f"{base}/{year}"):
                if not re.fullmatch(r"\d{3}", day):
                    continue
                for entry in self._ls(f"{base}/{year}/{day}"):
                    m = re.fullmatch(r"([1-4])-([1-4])", entry)
                    if m:
                        found.add((int(m.group(1)), int(m.group(2))))
        return sorted(found)

    def needed_bytes(self, ref: FrameRef, size: int) -> int:
        """Bytes of HDUs 0-2 (primary, image, uncertainty) of an FFI, from byte-range reads.

        FFIs are uncompressed FITS, so the headers alone give every HDU's offset: only the
        header blocks are fetched here (a few kB of ranged GETs). Returns ``size`` when the
        headers cannot be parsed (verification of the download then reports why).
        """
        reader = _RangeReader(self.fs, ref.location, size)
        try:
            spans, truncated = hdu_spans(reader, size, ref.file_name, max_hdus=3)
        except FrameError:
            return size
        if truncated or len(spans) < 3:
            return size
        return min(size, spans[2].end)

    def _download(self, ref: FrameRef, part: Path) -> None:
        """Byte-range reads of exactly the HDUs an FFI needs (trailing HDUs are skipped)."""
        try:
            size = ref.size if ref.size is not None else int(self.fs.info(ref.location)["size"])
            end = self.needed_bytes(ref, size)
            with open(part, "wb") as out:
                for start in range(0, end, _RANGE):
                    out.write(
                        self.fs.cat_file(ref.location, start=start, end=min(end, start + _RANGE))
                    )
        except FileNotFoundError:
            raise NotFoundError(f"{ref.file_name}: not found at s3://{ref.location}") from None
        except PermissionError as exc:
            raise SourceError(
                f"{ref.file_name}: access denied at s3://{ref.location}: {_one_line(exc)}"
            ) from None
        except Exception as exc:
            raise _Retry(
                f"{type(exc).__name__}: {_one_line(exc)}", unreachable=_is_connect(exc)
            ) from None
        received = part.stat().st_size
        if received != end:
            raise _Retry(f"truncated download: {received} of {end} bytes")


#: bytes per ranged GET of FFI data (the download streams through memory in these pieces)
_RANGE = 8 * _CHUNK


class _RangeReader:
    """A read-only, seekable view of an S3 object that fetches aligned byte ranges on demand."""

    def __init__(self, fs: Any, path: str, size: int, block: int = 8 * FITS_BLOCK) -> None:
        self.fs, self.path, self.size, self.block = fs, path, size, block
        self.pos = 0
        self.fetched = 0  # bytes transferred so far
        self._cache: dict[int, bytes] = {}

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _block(self, start: int) -> bytes:
        if start not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            data = self.fs.cat_file(self.path, start=start, end=min(self.size, start + self.block))
            self.fetched += len(data)
            self._cache[start] = data
        return self._cache[start]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        out = bytearray()
        while n > 0 and self.pos < self.size:
            start = (self.pos // self.block) * self.block
            data = self._block(start)
            piece = data[self.pos - start : self.pos - start + n]
            if not piece:
                break
            out += piece
            self.pos += len(piece)
            n -= len(piece)
        return bytes(out)


def _is_connect(exc: BaseException) -> bool:
    name = type(exc).__name__
    return any(
        k in name for k in ("EndpointConnection", "ConnectTimeout", "Connector", "Connection")
    )


# --------------------------------------------------------------------------- local


class LocalSource(FrameSource):
    """FFIs in a local directory tree (any layout); ``fetch`` verifies and returns the file."""

    label = "local directory"

    def __init__(self, root: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"FFI directory does not exist: {self.root}")

    def describe(self) -> str:
        """E.g. ``local directory (/data/ffi)``."""
        return f"local directory ({self.root})"

    def list_frames(self, sector: int, camera: int, ccd: int) -> list[FrameRef]:
        """Files ``*-s{SSSS}-{camera}-{ccd}-*_ffic.fits`` anywhere below the root, by name."""
        _check_ids(sector, camera, ccd)
        paths = self.root.rglob(f"*-s{sector:04d}-{camera}-{ccd}-*_ffic.fits")
        return _frame_refs(
            ((p.name, str(p), None) for p in paths if p.is_file()), sector, camera, ccd
        )

    def fetch(self, ref: FrameRef, dest_dir: Path) -> Path:
        """Verify the local file and return its path (no copy; ``dest_dir`` is unused)."""
        path = Path(ref.location)
        verify_frame(path, ref.sector, ref.camera, ref.ccd)
        return path

    def _download(self, ref: FrameRef, part: Path) -> None:  # pragma: no cover - unused
        raise NotImplementedError


# --------------------------------------------------------------------------- registry

SOURCES: dict[str, type[FrameSource]] = {
    "mast": MastSource,
    "s3": S3Source,
    "http": HttpMirrorSource,
    "local": LocalSource,
}


def open_source(spec: str, **options: Any) -> FrameSource:
    """Open a frame source from a spec string.

    ``mast`` | ``s3`` | ``s3://bucket/prefix`` | ``http(s)://base`` | ``file://dir`` | a local
    directory. ``options`` go to the source's constructor (e.g. ``attempts``, ``base_delay``,
    ``timeout``). Raises `SourceError` for an unknown spec.
    """
    spec = (spec or "").strip()
    low = spec.lower()
    if low == "mast":
        return MastSource(**options)
    if low == "s3":
        # the public AWS Open Data bucket, whatever AWS_ENDPOINT_URL/keys say: those belong
        # to the lake (e.g. a local S3 store of `tess-ffi up`), not to stpubdata
        options.setdefault("anon", True)
        options.setdefault("endpoint_url", STPUBDATA_ENDPOINT)
        options.setdefault("region", "us-east-1")
        return S3Source(**options)
    if low.startswith("s3://"):
        rest = spec[5:].strip("/")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise SourceError(f"bad S3 source {spec!r}: expected s3://bucket[/prefix]")
        return S3Source(bucket, prefix, **options)
    if low.startswith(("http://", "https://")):
        return HttpMirrorSource(spec, **options)
    if low.startswith("file://"):
        spec = urllib.parse.unquote(urllib.parse.urlsplit(spec).path)
    if spec and Path(spec).expanduser().is_dir():
        return LocalSource(spec, **options)
    raise SourceError(
        f"unknown FFI source {spec!r}: expected mast, s3, s3://bucket/prefix, "
        "http(s)://mirror or an existing directory"
    )
