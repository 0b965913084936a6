"""The symmetry plane of a paired bone: found by registering the bone's surface to its own mirror image (trimmed
reflection ICP), or taken as given and measured; its residual says how symmetric the bone is."""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..core.anatomy import angle_deg
from ..core.errors import PlanError
from .defectparams import _nonzero, _vec

SYMMETRY_POINTS = 30000  # surface points registered (a deterministic subsample)


SYMMETRY_TRIM = 0.8  # share of best-matched points the plane is fitted to


SYMMETRY_ITERATIONS = 40


@dataclass
class SymmetryPlane:
    origin: np.ndarray  # RAS, the bone's centroid projected on the plane
    normal: np.ndarray  # unit, pointing to patient right (+R) where that is defined
    residual_mm: float  # RMS distance of the best-matched 80 % of mirrored surface points to the surface
    matched_fraction: float = 1.0  # mirrored surface points within 2 mm of the surface
    found: bool = True  # False: given by the user

    def reflect(self, pts) -> np.ndarray:
        p = np.atleast_2d(np.asarray(pts, dtype=float))
        return p - 2.0 * ((p - self.origin) @ self.normal)[:, None] * self.normal

    def matrix(self) -> np.ndarray:
        """4x4 reflection across the plane."""
        m = np.eye(4)
        m[:3, :3] -= 2.0 * np.outer(self.normal, self.normal)
        m[:3, 3] = 2.0 * (self.origin @ self.normal) * self.normal
        return m

    def as_dict(self) -> dict:
        return {"origin_ras": [round(float(x), 4) for x in self.origin],
                "normal_ras": [round(float(x), 6) for x in self.normal],
                "residual_mm": round(float(self.residual_mm), 4), "matched_fraction": round(self.matched_fraction, 4),
                "found_automatically": self.found}


def voxel_centres_ras(ijk_to_ras, kji) -> np.ndarray:
    """RAS of voxel indices given as [k, j, i] rows (numpy order)."""
    m = np.asarray(ijk_to_ras, dtype=float)
    return kji[:, ::-1].astype(float) @ m[:3, :3].T + m[:3, 3]


def surface_points(bone_mask: np.ndarray, ijk_to_ras) -> np.ndarray:
    """RAS centres of the bone's boundary voxels (bone with a non-bone 6-neighbour)."""
    mask = np.asarray(bone_mask, bool)
    return voxel_centres_ras(ijk_to_ras, np.argwhere(mask & ~ndimage.binary_erosion(mask, border_value=0)))


def _reflection_fit(p: np.ndarray, q: np.ndarray) -> tuple:
    """Plane (normal, offset) of the reflection that best maps points p onto q (orthogonal Procrustes, det -1)."""
    mp, mq = p.mean(axis=0), q.mean(axis=0)
    u, _, vt = np.linalg.svd((p - mp).T @ (q - mq))
    r = vt.T @ u.T
    if np.linalg.det(r) > 0:
        r = vt.T @ np.diag([1.0, 1.0, -1.0]) @ u.T
    # R = I - 2 n n^T for a pure reflection: n is the eigenvector of (I - R) / 2 with the largest eigenvalue.
    a = (np.eye(3) - r)
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    n = v[:, int(np.argmax(w))]
    return n, float(n @ (0.5 * (mp + mq)))


def _refine_plane(pts, tree, n, d, iterations: int = SYMMETRY_ITERATIONS) -> tuple:
    for _ in range(iterations):
        mirrored = pts - 2.0 * (pts @ n - d)[:, None] * n
        dist, idx = tree.query(mirrored)
        keep = dist <= np.quantile(dist, SYMMETRY_TRIM)
        n_new, d_new = _reflection_fit(pts[keep], tree.data[idx[keep]])
        if n_new @ n < 0:
            n_new, d_new = -n_new, -d_new
        moved = angle_deg(n_new, n) + abs(d_new - d)
        n, d = n_new, d_new
        if moved < 1e-3:
            break
    dist, _ = tree.query(pts - 2.0 * (pts @ n - d)[:, None] * n)
    keep = dist <= np.quantile(dist, SYMMETRY_TRIM)
    return n, d, float(np.sqrt(np.mean(dist[keep] ** 2))), float(np.mean(dist <= 2.0))


def find_symmetry_plane(bone_mask: np.ndarray, ijk_to_ras, initial: Optional[dict] = None) -> SymmetryPlane:
    """The bone's mirror-symmetry plane by reflection ICP on its surface voxels (see the module docstring)."""
    pts = surface_points(bone_mask, ijk_to_ras)
    if len(pts) < 100:
        raise PlanError(f"The bone mask has only {len(pts)} surface voxels: too little to find a symmetry plane.",
                        "Check the bone segmentation covers both sides of the pelvis (or other paired bone).")
    tree = cKDTree(pts)
    sample = pts[np.random.default_rng(0).permutation(len(pts))[:SYMMETRY_POINTS]]
    centroid = pts.mean(axis=0)
    if initial is not None:
        n0 = _nonzero(initial["normal_ras"], "Symmetry plane normal")
        starts = [(n0, float(n0 @ np.asarray(_vec(initial["origin_ras"], "Symmetry plane origin"))))]
    else:
        _, axes = np.linalg.eigh(np.cov((pts - centroid).T))
        starts = [(a, float(a @ centroid)) for a in [*axes.T, np.array([1.0, 0.0, 0.0])]]
    # Each start refined coarsely on a tenth of the points, then the best one on all of them.
    coarse = [_refine_plane(sample[: SYMMETRY_POINTS // 10], tree, np.asarray(n0, float), d0, 15)
              for n0, d0 in starts]
    n, d, _, _ = min(coarse, key=lambda c: c[2])
    n, d, res, matched = _refine_plane(sample, tree, n, d)
    if n[0] < 0:  # normal to patient right, for a stable report
        n, d = -n, -d
    origin = centroid - (centroid @ n - d) * n
    return SymmetryPlane(origin, n, res, matched)


def given_plane(bone_mask, ijk_to_ras, plane: dict) -> SymmetryPlane:
    """A user-set symmetry plane with its residual measured the same way (no refinement)."""
    pts = surface_points(bone_mask, ijk_to_ras)
    n = _nonzero(plane["normal_ras"], "Symmetry plane normal")
    o = np.asarray(_vec(plane["origin_ras"], "Symmetry plane origin"))
    _require_cuts(pts, o, n, "The symmetry plane")
    tree = cKDTree(pts)
    sample = pts[np.random.default_rng(0).permutation(len(pts))[:SYMMETRY_POINTS]]
    dist, _ = tree.query(sample - 2.0 * ((sample - o) @ n)[:, None] * n)
    keep = dist <= np.quantile(dist, SYMMETRY_TRIM)
    return SymmetryPlane(o, n, float(np.sqrt(np.mean(dist[keep] ** 2))), float(np.mean(dist <= 2.0)), found=False)


def _require_cuts(pts, origin, normal, what: str) -> None:
    s = (pts - origin) @ normal
    if s.min() > 0 or s.max() < 0:
        raise PlanError(f"{what} through {np.round(origin, 1).tolist()} (RAS) misses the bone: all of the bone lies "
                        f"{min(abs(s.min()), abs(s.max())):.1f} mm or more to one side of it.",
                        "Move the plane so it passes through the bone.")
