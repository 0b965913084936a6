"""Vertebra and keep-out labels read from the scene or from files: a segmentation with named segments, a .seg.nrrd, a
labelmap file on the CT's grid, or a folder of one mask file per structure named like 'vertebrae_T4.nii.gz' (what
TotalSegmentator writes by default). The name tables and label arithmetic are in imaging/levelsource.py."""

import os
import re

import numpy as np

from ..core.errors import InputFileError, PlanError
from ..imaging.keepout import TOTALSEGMENTATOR_KEEP_OUT, keep_out_name
from ..imaging.levelsource import check_vertebra_order, labelmap_numbering, labels_from_labelmap, vertebra_name
from ..scene.segments import get_segment_mask
from ..scene.volumes import array, ijk_to_ras_matrix


def _stacked(named_masks, skip_empty: bool = False) -> tuple:
    """(label map uint8 [k, j, i], {name: value}) from (name or None, mask getter) pairs: a mask is read only for a
    recognised name not seen before (the first of each name wins); empty ones are left out when ``skip_empty``."""
    labels, values = None, {}
    for name, get_mask in named_masks:
        if name is None or name in values:
            continue
        mask = get_mask()
        if skip_empty and not mask.any():
            continue
        if labels is None:
            labels = np.zeros(mask.shape, dtype=np.uint8)
        values[name] = len(values) + 1
        labels[mask] = values[name]
    return labels, values


def _named_segments(segmentation_node, ct_node, canonical, what: str, naming: str, required: bool = True) -> tuple:
    """(label map uint8 [k, j, i] on the CT grid, {name: value}) from the segments whose names ``canonical``
    recognises (first segment of each name wins); PlanError naming ``what`` when there is none and it is
    ``required``."""
    segmentation = segmentation_node.GetSegmentation()
    sids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    labels, values = _stacked((canonical(segmentation.GetSegment(sid).GetName()),
                               lambda sid=sid: get_segment_mask(segmentation_node, sid, ct_node)) for sid in sids)
    if not values and required:
        raise PlanError(f"The segmentation {segmentation_node.GetName()!r} has no {what}.",
                        f"Use a segmentation whose segments are named like {naming} (e.g. from TotalSegmentator).")
    return labels, values


def labels_from_segmentation(segmentation_node, ct_node) -> tuple:
    """(label map [k, j, i] on the CT grid, {level name: value}) from a segmentation's vertebra segments, checked to
    be in anatomical order. Segments not named after vertebrae are read by their label values when those are
    distinct (a VerSe or TotalSegmentator labelmap loaded as a segmentation in Slicer: segments 'Label_1', ... or
    colour-table names, each keeping the file's value)."""
    labels, values = _named_segments(segmentation_node, ct_node, vertebra_name, "vertebra segments",
                                     "'vertebrae_L1' or 'L1'", required=False)
    if not values:
        labels, values = _numbered_segments(segmentation_node, ct_node)
    check_vertebra_order(labels, ijk_to_ras_matrix(ct_node), values)
    return labels, values


def _by_label_value(segmentation_node, ct_node):
    """The segments as the labelmap they were loaded from (each at its label value, uint8 [k, j, i] on the CT grid),
    or None when there are fewer than two, their values are not distinct, or they carry the Segment Editor's own
    names."""
    segmentation = segmentation_node.GetSegmentation()
    sids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    numbers = [segmentation.GetSegment(sid).GetLabelValue() for sid in sids]
    if len(sids) < 2 or len(set(numbers)) < len(numbers) or min(numbers) < 1 or max(numbers) > 255:
        return None
    if all(re.fullmatch(r"Segment_\d+", segmentation.GetSegment(sid).GetName() or "") for sid in sids):
        return None  # the Segment Editor's own names: drawn by hand (values 1, 2, ... in one layer), not a labelmap
    labels = None
    for sid, number in zip(sids, numbers):
        mask = get_segment_mask(segmentation_node, sid, ct_node)
        if labels is None:
            labels = np.zeros(mask.shape, dtype=np.uint8)
        labels[mask] = number
    return labels


def _numbered_segments(segmentation_node, ct_node) -> tuple:
    """(label map, {level name: value}) from segments read by their label values in the labelmap's numbering;
    PlanError when the values are not distinct or not vertebrae."""
    refused = PlanError(f"The segmentation {segmentation_node.GetName()!r} has no vertebra segments.",
                        "Use a segmentation whose segments are named like 'vertebrae_L1' or 'L1' (e.g. from "
                        "TotalSegmentator), or load the vertebra labelmap file (TotalSegmentator or VerSe numbering) "
                        "as the segmentation.")
    labels = _by_label_value(segmentation_node, ct_node)
    if labels is None:
        raise refused
    try:
        return labels_from_labelmap(labels)
    except PlanError:
        raise refused from None


MASK_FILE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _labelmap_on_ct_grid(ctx, path: str, ct_node, what: str) -> np.ndarray:
    """A labelmap file as an array [k, j, i]; PlanError when it is not on the CT's voxel grid."""
    node = ctx.volumes_logic.AddArchetypeVolume(path, what, 1)  # 1: load as labelmap
    if node is None:
        raise InputFileError(f"Could not read the labelmap {path}.", "Give a NIfTI/NRRD labelmap.")
    try:
        if node.GetImageData().GetDimensions() != ct_node.GetImageData().GetDimensions() or not np.allclose(
            ijk_to_ras_matrix(node), ijk_to_ras_matrix(ct_node), atol=1e-3
        ):
            raise PlanError(
                f"The {what} labelmap {os.path.basename(path)} is not on the CT's voxel grid.",
                "Resample it onto the CT (e.g. Slicer's Resample Image (BRAINS) with nearest neighbour).",
            )
        return array(node).copy()
    finally:
        ctx.scene.RemoveNode(node)


def _structure_name(file_name: str, canonical):
    """'vertebrae_T4.nii.gz' -> canonical('vertebrae_T4'); None for other files."""
    lower = file_name.lower()
    for ext in MASK_FILE_EXTENSIONS:
        if lower.endswith(ext) and not lower.endswith(".seg.nrrd"):
            return canonical(file_name[: -len(ext)])
    return None


def _read_mask_folder(ctx, folder: str, ct_node, what: str, canonical, naming: str, required: bool = True):
    """(label map uint8 on the CT grid, {name: value}) from a folder of one mask file per structure. Files of other
    structures are not read; empty masks (TotalSegmentator writes one for every structure, found or not) are left
    out."""
    labels, values = _stacked(((_structure_name(f, canonical),
                                lambda f=f: _labelmap_on_ct_grid(ctx, os.path.join(folder, f), ct_node, what) > 0)
                               for f in sorted(os.listdir(folder))), skip_empty=True)
    if not values and required:
        raise PlanError(f"The folder {folder} has no non-empty {what} files.",
                        f"Give a folder of mask files named like {naming}.nii.gz (TotalSegmentator's output folder), "
                        "a labelmap file or a .seg.nrrd.")
    return labels, values


def _read_label_file(ctx, path: str, ct_node, what: str, from_segmentation, from_labelmap):
    """Read a .seg.nrrd (named segments) or a labelmap file on the CT's grid through the given converters."""
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
    return from_labelmap(_labelmap_on_ct_grid(ctx, path, ct_node, what))


def load_level_labels(ctx, path: str, ct_node) -> tuple:
    """Read a .seg.nrrd (named segments), a labelmap file on the CT's grid or a folder of per-vertebra mask files;
    returns (label map, values), checked to be in anatomical order."""
    if os.path.isdir(path):
        labels, values = _read_mask_folder(ctx, path, ct_node, "vertebra labels", vertebra_name, "'vertebrae_T4'")
    else:
        labels, values = _read_label_file(ctx, path, ct_node, "vertebra labels", labels_from_segmentation,
                                          labels_from_labelmap)
    check_vertebra_order(labels, ijk_to_ras_matrix(ct_node), values)
    return labels, values


def keep_out_from_segmentation(segmentation_node, ct_node, required: bool = True) -> tuple:
    """(label map on the CT grid, {structure: value}) from segments named like keep-out structures ('aorta'); for a
    TotalSegmentator labelmap loaded as a segmentation (segments 'Label_52', ...) its label values, with values None
    (TotalSegmentator's numbering) as for a labelmap file. Not ``required``: (None, {}) when there is none."""
    naming = "'aorta', 'heart', 'esophagus', 'trachea', 'spinal_cord'"
    labels, values = _named_segments(segmentation_node, ct_node, keep_out_name, "keep-out structures", naming,
                                     required=False)
    if values:
        return labels, values
    numbered = _by_label_value(segmentation_node, ct_node)
    if numbered is not None and labelmap_numbering(numbered) == "totalsegmentator" and np.isin(
            numbered, list(TOTALSEGMENTATOR_KEEP_OUT)).any():
        return numbered, None
    return _named_segments(segmentation_node, ct_node, keep_out_name, "keep-out structures", naming, required)


def load_keep_out_labels(ctx, path: str, ct_node, required: bool = True) -> tuple:
    """Keep-out anatomy from a file or a folder of mask files: (label map, {structure: value}); a labelmap uses
    TotalSegmentator numbering (values None). Not ``required``: (None, {}) when there is no keep-out structure."""
    if os.path.isdir(path):
        return _read_mask_folder(ctx, path, ct_node, "keep-out labels", keep_out_name, "'aorta'", required)
    if not required and path.lower().endswith(".seg.nrrd"):
        return _read_label_file(ctx, path, ct_node, "keep-out labels",
                                lambda node, ct: keep_out_from_segmentation(node, ct, required=False), None)
    return _read_label_file(ctx, path, ct_node, "keep-out labels", keep_out_from_segmentation,
                            lambda a: (a, None))
