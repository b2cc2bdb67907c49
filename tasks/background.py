"""Sky background of a calibrated FFI: a coarse mesh of masked medians, read at star positions.

Scattered light on TESS CCDs is spatial and additive (glows from the corners and edges),
so the background is estimated locally: the science area is cut into square boxes
(default 32x32 px), pixels inside the stars' masks are ignored, and each box's median
is its sky level. The mesh is interpolated bilinearly at each star's position; nothing is
computed at full resolution, which keeps the per-frame cost low.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from tasks.ffi import science_bounds


@dataclass(frozen=True)
class BackgroundMesh:
    """Sky level per box [e-/s per pixel], with its statistical error and geometry.

    ``level[i, j]`` is the box whose centre is at row ``row0 + (i + 0.5) * box`` and column
    ``col0 + (j + 0.5) * box`` (0-based, full-array coordinates).
    """

    level: np.ndarray
    error: np.ndarray
    box: int
    row0: int
    col0: int

    @property
    def median(self) -> float:
        """Median sky level over the CCD [e-/s per pixel]."""
        return float(np.nanmedian(self.level))

    def at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sky level and its error [e-/s per pixel] at columns ``x`` and rows ``y`` (0-based)."""
        gi = (np.asarray(y, float) - self.row0) / self.box - 0.5
        gj = (np.asarray(x, float) - self.col0) / self.box - 0.5
        coords = np.vstack([gi, gj])
        level = map_coordinates(self.level, coords, order=1, mode="nearest")
        error = map_coordinates(self.error, coords, order=1, mode="nearest")
        return level, error


def star_mask(
    shape: tuple[int, int], x: np.ndarray, y: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """Boolean image, True on pixels within ``radius`` [px] of any star (x=column, y=row)."""
    mask = np.zeros(shape, dtype=bool)
    if len(x) == 0:
        return mask
    rmax = int(np.ceil(np.max(radius)))
    offs = np.arange(-rmax, rmax + 1)
    cols = np.rint(x).astype(int)[:, None, None] + offs[None, None, :]
    rows = np.rint(y).astype(int)[:, None, None] + offs[None, :, None]
    inside = (cols - x[:, None, None]) ** 2 + (rows - y[:, None, None]) ** 2 <= (
        radius[:, None, None] ** 2
    )
    cols, rows = np.broadcast_arrays(cols, rows)
    ok = inside & (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    mask[rows[ok], cols[ok]] = True
    return mask


def estimate_background(
    image: np.ndarray, mask: np.ndarray | None = None, box: int = 32, min_fraction: float = 0.2
) -> BackgroundMesh:
    """Background mesh of one frame [e-/s per pixel].

    ``image`` is the full calibrated FFI (rows x columns, e-/s); ``mask`` is True on pixels
    to ignore (stars, bad pixels). Boxes with fewer than ``min_fraction`` usable pixels get
    the median of their neighbours. The error of a box level is 1.253 * sigma / sqrt(n),
    with sigma from the box's median absolute deviation.
    """
    r0, r1, c0, c1 = science_bounds(image.shape)
    nby = max(1, (r1 - r0) // box)
    nbx = max(1, (c1 - c0) // box)
    sub = image[r0 : r0 + nby * box, c0 : c0 + nbx * box].astype(np.float32, copy=True)
    bad = ~np.isfinite(sub)
    if mask is not None:
        bad |= mask[r0 : r0 + nby * box, c0 : c0 + nbx * box]
    sub[bad] = np.nan
    blocks = sub.reshape(nby, box, nbx, box).transpose(0, 2, 1, 3).reshape(nby, nbx, box * box)
    n_good = np.sum(~np.isnan(blocks), axis=2)
    with np.errstate(all="ignore"):
        level = np.nanmedian(blocks, axis=2)
        mad = np.nanmedian(np.abs(blocks - level[..., None]), axis=2)
    sigma = 1.4826 * mad
    error = 1.253 * sigma / np.sqrt(np.maximum(n_good, 1))
    sparse = n_good < min_fraction * box * box
    if np.any(sparse):
        level = _fill_from_neighbours(np.where(sparse, np.nan, level))
        error = _fill_from_neighbours(np.where(sparse, np.nan, error))
    return BackgroundMesh(level=level, error=error, box=box, row0=r0, col0=c0)


def _fill_from_neighbours(grid: np.ndarray) -> np.ndarray:
    """Replace NaN cells by the median of their finite 8-neighbours, repeatedly."""
    grid = grid.copy()
    if np.all(np.isnan(grid)):
        return np.zeros_like(grid)
    for _ in range(max(grid.shape)):
        holes = np.isnan(grid)
        if not holes.any():
            break
        padded = np.pad(grid, 1, constant_values=np.nan)
        stack = np.stack(
            [
                padded[1 + di : 1 + di + grid.shape[0], 1 + dj : 1 + dj + grid.shape[1]]
                for di in (-1, 0, 1)
                for dj in (-1, 0, 1)
                if di or dj
            ]
        )
        with np.errstate(all="ignore"):
            fill = np.nanmedian(stack, axis=0)
        grid[holes] = fill[holes]
    return grid
