"""Move binary masks between numpy and segmentation nodes without temporary scene nodes.

``slicer.util.updateSegmentBinaryLabelmapFromArray`` goes through a temporary labelmap node in the scene and
``slicer.modules``, which is neither undo-friendly nor available headless; these helpers work on
``vtkOrientedImageData`` directly and take the geometry from the reference volume.
"""

import os

import numpy as np

from ..core.errors import InputFileError


def _oriented_image(mask: np.ndarray, reference_volume):
    import slicer
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    arr = np.ascontiguousarray(mask, dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    k, j, i = arr.shape
    image.SetDimensions(i, j, k)
    image.GetPointData().SetScalars(numpy_to_vtk(arr.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    m = vtk.vtkMatrix4x4()
    reference_volume.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    return image


def set_segment_mask(segmentation_node, segment_id: str, mask: np.ndarray, reference_volume) -> None:
    """Replace the segment's binary labelmap with ``mask`` (bool/uint8 [k, j, i] on the reference grid)."""
    import slicer

    image = _oriented_image(mask > 0, reference_volume)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    )
    if not ok:
        raise RuntimeError(f"Could not write the labelmap of segment {segment_id!r}.")


def get_segment_mask(segmentation_node, segment_id: str, reference_volume) -> np.ndarray:
    """The segment as a bool array [k, j, i] resampled onto the reference volume's grid."""
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    dims = reference_volume.GetImageData().GetDimensions()
    m = vtk.vtkMatrix4x4()
    reference_volume.GetIJKToRASMatrix(m)
    labelmap = slicer.vtkOrientedImageData()
    segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap)
    out = slicer.vtkOrientedImageData()
    out.SetDimensions(dims)
    out.SetImageToWorldMatrix(m)
    out.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    out.GetPointData().GetScalars().Fill(0)
    if labelmap.GetPointData().GetScalars() is not None:
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, out, out)
    arr = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    # The copy holds this segment alone (as 1), even when it shares a labelmap layer with other segments.
    return arr > 0


def load_segmentation_file(ctx, path: str):
    import slicer

    if not os.path.isfile(path):
        raise InputFileError(f"Segmentation file not found: {path}.", "Check the path, or omit --segmentation.")
    node = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Bone segmentation")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node) or node.GetSegmentation().GetNumberOfSegments() == 0:
        ctx.scene.RemoveNode(node)
        raise InputFileError(f"Could not read a segmentation from {path}.", "Give a .seg.nrrd written by Slicer.")
    segmentation = node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName("Bone") or segmentation.GetNthSegmentID(0)
    return node, segment_id
