"""Bone segmentation in the scene: reads the CT node, runs imaging.bonesegmentation on its array and writes the "Bone"
segment (with Slicer's bone terminology) without temporary nodes; seeds and ROI come from markups nodes."""

import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from ..core.errors import SegmentationError
from ..core.progress import Progress
from ..imaging.bonesegmentation import (
    BONE_COLOR,
    BONE_SEGMENT_NAME,
    BONE_TERMINOLOGY,
    BoneSegmentationParameters,
    segment_bone_array,
)
from .volumes import array as volume_array
from .volumes import grid_of


@dataclass
class BoneSegmentationResult:
    segmentation_node: object
    segment_id: str
    mask: np.ndarray  # bool [k, j, i] on the CT grid
    voxel_count: int
    volume_mm3: float
    warnings: list
    parameters: BoneSegmentationParameters
    timings_s: dict = field(default_factory=dict)  # seconds per step, for benchmarks


def parameters_from_markups(
    params: Optional[BoneSegmentationParameters], seed_node=None, exclude_node=None, roi_node=None
) -> BoneSegmentationParameters:
    """A copy of ``params`` with seeds, exclude seeds and ROI box taken from markups nodes (world RAS).

    Seed nodes are ``vtkMRMLMarkupsFiducialNode`` (every control point is a seed); the ROI node is a
    ``vtkMRMLMarkupsROINode`` whose world-axis-aligned bounds become the box (a rotated ROI gives its bounding box).
    Nodes given as None leave the corresponding parameter unchanged.
    """
    params = replace(params) if params is not None else BoneSegmentationParameters()

    def points(node):
        out = []
        for n in range(node.GetNumberOfControlPoints()):
            p = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(n, p)
            out.append(tuple(float(v) for v in p))
        return out

    if seed_node is not None:
        params.seeds_ras = points(seed_node)
    if exclude_node is not None:
        params.exclude_seeds_ras = points(exclude_node)
    if roi_node is not None:
        b = [0.0] * 6
        roi_node.GetRASBounds(b)
        lo, hi = np.array(b[0::2]), np.array(b[1::2])
        params.roi_center_ras = tuple(float(v) for v in (lo + hi) / 2)
        params.roi_size_mm = tuple(float(v) for v in hi - lo)
    return params


def _cropped_labelmap(crop: np.ndarray, box, ct_node):
    """vtkOrientedImageData of a crop [k, j, i] placed at ``box`` of the CT grid (extent, not a full copy)."""
    import slicer
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    arr = np.ascontiguousarray(crop, dtype=np.uint8)
    image = slicer.vtkOrientedImageData()
    k, j, i = box
    image.SetExtent(i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1)
    image.GetPointData().SetScalars(numpy_to_vtk(arr.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    m = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(m)
    image.SetImageToWorldMatrix(m)
    return image


def _write_segment(ctx, ct_node, segmentation_node, crop: np.ndarray, box):
    """Create or update the "Bone" segment; a node created here is removed again if writing fails."""
    import slicer

    created = segmentation_node is None
    if created:
        segmentation_node = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation_node.SetName(f"{ct_node.GetName()} bone segmentation")
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
    try:
        was_modifying = segmentation_node.StartModify()
        try:
            segmentation = segmentation_node.GetSegmentation()
            if segmentation.GetNumberOfSegments() == 0:
                segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
            segment_id = segmentation.GetSegmentIdBySegmentName(BONE_SEGMENT_NAME)
            if not segment_id:
                segment_id = segmentation.AddEmptySegment(
                    segmentation.GenerateUniqueSegmentID(BONE_SEGMENT_NAME), BONE_SEGMENT_NAME, list(BONE_COLOR)
                )
            segment = segmentation.GetSegment(segment_id)
            segment.SetColor(*BONE_COLOR)
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), BONE_TERMINOLOGY)
            logic = slicer.vtkSlicerSegmentationsModuleLogic
            if not logic.SetBinaryLabelmapToSegment(
                _cropped_labelmap(crop, box, ct_node), segmentation_node, segment_id, logic.MODE_REPLACE
            ):
                raise RuntimeError(f"Could not write the labelmap of segment {segment_id!r}.")
        finally:
            segmentation_node.EndModify(was_modifying)
    except Exception:
        if created:
            ctx.scene.RemoveNode(segmentation_node)
        raise
    return segmentation_node, segment_id


def segment_bone(ctx, ct_node, params=None, segmentation_node=None, progress=None,
                 not_bone=None) -> BoneSegmentationResult:
    """Segment bone of ``ct_node`` into the "Bone" segment of ``segmentation_node`` (created if None).
    ``not_bone``: voxels known not to be bone (see segment_bone_array), e.g. the labelled keep-out structures.

    Raises SegmentationError for bad inputs; the scene is then unchanged (a created node is removed, a given
    node keeps its previous content).
    """
    params = replace(params) if params is not None else BoneSegmentationParameters()
    progress = progress if isinstance(progress, Progress) else Progress(progress)
    if ct_node is None or ct_node.GetImageData() is None:
        raise SegmentationError("No CT volume was given (or it has no image data).", "Load a CT and select it.")
    ct = volume_array(ct_node)
    bone = segment_bone_array(ct, grid_of(ct_node), params, progress, not_bone=not_bone)
    progress.report(0.9, "Writing the Bone segment")
    t = time.perf_counter()
    seg_node, segment_id = _write_segment(ctx, ct_node, segmentation_node, bone.crop, bone.box)
    bone.timings_s["write"] = time.perf_counter() - t
    bone.timings_s["total"] += bone.timings_s["write"]
    count = int(bone.crop.sum())
    progress.report(1.0, "Bone segmentation done")
    return BoneSegmentationResult(
        segmentation_node=seg_node,
        segment_id=segment_id,
        mask=bone.full(ct.shape),
        voxel_count=count,
        volume_mm3=count * bone.voxel_mm3,
        warnings=bone.warnings,
        parameters=params,
        timings_s=bone.timings_s,
    )
