"""The CT and the bone mask sampled along a screw's ray: trilinear samples, where the ray enters and leaves bone (short
gaps in the mask bridged), and how far it may run inside the voxel grid."""

import numpy as np

from ..core.anatomy import unit
from ..core.errors import PlanError

GAP_BRIDGE_MM = 2.0  # gaps in the bone mask shorter than this (or than GAP_BRIDGE_VOXELS voxels) are not the far cortex
GAP_BRIDGE_VOXELS = 1.0

SAMPLE_STEP_MM = 0.25  # ray sampling; halved for voxels finer than 0.5 mm
MASK_LEVEL = 0.5  # the trilinear mask's 0.5 level lies halfway between bone and non-bone voxel centres
MAX_TRACE_MM = 400.0


def _trilinear(array: np.ndarray, ijk: np.ndarray, fill: float) -> np.ndarray:
    """Trilinear interpolation of a [k, j, i] array at continuous (i, j, k) points; ``fill`` outside the grid."""
    shape = np.array(array.shape[::-1])  # (ni, nj, nk)
    base = np.floor(ijk).astype(np.int64)
    frac = ijk - base
    out = np.zeros(len(ijk))
    for corner in range(8):
        off = np.array([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        idx = base + off
        w = np.prod(np.where(off, frac, 1.0 - frac), axis=1)
        ok = np.all((idx >= 0) & (idx < shape), axis=1)
        vals = np.full(len(ijk), float(fill))
        if ok.any():
            vals[ok] = array[idx[ok, 2], idx[ok, 1], idx[ok, 0]]
        out += w * vals
    return out


class _Volume:
    """A CT + bone mask pair on one voxel grid, sampled along rays in RAS."""

    def __init__(self, ct_array, bone_mask, ijk_to_ras):
        self.ct = np.asarray(ct_array)
        self.mask = np.asarray(bone_mask)
        if self.ct.ndim != 3 or self.mask.shape != self.ct.shape:
            raise PlanError(
                f"The CT {self.ct.shape} and bone mask {self.mask.shape} arrays do not match.",
                "Pass the CT and the bone segmentation exported on the CT's own grid ([k, j, i]).",
            )
        self.m = np.asarray(ijk_to_ras, dtype=float)
        if self.m.shape != (4, 4) or abs(np.linalg.det(self.m[:3, :3])) < 1e-12:
            raise PlanError("The IJK-to-RAS matrix is not a valid 4x4 transform.", "Pass the CT volume's matrix.")
        self.inv = np.linalg.inv(self.m)
        self.dims = np.array(self.ct.shape[::-1], dtype=float)
        self.spacing = np.linalg.norm(self.m[:3, :3], axis=0)
        self.step = min(SAMPLE_STEP_MM, 0.5 * float(self.spacing.min()))

    def ijk(self, pts):
        return np.atleast_2d(pts) @ self.inv[:3, :3].T + self.inv[:3, 3]

    def contains(self, p) -> bool:
        q = self.ijk(p)[0]
        return bool(np.all((q >= -0.5) & (q <= self.dims - 0.5)))

    def exit_distance(self, p, d) -> float:
        """How far the ray p + s d runs before leaving the voxel grid (p inside)."""
        q0, dq = self.ijk(p)[0], self.inv[:3, :3] @ d
        s_max = MAX_TRACE_MM
        for ax in range(3):
            if abs(dq[ax]) > 1e-12:
                bound = (self.dims[ax] - 0.5) if dq[ax] > 0 else -0.5
                s_max = min(s_max, (bound - q0[ax]) / dq[ax])
        return max(float(s_max), 0.0)

    def half_voxel_along(self, d) -> float:
        """Half the distance the ray travels per voxel layer of its dominant index axis."""
        dq = np.abs(self.inv[:3, :3] @ d)
        return 0.5 / float(dq.max())

    def bone(self, pts) -> np.ndarray:
        return _trilinear(self.mask, self.ijk(pts), 0.0)

    def hu(self, pts) -> np.ndarray:
        return _trilinear(self.ct, self.ijk(pts), -1024.0)


def _bridge_gaps(inside: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill runs of False no longer than ``max_gap`` samples that have True on both sides."""
    if max_gap <= 0 or inside.all() or not inside.any():
        return inside
    out = inside.copy()
    idx = np.flatnonzero(inside)
    gaps = np.diff(idx) - 1
    for start, g in zip(idx[:-1], gaps):
        if 0 < g <= max_gap:
            out[start + 1 : start + 1 + g] = True
    return out


def _crossings(vol: _Volume, p: np.ndarray, d: np.ndarray, s_max: float) -> tuple:
    """(first entry, first exit after it) distances where the mask crosses MASK_LEVEL along p + s d, refined by
    bisection; None for either when it does not happen within s_max (exit None = still in bone at s_max)."""
    n = max(int(np.ceil(s_max / vol.step)), 1)
    s = np.linspace(0.0, s_max, n + 1)
    inside = vol.bone(p + s[:, None] * d) >= MASK_LEVEL
    # A short gap inside bone is a hole in the segmentation (e.g. one voxel under a concave endplate on a thick-
    # slice CT), not the far cortex: bridge gaps shorter than GAP_BRIDGE_VOXELS voxels (at least GAP_BRIDGE_MM).
    bridge = max(GAP_BRIDGE_MM, GAP_BRIDGE_VOXELS * float(vol.spacing.max()))
    inside = _bridge_gaps(inside, int(np.floor(bridge / (s[1] - s[0]))) if n else 0)

    def refine(lo, hi, want_inside_at_hi):
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            if (vol.bone(p + mid * d)[0] >= MASK_LEVEL) == want_inside_at_hi:
                hi = mid
            else:
                lo = mid
        return 0.5 * (lo + hi)

    idx_in = np.flatnonzero(inside)
    if len(idx_in) == 0:
        return None, None
    i0 = int(idx_in[0])
    entry = 0.0 if i0 == 0 else refine(s[i0 - 1], s[i0], True)
    idx_out = np.flatnonzero(~inside[i0:])
    if len(idx_out) == 0:
        return entry, None
    j = i0 + int(idx_out[0])
    return entry, refine(s[j - 1], s[j], False)


def _perpendiculars(d: np.ndarray) -> tuple:
    a = unit(np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0]))
    return a, np.cross(d, a)
