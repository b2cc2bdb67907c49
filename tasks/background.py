"""Sky background of a calibrated FFI: a coarse mesh of masked medians, read at star positions.

Scattered light on TESS CCDs is spatial and additive (glows from the corners and edges),
so the background is estimated locally: the science area is cut into square boxes
(default 32x32 px), pixels inside the stars' masks are ignored, and each box's median
is its sky level. The mesh is interpolated bilinearly at each star's position; nothing is
computed at full resolution, which keeps the per-frame cost low.

For the per-frame pipeline a box may be sampled on a sub-grid of rows (``row_step`` = 4
takes every 4th row, all columns: 256 of a box's 1024 pixels, a quarter of the image's
memory), and the geometry (which samples are masked) is prepared once per mask by
`BackgroundEstimator`, so a frame costs one copy of the samples and one sort per box.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

from tasks.ffi import science_bounds

#: 1σ of a Gaussian from its interquartile range
_IQR_TO_SIGMA = 1.0 / 1.3489795


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
        """Sky level and its error [e-/s per pixel] at columns ``x`` and rows ``y`` (0-based).

        Bilinear between box centres; beyond the outer box centres the edge boxes' values
        (as ``scipy.ndimage.map_coordinates(order=1, mode="nearest")``).
        """
        ny, nx = self.level.shape
        gi = np.clip((np.asarray(y, float) - self.row0) / self.box - 0.5, 0, ny - 1)
        gj = np.clip((np.asarray(x, float) - self.col0) / self.box - 0.5, 0, nx - 1)
        i0 = np.minimum(gi.astype(np.intp), max(ny - 2, 0))
        j0 = np.minimum(gj.astype(np.intp), max(nx - 2, 0))
        ti, tj = gi - i0, gj - j0
        k00 = i0 * nx + j0  # flat indices of the four corners
        k10 = k00 + (nx if ny > 1 else 0)  # i1 = min(i0 + 1, ny - 1)
        dj = 1 if nx > 1 else 0  # j1 = min(j0 + 1, nx - 1)
        k01, k11 = k00 + dj, k10 + dj
        out = []
        for grid in (self.level.ravel(), self.error.ravel()):
            top = np.take(grid, k00) * (1 - tj) + np.take(grid, k01) * tj
            bottom = np.take(grid, k10) * (1 - tj) + np.take(grid, k11) * tj
            out.append(top * (1 - ti) + bottom * ti)
        return out[0], out[1]


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


class BackgroundEstimator:
    """Background meshes of frames of one shape and one mask (set up once, reused per frame).

    Each ``box`` x ``box`` box of the science area is sampled every ``row_step`` rows and
    ``col_step`` columns; samples on ``mask`` (True = ignore: stars, bad pixels) are
    dropped. A box's sky level is the median of its usable samples [e-/s per pixel]; its
    error is 1.253 σ / √n for n usable samples, with σ the mean uncertainty of those pixels
    when the frame's uncertainty image is given, else the samples' interquartile range /
    1.349. Boxes with fewer than ``min_fraction`` of their samples usable get the median of
    their neighbours. Steps of 1 use every pixel. The sampled rows are symmetric about the
    box's centre row, so a linear sky gradient does not bias the median.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        mask: np.ndarray | None = None,
        box: int = 32,
        min_fraction: float = 0.2,
        row_step: int = 1,
        col_step: int = 1,
    ) -> None:
        for step in (row_step, col_step):
            if box < 1 or step < 1 or box % step:
                raise ValueError(f"need box >= 1 and steps dividing box, not {box}, {step}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.box, self.min_fraction = int(box), float(min_fraction)
        self.row_step, self.col_step = int(row_step), int(col_step)
        r0, r1, c0, c1 = science_bounds(self.shape)
        self.r0, self.c0 = r0, c0
        self.nby = max(1, (r1 - r0) // box)
        self.nbx = max(1, (c1 - c0) // box)
        self.per_box = (box // self.row_step) * (box // self.col_step)
        # sampled rows of a box, symmetric about its centre row (so a linear gradient
        # does not bias the median): every row_step-th row from (row_step - 1)//2 in the
        # top half, mirrored into the bottom half; as (start, stop) slices of a box
        kr = box // self.row_step
        first = (self.row_step - 1) // 2
        if kr % 2 == 0 and first + self.row_step * (kr // 2 - 1) < box // 2:
            last_top = first + self.row_step * (kr // 2 - 1)
            self._row_slices = [(first, last_top + 1), (box - 1 - last_top, box - first)]
        else:  # plain strided rows
            self._row_slices = [(0, box)]
        self.masked = None  # flat indices of the masked samples in the (n_boxes, per_box) array
        self._scratch = threading.local()  # per-thread sample buffers, reused frame to frame
        self._n_good = np.full(self.nby * self.nbx, self.per_box)
        if mask is not None:
            if mask.shape != self.shape:
                raise ValueError(f"mask of shape {mask.shape}, frames are {self.shape}")
            m = self._blocks(mask)
            if m.any():
                self.masked = np.flatnonzero(m)
                self._n_good = self.per_box - np.count_nonzero(m, axis=1)

    def _blocks(self, image: np.ndarray, slot: str | None = None) -> np.ndarray:
        """Samples of every box, one row per box (bool, float32 or float64): a new array, or
        with ``slot`` this thread's buffer of that name (overwritten by the next call)."""
        b, rs, cs = self.box, self.row_step, self.col_step
        kc = b // cs
        if image.dtype == bool:
            dtype = bool
        else:
            dtype = image.dtype if image.dtype in (np.float32, np.float64) else np.float32
        shape = (self.nby * self.nbx, self.per_box)
        out = getattr(self._scratch, slot, None) if slot else None
        if out is None or out.dtype != dtype:
            out = np.empty(shape, dtype=dtype)
            if slot:
                setattr(self._scratch, slot, out)
        dest = out.reshape(self.nby, self.nbx, b // rs, kc)
        # the science rows as (box row, row within box, column): views, no copies
        rows = image[self.r0 : self.r0 + self.nby * b].reshape(self.nby, b, image.shape[1])
        k = 0
        for start, stop in self._row_slices:
            sub = rows[:, start:stop:rs, self.c0 : self.c0 + self.nbx * b : cs]
            n = sub.shape[1]
            dest[:, :, k : k + n, :] = sub.reshape(self.nby, n, self.nbx, kc).transpose(0, 2, 1, 3)
            k += n
        return out

    def estimate(self, image: np.ndarray, uncert: np.ndarray | None = None) -> BackgroundMesh:
        """Background mesh of one frame (``image`` in e-/s, the full calibrated FFI).

        With ``uncert`` (the FFI's 1σ uncertainty image [e-/s]) the box errors use the mean
        pixel uncertainty of the usable samples as σ; without it, the samples' spread.
        """
        if image.shape != self.shape:
            raise ValueError(f"image of shape {image.shape}, expected {self.shape}")
        if uncert is not None and uncert.shape != self.shape:
            raise ValueError(f"uncertainty of shape {uncert.shape}, expected {self.shape}")
        blocks = self._blocks(image, "blocks")
        noise = None if uncert is None else self._blocks(uncert, "noise")
        # NaN/inf pixels are rare: only then is every sample checked. A sum is NaN/inf when
        # a sample is (an overflow to inf only sends a clean frame down the exact path)
        with np.errstate(over="ignore", invalid="ignore"):
            clean = bool(np.isfinite(np.add.reduce(blocks, axis=None)))
            if noise is not None:
                clean = clean and bool(np.isfinite(np.add.reduce(noise, axis=None)))
        # unusable samples sort last (+inf): the usable ones are the first n_good of a row
        if clean:
            n_good = self._n_good
            if self.masked is not None:
                blocks.reshape(-1)[self.masked] = np.inf
                if noise is not None:
                    noise.reshape(-1)[self.masked] = 0
        else:
            bad = ~np.isfinite(blocks)
            if noise is not None:
                bad |= ~np.isfinite(noise)
            if self.masked is not None:
                bad.reshape(-1)[self.masked] = True
            np.copyto(blocks, np.inf, where=bad)
            if noise is not None:
                np.copyto(noise, 0, where=bad)
            n_good = self.per_box - np.count_nonzero(bad, axis=1)
        blocks.sort(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # boxes without usable samples
            level = _quantile(blocks, n_good, 0.5)  # the median (mean of the middle two)
            if noise is None:
                spread = _quantile(blocks, n_good, 0.75) - _quantile(blocks, n_good, 0.25)
                sigma = spread * _IQR_TO_SIGMA
            else:
                sigma = np.einsum("ij->i", noise).astype(np.float64) / n_good
        error = 1.253 * sigma / np.sqrt(np.maximum(n_good, 1))
        empty = n_good == 0
        level[empty] = np.nan
        error[empty] = np.nan
        level = level.reshape(self.nby, self.nbx)
        error = error.reshape(self.nby, self.nbx)
        sparse = (empty | (n_good < self.min_fraction * self.per_box)).reshape(self.nby, self.nbx)
        if np.any(sparse):
            level = _fill_from_neighbours(np.where(sparse, np.nan, level))
            error = _fill_from_neighbours(np.where(sparse, np.nan, error))
        return BackgroundMesh(level=level, error=error, box=self.box, row0=self.r0, col0=self.c0)


def _quantile(sorted_rows: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` (linear interpolation) of the first ``n[i]`` values of each sorted row."""
    rows = np.arange(len(sorted_rows))
    last = np.maximum(n - 1, 0)
    pos = q * last
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, last)
    a = sorted_rows[rows, lo].astype(np.float64)
    b = sorted_rows[rows, hi].astype(np.float64)
    return a + (b - a) * (pos - lo)


def estimate_background(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    box: int = 32,
    min_fraction: float = 0.2,
    row_step: int = 1,
    col_step: int = 1,
    uncert: np.ndarray | None = None,
) -> BackgroundMesh:
    """Background mesh of one frame [e-/s per pixel].

    ``image`` is the full calibrated FFI (rows x columns, e-/s); ``mask`` is True on pixels
    to ignore (stars, bad pixels). Each box's level is the median of its usable pixels
    (every ``row_step``-th row and ``col_step``-th column; 1 = all). Boxes with fewer than
    ``min_fraction`` usable pixels get the median of their neighbours. The error of a box
    level is 1.253 * sigma / sqrt(n), with sigma the mean of ``uncert`` (the FFI's 1σ
    uncertainty image, e-/s) over the used pixels when given, else from the box's
    interquartile range. For many frames with one mask, build a `BackgroundEstimator` once.
    """
    est = BackgroundEstimator(image.shape, mask, box, min_fraction, row_step, col_step)
    return est.estimate(image, uncert)


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
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods
            fill = np.nanmedian(stack, axis=0)
        grid[holes] = fill[holes]
    return grid
