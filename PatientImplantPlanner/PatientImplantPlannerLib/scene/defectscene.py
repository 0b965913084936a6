"""Scene side of the "Defect implant" panel (issue 12): markups <-> mirror-defect parameters, the symmetry plane as a
movable markups plane with its residual, and the build into a new folder with the implant and guides shown as models.

The widget only binds its controls and calls these functions; they take MRML nodes and plain values, so the tests
run them headless on real nodes. Conventions of the markups (said in the panel's tooltips too):
- resection planes: each markups plane removes the side its normal points to ("positive") or the other side
  ("negative", one choice for all); several planes intersect, and intersect the ROI box and a painted segment;
- rod: a point list, the first point the rod seat on the implant's surface, the second a point along the rod (e.g.
  towards L3);
- screws: a point list of pairs (entry, target), each pair one screw named after its entry point's label.
"""

from typing import Optional

import numpy as np

from ..core.errors import PlanError
from ..core.mesh import read_stl, to_polydata
from ..design.defectparams import MirrorDefectParameters
from ..design.mirrordefect import run_mirror_defect
from ..design.symmetry import SymmetryPlane, find_symmetry_plane, given_plane
from .segments import get_segment_mask
from .volumes import array, ijk_to_ras_matrix


def _points(node) -> list:
    out = []
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        out.append([float(x) for x in p])
    return out


def plane_dict(plane_node) -> dict:
    """{"origin_ras", "normal_ras"} of a markups plane (world coordinates)."""
    if plane_node is None or plane_node.GetNumberOfControlPoints() == 0:
        raise PlanError(f"The plane {plane_node.GetName() if plane_node else ''!r} is not placed.",
                        "Place the plane in a slice or 3D view first.")
    o, n = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    plane_node.GetOriginWorld(o)
    plane_node.GetNormalWorld(n)
    return {"origin_ras": [float(x) for x in o], "normal_ras": [float(x) for x in n]}


def set_plane_node(plane_node, plane: SymmetryPlane) -> None:
    """Show a symmetry plane on a markups plane node (origin and normal, world coordinates)."""
    plane_node.SetOriginWorld(*map(float, plane.origin))
    plane_node.SetNormalWorld(*map(float, plane.normal))


def defect_parameters_from_nodes(symmetry_plane=None, resection_planes=(), remove: str = "positive", roi=None,
                                 fit_clearance_mm: float = 0.2, margin_mm: float = 0.0, cut_face_fill_mm: float = 3.0,
                                 strut_curve=None, strut_diameter_mm: float = 6.0, rod_points=None,
                                 screw_points=None, screw_type: str = "6.5 cancellous", grid_mm: float = 1.0,
                                 drill_guides: bool = True) -> dict:
    """The plan's ``mirror_defect`` block from the panel's markups and values, validated (PlanError naming the
    markups node and the fix)."""
    d = {"fit_clearance_mm": float(fit_clearance_mm), "margin_mm": float(margin_mm),
         "cut_face_fill_mm": float(cut_face_fill_mm), "strut_diameter_mm": float(strut_diameter_mm),
         "grid_mm": float(grid_mm), "drill_guides": bool(drill_guides),
         "screw_parameters": {"screw_type": screw_type}}
    if symmetry_plane is not None and symmetry_plane.GetNumberOfControlPoints():
        d["symmetry_plane"] = plane_dict(symmetry_plane)
    d["resection_planes"] = [{**plane_dict(p), "remove": remove} for p in resection_planes or [] if p is not None]
    if roi is not None:
        c, s = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        roi.GetCenterWorld(c)
        roi.GetSizeWorld(s)
        m = roi.GetObjectToWorldMatrix() if hasattr(roi, "GetObjectToWorldMatrix") else None
        if m is not None:
            rot = np.array([[m.GetElement(r, k) for k in range(3)] for r in range(3)])
            if np.abs(np.abs(rot) - np.eye(3)).max() > 1e-3:
                raise PlanError(f"The resection ROI {roi.GetName()!r} is rotated; the resection box must be aligned "
                                "with the patient axes.", "Reset the ROI's rotation (Markups module), or use planes.")
        d["resection_roi"] = {"center_ras": [float(x) for x in c], "size_mm": [float(x) for x in s]}
    if strut_curve is not None:
        pts = _points(strut_curve)
        if len(pts) == 1:
            raise PlanError(f"The strut path {strut_curve.GetName()!r} has one point.",
                            "Place at least two points (from the S1 endplate side to the ilium).")
        if pts:
            d["struts"] = [pts]
    if rod_points is not None and rod_points.GetNumberOfControlPoints():
        pts = _points(rod_points)
        if len(pts) < 2:
            raise PlanError(f"The rod markups {rod_points.GetName()!r} has only the seat point.",
                            "Place a second point along the rod (e.g. towards L3) to give its direction.")
        d["rod"] = {"point_ras": pts[0], "direction_ras": list(np.subtract(pts[1], pts[0]))}
    if screw_points is not None and screw_points.GetNumberOfControlPoints():
        pts = _points(screw_points)
        if len(pts) % 2:
            raise PlanError(f"The screw markups {screw_points.GetName()!r} has {len(pts)} points; screws are pairs "
                            "(entry, target).", "Add the missing target point or delete the extra entry.")
        d["screws"] = [{"name": screw_points.GetNthControlPointLabel(2 * i) or f"screw {i + 1}",
                        "entry": pts[2 * i], "target": pts[2 * i + 1]} for i in range(len(pts) // 2)]
    return MirrorDefectParameters.from_dict(d).as_dict()


def _bone(ct_node, segmentation_node, segment_id: str):
    if ct_node is None or segmentation_node is None or not segment_id:
        raise PlanError("No CT or bone segment is selected.", "Segment the bone first (Bone segmentation panel).")
    if segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise PlanError(f"Segment {segment_id!r} is not in {segmentation_node.GetName()!r}.",
                        "Select the bone segment again.")
    return array(ct_node), ijk_to_ras_matrix(ct_node), get_segment_mask(segmentation_node, segment_id, ct_node)


def find_plane_in_scene(ct_node, segmentation_node, segment_id: str, plane_node=None, scene=None,
                        refine: bool = False) -> tuple:
    """(plane node, SymmetryPlane): the bone's symmetry plane found automatically (or, with a placed plane and
    ``refine=False``, that plane's residual measured), shown on ``plane_node`` (created in ``scene`` if None)."""
    _, m, bone = _bone(ct_node, segmentation_node, segment_id)
    if plane_node is not None and plane_node.GetNumberOfControlPoints() and not refine:
        plane = given_plane(bone, m, plane_dict(plane_node))
    else:
        initial = plane_dict(plane_node) if plane_node is not None and plane_node.GetNumberOfControlPoints() else None
        plane = find_symmetry_plane(bone, m, initial=initial)
    if plane_node is None:
        plane_node = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "Symmetry plane")
    if plane_node.GetNumberOfControlPoints() == 0:
        plane_node.AddControlPointWorld(*map(float, plane.origin))
    set_plane_node(plane_node, plane)
    return plane_node, plane


def build_defect_in_scene(scene, ct_node, segmentation_node, bone_segment_id: str, parameters: dict, out_folder: str,
                          resection_segment_id: Optional[str] = None, case_id: str = "",
                          coordinate_system: str = "LPS") -> tuple:
    """Build the implant, its guides, files and record into the new ``out_folder`` (mirrordefect.run_mirror_defect)
    and show the implant and the drill guides as model nodes. Returns (manifest, {role or file stem: model node})."""
    import os

    ct, m, bone = _bone(ct_node, segmentation_node, bone_segment_id)
    resection = None
    if resection_segment_id:
        if segmentation_node.GetSegmentation().GetSegment(resection_segment_id) is None:
            raise PlanError(f"The resection segment {resection_segment_id!r} is not in "
                            f"{segmentation_node.GetName()!r}.", "Paint the resection as a segment of the bone's "
                            "segmentation, or clear the resection segment to use planes or a box.")
        resection = get_segment_mask(segmentation_node, resection_segment_id, ct_node)
        bone = bone | resection  # the painted resection may cover bone the threshold missed
    manifest = run_mirror_defect(ct, m, bone, parameters, out_folder, resection_mask=resection,
                                 coordinate_system=coordinate_system, case_id=case_id)
    models = {}
    colours = {"implant": (0.62, 0.64, 0.67), "drill guide": (0.35, 0.55, 0.85)}
    for f in manifest["files"]:
        if f.get("format") != "stl" or f["role"] not in colours:
            continue
        stem = f["file"][:-4]
        model = scene.AddNewNodeByClass("vtkMRMLModelNode", f"{case_id or 'Defect'} {stem}")
        model.SetAndObservePolyData(to_polydata(read_stl(os.path.join(out_folder, f["file"]), coordinate_system)))
        model.CreateDefaultDisplayNodes()
        model.GetDisplayNode().SetColor(*colours[f["role"]])
        models[stem] = model
    return manifest, models
