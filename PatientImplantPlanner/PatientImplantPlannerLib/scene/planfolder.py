"""A plan in the MRML scene: one subject-hierarchy folder holding ordinary, editable nodes.

Folder "Implant plan <case>": the plan parameters (text node, JSON: saved with the scene), the spinal axis
(markups curve), the two endplates (markups planes), one markups line per screw, a model per implant size and a
measurements table. Regenerating updates these nodes in place (no duplicates), and ``plan_from_scene`` reads user
edits of the markups back into the plan, so the implant follows what the user dragged.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import PlanError
from ..core.mesh import atomic_write_node, to_polydata
from ..design.plan import Plan, PlanResult
from .markups import (
    SCREW_NAME_ATTRIBUTE,
    curve_control_points,
    endplate_from_plane,
    plane_moved,
    set_curve,
    set_plane,
    set_screw_line,
    trajectory_from_line,
)

PLAN_ATTRIBUTE = "PatientImplantPlanner.Plan"
ROLE_ATTRIBUTE = "PatientImplantPlanner.Role"
IMPLANT_COLOR = (0.75, 0.78, 0.82)  # titanium grey
VARIANT_COLOR = (0.55, 0.65, 0.85)


@dataclass
class PlanNodes:
    folder_item: int
    parameters: object = None  # vtkMRMLTextNode
    axis: object = None  # vtkMRMLMarkupsCurveNode
    proximal_endplate: object = None  # vtkMRMLMarkupsPlaneNode
    distal_endplate: object = None
    screws: list = field(default_factory=list)  # [vtkMRMLMarkupsLineNode]
    models: dict = field(default_factory=dict)  # {"nominal" | "+2 mm": vtkMRMLModelNode}
    table: object = None  # vtkMRMLTableNode


def _sh(ctx):
    return ctx.scene.GetSubjectHierarchyNode()


def find_plan_folder(ctx, case_id: str) -> int:
    """The folder item of the plan with this case ID, or 0."""
    sh = _sh(ctx)
    import vtk

    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    for n in range(ids.GetNumberOfIds()):
        item = ids.GetId(n)
        if sh.GetItemAttribute(item, PLAN_ATTRIBUTE) == case_id:
            return item
    return 0


def _children(ctx, folder_item) -> dict:
    """Role -> node for the nodes directly in the plan folder."""
    sh = _sh(ctx)
    import vtk

    ids = vtk.vtkIdList()
    sh.GetItemChildren(folder_item, ids, False)
    out = {}
    for n in range(ids.GetNumberOfIds()):
        node = sh.GetItemDataNode(ids.GetId(n))
        # A removed node still referenced from Python can keep its item headless: skip nodes without a scene.
        if node is not None and node.GetScene() is not None and node.GetAttribute(ROLE_ATTRIBUTE):
            out[node.GetAttribute(ROLE_ATTRIBUTE)] = node
    return out


def _node(ctx, folder_item, existing, role, class_name, name):
    node = existing.get(role)
    if node is None:
        node = ctx.scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(ROLE_ATTRIBUTE, role)
        if hasattr(node, "CreateDefaultDisplayNodes"):
            node.CreateDefaultDisplayNodes()
        sh = _sh(ctx)
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, folder_item)
        else:  # headless there are no subject hierarchy plugins to add the item
            sh.CreateItem(folder_item, node)
    else:
        node.SetName(name)
    return node


def _set_model(ctx, model, mesh, color) -> None:
    model.SetAndObservePolyData(to_polydata(mesh))
    display = model.GetDisplayNode()
    if display is None:
        model.CreateDefaultDisplayNodes()
        display = model.GetDisplayNode()
    display.SetColor(*color)


def show_von_mises(ctx, nodes: PlanNodes, case_id: str, surface_polydata) -> object:
    """The FE check's stress field in the plan folder: a model node of the implant surface coloured by its
    "von Mises (MPa)" point scalar (a rainbow colour map when the scene has Slicer's colour tables)."""
    existing = _children(ctx, nodes.folder_item)
    model = _node(ctx, nodes.folder_item, existing, "fe:von_mises", "vtkMRMLModelNode",
                  f"{case_id} von Mises stress (MPa)")
    model.SetAndObservePolyData(surface_polydata)
    display = model.GetDisplayNode()
    display.SetActiveScalarName("von Mises (MPa)")
    display.SetScalarVisibility(True)
    colour = ctx.scene.GetNodeByID("vtkMRMLColorTableNodeRainbow")
    if colour is not None:
        display.SetAndObserveColorNodeID(colour.GetID())
    nodes.models["fe:von_mises"] = model
    return model


def _fill_table(table, result: PlanResult) -> None:
    import vtk

    m = result.measurements
    rows = [
        ("Length along axis", m.get("length_mm"), "mm"),
        ("Cross-section area", m.get("cross_section_area_mm2"), "mm2"),
        ("Second moment of area (min)", (m.get("second_moment_mm4") or {}).get("min"), "mm4"),
        ("Volume", m.get("volume_mm3"), "mm3"),
        ("Mass (Ti6Al4V ELI)", m.get("mass_g"), "g"),
        ("Axial stiffness vs 5.5 mm Ti rod", m.get("axial_stiffness_ratio"), "x"),
        ("Bending stiffness vs 5.5 mm Ti rod", m.get("bending_stiffness_ratio"), "x"),
        ("Bone interference outside footplates", m.get("interference_mm3"), "mm3"),
    ]
    for sp in result.screws:
        rows.append((f"Screw {sp.trajectory.name} length", sp.length_mm, "mm"))
        rows.append((f"Screw {sp.trajectory.name} in > 250 HU", 100.0 * sp.grade.get("gt250", 0.0), "%"))
    for extra, geom in sorted(result.variants.items()):
        rows.append((f"Variant +{extra:g} mm length", geom.length_mm, "mm"))
    rows += _safety_rows(m.get("safety") or {}, m.get("placement_detail") or {})
    for label, fe in (getattr(result, "fe", None) or {}).items():
        rows.append((f"FE {label}: safety factor against yield at {fe['load_N']:g} N", fe["safety_factor_yield"], "x"))
        rows.append((f"FE {label}: peak / p99 von Mises", f"{fe['max_von_mises_MPa']:.0f} / "
                     f"{fe['p99_von_mises_MPa']:.0f}", "MPa"))
        rows.append((f"FE {label}: axial stiffness vs 5.5 mm rod", fe["stiffness_ratio_vs_rod"], "x"))
    table.RemoveAllColumns()
    cols = []
    for name in ("Measurement", "Value", "Unit"):
        col = vtk.vtkStringArray()
        col.SetName(name)
        table.AddColumn(col)
        cols.append(col)
    for label, value, unit in rows:
        r = table.AddEmptyRow()
        table.SetCellText(r, 0, label)
        text = value if isinstance(value, str) else f"{float(value):.3f}".rstrip("0").rstrip(".")
        table.SetCellText(r, 1, "" if value is None else text)
        table.SetCellText(r, 2, unit)


def _safety_rows(safety: dict, placement: dict) -> list:
    """Measurements-table rows of the keep-out check: placement, clearance per structure (those within the
    measuring margin), overlap, what was not checked and every finding with its id (blocking or accepted)."""
    rows = []
    if placement.get("angle_deg") is not None:
        rows.append((f"Placement angle ({placement.get('how', '')})", placement["angle_deg"], "deg"))
    if not safety:
        return rows
    rows.append(("Required keep-out clearance", safety.get("required_clearance_mm"), "mm"))
    for name, c in (safety.get("clearance_mm") or {}).items():
        if c is not None:
            rows.append((f"Clearance to {name.replace('_', ' ')}", c, "mm"))
        overlap = (safety.get("overlap_mm3") or {}).get(name) or 0.0
        if overlap > 0:
            rows.append((f"Implant inside {name.replace('_', ' ')}", overlap, "mm3"))
    for name, why in ((safety.get("keep_out") or {}).get("not_checked") or {}).items():
        rows.append((f"Not checked: {name.replace('_', ' ')}", why, ""))
    for f in safety.get("findings") or []:
        rows.append((f"Finding {f['id']}", f["message"], "accepted" if f["accepted"] else "blocks export"))
    return rows


def apply_to_scene(ctx, result: PlanResult, ct_node=None) -> PlanNodes:
    """Create or update the plan's nodes (one folder per case ID)."""
    sh = _sh(ctx)
    case_id = result.plan.case_id
    folder = find_plan_folder(ctx, case_id)
    was_modifying = ctx.scene.StartState(ctx.scene.BatchProcessState)
    try:
        if not folder:
            folder = sh.CreateFolderItem(sh.GetSceneItemID(), f"Implant plan {case_id}")
            sh.SetItemAttribute(folder, PLAN_ATTRIBUTE, case_id)
        existing = _children(ctx, folder)
        nodes = PlanNodes(folder_item=folder)
        nodes.parameters = _node(ctx, folder, existing, "parameters", "vtkMRMLTextNode", f"{case_id} plan parameters")
        nodes.parameters.SetText(json.dumps(result.plan.to_dict(), indent=2))
        if ct_node is not None:
            nodes.parameters.SetNodeReferenceID("ct", ct_node.GetID())
        nodes.axis = _node(ctx, folder, existing, "axis", "vtkMRMLMarkupsCurveNode", "Spinal axis")
        set_curve(nodes.axis, result.axis_control_points)
        prox, dist = result.proximal_endplate, result.distal_endplate
        nodes.proximal_endplate = _node(
            ctx, folder, existing, "proximal_endplate", "vtkMRMLMarkupsPlaneNode",
            f"Proximal endplate ({prox.level or 'proximal'} inferior)",
        )
        set_plane(nodes.proximal_endplate, prox)
        nodes.distal_endplate = _node(
            ctx, folder, existing, "distal_endplate", "vtkMRMLMarkupsPlaneNode",
            f"Distal endplate ({dist.level or 'distal'} superior)",
        )
        set_plane(nodes.distal_endplate, dist)
        for i, sp in enumerate(result.screws):
            line = _node(ctx, folder, existing, f"screw:{i}", "vtkMRMLMarkupsLineNode", f"Screw {sp.trajectory.name}")
            set_screw_line(line, sp.trajectory, sp.length_mm)
            nodes.screws.append(line)
        for role, node in existing.items():  # screws removed from the plan
            if role.startswith("screw:") and int(role.split(":")[1]) >= len(result.screws):
                ctx.scene.RemoveNode(node)
        model = _node(ctx, folder, existing, "implant:nominal", "vtkMRMLModelNode", f"{case_id} implant nominal")
        _set_model(ctx, model, result.nominal.mesh, IMPLANT_COLOR)
        nodes.models["nominal"] = model
        for extra, geom in sorted(result.variants.items()):
            label = f"+{extra:g} mm"
            model = _node(ctx, folder, existing, f"implant:{label}", "vtkMRMLModelNode", f"{case_id} implant {label}")
            _set_model(ctx, model, geom.mesh, VARIANT_COLOR)
            model.GetDisplayNode().SetVisibility(False)  # variants hidden by default: same place as nominal
            nodes.models[label] = model
        wanted = {f"implant:+{e:g} mm" for e in result.variants}
        for role, node in existing.items():
            if role.startswith("implant:+") and role not in wanted:
                ctx.scene.RemoveNode(node)
        nodes.table = _node(ctx, folder, existing, "measurements", "vtkMRMLTableNode", f"{case_id} measurements")
        _fill_table(nodes.table, result)
    finally:
        ctx.scene.EndState(ctx.scene.BatchProcessState)
    del was_modifying
    return nodes


def plan_from_scene(ctx, case_id: str, read_edits: bool = True) -> Plan:
    """The plan stored in the scene; with ``read_edits`` the markups' current positions become overrides."""
    folder = find_plan_folder(ctx, case_id)
    if not folder:
        raise PlanError(f"No implant plan {case_id!r} in the scene.", "Design an implant first or load the scene.")
    nodes = _children(ctx, folder)
    if "parameters" not in nodes:
        raise PlanError(f"The plan folder of {case_id!r} has no parameters node.", "Regenerate the plan.")
    plan = Plan.from_dict(json.loads(nodes["parameters"].GetText()))
    if not read_edits:
        return plan
    if "axis" in nodes:
        plan.axis_control_points = curve_control_points(nodes["axis"])
    if "proximal_endplate" in nodes:
        plan.proximal_endplate = endplate_from_plane(nodes["proximal_endplate"]).as_dict()
    if "distal_endplate" in nodes:
        plan.distal_endplate = endplate_from_plane(nodes["distal_endplate"]).as_dict()
    # A doubtful endplate the user has moved is the user's now (checked); one not moved stays doubtful.
    plan.unchecked_endplates = [end for end in plan.unchecked_endplates
                                if f"{end}_endplate" not in nodes or not plane_moved(nodes[f"{end}_endplate"])]
    screws = sorted(((int(r.split(":")[1]), n) for r, n in nodes.items() if r.startswith("screw:")),
                    key=lambda rn: rn[0])
    if screws:
        trajectories = [trajectory_from_line(line) for _, line in screws]
        plan.trajectories = [{"name": t.name, "end": t.end, "entry": np.asarray(t.entry).tolist(),
                              "target": np.asarray(t.target).tolist()} for t in trajectories]
    return plan


def write_markups_json(node, path: str, overwrite: bool = False) -> str:
    """Save a markups node as Slicer markups JSON (.mrk.json), atomically, without leaving a storage node."""
    return atomic_write_node(node, node.CreateDefaultStorageNode(), path, overwrite)


def write_plan_markups(nodes: PlanNodes, folder: str, case_id: str, overwrite: bool = False) -> list:
    """Axis, endplates and screws of a plan as .mrk.json files; returns [(path, role)]."""
    import os

    out = [
        (write_markups_json(nodes.axis, os.path.join(folder, f"{case_id}_spinal-axis.mrk.json"), overwrite),
         "spinal axis (markups curve)"),
        (write_markups_json(nodes.proximal_endplate, os.path.join(folder, f"{case_id}_endplate_proximal.mrk.json"),
                            overwrite), "proximal endplate (markups plane)"),
        (write_markups_json(nodes.distal_endplate, os.path.join(folder, f"{case_id}_endplate_distal.mrk.json"),
                            overwrite), "distal endplate (markups plane)"),
    ]
    for i, line in enumerate(nodes.screws):
        name = (line.GetAttribute(SCREW_NAME_ATTRIBUTE) or f"screw-{i}").replace(" ", "-")
        out.append((write_markups_json(line, os.path.join(folder, f"{case_id}_screw_{name}.mrk.json"), overwrite),
                    "screw trajectory (markups line)"))
    return out
