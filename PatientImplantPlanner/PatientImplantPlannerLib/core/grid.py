"""One voxel grid: a [k, j, i] array's index <-> RAS mapping from its 4x4 IJK-to-RAS matrix.

numpy volumes are indexed [k, j, i] (slice, row, column) while VTK and Slicer matrices map (i, j, k); every step that
works on voxels goes through this class so the order is reversed in one place only. Points are rows of an (N, 3)
array (a single point is accepted and gives one row).
"""

import numpy as np

from .errors import PlanError


class VoxelGrid:
    def __init__(self, ijk_to_ras, shape_kji):
        m = np.asarray(ijk_to_ras, dtype=float)
        if m.shape != (4, 4) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise PlanError("The IJK-to-RAS matrix is not a valid 4x4 volume geometry.",
                            "Pass the volume's own geometry (scene.volumes.ijk_to_ras_matrix(node)).")
        self.m = m
        self.inv = np.linalg.inv(m)
        self.shape = tuple(int(n) for n in shape_kji)
        self.spacing_ijk = np.linalg.norm(m[:3, :3], axis=0)  # mm per step along i, j, k
        self.spacing_kji = self.spacing_ijk[::-1].copy()
        self.voxel_mm3 = float(abs(np.linalg.det(m[:3, :3])))

    def to_ras(self, kji) -> np.ndarray:
        ijk = np.atleast_2d(np.asarray(kji, dtype=float))[:, ::-1]
        return ijk @ self.m[:3, :3].T + self.m[:3, 3]

    def to_kji(self, ras) -> np.ndarray:
        """Continuous [k, j, i] indices of RAS points."""
        return self.to_ijk(ras)[:, ::-1]

    def to_ijk(self, ras) -> np.ndarray:
        p = np.atleast_2d(np.asarray(ras, dtype=float))
        return p @ self.inv[:3, :3].T + self.inv[:3, 3]

    def contains(self, ras, margin: float = 0.0) -> np.ndarray:
        """Boolean per point: within the voxel grid (extended by ``margin`` voxels)."""
        ijk = self.to_ijk(ras)
        dims = np.array(self.shape[::-1])
        return np.all((ijk >= -0.5 - margin) & (ijk <= dims - 0.5 + margin), axis=1)

    def gradient_to_ras(self, g_kji) -> np.ndarray:
        """Spatial gradient in RAS from per-index derivatives (d/dk, d/dj, d/di), rows."""
        return np.atleast_2d(g_kji)[:, ::-1] @ self.inv[:3, :3]

    def half_voxel_along(self, u) -> float:
        """Half the extent of one voxel projected on the unit direction u (mm)."""
        return 0.5 * float(np.abs(self.m[:3, :3].T @ u).sum())

    def axis_aligned(self) -> bool:
        """True when every index axis runs along one RAS axis (no oblique acquisition)."""
        a = np.abs(self.m[:3, :3])
        return bool(np.all(np.sum(a > 1e-6 * a.max(), axis=0) == 1))
