"""TESS SPOC calibrated full-frame images (``*_ffic.fits``): names, metadata, reading, verification.

A ``*_ffic.fits`` file has three HDUs (see ``docs/architecture.md``):

- HDU 0: primary header (SECTOR, CAMERA, CCD, FFIINDEX, ...), no data;
- HDU 1: float32 calibrated image, 2078 rows x 2136 columns, e-/s, with TSTART/TSTOP (BTJD [d]),
  BARYCORR [d], DQUALITY, EXPOSURE [d], TIMEDEL [d] and the WCS;
- HDU 2: float32 1-sigma uncertainty image of the same shape, e-/s.

The headers are parsed here with a small FITS block walker that gives the exact byte offsets
of the data and reads only the keywords it needs (`_Cards`, values parsed on first access;
astropy parses a header only when asked for it, e.g. the WCS header of a `Frame`). Both images
are then read with one ``readinto`` into one native float32 buffer, byte-swapped in place, and
a truncated file is detected exactly (the headers declare how many bytes each HDU must have).
Verification reads the image data only until it meets a finite, non-zero pixel.
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


class Frame:
    """One FFI in memory: metadata, calibrated image and its uncertainty (both e-/s).

    ``wcs_header`` is the full HDU 1 header (carries the TAN-SIP WCS) as a
    ``fits.Header``; given as the header's FITS text (80-character cards) it is parsed
    on first access only (most frames never need it).
    """

    __slots__ = ("_header", "image", "meta", "uncert")

    def __init__(
        self, meta: FrameMeta, image: np.ndarray, uncert: np.ndarray, wcs_header: fits.Header | str
    ) -> None:
        self.meta = meta
        self.image = image  # float32 (rows, cols) calibrated flux [e-/s]
        self.uncert = uncert  # float32 (rows, cols) 1-sigma uncertainty [e-/s]
        self._header = wcs_header

    @property
    def wcs_header(self) -> fits.Header:
        """The full HDU 1 header (a new ``fits.Header`` parsed once from the file's text)."""
        if isinstance(self._header, str):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._header = fits.Header.fromstring(self._header)
        return self._header

    @wcs_header.setter
    def wcs_header(self, header: fits.Header) -> None:
        self._header = header

    def __repr__(self) -> str:
        return f"Frame({self.meta!r}, image {self.image.dtype}{self.image.shape})"


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

#: a FITS integer / real value (fixed or free format, as astropy accepts them)
_INT_VALUE = re.compile(r"[+-]? *\d+")
_REAL_VALUE = re.compile(r"[+-]? *(?:\.\d+|\d+(?:\.\d*)?) *(?:[deDE] *[+-]? *\d+)?")
#: one 80-character card: (keyword, value field) of a value card, ("", "") for any other
_CARD = re.compile(r"([^=]{8})= (.{70})|.{80}", re.DOTALL)


class _Cards:
    """The keyword cards of one FITS header, values parsed on first access.

    Keys are the 8-character keywords of the cards with a value indicator (``= `` in
    columns 9-10); a repeated keyword keeps its first card, as ``fits.Header[key]`` does.
    Values are ``int``, ``float``, ``bool``, ``str`` (quotes removed, trailing blanks
    stripped) or ``None`` (undefined). A value that is none of these raises `FrameError`
    naming the file and HDU. ``text`` is the header's FITS text (for ``fits.Header``).
    """

    __slots__ = ("_parsed", "_raw", "hdu", "name", "text")

    def __init__(self, text: str, name: str, hdu: int) -> None:
        self.text, self.name, self.hdu = text, name, hdu
        # every card matches one alternative (80 characters): the matches stay card-aligned;
        # reversed, so that the first of repeated keywords wins
        cards = _CARD.findall(text[: len(text) // 80 * 80])
        self._raw = {key.rstrip(" ").upper(): v for key, v in reversed(cards) if key}
        self._parsed: dict[str, object] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._raw

    def __getitem__(self, key: str):
        try:
            return self._parsed[key]
        except KeyError:
            pass
        value = _card_value(self._raw[key])
        if value is _BAD:
            raise FrameError(
                f"{self.name}: bad FITS header in HDU {self.hdu}: unparsable value of {key}: "
                f"{self._raw[key].strip()!r}",
                retryable=True,
            )
        self._parsed[key] = value
        return value

    def get(self, key: str, default=None):
        """The value of ``key``, or ``default`` when the header has no such card."""
        return self[key] if key in self._raw else default

    def header(self) -> fits.Header:
        """The whole header as a new ``fits.Header``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fits.Header.fromstring(self.text)


_BAD = object()


def _card_value(field: str):
    """Value of a card from its value field (columns 11-80): see `_Cards`."""
    s = field.lstrip(" ")
    if s.startswith("'"):  # a string: '' is a quote; the comment follows the closing quote
        parts, i = [], 1
        while True:
            j = s.find("'", i)
            if j < 0:
                return _BAD
            if s.startswith("''", j):
                parts.append(s[i : j + 1])
                i = j + 2
                continue
            parts.append(s[i:j])
            return "".join(parts).rstrip(" ")
    value = s.split("/", 1)[0].strip(" ")
    if not value:
        return None
    if value in ("T", "F"):
        return value == "T"
    if _INT_VALUE.fullmatch(value):
        return int(value.replace(" ", ""))
    if _REAL_VALUE.fullmatch(value):
        return float(value.replace(" ", "").replace("D", "E").replace("d", "e"))
    return _BAD


@dataclass(frozen=True)
class _Hdu:
    index: int
    header: _Cards
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


def _int_kw(header: _Cards, key: str, name: str, hdu: int) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise FrameError(
            f"{name}: bad FITS header in HDU {hdu}: {key}={value!r} is not an integer",
            retryable=True,
        )
    return int(value)


_END_CARD = b"END" + b" " * 77


def _end_card_index(block: bytes) -> int:
    """Offset of the END card in a header block, or -1."""
    i = block.find(_END_CARD)
    while i >= 0 and i % 80:
        i = block.find(_END_CARD, i + 1)
    return i


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
        header = _Cards(text[: (len(blocks) - 1) * FITS_BLOCK + end], name, i)
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
    spans = [
        HduSpan(h.index, h.header.header(), h.header_offset, h.data_offset, h.end) for h in hdus
    ]
    return spans, truncated


def _open(path: str | os.PathLike[str], name: str):
    """The open binary file and its size in bytes; `FrameError` when missing or empty."""
    try:
        f = open(path, "rb")
        size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise FrameError(f"{name}: no such file: {os.fspath(path)}") from None
    except OSError as exc:
        raise FrameError(f"{name}: cannot open: {exc.strerror or exc}") from None
    if size == 0:
        f.close()
        raise FrameError(f"{name}: truncated: 0 bytes (empty file)", retryable=True)
    return f, size


def _open_hdus(
    path: str | os.PathLike[str], name: str, max_hdus: int
) -> tuple[list[_Hdu], int, str]:
    f, size = _open(path, name)
    with f:
        hdus, truncated = _scan_hdus(f, name, size, max_hdus)
    return hdus, size, truncated


def _find(headers: list[_Cards], key: str):
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


def _meta_from_headers(name: str, h0: _Cards, h1: _Cards) -> FrameMeta:
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


def _check_identity(name: str, h0: _Cards, h1: _Cards, sector: int, camera: int, ccd: int) -> None:
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


def _native_float32(raw: np.ndarray) -> np.ndarray:
    """``raw`` (a fresh float array of any byte order) as native float32, in place if it can."""
    if raw.dtype.itemsize == 4:
        if not raw.dtype.isnative:
            raw = raw.byteswap(inplace=True).view(raw.dtype.newbyteorder("="))
        return raw
    return raw.astype(np.float32)


def _read_into(f, buf: np.ndarray) -> int:
    """Fill ``buf`` from the file's position; returns the bytes read (fewer at end of file)."""
    view = memoryview(buf).cast("B")
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _read_images(f, path, hdus: tuple[_Hdu, ...], name: str) -> list[np.ndarray]:
    """The data of image ``hdus`` (in file order) as native float32 arrays of their shapes.

    Unscaled float HDUs are read from the open file ``f`` with one ``readinto`` spanning
    them all (the headers between are read too and ignored), byte-swapped in place:
    the arrays are views of one buffer. Scaled integer images go through astropy.
    """
    plain = all(
        h.bitpix in _FLOAT_DTYPES and "BSCALE" not in h.header and "BZERO" not in h.header
        for h in hdus
    )
    if not plain or len({h.bitpix for h in hdus}) != 1:
        return [_read_array(f, path, h, name) for h in hdus]
    dtype = np.dtype(_FLOAT_DTYPES[hdus[0].bitpix])
    first = hdus[0].data_offset
    counts = [math.prod(h.shape) for h in hdus]
    starts = [(h.data_offset - first) // dtype.itemsize for h in hdus]
    buf = np.empty(starts[-1] + counts[-1], dtype=dtype)
    f.seek(first)
    got = _read_into(f, buf) // dtype.itemsize
    for h, start, count in zip(hdus, starts, counts, strict=True):
        if got < start + count:
            have = min(max(got - start, 0), count)
            raise FrameError(
                f"{name}: truncated: HDU {h.index} has {have} of {count} pixels", retryable=True
            )
    buf = _native_float32(buf)
    return [
        buf[start : start + count].reshape(h.shape)
        for h, start, count in zip(hdus, starts, counts, strict=True)
    ]


def _read_array(f, path, hdu: _Hdu, name: str) -> np.ndarray:
    """One image HDU as native float32 (scaled integers: astropy applies BSCALE/BZERO)."""
    count = math.prod(hdu.shape)
    if hdu.bitpix in _FLOAT_DTYPES and "BSCALE" not in hdu.header and "BZERO" not in hdu.header:
        raw = np.empty(count, dtype=np.dtype(_FLOAT_DTYPES[hdu.bitpix]))
        f.seek(hdu.data_offset)
        got = _read_into(f, raw) // raw.dtype.itemsize
        if got != count:
            raise FrameError(
                f"{name}: truncated: HDU {hdu.index} has {got} of {count} pixels",
                retryable=True,
            )
        return _native_float32(raw).reshape(hdu.shape)
    # rare layouts (scaled integers): let astropy apply BSCALE/BZERO
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        return np.asarray(hdul[hdu.index].data, dtype=np.float32)


#: bytes of image data examined per step while looking for a real pixel (`verify_frame`)
_VERIFY_CHUNK = 1 << 16


def _image_signal(f, hdu: _Hdu) -> str:
    """``""`` when image ``hdu`` has a finite, non-zero pixel, else why not ("all NaN/inf"
    or "all zero"). Reads the data in growing chunks and stops at the first real pixel, so
    a normal frame costs one small read; an empty image is read to its end."""
    dtype = np.dtype(_FLOAT_DTYPES[hdu.bitpix])
    total = math.prod(hdu.shape)
    step = max(1, _VERIFY_CHUNK // dtype.itemsize)
    f.seek(hdu.data_offset)
    done, any_finite = 0, False
    while done < total:
        chunk = np.empty(min(step, total - done), dtype=dtype)
        got = _read_into(f, chunk) // dtype.itemsize
        if not got:
            break
        chunk = chunk[:got]
        n_finite = int(np.count_nonzero(np.isfinite(chunk)))
        # NaN/inf count as non-zero: some finite pixel is non-zero iff nonzero > non-finite
        if int(np.count_nonzero(chunk)) > got - n_finite:
            return ""
        any_finite |= n_finite > 0
        done += got
        step = min(step * 4, 1 << 22)
    return "all zero" if any_finite else "all NaN/inf"


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
    returned (views of one buffer); a full 2078x2136 frame reads in a few ms from the page
    cache: one pass over the headers, one read of both images, an in-place byte swap.
    """
    name = _display_name(path, file_name)
    f, _size = _open(path, name)
    with f:
        hdus, truncated = _scan_hdus(f, name, _size, max_hdus=3)
        if truncated:
            raise FrameError(f"{name}: {truncated}", retryable=True)
        h0 = hdus[0].header
        h1 = hdus[1].header if len(hdus) > 1 else _Cards("", name, 1)
        _check_identity(name, h0, h1, sector, camera, ccd)
        img_hdu, err_hdu = _image_pair(hdus, name)
        meta = _meta_from_headers(name, h0, h1)
        image, uncert = _read_images(f, path, (img_hdu, err_hdu), name)
    return Frame(meta=meta, image=image, uncert=uncert, wcs_header=h1.text)


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
    has at least one finite, non-zero pixel (the image data are read only until the first
    such pixel: a few kB for a normal frame, all of it for an empty one).

    ``file_name`` names the file in messages and in the returned `FrameMeta` (useful when
    verifying ``*.part`` downloads). Raises `FrameError` with a one-line reason;
    ``FrameError.retryable`` tells whether downloading again may help.
    """
    name = _display_name(path, file_name)
    f, size = _open(path, name)
    with f:
        return _verify(f, path, size, name, sector, camera, ccd)


def _verify(f, path, size: int, name: str, sector: int, camera: int, ccd: int) -> FrameMeta:
    hdus, truncated = _scan_hdus(f, name, size, _MAX_HDUS)
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
    if "BSCALE" in img_hdu.header or "BZERO" in img_hdu.header:
        image = _read_array(f, path, img_hdu, name)  # scaled: look at the scaled values
        n_finite = int(np.count_nonzero(np.isfinite(image)))
        empty = "all NaN/inf" if n_finite == 0 else ""
        # NaN/inf count as non-zero, so all finite pixels are zero iff nonzero == non-finite
        if n_finite and int(np.count_nonzero(image)) == image.size - n_finite:
            empty = "all zero"
    else:
        empty = _image_signal(f, img_hdu)
    if empty:
        raise FrameError(f"{name}: image HDU 1 is {empty}")
    return meta


def file_size_expected(path: str | os.PathLike[str]) -> int:
    """Bytes an FFI must have according to its headers (all HDUs, padded to 2880)."""
    name = os.path.basename(os.fspath(path))
    hdus, _size, truncated = _open_hdus(path, name, max_hdus=_MAX_HDUS)
    if truncated:
        raise FrameError(f"{name}: {truncated}", retryable=True)
    return hdus[-1].end
