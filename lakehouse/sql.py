"""Read-only DuckDB over the published lakehouse tables.

Each Delta table becomes a view over the Parquet files of its current version (the file
list comes from the Delta log, so unpublished or superseded files are never read), with
the partition columns recovered from the hive-style paths. Only ``SELECT``/``EXPLAIN``
statements are accepted, the configuration is locked and file access is limited to the
lake itself, so a query can neither change the lake nor read or write other files.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import duckdb

from lakehouse.schemas import TABLES
from lakehouse.store import Lakehouse

ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN"}


class QueryRefused(ValueError):
    """A statement that would change the lake or reach outside it."""


def httpfs_extension_path() -> str:
    """Path of the httpfs extension shipped by the ``duckdb-extension-httpfs`` package."""
    spec = importlib.util.find_spec("duckdb_extension_httpfs")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("duckdb-extension-httpfs is not installed (run make install)")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.glob(f"extensions/v{duckdb.__version__}/httpfs.duckdb_extension"))
    if not found:
        raise RuntimeError(f"no httpfs extension for DuckDB {duckdb.__version__} under {root}")
    return str(found[0])


def _configure_s3(conn: duckdb.DuckDBPyConnection) -> None:
    """Load httpfs and create an S3 secret from the AWS environment (never echoed)."""
    conn.execute(f"LOAD '{httpfs_extension_path()}'")
    env = os.environ
    params = {"TYPE": "s3", "REGION": env.get("AWS_REGION") or "us-east-1"}
    if env.get("AWS_ACCESS_KEY_ID"):
        params["KEY_ID"] = env["AWS_ACCESS_KEY_ID"]
        params["SECRET"] = env.get("AWS_SECRET_ACCESS_KEY", "")
        if env.get("AWS_SESSION_TOKEN"):
            params["SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
    endpoint = env.get("AWS_ENDPOINT_URL", "")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        params["ENDPOINT"] = host.rstrip("/")
        params["USE_SSL"] = "true" if scheme == "https" else "false"
        params["URL_STYLE"] = "path"
    body = ", ".join(
        f"{k} {v}" if k in {"TYPE", "USE_SSL"} else f"{k} '{_sql_str(v)}'"
        for k, v in params.items()
    )
    try:
        conn.execute(f"CREATE OR REPLACE SECRET lake_s3 ({body})")
    except duckdb.Error:
        # the statement holds the credentials: never let them reach a message or a log
        raise RuntimeError("cannot configure DuckDB S3 access from the AWS_* environment") from None


def _sql_str(value: str) -> str:
    return str(value).replace("'", "''")


def connect(lake: Lakehouse | str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per published table of the lake."""
    lake = lake if isinstance(lake, Lakehouse) else Lakehouse(lake)
    conn = duckdb.connect(":memory:")
    if lake.is_s3:
        _configure_s3(conn)
    for table in lake.tables():
        files = lake.file_uris(table)
        if not files:
            schema = TABLES.get(table)
            if schema is None:
                continue
            cols = ", ".join(f'NULL::{_duck_type(f.type)} AS "{f.name}"' for f in schema)
            conn.execute(f'CREATE VIEW "{table}" AS SELECT {cols} WHERE false')
            continue
        file_list = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        casts = _partition_casts(table)
        conn.execute(
            f'CREATE VIEW "{table}" AS SELECT * REPLACE ({casts}) FROM read_parquet('
            f"[{file_list}], hive_partitioning = true, union_by_name = true)"
        )
    root = lake.url("")
    conn.execute(f"SET allowed_directories = ['{root}']")
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")
    return conn


def _partition_casts(table: str) -> str:
    schema = TABLES.get(table)
    types = {"sector": "SMALLINT", "camera": "TINYINT", "ccd": "TINYINT"}
    if schema is not None:
        types = {k: _duck_type(schema.field(k).type) for k in types if k in schema.names}
    return ", ".join(f'CAST("{k}" AS {v}) AS "{k}"' for k, v in types.items())


def _duck_type(arrow_type) -> str:
    import pyarrow as pa

    mapping = {
        pa.int8(): "TINYINT",
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.string(): "VARCHAR",
        pa.large_string(): "VARCHAR",
        pa.bool_(): "BOOLEAN",
        pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    }
    return mapping.get(arrow_type, "VARCHAR")


#: first keywords refused even when DuckDB classifies the statement as a SELECT
#: (``PRAGMA version`` is rewritten into one) or when they start an EXPLAIN ANALYZE
REFUSED_KEYWORDS = {
    "PRAGMA", "CALL", "SET", "RESET", "LOAD", "INSTALL", "FORCE", "ATTACH", "DETACH", "USE",
    "COPY", "EXPORT", "IMPORT", "CHECKPOINT", "VACUUM", "CREATE", "DROP", "ALTER", "INSERT",
    "UPDATE", "DELETE", "MERGE", "TRUNCATE", "UPSERT", "PIVOT", "UNPIVOT", "PREPARE",
    "EXECUTE", "DEALLOCATE", "BEGIN", "COMMIT", "ROLLBACK", "ABORT", "UPDATE_EXTENSIONS",
}  # fmt: skip


_LEXEMES = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|;", re.S)


def _keywords(text: str) -> list[str]:
    """Leading words of a statement, upper case, comments and parentheses skipped."""
    text = re.sub(r"--[^\n]*|/\*.*?\*/", " ", text, flags=re.S)
    return re.findall(r"[A-Za-z_]+", text.replace("(", " ")[:200])[:3]


def _heads(query: str) -> list[str]:
    """First word of every statement of the query as written (comments and quoted text are
    skipped), e.g. PRAGMA, which DuckDB may rewrite into a SELECT before we see it."""
    pieces, start = [], 0
    blanked = []
    for m in _LEXEMES.finditer(query):
        blanked.append(query[start : m.start()])
        blanked.append(";" if m.group() == ";" else " ")
        start = m.end()
    blanked.append(query[start:])
    for piece in "".join(blanked).split(";"):
        words = re.findall(r"[A-Za-z_]+", piece.replace("(", " "))
        if words:
            pieces.append(words[0].upper())
    return pieces


def _refuse(kind: str) -> QueryRefused:
    return QueryRefused(f"read-only: {kind} statements are not allowed (only SELECT)")


def check_read_only(conn: duckdb.DuckDBPyConnection, query: str) -> None:
    """Raise QueryRefused unless every statement of ``query`` only reads.

    Allowed: SELECT (and WITH/FROM/VALUES/DESCRIBE/SHOW/SUMMARIZE, which DuckDB runs as
    SELECTs) and EXPLAIN [ANALYZE] of those. Refused: DDL/DML, ATTACH/DETACH, COPY/EXPORT,
    INSTALL/LOAD, SET/RESET/PRAGMA/CALL, transactions, prepared statements.
    """
    try:
        statements = conn.extract_statements(query)
    except duckdb.Error as exc:
        raise QueryRefused(f"SQL error: {str(exc).splitlines()[0]}") from exc
    if not statements:
        raise QueryRefused("empty query")
    for head in _heads(query):
        if head in REFUSED_KEYWORDS:
            raise _refuse(head)
    for st in statements:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in ALLOWED_STATEMENTS:
            raise _refuse(kind)
        words = _keywords(st.query)
        if words and words[0].upper() in REFUSED_KEYWORDS:
            raise _refuse(words[0].upper())
        if kind == "EXPLAIN":
            inner = [w.upper() for w in words[1:]]
            target = inner[1] if inner[:1] == ["ANALYZE"] and len(inner) > 1 else inner[:1]
            target = target if isinstance(target, str) else (target[0] if target else "")
            if target in REFUSED_KEYWORDS:
                raise _refuse(f"EXPLAIN {target}")


def run_query(query: str, lake: Lakehouse | str | None = None):
    """Run a read-only query over the lake; returns a pyarrow Table of the last statement."""
    conn = connect(lake)
    check_read_only(conn, query)
    result = None
    for st in conn.extract_statements(query):
        result = conn.execute(st)
    return result.fetch_arrow_table()
