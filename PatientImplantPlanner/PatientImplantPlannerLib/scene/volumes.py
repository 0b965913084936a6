"""Voxel <-> RAS geometry of volume nodes and numpy access, shared by every step working on images.

numpy arrays from ``slicer.util.arrayFromVolume`` are indexed [k, j, i]; the helpers here take and
return RAS points in mm and (i, j, k) indices so callers never juggle the order by hand.
"""

import numpy as np

from ..core.grid import VoxelGrid


def ijk_to_ras_matrix(volume_node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def ras_to_ijk(volume_node, points_ras) -> np.ndarray:
    """Continuous (i, j, k) indices of RAS points (N, 3)."""
    pts = np.atleast_2d(np.asarray(points_ras, dtype=float))
    inv = np.linalg.inv(ijk_to_ras_matrix(volume_node))
    return pts @ inv[:3, :3].T + inv[:3, 3]


def ijk_to_ras(volume_node, ijk) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(ijk, dtype=float))
    m = ijk_to_ras_matrix(volume_node)
    return pts @ m[:3, :3].T + m[:3, 3]


def dimensions(volume_node) -> tuple:
    """(i, j, k) voxel counts."""
    return tuple(volume_node.GetImageData().GetDimensions())


def inside(volume_node, points_ras, margin: float = 0.0) -> np.ndarray:
    """Boolean per point: within the volume's voxel grid (extended by ``margin`` voxels)."""
    ijk = ras_to_ijk(volume_node, points_ras)
    dims = np.array(dimensions(volume_node))
    return np.all((ijk >= -0.5 - margin) & (ijk <= dims - 0.5 + margin), axis=1)


def voxel_volume_mm3(volume_node) -> float:
    return float(abs(np.linalg.det(ijk_to_ras_matrix(volume_node)[:3, :3])))


def array(volume_node) -> np.ndarray:
    """Voxel array [k, j, i] sharing memory with the node (no copy)."""
    import slicer.util

    return slicer.util.arrayFromVolume(volume_node)


def grid_of(volume_node) -> VoxelGrid:
    """The node's voxel grid (index <-> RAS) for its [k, j, i] array."""
    return VoxelGrid(ijk_to_ras_matrix(volume_node), dimensions(volume_node)[::-1])


def add_volume(ctx, voxels: np.ndarray, ijk_to_ras, name: str, labelmap: bool = False):
    """A new scalar (or labelmap) volume node holding a copy of ``voxels`` [k, j, i] on the given geometry."""
    import slicer.util
    import vtk

    node = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ijk_to_ras[r, c]))
    node.SetIJKToRASMatrix(m)
    slicer.util.updateVolumeFromArray(node, voxels)
    node.CreateDefaultDisplayNodes()
    return node
