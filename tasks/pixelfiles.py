"""Readers for pixel files: SPOC target pixel files (``*_tp.fits``) and TESScut cutouts.

Both share the SPOC pixel layout: a ``PIXELS`` binary table with one row per cadence
(TIME in BTJD at mid-exposure, FLUX and FLUX_ERR images in e-/s, already background
subtracted, FLUX_BKG, QUALITY, CADENCENO) and an ``APERTURE`` image whose bit 2 marks the
SPOC pipeline aperture (a TESScut aperture image is all zeros: no pipeline aperture).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

#: APERTURE image bit of the SPOC optimal (pipeline) aperture
PIPELINE_APERTURE_BIT = 2


@dataclass(frozen=True)
class PixelData:
    """The pixels of a target pixel file or TESScut cutout.

    ``time`` BTJD [d] mid-exposure (NaN where the file has none); ``flux``, ``flux_err``,
    ``flux_bkg`` (n_cadences, rows, cols) in e-/s; ``quality`` SPOC bits; ``aperture`` the
    pipeline aperture mask or None; ``column0``/``row0`` the CCD column/row of pixel [0, 0]
    as given by the file's physical WCS (1CRV5P/2CRV5P).
    """

    kind: str
    time: np.ndarray
    cadenceno: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    flux_bkg: np.ndarray
    quality: np.ndarray
    aperture: np.ndarray | None
    wcs: WCS
    sector: int | None
    camera: int | None
    ccd: int | None
    column0: int | None
    row0: int | None
    object_name: str


def read_pixel_file(path: str | Path) -> PixelData:
    """Read a SPOC target pixel file or a TESScut (astrocut) cutout."""
    path = Path(path)
    with fits.open(path, memmap=False) as hdul:
        if "PIXELS" not in hdul:
            raise ValueError(f"{path.name}: not a pixel file (no PIXELS extension)")
        h0 = hdul[0].header
        pix = hdul["PIXELS"]
        data = pix.data
        kind = "tesscut" if "FFI_FILE" in data.columns.names else "tpf"
        aperture = None
        wcs = WCS(naxis=2)
        if "APERTURE" in hdul:
            ap_img = np.nan_to_num(np.asarray(hdul["APERTURE"].data)).astype(np.int64)
            mask = (ap_img & PIPELINE_APERTURE_BIT) > 0
            aperture = mask if mask.any() else None
            wcs = WCS(hdul["APERTURE"].header)
        time = np.asarray(data["TIME"], dtype=np.float64)
        time = np.where(np.isfinite(time) & (time > 0), time, np.nan)
        return PixelData(
            kind=kind,
            time=time,
            cadenceno=np.asarray(data["CADENCENO"], dtype=np.int64),
            flux=np.asarray(data["FLUX"], dtype=np.float64),
            flux_err=np.asarray(data["FLUX_ERR"], dtype=np.float64),
            flux_bkg=np.asarray(data["FLUX_BKG"], dtype=np.float64),
            quality=np.asarray(data["QUALITY"], dtype=np.int64),
            aperture=aperture,
            wcs=wcs,
            sector=_int(h0.get("SECTOR")) or _sector_from_name(path.name),
            camera=_int(h0.get("CAMERA")),
            ccd=_int(h0.get("CCD")),
            column0=_int(pix.header.get("1CRV5P")),
            row0=_int(pix.header.get("2CRV5P")),
            object_name=str(h0.get("OBJECT", path.stem)),
        )


def _int(value) -> int | None:
    return None if value is None or value == "" else int(value)


def _sector_from_name(name: str) -> int | None:
    """Sector from a TESScut name ``tess-s0001-4-3_...`` (old astrocut leaves SECTOR empty)."""
    m = re.match(r"tess-s(\d{4})-\d-\d", name)
    return int(m.group(1)) if m else None
