"""Drill guides that seat on a mirror-defect implant: one PA12 pad per planned screw (numpy, VTK, manifold3d).

The implant of a mirror-defect plan has no footplate, so guides.drill_guide's cap does not apply. Each guide here is
a pad shaped to the implant's own surface around the screw hole's opening, built in the drill's frame (w along the
drill, out of the bone; u, v across it) as one field contoured once:
- shell: points between ``fit_clearance_mm`` and ``fit_clearance_mm + guide_wall_mm`` from the implant (its pores'
  envelope and rod connector, the screw holes closed), within ``pad_radius_mm`` of the drill axis;
- sleeve: a tube around the drill axis (bore = drill + ``sleeve_clearance_mm``, wall ``sleeve_wall_mm``) up to
  ``sleeve_length_mm`` above the pad's top, standing on the implant;
- nothing of the guide lies in the implant's shadow along w (below its highest surface in each column, less the
  clearance) nor in the remaining bone's: so the guide lifts off along the drill axis (even over a drill bit) and
  no bone or implant part is in its way. Where the pad overhangs the implant's edge it follows the side wall, which
  stops the pad sliding across the surface.
Each guide is verified: one closed body, no overlap with the implant or the bone, the bore free along the whole
axis, the seat's contact area measured and refused below ``MIN_CONTACT_AREA_MM2`` (a pad that would rock).
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..core.errors import GeometryError, PlanError
from ..core.mesh import TriMesh, check_mesh, from_manifold, isosurface, require_manifold3d, signed_distance, to_manifold
from .guides import MIN_PRINTABLE_WALL_MM, Guide, GuideParameters

MIN_CONTACT_AREA_MM2 = 20.0  # seat area within clearance + 0.15 mm of the implant below which a pad would rock
GUIDE_STEP_MM = 0.3  # sampling step of the guide field (chordal error ~ step / 10 with flying edges)
CONTACT_TOLERANCE_MM = 0.15  # seat triangles within clearance + this of the implant count as contact


@dataclass
class DefectGuideParameters:
    """The pad's size; the shell, sleeve and clearances come from guides.GuideParameters."""

    pad_radius_mm: float = 12.0  # pad extent around the drill axis
    spigot_depth_mm: float = 3.0  # a plug this deep into the implant's screw hole centres the guide; 0: none
    min_sleeve_fraction: float = 0.8  # the sleeve must reach this share of sleeve_length_mm (bone may cut it)

    def validate(self, gp: GuideParameters) -> None:
        ro = 0.5 * (max(gp.drill_diameters.values()) + gp.sleeve_clearance_mm) + gp.sleeve_wall_mm
        if not (np.isfinite(self.pad_radius_mm) and ro + 2.0 <= self.pad_radius_mm <= 40.0):
            raise PlanError(f"Drill guide pad radius {self.pad_radius_mm!r} mm is invalid.",
                            f"Use {ro + 2.0:.1f} to 40 mm (at least the sleeve's outer radius + 2 mm).")
        if not (np.isfinite(self.spigot_depth_mm) and 0.0 <= self.spigot_depth_mm <= 10.0):
            raise PlanError(f"Drill guide spigot depth {self.spigot_depth_mm!r} mm is invalid.", "Use 0 to 10 mm.")
        if not 0.0 < self.min_sleeve_fraction <= 1.0:
            raise PlanError(f"min_sleeve_fraction {self.min_sleeve_fraction!r} is invalid.", "Use 0 to 1.")


def _frame(direction) -> np.ndarray:
    """Rows (u, v, w): w = -direction (out of the bone), right-handed."""
    w = -np.asarray(direction, float) / np.linalg.norm(direction)
    u = np.cross(w, [1.0, 0.0, 0.0] if abs(w[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    return np.array([u, np.cross(w, u), w])


def _crop(mesh: TriMesh, centre, radius: float) -> TriMesh:
    """Faces whose bounding box meets the box of the ball (``centre``, ``radius``): enough for the local signed
    distance, long boolean triangles with every vertex far away included."""
    tri = mesh.vertices[mesh.faces]
    c = np.asarray(centre, float)
    keep = np.all(tri.min(axis=1) <= c + radius, axis=1) & np.all(tri.max(axis=1) >= c - radius, axis=1)
    return TriMesh(mesh.vertices, mesh.faces[keep])


def _signed_distance(mesh: TriMesh, pts: np.ndarray) -> np.ndarray:
    if len(mesh.faces) == 0:
        return np.full(len(pts), 1e3)
    return signed_distance(mesh, pts)


def _top(field_kji: np.ndarray, ws: np.ndarray, level: float) -> np.ndarray:
    """Per column (j, i): the highest w where field <= level (linear between samples); -inf where none."""
    below = field_kji <= level
    any_ = below.any(axis=0)
    nk = field_kji.shape[0]
    k = nk - 1 - np.argmax(below[::-1], axis=0)  # highest k at or below the level
    j, i = np.indices(k.shape)
    top = np.full(k.shape, -np.inf)
    k1 = np.minimum(k + 1, nk - 1)
    f0, f1 = field_kji[k, j, i], field_kji[k1, j, i]
    t = np.where((k1 > k) & (f1 > f0), np.clip((level - f0) / np.where(f1 > f0, f1 - f0, 1.0), 0.0, 1.0), 0.0)
    top[any_] = (ws[k] + t * (ws[k1] - ws[k]))[any_]
    return top


def entry_on_implant(seat: TriMesh, entry, direction, reach_back_mm: float, length_mm: float) -> np.ndarray:
    """Where the screw line, coming from outside, first enters the seat solid (the implant, holes closed)."""
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    s = np.arange(-reach_back_mm, length_mm, 0.1)
    pts = np.asarray(entry, float) + s[:, None] * d
    dist = _signed_distance(seat, pts)
    inside = np.flatnonzero(dist < 0)
    if len(inside) == 0 or inside[0] == 0:
        return None
    k = inside[0]
    t = dist[k - 1] / (dist[k - 1] - dist[k])
    return pts[k - 1] + t * (pts[k] - pts[k - 1])


def defect_drill_guide(seat: TriMesh, bone_distance, plan, gp: GuideParameters,
                       dp: Optional[DefectGuideParameters] = None, reach_back_mm: float = 200.0,
                       implant: Optional[TriMesh] = None) -> tuple:
    """(guides.Guide, figures) of the drill guide for screw ``plan`` (screws.ScrewPlan) seating on ``seat`` (the
    closed implant solid with its screw holes closed, RAS). ``bone_distance(points)``: signed distance to the
    remaining bone (positive outside). ``implant``: the part as printed (screw holes open), which the guide must not
    overlap; the spigot reaches into its screw hole (``seat`` when None: no spigot)."""
    require_manifold3d()
    dp = dp or DefectGuideParameters()
    gp.validate()
    dp.validate(gp)
    traj = plan.trajectory
    name = str(traj.name)
    drill = gp.drill_for(plan.screw_type.diameter_mm)
    rb = 0.5 * (drill + gp.sleeve_clearance_mm)
    ro = rb + gp.sleeve_wall_mm
    c, wall, R = float(gp.fit_clearance_mm), float(gp.guide_wall_mm), float(dp.pad_radius_mm)
    e0 = entry_on_implant(seat, traj.entry, traj.direction, reach_back_mm, plan.length_mm + 5.0)
    if e0 is None:
        raise PlanError(f"Screw '{name}' does not pass through the implant from outside, so no drill guide can sit "
                        "on the implant for it.", "Move its entry so the screw goes in through the implant.")
    rot = _frame(traj.direction)  # rows u, v, w
    h = GUIDE_STEP_MM
    half = R + 2 * h
    top_w = c + wall + gp.sleeve_length_mm
    us = np.arange(-half, half + 0.5 * h, h)
    ws = np.arange(-(R + 2.0), top_w + 2 * h, h)
    ww, vv, uu = np.meshgrid(ws, us, us, indexing="ij")  # [k=w, j=v, i=u]
    local = np.stack([uu.ravel(), vv.ravel(), ww.ravel()], axis=1)
    pts = e0 + local @ rot
    crop = _crop(seat, e0, np.sqrt(2 * half ** 2 + max(ws[-1], -ws[0]) ** 2) + 5.0)
    d_seat = _signed_distance(crop, pts).reshape(ww.shape)
    d_bone = np.asarray(bone_distance(pts), float).reshape(ww.shape)
    top_seat = _top(d_seat, ws, c)
    top_bone = _top(d_bone, ws, c)
    if np.isfinite(top_bone[len(us) // 2, len(us) // 2]) and top_bone[len(us) // 2, len(us) // 2] > 0.0:
        raise PlanError(f"Bone lies over the implant where screw '{name}' enters it, so a guide could not be "
                        "seated and lifted off along the drill.", "Re-aim the screw so its entry on the implant "
                        "is free towards the surgeon.")
    rho = np.hypot(uu, vv)
    big = np.float32(1e3)
    shell = np.minimum.reduce([R - rho, d_seat - c, c + wall - d_seat])
    sleeve = np.minimum(ro - rho, top_w - ww)
    solid = np.maximum(shell, sleeve)
    above_seat = np.where(np.isfinite(top_seat), ww - top_seat[None], big)
    above_bone = np.where(np.isfinite(top_bone), ww - top_bone[None], big)
    # Off the bone by the clearance + a grid step everywhere (a continuous field: the contour does not cut corners
    # between columns where the bone's shadow starts), and never under it along w.
    off_bone = d_bone - (c + h)
    solid = np.minimum.reduce([solid, above_seat, above_bone, off_bone, rho - rb])
    # Spigot: a plug into the screw hole (a cylinder along the drill axis, so it slides out along w) that centres
    # the guide on the hole; only where its wall around the bore stays printable.
    r_spigot = 0.5 * plan.hole_diameter_mm - c
    spigot = implant is not None and dp.spigot_depth_mm > 0 and r_spigot - rb >= MIN_PRINTABLE_WALL_MM
    if spigot:
        plug = np.minimum.reduce([r_spigot - rho, ww + dp.spigot_depth_mm, c + wall - ww, above_bone, off_bone])
        solid = np.maximum(solid, np.minimum(plug, rho - rb))
    solid = solid.astype(np.float32)
    padded = np.pad(solid, 1, constant_values=-1.0)
    mesh_local = isosurface(padded, 0.0, (h, h, h), (us[0] - h, us[0] - h, ws[0] - h))
    if len(mesh_local.faces) == 0:
        raise GeometryError(f"The drill guide for screw '{name}' came out empty.", "Report this with the plan.")
    world = np.eye(4)
    world[:3, :3] = rot.T
    world[:3, 3] = e0
    mesh = mesh_local.transformed(world)
    if mesh.volume() < 0:
        mesh = TriMesh(mesh.vertices, mesh.faces[:, ::-1])
    pieces = sorted(to_manifold(mesh).decompose(), key=lambda p: -p.volume())
    dropped = float(sum(p.volume() for p in pieces[1:]))
    guide_m = pieces[0]
    mesh = from_manifold(guide_m)
    check = check_mesh(mesh, min_volume_mm3=1.0)
    if not check.ok or check.n_components != 1:
        raise GeometryError(f"The drill guide for screw '{name}' failed verification: {'; '.join(check.problems)}.",
                            "Report this with the plan.")
    # Independent checks on the finished mesh.
    overlap = (guide_m ^ to_manifold(implant if implant is not None else seat)).volume()
    if overlap > 0.01:
        raise GeometryError(f"The drill guide for screw '{name}' overlaps the implant by {overlap:.2f} mm3.",
                            "Report this with the plan.")
    tri = mesh.vertices[mesh.faces]
    cen = tri.mean(axis=1)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    d_c = _signed_distance(crop, cen)
    contact = float(area[np.abs(d_c - c) <= CONTACT_TOLERANCE_MM].sum())  # the seat face, not the spigot
    if contact < MIN_CONTACT_AREA_MM2:
        raise PlanError(f"The drill guide for screw '{name}' would touch the implant over only {contact:.0f} mm2 "
                        f"(at least {MIN_CONTACT_AREA_MM2:g} needed to sit without rocking).",
                        "Move the screw's entry to a broader part of the implant surface, or enlarge pad_radius_mm.")
    bone_gap = float(np.min(bone_distance(cen)))
    if bone_gap < 0.0:
        raise GeometryError(f"The drill guide for screw '{name}' reaches {-bone_gap:.2f} mm into the remaining bone.",
                            "Report this with the plan.")
    # The sleeve: how high it reaches along the axis (bone above can shorten it), and the bore is free.
    axis_dir = rot[2]
    probe = e0 + np.arange(ws[0], ws[-1], 0.1)[:, None] * axis_dir
    ring = probe + 0.5 * (rb + ro) * rot[0]
    ring_in = _signed_distance(mesh, ring) < 0
    reach = float(np.arange(ws[0], ws[-1], 0.1)[ring_in].max()) if ring_in.any() else 0.0
    if reach < c + wall + dp.min_sleeve_fraction * gp.sleeve_length_mm:
        raise PlanError(f"The drill sleeve for screw '{name}' is cut short by bone ({reach:.1f} mm above the implant "
                        f"of {top_w:.1f} mm).", "Re-aim the screw so the way out from its entry is free of bone.")
    bore_d = _signed_distance(mesh, probe)
    bore_clear = float(bore_d.min())
    if bore_clear < rb - 0.05:
        raise GeometryError(f"The drill guide for screw '{name}' narrows its own bore ({bore_clear:.2f} mm from the "
                            f"axis, bore radius {rb:.2f} mm).", "Report this with the plan.")
    notes = [f"lifts off along the drill axis, away from the bone; seat contact {contact:.0f} mm2; "
             f"sleeve top {reach:.1f} mm above the implant surface; closest bone {bone_gap:.2f} mm"]
    notes.append(f"spigot {dp.spigot_depth_mm:g} mm into the screw hole centres the guide" if spigot else
                 "no spigot (the hole leaves no printable wall around the bore): the pad's fit alone locates it")
    if dropped > 1e-3:
        notes.append(f"{dropped:.2f} mm3 of loose guide crumbs dropped")
    g = Guide(name=f"Drill guide {name}", role="drill guide", end=str(traj.end), size_label="nominal", mesh=mesh,
              label_text="", docking_face=None, sleeve_axes=[(e0 + top_w * axis_dir, -axis_dir)],
              sleeve_inner_diameters_mm=[2 * rb], min_wall_mm=float(min(wall, gp.sleeve_wall_mm)),
              file_stem=f"drill_guide_{_slug(name)}", trajectory_names=[name], notes=notes,
              removal_direction=axis_dir)
    figures = {**g.summary(), "file_stem": g.file_stem, "screw": name, "contact_area_mm2": round(contact, 1),
               "entry_on_implant_ras": [round(float(x), 3) for x in e0], "closest_bone_mm": round(bone_gap, 3),
               "sleeve_top_above_implant_mm": round(reach, 2), "bore_diameter_mm": round(2 * rb, 3),
               "removal_direction_ras": [round(float(x), 6) for x in axis_dir],
               "fit_clearance_mm": c, "sleeve_clearance_mm": float(gp.sleeve_clearance_mm),
               "spigot_depth_mm": float(dp.spigot_depth_mm) if spigot else 0.0}
    return g, figures


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "_" for ch in str(text).strip().lower())
    return "_".join(p for p in out.split("_") if p) or "screw"

