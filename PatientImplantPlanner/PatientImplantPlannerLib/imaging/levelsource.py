"""Vertebra labels as the level source: a segmentation with one segment per vertebra (e.g. TotalSegmentator's
``vertebrae_L1`` names) or a labelmap with TotalSegmentator's numbering, instead of clicked points.

The labels then define each vertebra for level detection, and the plan's level names (e.g. "L1", "L3") pick the
proximal and distal vertebrae.
"""

import re
from typing import Optional

import numpy as np

from ..core.errors import InputFileError, PlanError

# TotalSegmentator (v2, task "total") label values of the vertebrae: 26 = S1 ... 50 = C1.
_ORDER = ["S1", "L5", "L4", "L3", "L2", "L1"] + [f"T{n}" for n in range(12, 0, -1)] + [f"C{n}" for n in range(7, 0, -1)]
TOTALSEGMENTATOR_VERTEBRAE = {26 + i: name for i, name in enumerate(_ORDER)}

_NAME = re.compile(r"^(?:vertebra[e]?[\s_-]*)?([CTL])\s*(\d{1,2})$|^(?:vertebra[e]?[\s_-]*)?(S1|sacrum)$", re.I)


def vertebra_name(text: str) -> Optional[str]:
    """"vertebrae_L1", "Vertebra L1", "L1" -> "L1"; "vertebrae_S1"/"sacrum" -> "S1"; anything else -> None."""
    m = _NAME.match(text.strip())
    if not m:
        return None
    if m.group(3):
        return "S1"
    return f"{m.group(1).upper()}{int(m.group(2))}"


def _named_segments(segmentation_node, ct_node, canonical, what: str, naming: str) -> tuple:
    """(label map uint8 [k, j, i] on the CT grid, {name: value}) from the segments whose names ``canonical``
    recognises (first segment of each name wins); PlanError naming ``what`` is missing otherwise."""
    from ..scene.segments import get_segment_mask

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


def labels_from_labelmap(label_array: np.ndarray) -> tuple:
    """(label map, {level name: value}) from a labelmap with TotalSegmentator's vertebra numbering."""
    present = {int(v) for v in np.unique(label_array)} & set(TOTALSEGMENTATOR_VERTEBRAE)
    if not present:
        raise PlanError(
            "The labelmap has no vertebra labels in TotalSegmentator's numbering (26 = S1 ... 50 = C1).",
            "Give a TotalSegmentator 'total' labelmap, or a segmentation with named vertebra segments.",
        )
    return np.asarray(label_array), {TOTALSEGMENTATOR_VERTEBRAE[v]: v for v in sorted(present)}


def _read_label_file(ctx, path: str, ct_node, what: str, from_segmentation, from_labelmap):
    """Read a .seg.nrrd (named segments) or a labelmap file on the CT's grid through the given converters."""
    import os

    import slicer

    from ..scene.volumes import array, ijk_to_ras_matrix

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
    from .keepout import keep_out_name

    return _named_segments(segmentation_node, ct_node, keep_out_name, "keep-out structures",
                           "'aorta', 'heart', 'esophagus', 'trachea', 'spinal_cord'")


def load_keep_out_labels(ctx, path: str, ct_node) -> tuple:
    """Keep-out anatomy from a file: (label map, {structure: value}); a labelmap uses TotalSegmentator numbering
    (values None)."""
    return _read_label_file(ctx, path, ct_node, "keep-out labels", keep_out_from_segmentation,
                            lambda a: (a, None))


def level_point(label_map: np.ndarray, ijk_to_ras: np.ndarray, value: int) -> np.ndarray:
    """A RAS point inside the labelled vertebra: the labelled voxel nearest to the label's centroid."""
    idx = np.argwhere(label_map == value)
    if len(idx) == 0:
        raise PlanError(f"Label {value} is empty.", "Check the vertebra labels.")
    c = idx.mean(axis=0)
    k, j, i = idx[np.argmin(np.linalg.norm(idx - c, axis=1))]
    return ijk_to_ras[:3, :3] @ np.array([i, j, k], dtype=float) + ijk_to_ras[:3, 3]


def fill_plan_points(plan, label_map: np.ndarray, values: dict, ijk_to_ras: np.ndarray) -> None:
    """Give the plan a point in each named end vertebra when it has none (labels are the level source)."""
    for attr, level in (("proximal_point_ras", plan.proximal_level), ("distal_point_ras", plan.distal_level)):
        if getattr(plan, attr) is not None:
            continue
        if not level:
            raise PlanError(
                "With vertebra labels as the level source the plan must name the proximal and distal levels.",
                "Set proximal_level and distal_level (e.g. 'L1' and 'L3').",
            )
        if level not in values:
            raise PlanError(
                f"Level {level} is not among the labelled vertebrae ({', '.join(values)}).",
                "Choose labelled levels, or place points instead.",
            )
        setattr(plan, attr, [float(x) for x in level_point(label_map, ijk_to_ras, values[level])])
