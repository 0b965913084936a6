"""Vertebra and keep-out labels read from the scene or from files: a segmentation with named segments, a .seg.nrrd, or
a labelmap file on the CT's grid (the name tables and label arithmetic are in imaging/levelsource.py)."""

import numpy as np

from ..core.errors import InputFileError, PlanError
from ..imaging.keepout import keep_out_name
from ..imaging.levelsource import labels_from_labelmap, vertebra_name
from ..scene.segments import get_segment_mask
from ..scene.volumes import array, ijk_to_ras_matrix


def _named_segments(segmentation_node, ct_node, canonical, what: str, naming: str) -> tuple:
    """(label map uint8 [k, j, i] on the CT grid, {name: value}) from the segments whose names ``canonical``
    recognises (first segment of each name wins); PlanError naming ``what`` is missing otherwise."""
    segmentation = segmentation_node.GetSegmentation()
    labels, values = None, {}
    for n in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(n)
        name = canonical(segmentation.GetSegment(sid).GetName())
        if name is None or name in values:
            continue
        mask = get_segment_mask(segmentation_node, sid, ct_node)
        if labels is None:
            labels = np.zeros(mask.shape, dtype=np.uint8)
        values[name] = len(values) + 1
        labels[mask] = values[name]
    if not values:
        raise PlanError(f"The segmentation {segmentation_node.GetName()!r} has no {what}.",
                        f"Use a segmentation whose segments are named like {naming} (e.g. from TotalSegmentator).")
    return labels, values


def labels_from_segmentation(segmentation_node, ct_node) -> tuple:
    """(label map uint8 [k, j, i] on the CT grid, {level name: value}) from a segmentation's vertebra segments."""
    return _named_segments(segmentation_node, ct_node, vertebra_name, "vertebra segments", "'vertebrae_L1' or 'L1'")


def _read_label_file(ctx, path: str, ct_node, what: str, from_segmentation, from_labelmap):
    """Read a .seg.nrrd (named segments) or a labelmap file on the CT's grid through the given converters."""
    import os

    import slicer

    if not os.path.isfile(path):
        raise InputFileError(f"{what.capitalize()} file not found: {path}.", "Check the path.")
    if path.lower().endswith(".seg.nrrd"):
        node = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", what)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(path)
        try:
            if not storage.ReadData(node):
                raise InputFileError(f"Could not read the segmentation {path}.", "Give a .seg.nrrd saved by Slicer.")
            return from_segmentation(node, ct_node)
        finally:
            ctx.scene.RemoveNode(node)
    node = ctx.volumes_logic.AddArchetypeVolume(path, what, 1)  # 1: load as labelmap
    if node is None:
        raise InputFileError(f"Could not read the labelmap {path}.", "Give a NIfTI/NRRD labelmap.")
    try:
        if node.GetImageData().GetDimensions() != ct_node.GetImageData().GetDimensions() or not np.allclose(
            ijk_to_ras_matrix(node), ijk_to_ras_matrix(ct_node), atol=1e-3
        ):
            raise PlanError(
                f"The {what} labelmap is not on the CT's voxel grid.",
                "Resample it onto the CT (e.g. Slicer's Resample Image (BRAINS) with nearest neighbour).",
            )
        return from_labelmap(array(node).copy())
    finally:
        ctx.scene.RemoveNode(node)


def load_level_labels(ctx, path: str, ct_node) -> tuple:
    """Read a .seg.nrrd (named segments) or a labelmap file on the CT's grid; returns (label map, values)."""
    return _read_label_file(ctx, path, ct_node, "vertebra labels", labels_from_segmentation, labels_from_labelmap)


def keep_out_from_segmentation(segmentation_node, ct_node) -> tuple:
    """(label map on the CT grid, {structure: value}) from segments named like keep-out structures ('aorta')."""
    return _named_segments(segmentation_node, ct_node, keep_out_name, "keep-out structures",
                           "'aorta', 'heart', 'esophagus', 'trachea', 'spinal_cord'")


def load_keep_out_labels(ctx, path: str, ct_node) -> tuple:
    """Keep-out anatomy from a file: (label map, {structure: value}); a labelmap uses TotalSegmentator numbering
    (values None)."""
    return _read_label_file(ctx, path, ct_node, "keep-out labels", keep_out_from_segmentation,
                            lambda a: (a, None))
