"""TESS SPOC calibrated full-frame images (``*_ffic.fits``): names, metadata, reading, verification.

A ``*_ffic.fits`` file has three HDUs (see ``docs/architecture.md``):

- HDU 0: primary header (SECTOR, CAMERA, CCD, FFIINDEX, ...), no data;
- HDU 1: float32 calibrated image, 2078 rows x 2136 columns, e-/s, with TSTART/TSTOP (BTJD [d]),
  BARYCORR [d], DQUALITY, EXPOSURE [d], TIMEDEL [d] and the WCS;
- HDU 2: float32 1-sigma uncertainty image of the same shape, e-/s.

The headers are parsed here with a small FITS block walker (headers go through
``astropy.io.fits.Header.fromstring``), which also gives the exact byte offsets of the data:
images are then read with one ``numpy.fromfile`` each, and a truncated file is detected exactly
(the headers declare how many bytes each HDU must have).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

__all__ = [
    "FFI_NAME_RE",
    "FITS_BLOCK",
    "FfiName",
    "Frame",
    "FrameError",
    "FrameMeta",
    "HduSpan",
    "btjd_to_timestamp",
    "cadence_from_tstart",
    "ffi_file_name",
    "file_size_expected",
    "hdu_spans",
    "parse_ffi_name",
    "read_frame",
    "read_frame_meta",
    "science_bounds",
    "verify_frame",
]

#: ``tess{YYYYDDDHHMMSS}-s{SSSS}-{camera}-{ccd}-{SCVER:04d}-s_ffic.fits``
FFI_NAME_RE = re.compile(
    r"^tess(?P<timestamp>\d{13})-s(?P<sector>\d{4})-(?P<camera>[1-4])-(?P<ccd>[1-4])"
    r"-(?P<scver>\d{4})-s_ffic\.fits$"
)
#: FITS files are made of 2880-byte blocks
FITS_BLOCK = 2880
#: rows below the science area (virtual/smear rows at the top of the array)
SCIENCE_ROW_MARGIN = 30
#: columns on each side of the science area (underclock/overclock columns)
SCIENCE_COL_MARGIN = 44
#: BTJD [d] origin of the cadence derived from TSTART when FFIINDEX is missing (start of sector 1)
CADENCE_T0_BTJD = 1325.0

_MAX_HDUS = 16
_MAX_HEADER_BLOCKS = 2000
_FLOAT_DTYPES = {-32: ">f4", -64: ">f8"}
_INT_DTYPES = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8"}


class FrameError(ValueError):
    """A FFI file is missing, malformed, incomplete or not the requested one.

    The message is one line and starts with the file name. ``retryable`` is True when the
    problem looks like an incomplete or damaged transfer (truncated file, broken FITS
    structure), so downloading the file again may help; it is False for a complete,
    well-formed file with the wrong content (other sector/camera/CCD, missing keywords,
    empty image).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class FfiName:
    """The parts of a SPOC FFI file name."""

    timestamp: str  # 'YYYYDDDHHMMSS' (UTC year, day of year, time)
    sector: int
    camera: int
    ccd: int
    scver: int  # SPOC science-processing version


def parse_ffi_name(name: str | os.PathLike[str]) -> FfiName:
    """Parse ``tess{YYYYDDDHHMMSS}-s{SSSS}-{camera}-{ccd}-{SCVER}-s_ffic.fits``.

    A path is accepted (only its last component is parsed). Raises `FrameError` otherwise.
    """
    base = os.path.basename(os.fspath(name))
    m = FFI_NAME_RE.match(base)
    if m is None:
        raise FrameError(
            f"{base or name!r}: not a TESS FFI file name "
            "(expected tess{YYYYDDDHHMMSS}-s{SSSS}-{camera}-{ccd}-{SCVER}-s_ffic.fits)"
        )
    return FfiName(
        timestamp=m["timestamp"],
        sector=int(m["sector"]),
        camera=int(m["camera"]),
        ccd=int(m["ccd"]),
        scver=int(m["scver"]),
    )


def ffi_file_name(timestamp: str, sector: int, camera: int, ccd: int, scver: int = 120) -> str:
    """Build a SPOC FFI file name from its parts (``timestamp`` = 'YYYYDDDHHMMSS')."""
    return f"tess{timestamp}-s{sector:04d}-{camera}-{ccd}-{scver:04d}-s_ffic.fits"


def btjd_to_timestamp(btjd: float) -> str:
    """'YYYYDDDHHMMSS' of a BTJD [d], as in FFI file names (BTJD treated as UTC, ~1 min off)."""
    t = _dt.datetime(2014, 12, 8, 12, tzinfo=_dt.UTC) + _dt.timedelta(days=float(btjd))
    return t.strftime("%Y%j%H%M%S")


@dataclass(frozen=True)
class FrameMeta:
    """Header metadata of one FFI (all times BTJD = BJD_TDB - 2457000, in days)."""

    file_name: str
    sector: int
    camera: int
    ccd: int
    #: FFIINDEX (primary header); when absent, ``cadence_from_tstart(tstart, timedel)``
    cadence: int
    tstart: float  # start of exposure, BTJD [d]
    tstop: float  # end of exposure, BTJD [d]
    btjd: float  # mid-exposure (tstart + tstop) / 2, BTJD [d]
    dquality: int  # SPOC DQUALITY bits (HDU 1)
    barycorr: float  # barycentric correction applied at the CCD centre [d]
    exposure_days: float  # EXPOSURE (time on source) [d]; TSTOP - TSTART when absent


@dataclass
class Frame:
    """One FFI in memory: metadata, calibrated image and its uncertainty (both e-/s)."""

    meta: FrameMeta
    image: np.ndarray  # float32 (rows, cols) calibrated flux [e-/s]
    uncert: np.ndarray  # float32 (rows, cols) 1-sigma uncertainty [e-/s]
    wcs_header: fits.Header  # the full HDU 1 header (carries the TAN-SIP WCS)


def cadence_from_tstart(tstart: float, timedel: float) -> int:
    """Stable cadence number when FFIINDEX is missing: ``round((tstart - 1325.0) / timedel)``.

    ``tstart`` and ``timedel`` in days. 1325.0 BTJD is just before the start of sector 1, so
    the number grows monotonically with time across the mission and a missing file never
    shifts another frame's number (it is not SPOC's FFIINDEX, only a substitute for it).
    """
    if not (timedel > 0 and math.isfinite(timedel) and math.isfinite(tstart)):
        raise ValueError(f"cannot derive a cadence from TSTART={tstart} TIMEDEL={timedel}")
    return round((tstart - CADENCE_T0_BTJD) / timedel)


def science_bounds(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Half-open science-pixel bounds ``(row0, row1, col0, col1)`` of an FFI array of ``shape``.

    ``shape`` is (rows, cols). Science pixels are rows ``0 .. rows-30`` and columns
    ``44 .. cols-44`` (half-open): rows 0-2047 and columns 44-2091 of a real 2078x2136 FFI,
    and rows 0..N-1, columns 44..N+43 of a simulated (N+30) x (N+88) frame.
    """
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D (rows, cols) shape, got {shape!r}")
    rows, cols = int(shape[0]), int(shape[1])
    row1, col0, col1 = rows - SCIENCE_ROW_MARGIN, SCIENCE_COL_MARGIN, cols - SCIENCE_COL_MARGIN
    if row1 <= 0 or col1 <= col0:
        raise ValueError(f"shape {shape!r} has no science pixels (needs > 30 rows, > 88 cols)")
    return 0, row1, col0, col1


# --------------------------------------------------------------------------- FITS structure


@dataclass(frozen=True)
class _Hdu:
    index: int
    header: fits.Header
    header_offset: int  # byte offset of the header
    data_offset: int  # byte offset of the data
    data_size: int  # bytes of data declared by the header (unpadded)
    bitpix: int
    shape: tuple[int, ...]  # numpy order (NAXISn, ..., NAXIS1)

    @property
    def end(self) -> int:
        """Byte offset just after the padded data."""
        return self.data_offset + _padded(self.data_size)


def _padded(nbytes: int) -> int:
    return -(-nbytes // FITS_BLOCK) * FITS_BLOCK


def _int_kw(header: fits.Header, key: str, name: str, hdu: int) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise FrameError(
            f"{name}: bad FITS header in HDU {hdu}: {key}={value!r} is not an integer",
            retryable=True,
        )
    return int(value)


def _end_card_index(block: bytes) -> int:
    for i in range(0, FITS_BLOCK, 80):
        card = block[i : i + 80]
        if card[:3] == b"END" and card[3:].strip(b" ") == b"":
            return i
    return -1


def _scan_hdus(f, name: str, size: int, max_hdus: int = _MAX_HDUS) -> tuple[list[_Hdu], str]:
    """Walk the HDUs of an open binary FITS file.

    Returns the HDUs found (at most ``max_hdus``) and ``""``, or the HDUs complete so far and a
    truncation message when the file ends inside a header. Raises `FrameError` on malformed
    structure.
    """
    hdus: list[_Hdu] = []
    offset = 0
    while len(hdus) < max_hdus and offset < size:
        i = len(hdus)
        if i >= 3 and size - offset < FITS_BLOCK:
            break  # trailing bytes after the three FFI HDUs: left to the size check
        f.seek(offset)
        blocks: list[bytes] = []
        while True:
            block = f.read(FITS_BLOCK)
            if i == 0 and not blocks and not block.startswith(b"SIMPLE  ="[: len(block)]):
                raise FrameError(f"{name}: not a FITS file (no SIMPLE = T card)")
            if len(block) < FITS_BLOCK:
                where = "the primary header" if i == 0 else f"the header of HDU {i}"
                return hdus, f"truncated: {size} bytes, the file ends inside {where}"
            if not blocks:
                first = block[:80]
                if i == 0 and not (first.startswith(b"SIMPLE  =") and first[10:30].strip() == b"T"):
                    raise FrameError(f"{name}: not a FITS file (no SIMPLE = T card)")
                if i >= 3 and not first.startswith(b"XTENSION="):
                    return hdus, ""  # trailing data after the three FFI HDUs: ignored
                if i > 0 and not first.startswith(b"XTENSION="):
                    raise FrameError(
                        f"{name}: bad FITS structure: no XTENSION card at byte {offset} (HDU {i})",
                        retryable=True,
                    )
            blocks.append(block)
            end = _end_card_index(block)
            if end >= 0:
                break
            if len(blocks) > _MAX_HEADER_BLOCKS:
                raise FrameError(f"{name}: bad FITS header in HDU {i}: no END card", retryable=True)
        raw = b"".join(blocks)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(
                f"{name}: bad FITS header in HDU {i}: non-ASCII bytes", retryable=True
            ) from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = fits.Header.fromstring(text)
        except Exception as exc:  # astropy raises various errors on garbage
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FrameError(f"{name}: bad FITS header in HDU {i}: {msg}", retryable=True) from None
        bitpix = _int_kw(header, "BITPIX", name, i)
        if bitpix not in _FLOAT_DTYPES and bitpix not in _INT_DTYPES:
            raise FrameError(f"{name}: bad FITS header in HDU {i}: BITPIX={bitpix}", retryable=True)
        naxis = _int_kw(header, "NAXIS", name, i)
        if not 0 <= naxis <= 999:
            raise FrameError(f"{name}: bad FITS header in HDU {i}: NAXIS={naxis}", retryable=True)
        axes = [_int_kw(header, f"NAXIS{k}", name, i) for k in range(1, naxis + 1)]
        if any(a < 0 for a in axes):
            raise FrameError(f"{name}: bad FITS header in HDU {i}: negative NAXISn", retryable=True)
        if naxis == 0:
            nelem = 0
        else:
            nelem = math.prod(axes)
            if i > 0:  # extensions: random groups / heap
                pcount = _int_kw(header, "PCOUNT", name, i) if "PCOUNT" in header else 0
                gcount = _int_kw(header, "GCOUNT", name, i) if "GCOUNT" in header else 1
                nelem = gcount * (pcount + nelem)
        data_offset = offset + len(raw)
        hdu = _Hdu(
            index=i,
            header=header,
            header_offset=offset,
            data_offset=data_offset,
            data_size=nelem * abs(bitpix) // 8,
            bitpix=bitpix,
            shape=tuple(reversed(axes)),
        )
        hdus.append(hdu)
        offset = hdu.end
    return hdus, ""


@dataclass(frozen=True)
class HduSpan:
    """Where one HDU lies in a FITS file (byte offsets; ``end`` is after the padded data)."""

    index: int
    header: fits.Header
    header_offset: int
    data_offset: int
    end: int


def hdu_spans(f, size: int, name: str, max_hdus: int = 3) -> tuple[list[HduSpan], str]:
    """Byte layout of the first ``max_hdus`` HDUs of an open binary file of ``size`` bytes.

    Only the header blocks are read (``f`` needs ``seek``/``read``), so with a file object
    that fetches byte ranges on demand (S3, HTTP) the layout of a 35 MB FFI costs a few kB.
    Returns the HDUs and ``""``, or the complete HDUs and a truncation message. Raises
    `FrameError` on malformed structure.
    """
    hdus, truncated = _scan_hdus(f, name, size, max_hdus)
    spans = [HduSpan(h.index, h.header, h.header_offset, h.data_offset, h.end) for h in hdus]
    return spans, truncated


def _open_hdus(
    path: str | os.PathLike[str], name: str, max_hdus: int
) -> tuple[list[_Hdu], int, str]:
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except FileNotFoundError:
        raise FrameError(f"{name}: no such file: {os.fspath(path)}") from None
    except OSError as exc:
        raise FrameError(f"{name}: cannot open: {exc.strerror or exc}") from None
    with f:
        if size == 0:
            raise FrameError(f"{name}: truncated: 0 bytes (empty file)", retryable=True)
        hdus, truncated = _scan_hdus(f, name, size, max_hdus)
    return hdus, size, truncated


def _find(headers: list[fits.Header], key: str):
    for h in headers:
        if key in h:
            return h[key]
    return None


def _number(value, key: str, name: str, hdu: str, *, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise FrameError(f"{name}: bad keyword {key}={value!r} in {hdu} (not a number)")
    if integer:
        if float(value) != int(value):
            raise FrameError(f"{name}: bad keyword {key}={value!r} in {hdu} (not an integer)")
        return int(value)
    if not math.isfinite(float(value)):
        raise FrameError(f"{name}: bad keyword {key}={value!r} in {hdu} (not finite)")
    return float(value)


def _meta_from_headers(name: str, h0: fits.Header, h1: fits.Header) -> FrameMeta:
    """Build FrameMeta; raises FrameError on missing/invalid keywords."""
    missing = [k for k in ("SECTOR", "CAMERA", "CCD") if k not in h0 and k not in h1]
    missing += [k for k in ("TSTART", "TSTOP", "DQUALITY", "BARYCORR") if k not in h1]
    if missing:
        raise FrameError(f"{name}: missing keyword(s) {', '.join(missing)}")
    ident = {}
    for key in ("SECTOR", "CAMERA", "CCD"):
        where = "primary header" if key in h0 else "HDU 1"
        ident[key] = _number(_find([h0, h1], key), key, name, where, integer=True)
    tstart = _number(h1["TSTART"], "TSTART", name, "HDU 1")
    tstop = _number(h1["TSTOP"], "TSTOP", name, "HDU 1")
    if tstop < tstart:
        raise FrameError(f"{name}: bad keywords: TSTOP={tstop} < TSTART={tstart}")
    dquality = _number(h1["DQUALITY"], "DQUALITY", name, "HDU 1", integer=True)
    barycorr = _number(h1["BARYCORR"], "BARYCORR", name, "HDU 1")
    exposure = h1.get("EXPOSURE")
    exposure_days = (
        tstop - tstart if exposure is None else _number(exposure, "EXPOSURE", name, "HDU 1")
    )
    ffiindex = _find([h0, h1], "FFIINDEX")
    if ffiindex is not None:
        cadence = _number(ffiindex, "FFIINDEX", name, "header", integer=True)
    else:
        timedel = h1.get("TIMEDEL")
        timedel = tstop - tstart if timedel is None else _number(timedel, "TIMEDEL", name, "HDU 1")
        try:
            cadence = cadence_from_tstart(tstart, timedel)
        except ValueError as exc:
            raise FrameError(f"{name}: no FFIINDEX and {exc}") from None
    return FrameMeta(
        file_name=name,
        sector=ident["SECTOR"],
        camera=ident["CAMERA"],
        ccd=ident["CCD"],
        cadence=cadence,
        tstart=tstart,
        tstop=tstop,
        btjd=(tstart + tstop) / 2.0,
        dquality=dquality,
        barycorr=barycorr,
        exposure_days=exposure_days,
    )


def _display_name(path: str | os.PathLike[str], file_name: str | None) -> str:
    return file_name if file_name else os.path.basename(os.fspath(path))


def _check_identity(
    name: str, h0: fits.Header, h1: fits.Header, sector: int, camera: int, ccd: int
) -> None:
    wanted = {"SECTOR": sector, "CAMERA": camera, "CCD": ccd}
    for hdr in (h0, h1):
        for key, want in wanted.items():
            if key in hdr and hdr[key] != want:
                got = {k: _find([h0, h1], k) for k in wanted}
                raise FrameError(
                    f"{name}: is sector {got['SECTOR']} camera {got['CAMERA']} ccd {got['CCD']}"
                    f", expected sector {sector} camera {camera} ccd {ccd}"
                )


def read_frame_meta(path: str | os.PathLike[str], *, file_name: str | None = None) -> FrameMeta:
    """Read the header metadata of an FFI (only the primary and HDU 1 headers are read).

    ``file_name`` overrides the name recorded in `FrameMeta` and in error messages (default:
    the path's last component). Times are BTJD [d]. Raises `FrameError`.
    """
    name = _display_name(path, file_name)
    hdus, _size, truncated = _open_hdus(path, name, max_hdus=2)
    if len(hdus) < 2:
        raise FrameError(f"{name}: {truncated or 'no image HDU 1'}", retryable=bool(truncated))
    return _meta_from_headers(name, hdus[0].header, hdus[1].header)


def _read_array(path: str | os.PathLike[str], hdu: _Hdu, name: str) -> np.ndarray:
    count = math.prod(hdu.shape)
    if hdu.bitpix in _FLOAT_DTYPES and "BSCALE" not in hdu.header and "BZERO" not in hdu.header:
        dtype = np.dtype(_FLOAT_DTYPES[hdu.bitpix])
        with open(path, "rb") as f:
            f.seek(hdu.data_offset)
            raw = np.fromfile(f, dtype=dtype, count=count)
        if raw.size != count:
            raise FrameError(
                f"{name}: truncated: HDU {hdu.index} has {raw.size} of {count} pixels",
                retryable=True,
            )
        return raw.astype(np.float32).reshape(hdu.shape)
    # rare layouts (scaled integers): let astropy apply BSCALE/BZERO
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        return np.asarray(hdul[hdu.index].data, dtype=np.float32)


def _image_pair(hdus: list[_Hdu], name: str) -> tuple[_Hdu, _Hdu]:
    if len(hdus) < 3:
        raise FrameError(
            f"{name}: has {len(hdus)} HDUs, expected image HDU 1 and uncertainty HDU 2"
            " (truncated?)",
            retryable=True,
        )
    for h in hdus[1:3]:
        xt = str(h.header.get("XTENSION", "")).strip()
        if xt != "IMAGE":
            raise FrameError(f"{name}: HDU {h.index} is not an image (XTENSION={xt!r})")
        if len(h.shape) != 2 or 0 in h.shape:
            raise FrameError(f"{name}: HDU {h.index} is not a 2-D image (shape {h.shape})")
    if hdus[1].shape != hdus[2].shape:
        raise FrameError(
            f"{name}: image HDU 1 {hdus[1].shape} and uncertainty HDU 2 {hdus[2].shape} differ"
        )
    return hdus[1], hdus[2]


def read_frame(
    path: str | os.PathLike[str],
    sector: int,
    camera: int,
    ccd: int,
    *,
    file_name: str | None = None,
) -> Frame:
    """Read an FFI: metadata, image (HDU 1) and uncertainty (HDU 2) as float32 e-/s arrays.

    Checks that the file is the requested sector/camera/CCD (``FrameError`` otherwise) but
    does not do the full `verify_frame` checks. Native-endian float32 (rows, cols) arrays are
    returned; a full 2078x2136 frame reads in a few tens of ms from the page cache.
    """
    name = _display_name(path, file_name)
    hdus, _size, truncated = _open_hdus(path, name, max_hdus=3)
    if truncated:
        raise FrameError(f"{name}: {truncated}", retryable=True)
    h0 = hdus[0].header
    h1 = hdus[1].header if len(hdus) > 1 else fits.Header()
    _check_identity(name, h0, h1, sector, camera, ccd)
    img_hdu, err_hdu = _image_pair(hdus, name)
    meta = _meta_from_headers(name, h0, h1)
    image = _read_array(path, img_hdu, name)
    uncert = _read_array(path, err_hdu, name)
    return Frame(meta=meta, image=image, uncert=uncert, wcs_header=h1.copy())


def verify_frame(
    path: str | os.PathLike[str],
    sector: int,
    camera: int,
    ccd: int,
    *,
    file_name: str | None = None,
) -> FrameMeta:
    """Check that ``path`` is a complete, readable FFI of the requested sector/camera/CCD.

    Checks, in order: the FITS structure (primary + extensions, headers with END cards); the
    file size is a multiple of 2880 bytes and at least what the headers declare; HDUs 1 and 2
    are 2-D images of equal shape; SECTOR/CAMERA/CCD (primary or HDU 1) and TSTART, TSTOP,
    DQUALITY, BARYCORR (HDU 1) are present and numeric; SECTOR/CAMERA/CCD match; the image
    has at least one finite, non-zero pixel (the image data are read once).

    ``file_name`` names the file in messages and in the returned `FrameMeta` (useful when
    verifying ``*.part`` downloads). Raises `FrameError` with a one-line reason;
    ``FrameError.retryable`` tells whether downloading again may help.
    """
    name = _display_name(path, file_name)
    hdus, size, truncated = _open_hdus(path, name, max_hdus=_MAX_HDUS)
    if truncated:
        raise FrameError(f"{name}: {truncated}", retryable=True)
    expected = hdus[-1].end
    if size < expected:
        # exact when the file ends in the last (uncertainty) HDU; a lower bound before it
        bound = "" if len(hdus) >= 3 else "at least "
        raise FrameError(f"{name}: truncated: {size} of {bound}{expected} bytes", retryable=True)
    if size % FITS_BLOCK:
        raise FrameError(
            f"{name}: bad size: {size} bytes is not a multiple of {FITS_BLOCK}", retryable=True
        )
    img_hdu, _err_hdu = _image_pair(hdus, name)
    h0, h1 = hdus[0].header, hdus[1].header
    meta = _meta_from_headers(name, h0, h1)
    _check_identity(name, h0, h1, sector, camera, ccd)
    if img_hdu.bitpix not in _FLOAT_DTYPES:
        raise FrameError(f"{name}: HDU 1 has BITPIX={img_hdu.bitpix}, expected -32 or -64")
    image = _read_array(path, img_hdu, name)
    n = image.size
    n_finite = int(np.count_nonzero(np.isfinite(image)))
    if n_finite == 0:
        raise FrameError(f"{name}: image HDU 1 is all NaN/inf")
    # NaN/inf count as non-zero, so all finite pixels are zero iff nonzero == non-finite
    if int(np.count_nonzero(image)) == n - n_finite:
        raise FrameError(f"{name}: image HDU 1 is all zero")
    return meta


def file_size_expected(path: str | os.PathLike[str]) -> int:
    """Bytes an FFI must have according to its headers (all HDUs, padded to 2880)."""
    name = os.path.basename(os.fspath(path))
    hdus, _size, truncated = _open_hdus(path, name, max_hdus=_MAX_HDUS)
    if truncated:
        raise FrameError(f"{name}: {truncated}", retryable=True)
    return hdus[-1].end
