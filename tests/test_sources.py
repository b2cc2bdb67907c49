"""tasks.sources against a real local HTTP server (tests/mast_server.py); no mocking of httpx."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest

from tasks.ffi import FrameError, parse_ffi_name
from tasks.sources import (
    SOURCES,
    FrameRef,
    FrameSource,
    HttpMirrorSource,
    LocalSource,
    MastSource,
    NotFoundError,
    RetryPolicy,
    S3Source,
    SourceError,
    open_source,
    parse_index_links,
    stpubdata_key,
)
from tests.mast_server import (
    MastServer,
    closed_port_url,
    make_tiny_sector,
    mast_server,  # noqa: F401  (pytest fixture)
    write_tiny_ffi,
)

FAST = {"base_delay": 0.01, "max_delay": 0.05}


def _served(srv: MastServer, camera: int, ccd: int) -> dict[str, Path]:
    return {
        n: p
        for n, p in srv.files().items()
        if (parse_ffi_name(n).camera, parse_ffi_name(n).ccd) == (camera, ccd)
    }


def _no_part_files(directory: Path) -> bool:
    return not list(directory.rglob("*.part"))


@pytest.fixture
def mast(mast_server: MastServer):  # noqa: F811
    with MastSource(base_url=mast_server.url, **FAST) as src:
        yield src


# --------------------------------------------------------------------------- MAST


def test_mast_lists_one_ccd_from_bulk_script(mast_server: MastServer, mast: MastSource) -> None:  # noqa: F811
    refs = mast.list_frames(1, 2, 1)
    expected = sorted(_served(mast_server, 2, 1))
    assert len(expected) == 3
    assert [r.file_name for r in refs] == expected
    for r in refs:
        assert (r.sector, r.camera, r.ccd) == (1, 2, 1)
        assert r.location == (
            f"{mast_server.url}/api/v0.1/Download/file/?uri=mast:TESS/product/{r.file_name}"
        )
    # the script is fetched once per sector
    assert mast.list_frames(1, 1, 2) and mast_server.count("tesscurl_sector_1_ffic.sh") == 1
    assert mast.list_frames(1, 3, 1) == []


def test_mast_downloads_byte_identical(
    mast_server: MastServer,  # noqa: F811
    mast: MastSource,
    tmp_path: Path,
) -> None:
    dest = tmp_path / "dl"
    served = _served(mast_server, 1, 2)
    for ref in mast.list_frames(1, 1, 2):
        path = mast.fetch(ref, dest)
        assert path == dest / ref.file_name
        assert path.read_bytes() == served[ref.file_name].read_bytes()
        assert mast_server.count(ref.file_name) == 1
    assert sorted(p.name for p in dest.iterdir()) == sorted(served)
    # a verified file already in place is not downloaded again
    ref = mast.list_frames(1, 1, 2)[0]
    assert mast.fetch(ref, dest) == dest / ref.file_name
    assert mast_server.count(ref.file_name) == 1


def test_mast_url_from_environment(
    mast_server: MastServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TESS_FFI_MAST_URL", mast_server.url + "/")
    with open_source("mast", **FAST) as src:
        assert isinstance(src, MastSource)
        assert src.base_url == src.api_url == mast_server.url
        assert len(src.list_frames(1, 1, 1)) == 3
        assert src.available_sectors() == [1]
    monkeypatch.delenv("TESS_FFI_MAST_URL")
    with MastSource() as src:
        assert src.base_url == "https://archive.stsci.edu"
        assert src.api_url == "https://mast.stsci.edu"


@pytest.mark.parametrize(
    ("fault", "hits"),
    [
        (lambda s, n: s.truncate_times(n, 0.5, times=2), 3),
        (lambda s, n: s.truncate_times(n, 0.999, times=1), 2),
        (lambda s, n: s.fail_times(n, 500, times=1), 2),
        (lambda s, n: s.fail_times(n, 503, times=3), 4),
        (lambda s, n: s.fail_times(n, 429, times=1), 2),
        (lambda s, n: s.reset_times(n, times=1), 2),
    ],
    ids=["truncated-x2", "truncated-last-bytes", "500", "503-x3", "429", "reset"],
)
def test_mast_transient_failures_are_retried(
    mast_server: MastServer,  # noqa: F811
    mast: MastSource,
    tmp_path: Path,
    fault,
    hits: int,
) -> None:
    ref = mast.list_frames(1, 1, 1)[0]
    fault(mast_server, ref.file_name)
    path = mast.fetch(ref, tmp_path)
    assert path.read_bytes() == _served(mast_server, 1, 1)[ref.file_name].read_bytes()
    assert mast_server.count(ref.file_name) == hits
    assert _no_part_files(tmp_path)


def test_mast_timeout_is_retried(mast_server: MastServer, tmp_path: Path) -> None:  # noqa: F811
    with MastSource(base_url=mast_server.url, timeout=0.3, **FAST) as src:
        ref = src.list_frames(1, 1, 1)[1]
        mast_server.delay(ref.file_name, 3.0, times=1)
        path = src.fetch(ref, tmp_path)
    assert path.exists() and _no_part_files(tmp_path)
    assert mast_server.count(ref.file_name) == 2


def test_mast_404_is_not_retried(
    mast_server: MastServer,  # noqa: F811
    mast: MastSource,
    tmp_path: Path,
) -> None:
    ref = mast.list_frames(1, 1, 1)[0]
    mast_server.not_found(ref.file_name)
    dest = tmp_path / "dl"
    with pytest.raises(NotFoundError, match=r"not found \(HTTP 404\)") as info:
        mast.fetch(ref, dest)
    assert isinstance(info.value, SourceError)
    msg = str(info.value)
    assert msg.startswith(ref.file_name + ": ") and "\n" not in msg
    assert mast_server.count(ref.file_name) == 1
    assert list(dest.iterdir()) == []


def test_mast_retries_exhausted(mast_server: MastServer, tmp_path: Path) -> None:  # noqa: F811
    dest = tmp_path / "dl"
    with MastSource(base_url=mast_server.url, attempts=3, **FAST) as src:
        ref = src.list_frames(1, 1, 1)[0]
        mast_server.fail_times(ref.file_name, 502, times=10)
        with pytest.raises(SourceError, match=r"failed after 3 attempts: HTTP 502"):
            src.fetch(ref, dest)
        assert mast_server.count(ref.file_name) == 3
        mast_server.clear_faults()
        mast_server.truncate_times(ref.file_name, 0.3, times=10)
        with pytest.raises(SourceError, match="failed after 3 attempts"):
            src.fetch(ref, dest)
        assert mast_server.count(ref.file_name) == 6
    assert list(dest.iterdir()) == []


def test_mast_wrong_file_is_not_retried(tmp_path: Path) -> None:
    served = tmp_path / "served"
    name = "tess2018206192942-s0001-1-1-0120-s_ffic.fits"
    write_tiny_ffi(served / name, sector=1, camera=1, ccd=2, ffiindex=1, tstart=1325.3)
    dest = tmp_path / "dl"
    with MastServer(served) as srv, MastSource(base_url=srv.url, **FAST) as src:
        (ref,) = src.list_frames(1, 1, 1)
        with pytest.raises(FrameError, match="expected sector 1 camera 1 ccd 1") as info:
            src.fetch(ref, dest)
        assert str(info.value).startswith(name + ": is sector 1 camera 1 ccd 2")
        assert srv.count(name) == 1
    assert list(dest.iterdir()) == []


def test_mast_bulk_script_errors(mast_server: MastServer, mast: MastSource) -> None:  # noqa: F811
    with pytest.raises(NotFoundError, match="MAST has no FFI bulk script for sector 5"):
        mast.list_frames(5, 1, 1)
    mast_server.fail_times("tesscurl_sector_1_ffic.sh", 500, times=2)
    assert len(mast.list_frames(1, 1, 1)) == 3
    assert mast_server.count("tesscurl_sector_1_ffic.sh") == 3


def test_mast_offline_fails_clearly(tmp_path: Path) -> None:
    url = closed_port_url()
    with MastSource(base_url=url) as src:  # default retry policy and timeouts
        with pytest.raises(SourceError, match=rf"cannot reach MAST at {url}: .*\(offline\?\)$"):
            src.list_frames(1, 1, 1)
        ref = FrameRef(
            "tess2018206192942-s0001-1-1-0120-s_ffic.fits", src.download_url("x"), 1, 1, 1
        )
        src.retry = RetryPolicy(attempts=2, base_delay=0.01)
        with pytest.raises(SourceError, match="cannot reach MAST"):
            src.fetch(ref, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- HTTP mirror


@pytest.mark.parametrize("style", ["python", "apache", "nginx"])
def test_http_mirror_lists_and_fetches(tmp_path: Path, style: str) -> None:
    served = tmp_path / "served"
    files = make_tiny_sector(served, sector=1, cameras=(1, 2), ccds=(1, 2), n_frames=2)
    # frames on two different days
    files += make_tiny_sector(served, sector=1, cameras=(1,), ccds=(2,), n_frames=1, t0=1327.0)
    wanted = sorted(p.name for p in files if "-s0001-1-2-" in p.name)
    dest = tmp_path / "dl"
    with MastServer(served, index_style=style) as srv:
        with open_source(srv.url, **FAST) as src:
            assert isinstance(src, HttpMirrorSource)
            refs = src.list_frames(1, 1, 2)
            assert [r.file_name for r in refs] == wanted
            for r in refs:
                assert r.location == f"{srv.url}/{stpubdata_key(r.file_name)}"
            # only the needed camera-ccd directories are listed
            assert not [p for p in srv.requests if "/1-1/" in p or "/2-" in p]
            srv.truncate_times(refs[0].file_name, 0.5, times=1)
            for r in refs:
                assert src.fetch(r, dest).read_bytes() == srv.files()[r.file_name].read_bytes()
            assert srv.count(refs[0].file_name) == 2
            with pytest.raises(NotFoundError, match=r"HTTP 404"):
                src.list_frames(2, 1, 1)
    assert _no_part_files(dest)


def test_parse_index_links() -> None:
    base = "http://h/tess/public/ffi/s0001/"
    page = (
        '<a href="?C=N;O=D">Name</a><a href="/tess/public/ffi/">Parent Directory</a>'
        '<a href="../">../</a><a href="2018/">2018/</a>'
        "<a HREF='/tess/public/ffi/s0001/2019/'>2019/</a>"
        '<a href="http://other/x/">x</a><a href="2018/206/">deeper</a>'
        '<a href="f%2Bx.fits">f+x</a><a href="a.fits?x=1">a</a>'
    )
    assert parse_index_links(page, base) == ["2018/", "2019/", "f+x.fits", "a.fits"]


# --------------------------------------------------------------------------- local + S3


def test_local_source_lists_recursively(tmp_path: Path) -> None:
    root = tmp_path / "ffi"
    nested = make_tiny_sector(root, 1, cameras=(1, 2), ccds=(1,), n_frames=2, layout="stpubdata")
    flat = make_tiny_sector(root / "more" / "x", 1, cameras=(1,), ccds=(1,), n_frames=1, t0=1330)
    (root / "tess2018206192942-s0001-1-1-0120-s_ffic.fits.part").write_bytes(b"partial")
    wanted = sorted(p for p in nested + flat if "-s0001-1-1-" in p.name)
    src = open_source(str(root))
    assert isinstance(src, LocalSource)
    refs = src.list_frames(1, 1, 1)
    assert [Path(r.location) for r in refs] == sorted(wanted, key=lambda p: p.name)
    assert [r.file_name for r in refs] == sorted(r.file_name for r in refs)
    assert src.list_frames(1, 3, 3) == []
    assert src.fetch(refs[0], tmp_path / "unused") == Path(refs[0].location)
    assert not (tmp_path / "unused").exists()
    Path(refs[1].location).write_bytes(b"garbage")
    with pytest.raises(FrameError, match="not a FITS file"):
        src.fetch(refs[1], tmp_path)
    assert isinstance(open_source(f"file://{root}"), LocalSource)


def test_s3_source_with_injected_filesystem(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    bucket = f"bucket-{uuid.uuid4().hex[:8]}"
    files = make_tiny_sector(tmp_path / "src", 1, cameras=(1,), ccds=(1, 2), n_frames=2)
    try:
        for p in files:
            fs.pipe(f"{bucket}/pre/fix/{stpubdata_key(p.name)}", p.read_bytes())
        src = S3Source(bucket, "pre/fix", fs=fs, **FAST)
        refs = src.list_frames(1, 1, 2)
        wanted = sorted(p for p in files if "-1-2-" in p.name)
        assert [r.file_name for r in refs] == [p.name for p in wanted]
        assert all(r.size == p.stat().st_size for r, p in zip(refs, wanted, strict=True))
        got = src.fetch(refs[0], tmp_path / "dl")
        assert got.read_bytes() == wanted[0].read_bytes()
        fs.rm(refs[1].location)
        with pytest.raises(NotFoundError, match="not found at s3://"):
            src.fetch(refs[1], tmp_path / "dl")
        assert _no_part_files(tmp_path / "dl")
    finally:
        fs.rm(bucket, recursive=True)


def test_open_source_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    assert set(SOURCES) == {"mast", "s3", "http", "local"}
    assert all(issubclass(c, FrameSource) for c in SOURCES.values())
    s3 = open_source("s3")
    assert isinstance(s3, S3Source) and (s3.bucket, s3.prefix) == ("stpubdata", "")
    assert s3.fs.anon is True
    s3 = open_source("s3://my-bucket/some/prefix/")
    assert (s3.bucket, s3.prefix) == ("my-bucket", "some/prefix")
    assert isinstance(open_source("MAST"), MastSource)
    assert isinstance(open_source("https://example.org/mirror"), HttpMirrorSource)
    for bad in ("nonsense", "", str(tmp_path / "missing"), "s3://"):
        with pytest.raises(SourceError, match=r"unknown FFI source|bad S3 source") as info:
            open_source(bad)
        assert "\n" not in str(info.value)


def test_s3_source_uses_environment_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    url = closed_port_url()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    src = open_source("s3://lake/ffi", attempts=1, connect_timeout=1.0)
    assert isinstance(src, S3Source)
    assert src.fs.anon is False
    assert src.endpoint_url == url
    assert secret not in src.describe()
    with pytest.raises(SourceError) as info:
        src.list_frames(1, 1, 1)
    assert secret not in str(info.value) and "AKIATESTKEY" not in str(info.value)
