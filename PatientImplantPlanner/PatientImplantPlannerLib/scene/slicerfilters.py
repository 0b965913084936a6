"""Slicer's own image filters on numpy arrays (GrowCut). Slicer classes are reached from scene/ only."""

import numpy as np


def _vtk_image(arr: np.ndarray, vtk_type):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    image = vtk.vtkImageData()
    k, j, i = arr.shape
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(arr).ravel(), deep=True, array_type=vtk_type))
    return image


def grow_cut(intensity: np.ndarray, labels: np.ndarray, region: np.ndarray, spacing_kji) -> np.ndarray:
    """Slicer's GrowCut restricted to ``region``: every region voxel gets the label of its 'closest' seed."""
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    intensity16 = intensity if intensity.dtype == np.int16 else np.clip(intensity, -32768, 32767).astype(np.int16)
    images = [
        _vtk_image(intensity16, vtk.VTK_SHORT),
        _vtk_image(labels.astype(np.uint8, copy=False), vtk.VTK_UNSIGNED_CHAR),
        _vtk_image((~region).view(np.uint8), vtk.VTK_UNSIGNED_CHAR),  # non-zero = not grown into
    ]
    for im in images:
        im.SetSpacing(*spacing_kji[::-1])
    gc = slicer.vtkImageGrowCutSegment()
    gc.SetIntensityVolume(images[0])
    gc.SetSeedLabelVolume(images[1])
    gc.SetMaskVolume(images[2])
    gc.Update()
    out = vtk_to_numpy(gc.GetOutput().GetPointData().GetScalars())
    return out.reshape(labels.shape)
