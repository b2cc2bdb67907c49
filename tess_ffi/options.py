"""Command-line options shared by every command module (one definition each)."""

from __future__ import annotations

from typing import Annotated

import typer

Sector = Annotated[int, typer.Option("--sector", "-s", min=1, max=9999, help="TESS sector (>= 1).")]
Camera = Annotated[int, typer.Option("--camera", "-c", min=1, max=4, help="Camera 1-4.")]
Ccd = Annotated[int, typer.Option("--ccd", "-d", min=1, max=4, help="CCD 1-4.")]
Source = Annotated[
    str,
    typer.Option(help="mast | s3 | s3://bucket/prefix | http(s)://mirror | local folder."),
]
Lake = Annotated[
    str | None,
    typer.Option(
        "--lake",
        "-l",
        help="Lakehouse URI: folder or s3://bucket/prefix [env TESS_FFI_LAKE, ./lake].",
    ),
]
