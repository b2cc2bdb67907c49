"""Printing Arrow tables for every command: an aligned table, CSV or JSON records."""

from __future__ import annotations

import decimal
import json
import math
from enum import StrEnum

import typer


class OutputFormat(StrEnum):
    """Output formats of the commands that print tables."""

    table = "table"
    csv = "csv"
    json = "json"


def print_table(result, fmt: OutputFormat, limit: int = 0) -> None:
    """Print an Arrow table as an aligned table (``limit`` rows, 0 = all), CSV or JSON records.

    JSON: NaN/inf become null, decimals become numbers, dates ISO strings.
    """
    if fmt is OutputFormat.csv:
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(result, buf)
        typer.echo(buf.getvalue().decode(), nl=False)
        return
    rows = result.to_pylist()
    if fmt is OutputFormat.json:
        typer.echo(json.dumps([{k: jsonable(v) for k, v in r.items()} for r in rows]))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for name in result.column_names:
        table.add_column(name, justify="right")
    shown = rows if limit == 0 else rows[:limit]
    for row in shown:
        table.add_row(*[cell(v) for v in row.values()])
    console = Console(width=220)
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"... {len(rows) - len(shown)} more rows (--limit 0 or --format csv)")


def jsonable(v):
    """A JSON-safe version of one value."""
    if isinstance(v, decimal.Decimal):
        v = int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def cell(v) -> str:
    """One table cell (floats to 10 significant digits, missing as empty)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.10g}" if math.isfinite(v) else ""
    return str(v)
