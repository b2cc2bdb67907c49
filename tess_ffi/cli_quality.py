"""Data quality on the command line: ``tess-ffi validate`` and the checks of user input.

``register(app)`` adds ``validate`` (re-runs the Great Expectations suites on the published
tables of one sector/camera/CCD; exit 0 when all pass, 1 with a one-line reason otherwise).
The ``check_*`` functions validate paths and URIs before any work starts: a bad value is a
one-line error with exit code 2, and a credential in a URI is refused without echoing it
(it would otherwise show in logs and in the Prefect UI's flow-run parameters).
"""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Annotated

import typer

_REMOTE_SOURCES = ("mast", "s3")


class BadInput(ValueError):
    """A command-line value that cannot work (exit code 2)."""


def redact(uri: str) -> str:
    """``uri`` with any user:password replaced by ``***`` (safe to print)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _no_credentials(option: str, uri: str) -> None:
    if "://" in uri and "@" in urllib.parse.urlsplit(uri).netloc:
        raise BadInput(
            f"{option} {redact(uri)}: credentials in a URI are not allowed (they would appear "
            "in logs and the Prefect UI); use AWS_* variables or ~/.netrc"
        )


def check_source(source: str) -> str:
    """The FFI source: a known scheme or an existing directory."""
    value = (source or "").strip()
    low = value.lower()
    if not value:
        raise BadInput("--source is empty")
    _no_credentials("--source", value)
    if low in _REMOTE_SOURCES or low.startswith(("s3://", "http://", "https://")):
        if low.startswith("s3://") and not low[5:].strip("/"):
            raise BadInput(f"--source {value!r}: expected s3://bucket[/prefix]")
        return value
    path = Path(urllib.parse.unquote(value[7:]) if low.startswith("file://") else value)
    path = path.expanduser()
    if not path.exists():
        raise BadInput(
            f"--source {value!r}: unknown FFI source, no such directory (expected mast, s3, "
            "s3://bucket/prefix, http(s)://mirror or an existing directory)"
        )
    if not path.is_dir():
        raise BadInput(f"--source {value!r}: not a directory")
    return value


def check_lake(lake: str | None) -> str | None:
    """The lake URI: s3://bucket[/prefix] or a folder path that is not a file."""
    value = lake if lake else os.environ.get("TESS_FFI_LAKE")
    if not value:
        return lake
    _no_credentials("--lake", value)
    low = value.lower()
    if low.startswith("s3://"):
        if not value[5:].strip("/"):
            raise BadInput(f"--lake {value!r}: expected s3://bucket[/prefix]")
        return lake
    if "://" in value and not low.startswith("file://"):
        raise BadInput(f"--lake {value!r}: unsupported URI, use a folder or s3://bucket/prefix")
    path = Path(value.removeprefix("file://")).expanduser()
    if path.exists() and not path.is_dir():
        raise BadInput(f"--lake {value!r}: is a file, not a folder")
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise BadInput(f"--lake {value!r}: {parent} is a file")
    return lake


def check_writable_dir(option: str, path: Path | None) -> Path | None:
    """A folder we can create and write into (created when missing)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise BadInput(f"{option} {str(path)!r}: is a file, not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BadInput(f"{option} {str(path)!r}: not writable ({reason})") from None
    return path


def register(app: typer.Typer) -> None:
    """Add ``validate`` to ``app``."""

    @app.command("validate")
    def validate_cmd(
        sector: Annotated[
            int, typer.Option("--sector", "-s", min=1, max=9999, help="TESS sector (>= 1).")
        ],
        camera: Annotated[int, typer.Option("--camera", "-c", min=1, max=4, help="Camera 1-4.")],
        ccd: Annotated[int, typer.Option("--ccd", "-d", min=1, max=4, help="CCD 1-4.")],
        lake: Annotated[
            str | None,
            typer.Option("--lake", "-l", help="Lakehouse URI [env TESS_FFI_LAKE, ./lake]."),
        ] = None,
    ) -> None:
        """Re-run the data-quality suites on the published tables of one sector/camera/CCD.

        Writes a JSON report per table and the Great Expectations Data Docs (HTML) under
        {lake}/_reports (an s3:// lake: TESS_FFI_REPORTS or ./reports). Exit 0 when every
        suite passes, 1 with a one-line reason otherwise.

        Example: tess-ffi validate --sector 1 --camera 1 --ccd 1 --lake ./lake
        """
        from expectations.gate import failure_message, validate_partition
        from lakehouse.store import LakehouseError

        try:
            check_lake(lake)
        except BadInput as exc:
            raise _fail(str(exc), 2) from exc
        try:
            reports = validate_partition(lake, sector, camera, ccd)
        except (LakehouseError, OSError, ValueError) as exc:
            raise _fail(str(exc), 1) from exc
        for r in reports:
            status = "ok" if r.success else "FAILED"
            typer.echo(
                f"{r.table:22s} {status:6s} {r.n_rows:>12d} rows  {r.n_expectations:3d} "
                f"expectations  {r.json_path}"
            )
        if reports:
            typer.echo(f"data docs: {reports[0].data_docs_index}")
        message = failure_message(reports)
        if message:
            raise _fail(message, 1)


def _fail(message: str, code: int) -> typer.Exit:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    typer.echo(f"error: {first}", err=True)
    return typer.Exit(code)
