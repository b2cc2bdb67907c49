"""tasks.ffi: FFI names, header metadata, reading and verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.ffi import (
    FITS_BLOCK,
    FrameError,
    FrameMeta,
    btjd_to_timestamp,
    cadence_from_tstart,
    ffi_file_name,
    file_size_expected,
    parse_ffi_name,
    read_frame,
    read_frame_meta,
    science_bounds,
    verify_frame,
)
from tests.mast_server import TIMEDEL_30MIN, write_tiny_ffi

NAME = "tess2018206192942-s0001-1-1-0120-s_ffic.fits"


def _ffi(tmp_path: Path, **kw) -> Path:
    args = {"sector": 1, "camera": 1, "ccd": 1, "ffiindex": 7, "tstart": 1325.5}
    args.update(kw)
    return write_tiny_ffi(tmp_path / NAME, **args)


def _fails(path: Path, match: str, sector: int = 1, camera: int = 1, ccd: int = 1) -> FrameError:
    with pytest.raises(FrameError, match=match) as info:
        verify_frame(path, sector, camera, ccd)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(path.name + ": ")
    return info.value


# --------------------------------------------------------------------------- names


def test_parse_ffi_name() -> None:
    f = parse_ffi_name(NAME)
    assert (f.timestamp, f.sector, f.camera, f.ccd, f.scver) == ("2018206192942", 1, 1, 1, 120)
    f = parse_ffi_name(Path("/x/y") / "tess2023341220411-s0072-4-3-0273-s_ffic.fits")
    assert (f.sector, f.camera, f.ccd, f.scver) == (72, 4, 3, 273)
    assert ffi_file_name("2018206192942", 1, 1, 1) == NAME


@pytest.mark.parametrize(
    "bad",
    [
        "tess2018206192942-s0001-1-1-0120-s_ffir.fits",  # raw, not calibrated
        "tess2018206192942-s0001-5-1-0120-s_ffic.fits",  # camera 5
        "tess2018206192942-s001-1-1-0120-s_ffic.fits",  # 3-digit sector
        "tess2018206192942-s0001-1-1-0120-s_ffic.fits.gz",
        "tess2018206192942-s0001-1-1-0120-s_tp.fits",
        "",
    ],
)
def test_parse_ffi_name_rejects(bad: str) -> None:
    with pytest.raises(FrameError, match="not a TESS FFI file name") as info:
        parse_ffi_name(bad)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_btjd_to_timestamp() -> None:
    # BTJD 1325.0 = JD 2458325.0 = 2018-07-25 12:00 (day 206)
    assert btjd_to_timestamp(1325.0) == "2018206120000"


# --------------------------------------------------------------------------- metadata


def test_read_frame_meta(tmp_path: Path) -> None:
    p = _ffi(tmp_path, dquality=32, barycorr=0.0051)
    meta = read_frame_meta(p)
    assert isinstance(meta, FrameMeta)
    assert (meta.file_name, meta.sector, meta.camera, meta.ccd) == (NAME, 1, 1, 1)
    assert meta.cadence == 7
    assert meta.tstart == pytest.approx(1325.5)
    assert meta.tstop == pytest.approx(1325.5 + TIMEDEL_30MIN)
    assert meta.btjd == pytest.approx(1325.5 + TIMEDEL_30MIN / 2)
    assert meta.dquality == 32
    assert meta.barycorr == pytest.approx(0.0051)
    assert meta.exposure_days == pytest.approx(0.8 * TIMEDEL_30MIN)
    assert read_frame_meta(p, file_name="other.fits").file_name == "other.fits"


def test_cadence_from_tstart_when_no_ffiindex(tmp_path: Path) -> None:
    tstart = 1330.0 + 17 * TIMEDEL_30MIN
    p = _ffi(tmp_path, ffiindex=None, tstart=tstart)
    meta = read_frame_meta(p)
    assert meta.cadence == round((tstart - 1325.0) / TIMEDEL_30MIN) == 257
    assert meta.cadence == cadence_from_tstart(tstart, TIMEDEL_30MIN)
    # the next frame gets the next number even if frames in between are missing
    assert cadence_from_tstart(tstart + 3 * TIMEDEL_30MIN, TIMEDEL_30MIN) == 260


def test_ffiindex_in_image_header_only(tmp_path: Path) -> None:
    p = _ffi(tmp_path, ffiindex=None, header1={"FFIINDEX": 4242})
    assert read_frame_meta(p).cadence == 4242


def test_identity_keywords_from_image_header(tmp_path: Path) -> None:
    p = _ffi(tmp_path, primary={"SECTOR": None, "CAMERA": None, "CCD": None}, header1={"SECTOR": 1})
    meta = verify_frame(p, 1, 1, 1)
    assert (meta.sector, meta.camera, meta.ccd) == (1, 1, 1)


# --------------------------------------------------------------------------- reading


def test_read_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(100.0, 5.0, (42, 100)).astype(np.float32)
    image[3, 50] = np.nan
    uncert = np.full((42, 100), 2.5, np.float32)
    p = _ffi(tmp_path, image=image, uncert=uncert)
    frame = read_frame(p, 1, 1, 1)
    assert frame.image.dtype == np.float32 and frame.image.dtype.isnative
    assert frame.uncert.dtype == np.float32 and frame.uncert.dtype.isnative
    assert frame.image.shape == frame.uncert.shape == (42, 100)
    np.testing.assert_array_equal(frame.image, image)
    np.testing.assert_array_equal(frame.uncert, uncert)
    assert frame.meta == read_frame_meta(p)
    assert frame.wcs_header["CTYPE1"] == "RA---TAN"
    assert frame.wcs_header["NAXIS1"] == 100
    with pytest.raises(FrameError, match="expected sector 1 camera 1 ccd 2"):
        read_frame(p, 1, 1, 2)


@pytest.mark.slow
def test_read_full_size_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(100.0, 5.0, (2078, 2136)).astype(np.float32)
    p = _ffi(tmp_path, image=image, uncert=np.sqrt(np.abs(image)))
    assert p.stat().st_size == file_size_expected(p) == 35_519_040
    assert verify_frame(p, 1, 1, 1).cadence == 7
    frame = read_frame(p, 1, 1, 1)
    np.testing.assert_array_equal(frame.image, image)
    assert science_bounds(frame.image.shape) == (0, 2048, 44, 2092)


def test_science_bounds() -> None:
    assert science_bounds((2078, 2136)) == (0, 2048, 44, 2092)
    n = 12
    assert science_bounds((n + 30, n + 88)) == (0, n, 44, n + 44)
    with pytest.raises(ValueError):
        science_bounds((30, 200))
    with pytest.raises(ValueError):
        science_bounds((100,))


# --------------------------------------------------------------------------- verification


def test_verify_ok(tmp_path: Path) -> None:
    p = _ffi(tmp_path)
    meta = verify_frame(p, 1, 1, 1)
    assert meta == read_frame_meta(p)
    part = p.with_name(p.name + ".part")
    p.rename(part)
    assert verify_frame(part, 1, 1, 1, file_name=NAME).file_name == NAME


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_verify_truncated_in_data(tmp_path: Path, keep: float) -> None:
    p = _ffi(tmp_path)
    full = p.stat().st_size
    cut = int(full * keep) // FITS_BLOCK * FITS_BLOCK + 1000
    if cut >= full:
        cut = full - 1000
    p.write_bytes(p.read_bytes()[:cut])
    err = _fails(p, rf"truncated: {cut} of (at least \d+|{full}) bytes$|ends inside the header")
    assert err.retryable


def test_verify_truncated_message_is_exact_in_last_hdu(tmp_path: Path) -> None:
    p = _ffi(tmp_path)
    full = p.stat().st_size
    p.write_bytes(p.read_bytes()[: full - 1000])
    _fails(p, rf"truncated: {full - 1000} of {full} bytes$")


def test_verify_truncated_in_header(tmp_path: Path) -> None:
    p = _ffi(tmp_path)
    p.write_bytes(p.read_bytes()[:1000])
    err = _fails(p, "truncated: 1000 bytes, the file ends inside the primary header")
    assert err.retryable
    p.write_bytes(b"")
    _fails(p, "truncated: 0 bytes")


def test_verify_missing_uncertainty_hdu(tmp_path: Path) -> None:
    p = _ffi(tmp_path)
    data = p.read_bytes()
    starts = [i for i in range(0, len(data), FITS_BLOCK) if data[i : i + 9] == b"XTENSION="]
    assert len(starts) == 2
    p.write_bytes(data[: starts[1]])  # cut exactly before the uncertainty HDU
    assert _fails(p, r"has 2 HDUs, expected image HDU 1 and uncertainty HDU 2").retryable


def test_verify_size_not_multiple_of_block(tmp_path: Path) -> None:
    p = _ffi(tmp_path)
    p.write_bytes(p.read_bytes() + b"junk")
    _fails(p, r"bad size: \d+ bytes is not a multiple of 2880")


def test_verify_bad_headers(tmp_path: Path) -> None:
    p = _ffi(tmp_path)
    good = p.read_bytes()
    p.write_bytes(b"<html>not found</html>".ljust(2 * FITS_BLOCK))
    _fails(p, "not a FITS file")
    # the extension header of HDU 1 replaced by garbage
    bad = bytearray(good)
    bad[FITS_BLOCK : FITS_BLOCK + 80] = b"X" * 80
    p.write_bytes(bytes(bad))
    assert _fails(p, "bad FITS structure: no XTENSION card at byte 2880").retryable
    # a non-integer NAXIS2
    i = good.index(b"NAXIS2  =", FITS_BLOCK)
    bad = bytearray(good)
    bad[i : i + 80] = b"NAXIS2  = 'abc'".ljust(80)
    p.write_bytes(bytes(bad))
    _fails(p, "bad FITS header in HDU 1: NAXIS2='abc' is not an integer")
    # no END card anywhere
    p.write_bytes(good[:80] + b"COMMENT".ljust(80) * 200)
    _fails(p, "ends inside the primary header")
    # non-numeric TSTART
    p = _ffi(tmp_path, header1={"TSTART": "yesterday"})
    _fails(p, "bad keyword TSTART='yesterday' in HDU 1")


def test_verify_wrong_identity(tmp_path: Path) -> None:
    p = _ffi(tmp_path, sector=2, camera=3, ccd=4)
    err = _fails(p, "is sector 2 camera 3 ccd 4, expected sector 1 camera 1 ccd 1")
    assert not err.retryable
    assert verify_frame(p, 2, 3, 4).sector == 2
    # primary and image header disagree
    p = _ffi(tmp_path, header1={"CCD": 3})
    _fails(p, "expected sector 1 camera 1 ccd 1")


@pytest.mark.parametrize(
    ("fill", "match"),
    [
        (0.0, "image HDU 1 is all zero"),
        (np.nan, "image HDU 1 is all NaN/inf"),
        (np.inf, "image HDU 1 is all NaN/inf"),
    ],
)
def test_verify_empty_image(tmp_path: Path, fill: float, match: str) -> None:
    image = np.full((42, 100), fill, np.float32)
    p = _ffi(tmp_path, image=image, uncert=np.ones_like(image))
    assert not _fails(p, match).retryable


def test_verify_zeros_with_nans_is_empty(tmp_path: Path) -> None:
    image = np.zeros((42, 100), np.float32)
    image[:5] = np.nan
    p = _ffi(tmp_path, image=image, uncert=np.ones_like(image))
    _fails(p, "all zero")
    image[10, 50] = 1.0  # one real pixel is enough
    p = _ffi(tmp_path, image=image, uncert=np.ones_like(image))
    assert verify_frame(p, 1, 1, 1).cadence == 7


@pytest.mark.parametrize(
    ("primary", "header1", "missing"),
    [
        ({}, {"TSTART": None}, "TSTART"),
        ({}, {"TSTOP": None, "DQUALITY": None}, "TSTOP, DQUALITY"),
        ({}, {"BARYCORR": None}, "BARYCORR"),
        ({"SECTOR": None}, {}, "SECTOR"),
        ({"CAMERA": None}, {"CAMERA": None}, "CAMERA"),
    ],
)
def test_verify_missing_keywords(
    tmp_path: Path, primary: dict, header1: dict, missing: str
) -> None:
    p = _ffi(tmp_path, primary=primary, header1=header1)
    assert not _fails(p, f"missing keyword\\(s\\) {missing}$").retryable


def test_verify_shape_mismatch(tmp_path: Path) -> None:
    img = np.ones((42, 100), np.float32)
    p = _ffi(tmp_path, image=img, uncert=np.ones((40, 100), np.float32))
    _fails(p, r"image HDU 1 \(42, 100\) and uncertainty HDU 2 \(40, 100\) differ")


def test_verify_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FrameError, match="no such file"):
        verify_frame(tmp_path / NAME, 1, 1, 1)
