"""The planning workflow on scene nodes: what the Slicer widget and the CLI both call.

design_in_scene: CT + bone segmentation + plan -> designed implant, shown as nodes in the plan's folder.
regenerate_in_scene: the same after the user edited axis, endplates or screws in the scene.
export_in_scene: a designed plan -> a new export bundle folder (parts, markups, plan, segmentation, record).
"""

import os
from dataclasses import replace
from typing import Optional

import numpy as np

from ..analysis.fe import analyse_plan, von_mises_surface
from ..core.errors import PlanError
from ..core.mesh import atomic_write_node
from ..core.progress import Progress
from ..design.plan import Plan, PlanResult, design_implant
from ..export.bundle import export_bundle
from ..imaging.ctimport import describe_ct
from ..imaging.keepout import from_labels
from ..imaging.levelsource import fill_plan_points
from ..record.designrecord import SegmentationInfo, ct_fields
from .labelfiles import keep_out_from_segmentation
from .planfolder import _fill_table, apply_to_scene, plan_from_scene, show_von_mises, write_plan_markups
from .segments import get_segment_mask
from .volumes import array, ijk_to_ras_matrix, voxel_volume_mm3


def bone_mask_of(segmentation_node, segment_id: str, ct_node) -> np.ndarray:
    if segmentation_node is None or not segment_id:
        raise PlanError("No bone segmentation is selected.", "Segment the bone first (Bone segmentation panel).")
    mask = get_segment_mask(segmentation_node, segment_id, ct_node)
    if not mask.any():
        raise PlanError("The bone segment is empty.", "Segment the bone first (Bone segmentation panel).")
    return mask


def design_in_scene(ctx, ct_node, segmentation_node, segment_id: str, plan: Plan, progress=None,
                    level_labels=None, keep_out=None):
    """Design the implant and create/update the plan's nodes. Returns (PlanResult, PlanNodes).

    ``level_labels`` (label map on the CT grid, {level name: value}), e.g. from levelsource, defines the vertebrae
    instead of separating them from the bone; the plan's level names then pick the ends if it has no points.
    ``keep_out`` (keepout.KeepOut): the anatomy to keep clear of; None = what the CT shows (exclude seeds,
    airway, canal). Nothing in the scene changes if the design fails (it is computed before any node is touched).
    """
    prog = Progress(progress)
    mask = bone_mask_of(segmentation_node, segment_id, ct_node)
    m = ijk_to_ras_matrix(ct_node)
    label_map, label_values = level_labels if level_labels is not None else (None, None)
    if label_map is not None:
        fill_plan_points(plan, label_map, label_values, m)
    result = design_implant(plan, array(ct_node), m, mask, progress=prog.sub(0, 0.9).report,
                            label_map=label_map, label_values=label_values, keep_out=keep_out)
    prog.report(0.95, "Updating scene")
    nodes = apply_to_scene(ctx, result, ct_node)
    prog.report(1.0, "Implant designed")
    return result, nodes


def regenerate_in_scene(ctx, case_id: str, ct_node, segmentation_node, segment_id: str, progress=None,
                        keep_out=None):
    """Re-design from the plan stored in the scene, with the user's edits of its markups."""
    plan = plan_from_scene(ctx, case_id, read_edits=True)
    return design_in_scene(ctx, ct_node, segmentation_node, segment_id, plan, progress, keep_out=keep_out)


def fe_check_in_scene(ctx, result: PlanResult, nodes, load_N: float = 500.0, progress=None):
    """Run the finite-element check of every size (fe.analyse_plan), keep its figures on the result (manifest
    "fe", design record), show the nominal's stress field as a model node and the figures in the measurements
    table. Returns the fe.PlanFE."""
    result.fe_analysis = analyse_plan(result, load_N=float(load_N), progress=progress)
    result.fe = result.fe_analysis.manifest()
    show_von_mises(ctx, nodes, result.plan.case_id, von_mises_surface(result.fe_analysis.sizes["nominal"]))
    if nodes.table is not None:
        _fill_table(nodes.table, result)
    return result.fe_analysis


def keep_out_for(ct_node, keep_out_segmentation=None, level_segmentation=None, names=None):
    """The keep-out anatomy for a design in the scene: the keep-out segmentation's structures (segments named like
    'aorta'), else the level segmentation's such segments (a TotalSegmentator result holds both), else None (the
    design then keeps out what the CT shows: exclude-seed vessels, airway, canal)."""
    for node, required in ((keep_out_segmentation, True), (level_segmentation, False)):
        if node is None:
            continue
        try:
            labels, values = keep_out_from_segmentation(node, ct_node)
        except PlanError:
            if required:
                raise
            continue
        return from_labels(labels, ijk_to_ras_matrix(ct_node), values, names)
    return None


def ct_description(ct_node) -> dict:
    return ct_fields(describe_ct(ct_node))


def segmentation_info(info: Optional[SegmentationInfo], plan: Plan, segmentation_node, bone_mask: np.ndarray,
                      ct_node) -> SegmentationInfo:
    """The record's segmentation: ``info`` (how it was made), else the plan's parameters; the bone volume is
    measured on the mask being exported, so a segment edited after it was made is recorded as it is."""
    if info is None:
        info = SegmentationInfo(parameters=plan.segmentation.as_dict())
    elif info.parameters is None and not info.source:
        info = replace(info, source=f"segmentation '{segmentation_node.GetName()}' in the scene "
                                    "(not segmented by this planner)")
    return info.with_volume(float(bone_mask.sum()) * voxel_volume_mm3(ct_node) / 1000.0)


def export_in_scene(
    ctx,
    result: PlanResult,
    nodes,
    ct_node,
    segmentation_node,
    segment_id: str,
    out_parent: Optional[str] = None,
    folder: Optional[str] = None,
    export_params=None,
    lattice_params=None,
    guide_params=None,
    segmentation: Optional[SegmentationInfo] = None,
    overwrite: bool = False,
    progress=None,
):
    """Write the export bundle of a designed plan (see bundle.export_bundle) plus its markups, plan and
    segmentation; returns the BundleResult. ``segmentation`` says how the bone segment was made (for the design
    record); without it the plan's segmentation parameters are recorded."""
    case = result.plan.case_id
    mask = get_segment_mask(segmentation_node, segment_id, ct_node)

    def extra_files(out_folder):
        written = write_plan_markups(nodes, out_folder, case, overwrite)
        plan_path = os.path.join(out_folder, f"{case}_plan.json")
        result.plan.save(plan_path, overwrite=overwrite)
        written.append((plan_path, "plan parameters (JSON)"))
        seg_path = os.path.join(out_folder, f"{case}_bone.seg.nrrd")
        write_segmentation(segmentation_node, seg_path, overwrite)
        written.append((seg_path, "bone segmentation (.seg.nrrd)"))
        return written

    return export_bundle(
        result,
        mask,
        ijk_to_ras_matrix(ct_node),
        out_parent=out_parent,
        folder=folder,
        params=export_params,
        lattice_params=lattice_params,
        guide_params=guide_params,
        ct_array=array(ct_node),
        ct_description=ct_description(ct_node),
        segmentation_record=segmentation_info(segmentation, result.plan, segmentation_node, mask, ct_node),
        overwrite=overwrite,
        progress=progress,
        extra_writer=extra_files,
    )


def write_segmentation(segmentation_node, path: str, overwrite: bool = False) -> None:
    """Save a segmentation as .seg.nrrd atomically (written under a temporary name, then renamed)."""
    import slicer

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetUseCompression(True)
    atomic_write_node(segmentation_node, storage, path, overwrite)
