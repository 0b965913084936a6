"""Polyamide (PA12) surgical guides made from the implant geometry: pure geometry, numpy + manifold3d.

Docking trial guides are the implant's two ends printed in plastic: the footplate with its screw holes and a
short strut stub, cut from the implant solid itself (so the bone-contact face is the implant's to float
precision), plus a handle with an engraved or embossed label ("L1 +2", "L3 NOMINAL"). The handle is a rod with
one flat; the flat faces anteriorly and carries the label, so it also shows which way round the guide goes.

Drill guides are caps that seat on a footplate's free face and rim and lead the drill along each planned screw
trajectory. Built in the footplate's frame (x anterior, y lateral, z out of the bone into the gap; the contact
plane is z = 0, the free face z = t):
- inner surface = the footplate outline offset by ``fit_clearance_mm`` (a true 2-D offset of the footplate's own
  polygon, round joins) and its free face + ``fit_clearance_mm``; it is open on the bone side and the rim wall
  stops ``rim_relief_mm`` short of the contact plane, so nothing rests on the bone or covers the contact face;
- shell ``guide_wall_mm`` thick; one drill sleeve per trajectory (bore = drill + ``sleeve_clearance_mm``, wall
  ``sleeve_wall_mm``, ``sleeve_length_mm`` from the cap's outer surface, away from the bone), bores open through
  the cap; a sleeve is shortened where the implant's other footplate is nearer along its axis (it ends short of it
  by the cap's seating travel + ``SLEEVE_END_GAP_MM``; noted on the guide), and refused below 3 mm;
- a slot from the strut out through the rim, in the direction furthest from every sleeve, as wide as the strut
  plus the fit clearance, swept along the strut: the cap is passed sideways around the strut in the gap and
  slid down the strut onto the footplate. Where a sleeve runs beside the strut the slot's keep-out thins the
  sleeve wall on that side; that wall is measured and reported (``min_wall_mm``), and a guide is refused when
  it would be thinner than ``MIN_PRINTABLE_WALL_MM`` or the drill would touch the strut;
- a removal tab on the rim (away from the slot and the sleeves) carrying the label.

Which drill guides are made (``guides_for_plan``): a variant moves the distal footplate and its holes rigidly,
so the cap's fit on the footplate is the same for every size; only the strut is regenerated, and on a curved
axis it leaves the footplate along a slightly different line. For each end the strut path within the guide's
height is compared between the nominal implant and each variant (after the rigid shift): if every variant
matches within ``SHARED_GUIDE_TOLERANCE_MM`` one drill guide per end serves all sizes (size label "all
sizes"); otherwise that end gets a drill guide per size.
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy as np

from ..core.anatomy import angle_deg, distance_to_polyline, unit
from ..core.errors import GeometryError, PlanError
from ..core.mesh import (
    SPECK_MM3,
    TriMesh,
    from_manifold,
    require_manifold3d,
    require_valid,
    to_manifold,
    to_polydata,
    without_flat_shells,
)
from ..design.implant import sweep
from .guidegeometry import (
    ENDS,
    LABEL_MARGIN_MM,
    ROUND_SEGMENTS,
    _angle_gap,
    _check_end,
    _contact_face,
    _cylinder_between,
    _end_path,
    _extended_end_path,
    _frame_at,
    _label_solid,
    _point_in_polygons,
    _seat,
    _size_short,
    _sleeve_room,
    _slug,
    _strut_section,
    slid_out,
)
from .textmesh import text_outline, text_size

MIN_PRINTABLE_WALL_MM = 0.8  # thinnest PA12 wall (SLS) we let through
OVERLAP_MM = 1.0  # fused parts reach this far into each other (>= 0.1 mm: never flush contact)
SHARED_GUIDE_TOLERANCE_MM = 0.05
MAX_TRAJECTORY_TILT_DEG = 75.0  # between a trajectory and the footplate normal


# ---- parameters and results --------------------------------------------------------------------------------


def _default_drills() -> dict:
    # Small-fragment practice: 3.5 mm cortical/cancellous screws take a 2.5 mm drill; 6.5 mm cancellous a 3.2 mm.
    return {"3.5": 2.5, "6.5": 3.2}


STUB_RANGE_MM = (2.0, 60.0)
SLEEVE_RANGE_MM = (3.0, 60.0)
SLEEVE_END_GAP_MM = 0.5  # a shortened sleeve ends this far beyond the cap's seating travel from the implant


@dataclass
class GuideParameters:
    """Shape of the PA12 guides. Ranges are checked by ``validate``; clearances depend on the printer."""

    stub_length_mm: float = 15.0  # strut stub kept on a docking guide, beyond the footplate's free face
    handle_length_mm: float = 40.0  # lengthened automatically if the label needs more room
    handle_diameter_mm: float = 8.0
    label_height_mm: float = 4.0
    # Engraved 0.5 mm deep (legible in SLS PA12): the 2 mm shell keeps 1.5 mm under the label, the design record's
    # minimum guide wall (record/values.MIN_GUIDE_WALL_MM); at 0.6 every drill guide was flagged at 1.4 mm.
    label_depth_mm: float = 0.5
    emboss: bool = False  # engraved by default: nothing stands proud to catch on drapes
    labels: bool = True  # False leaves labels off (e.g. to measure their volume)
    fit_clearance_mm: float = 0.2  # drill guide inner surface = footplate surface offset by this
    sleeve_clearance_mm: float = 0.1  # drill sleeve inner diameter = drill + this
    sleeve_wall_mm: float = 2.0
    sleeve_length_mm: float = 15.0
    guide_wall_mm: float = 2.0  # shell thickness of the drill guide over the footplate
    rim_relief_mm: float = 0.5  # the cap's rim wall stops this far short of the bone-contact plane
    drill_diameters: dict = field(default_factory=_default_drills)  # screw diameter (str) -> drill bit mm

    def validate(self) -> None:
        """Raise PlanError for values no printable guide could be made from."""

        def bad(name, value, rule):
            raise PlanError(f"Guide parameter {name} = {value!r} is invalid.", f"Set {name} {rule}.")

        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("emboss", "labels"):
                if not isinstance(v, (bool, np.bool_)):
                    bad(f.name, v, "to true or false")
            elif f.name != "drill_diameters" and not (
                isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)
            ):
                bad(f.name, v, "to a finite number")
        ranges = {
            "stub_length_mm": STUB_RANGE_MM,
            "handle_length_mm": (10.0, 200.0),
            "handle_diameter_mm": (4.0, 30.0),
            "label_height_mm": (2.0, 20.0),
            "label_depth_mm": (0.2, 3.0),
            "fit_clearance_mm": (0.0, 1.0),
            "sleeve_clearance_mm": (0.0, 1.0),
            "sleeve_wall_mm": (MIN_PRINTABLE_WALL_MM, 10.0),
            "sleeve_length_mm": SLEEVE_RANGE_MM,
            "guide_wall_mm": (MIN_PRINTABLE_WALL_MM, 10.0),
            "rim_relief_mm": (0.0, 5.0),
        }
        for name, (lo, hi) in ranges.items():
            v = getattr(self, name)
            if not lo <= v <= hi:
                bad(name, v, f"between {lo:g} and {hi:g} mm")
        if self.labels:
            if self.handle_diameter_mm < self.label_height_mm + 2 * LABEL_MARGIN_MM + 1.0:
                bad(
                    "handle_diameter_mm",
                    self.handle_diameter_mm,
                    f"to at least label height + 2 mm ({self.label_height_mm + 2:.1f} mm): the label fits its flat",
                )
            if not self.emboss and self.label_depth_mm > self.guide_wall_mm - MIN_PRINTABLE_WALL_MM:
                bad(
                    "label_depth_mm",
                    self.label_depth_mm,
                    f"to at most guide_wall_mm - {MIN_PRINTABLE_WALL_MM} mm so the engraved tab keeps a printable wall",
                )
        if not isinstance(self.drill_diameters, dict) or not self.drill_diameters:
            bad("drill_diameters", self.drill_diameters, "to a mapping of screw diameter to drill diameter, in mm")
        for k, v in self.drill_diameters.items():
            try:
                screw = float(k)
            except (TypeError, ValueError):
                screw = float("nan")
            if not (np.isfinite(screw) and 0.5 <= screw <= 15.0):
                bad("drill_diameters", k, "with keys that are screw diameters in mm, e.g. '3.5'")
            if not (isinstance(v, (int, float, np.number)) and np.isfinite(v) and 0.5 <= v < screw):
                bad(f"drill_diameters[{k!r}]", v, f"to a drill diameter between 0.5 mm and the screw's {screw:g} mm")

    def drill_for(self, screw_diameter_mm: float) -> float:
        """Drill bit diameter for a screw, or PlanError naming the missing entry."""
        for k, v in self.drill_diameters.items():
            if abs(float(k) - float(screw_diameter_mm)) < 1e-6:
                return float(v)
        raise PlanError(
            f"No drill diameter is set for {float(screw_diameter_mm):g} mm screws.",
            f"Add an entry '{float(screw_diameter_mm):g}' to the guide parameters' drill_diameters.",
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["drill_diameters"] = {str(k): float(v) for k, v in self.drill_diameters.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GuideParameters":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PlanError(
                f"Unknown guide parameter(s): {', '.join(unknown)}.", f"Use only: {', '.join(sorted(known))}."
            )
        gp = cls(**d)
        gp.validate()
        return gp


@dataclass
class Guide:
    name: str  # e.g. "Docking guide L1 +2 mm"
    role: str  # "docking guide" | "drill guide"
    end: str  # "proximal" | "distal"
    size_label: str  # "nominal" | "+2 mm" | ... | "all sizes"
    mesh: TriMesh  # verified closed solid, RAS mm
    label_text: str  # what is engraved/embossed ("" if labels are off)
    docking_face: Optional[TriMesh]  # open surface: the contact-face region copied from the implant
    sleeve_axes: list  # [(point where the sleeve leaves the cap's outer surface, unit direction into bone)]
    sleeve_inner_diameters_mm: list
    min_wall_mm: float  # thinnest wall by construction (sleeve walls as measured beside the strut)
    material: str = "PA12"
    file_stem: str = ""  # file-name-safe name, e.g. "docking_proximal_L1_plus2mm"
    trajectory_names: list = field(default_factory=list)
    label_volume_mm3: float = 0.0  # volume of the label solid (engraved: removed; embossed: added)
    notes: list = field(default_factory=list)
    # Drill guides: unit vector (RAS, in the footplate plane) to slide the lifted guide off the strut; it goes on
    # the opposite way. The strut slot opens on the other side.
    removal_direction: Optional[np.ndarray] = None
    # Drill guides: each sleeve's length above the cap (sleeve_length_mm, or shorter below the other footplate).
    sleeve_lengths_mm: list = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "end": self.end,
            "size": self.size_label,
            "material": self.material,
            "label": self.label_text,
            "volume_mm3": round(self.mesh.volume(), 2),
            "triangles": self.mesh.n_triangles,
            "min_wall_mm": round(float(self.min_wall_mm), 3),
            "sleeves": [
                {"name": n, "inner_diameter_mm": round(float(d), 3)}
                | ({"length_mm": round(float(L), 2)} if L is not None else {})
                for n, d, L in zip(self.trajectory_names, self.sleeve_inner_diameters_mm,
                                   list(self.sleeve_lengths_mm) + [None] * len(self.trajectory_names))
            ],
            "notes": list(self.notes),
        }


# ---- the footplate seat and the strut near it ----------------------------------------------------------------


# ---- small geometry helpers ----------------------------------------------------------------------------------


# ---- docking trial guide ---------------------------------------------------------------------------------------


def stub_room_mm(geom, end: str) -> float:
    """The longest stub a docking guide of this implant end can keep: up to 1 mm short of the other footplate."""
    seat = _seat(geom, end)
    _, _, s = _end_path(geom, end)
    return float(s[-1] - 2 * seat.thickness - 1.0)


def check_docking_room(geoms, ends=ENDS) -> None:
    """Refuse, before any lattice or export work, an implant too short for even the shortest docking stub."""
    for geom in geoms:
        for end in ends:
            room = stub_room_mm(geom, end)
            if room < STUB_RANGE_MM[0]:
                raise PlanError(
                    f"The {end} docking guide needs a strut stub of at least {STUB_RANGE_MM[0]:g} mm, but this "
                    f"implant leaves only {max(room, 0):.1f} mm between its footplates.",
                    "Export without docking guides (--parts without docking_guides, or the plan's outputs.parts), "
                    "or use thinner footplates (implant.footplate_thickness_mm).",
                )


def check_drill_room(result, gp: Optional[GuideParameters] = None) -> None:
    """Refuse, before any lattice or export work, a plan whose drill guides cannot be made (e.g. no room for a
    sleeve below the implant's other footplate): the drill guides of every size are built once, unlabelled."""
    from dataclasses import replace

    gp = replace(gp or GuideParameters(), labels=False)
    diameters = [sp.screw_type.diameter_mm for sp in result.screws]
    for end in ENDS:
        mine = [(tr, d) for tr, d in zip(result.trajectories, diameters) if _trajectory_end(tr, result.nominal) == end]
        if mine:
            for geom in [result.nominal, *result.variants.values()]:
                drill_guide(geom, end, [tr for tr, _ in mine], [d for _, d in mine], _size_label(geom), gp)


def docking_guide(geom, params, end: str, level: str, size_label: str, gp: GuideParameters) -> Guide:
    """The implant's ``end`` in PA12: footplate with its screw holes and a strut stub, cut from the implant solid
    (its docking face is the implant's), plus a handle along the strut with the label on its anterior flat."""
    m3d = require_manifold3d()
    _check_end(end)
    gp.validate()
    params.validate()
    seat = _seat(geom, end)
    t = seat.thickness
    path, frames, s = _end_path(geom, end)
    # A stub longer than the implant allows adapts to it (it stops 1 mm short of the other footplate).
    cut_at = t + min(float(gp.stub_length_mm), stub_room_mm(geom, end))
    point, rot = _frame_at(path, frames, s, cut_at)
    d = rot[2]
    implant = to_manifold(geom.mesh)
    trimmed = implant.trim_by_plane(-d, float(-d @ point))
    pieces = trimmed.decompose()
    footplate = to_manifold(geom.proximal_footplate if end == "proximal" else geom.distal_footplate)
    pieces = [p for p in pieces if (p ^ footplate).volume() > 1e-3]
    if len(pieces) != 1:
        raise GeometryError(
            f"Cutting the {end} end off the implant gave {len(pieces)} pieces touching the footplate.",
            "Check the implant; this is a bug if it is sensible.",
        )
    stub = pieces[0]

    # Handle: a rod with one flat facing anteriorly, its half-chord leaving room for the label and a margin.
    r = gp.handle_diameter_mm / 2
    half_flat = gp.label_height_mm / 2 + LABEL_MARGIN_MM  # same handle with or without a label
    h = float(np.sqrt(max(r * r - half_flat * half_flat, 0.0)))
    label = ""
    label_len = 0.0
    if gp.labels:
        label = f"{level or end[:4].upper()} {_size_short(size_label)}".strip().upper()
        label_len = text_size(label, gp.label_height_mm)[0]
    length = max(float(gp.handle_length_mm), label_len + 6.0)
    rod = m3d.CrossSection.circle(r, ROUND_SEGMENTS) ^ m3d.CrossSection.square((r + h + 0.5, 2 * r + 2)).translate(
        (-r - 0.5, -r - 1)
    )
    handle_frame = np.column_stack([rot[0], rot[1], d, point - OVERLAP_MM * d])  # local (x ant, y lat, z along)
    handle = rod.extrude(length + OVERLAP_MM).transform(handle_frame)
    guide = m3d.Manifold.batch_boolean([stub, handle], m3d.OpType.Add)

    label_volume = 0.0
    if gp.labels:
        # Text X along the handle, text Y across the flat, text Z out of the flat (anterior): (z, -y, x).
        z0 = OVERLAP_MM + 3.0
        place = np.array([[0.0, 0.0, 1.0, h], [0.0, -1.0, 0.0, gp.label_height_mm / 2], [1.0, 0.0, 0.0, z0]])
        world = handle_frame[:, :3] @ place[:, :3], handle_frame[:, :3] @ place[:, 3] + handle_frame[:, 3]
        placement = np.column_stack([world[0], world[1]])
        depth = float(gp.label_depth_mm)
        if gp.emboss:
            text = _label_solid(label, gp.label_height_mm, -0.1, depth, placement)
            label_volume = text_outline(label, gp.label_height_mm).area() * depth
            guide = guide + text
        else:
            text = _label_solid(label, gp.label_height_mm, -depth, 0.2, placement)
            label_volume = text_outline(label, gp.label_height_mm).area() * depth
            guide = guide - text

    mesh = from_manifold(without_flat_shells(guide, SPECK_MM3))
    check = require_valid(mesh, f"{end} docking guide", min_volume_mm3=0.5 * stub.volume())
    if check.n_components != 1:
        raise GeometryError(
            f"The {end} docking guide falls apart into {check.n_components} pieces.",
            "Check the handle and label parameters.",
        )
    min_wall = min(t, r + h - (gp.label_depth_mm if gp.labels and not gp.emboss else 0.0))
    lvl = level or end
    return Guide(
        name=f"Docking guide {lvl} {size_label}",
        role="docking guide",
        end=end,
        size_label=size_label,
        mesh=mesh,
        label_text=label,
        docking_face=_contact_face(mesh, seat),
        sleeve_axes=[],
        sleeve_inner_diameters_mm=[],
        min_wall_mm=float(min_wall),
        file_stem=_slug("docking", end, level, size_label),
        label_volume_mm3=float(label_volume),
        notes=[f"handle {length:.0f} mm x {gp.handle_diameter_mm:g} mm, flat facing anterior"],
    )


# ---- drill guide ------------------------------------------------------------------------------------------------


def _trajectory_direction(traj) -> np.ndarray:
    d = getattr(traj, "direction", None)
    if d is None:
        d = np.asarray(traj.target, float) - np.asarray(traj.entry, float)
    return unit(d)


def _best_direction(angles: list, prefer: float, exclude: Optional[float] = None, min_gap: float = 0.0) -> float:
    """Direction (radians, 0 = anterior, pi/2 = lateral) furthest in angle from every sleeve, ties going to
    ``prefer``; at least ``min_gap`` from ``exclude`` if given."""
    best, best_score = prefer, -np.inf
    for cand in np.radians(np.arange(0.0, 360.0, 5.0)):
        if exclude is not None and _angle_gap(cand, exclude) < min_gap:
            continue
        score = min((_angle_gap(cand, a) for a in angles), default=np.pi) - 1e-3 * _angle_gap(cand, prefer)
        if score > best_score:
            best, best_score = float(cand), score
    return best


def drill_guide(
    geom, end: str, trajectories: list, screw_diameters_mm: list, size_label: str, gp: GuideParameters, level: str = ""
) -> Guide:
    """A PA12 cap over the ``end`` footplate with a drill sleeve per trajectory (see the module notes).

    ``trajectories`` (objects with .entry, .direction or .target, .name) are as planned on the nominal implant:
    for the distal end they are moved with the footplate by ``geom.distal_shift``.
    """
    m3d = require_manifold3d()
    _check_end(end)
    gp.validate()
    trajectories = list(trajectories)
    diameters = [float(x) for x in screw_diameters_mm]
    if not trajectories:
        raise PlanError(f"No screw trajectories were given for the {end} drill guide.", "Plan the screws first.")
    if len(diameters) != len(trajectories):
        raise PlanError(
            f"{len(trajectories)} trajectories but {len(diameters)} screw diameters for the {end} drill guide.",
            "Give one screw diameter per trajectory.",
        )
    seat = _seat(geom, end)
    t, c, w = seat.thickness, float(gp.fit_clearance_mm), float(gp.guide_wall_mm)
    top = t + c + w  # the cap's outer top surface, local z
    shift = np.asarray(geom.distal_shift, float) if end == "distal" else np.zeros(3)
    outline_polys = [np.asarray(p) for p in seat.outline.to_polygons()]

    # Sleeves and bores, in the seat frame.
    sleeves, bores, axes, inner_d, names, angles, axis_lines, sleeve_notes = [], [], [], [], [], [], [], []
    sleeve_lengths = []
    path, frames, s = _end_path(geom, end)
    strut_centre = seat.to_local(path[0])[:2]
    for traj, screw_d in zip(trajectories, diameters):
        name = str(getattr(traj, "name", f"screw {len(names) + 1}"))
        drill = gp.drill_for(screw_d)
        entry = seat.to_local(np.asarray(traj.entry, float) + shift)
        dl = seat.dir_to_local(_trajectory_direction(traj))
        cos_tilt = -float(dl[2])
        if cos_tilt < np.cos(np.radians(MAX_TRAJECTORY_TILT_DEG)):
            raise PlanError(
                f"Trajectory '{name}' does not run into the bone through the {end} footplate (it is "
                f"{angle_deg(cos_tilt, 1.0):.0f} deg from the footplate normal).",
                f"Aim the screw through the footplate into the vertebral body, within {MAX_TRAJECTORY_TILT_DEG:.0f} "
                "deg of the normal.",
            )
        up = -dl
        on_face = entry + ((t - entry[2]) / up[2]) * up  # where the axis crosses the free face
        if not _point_in_polygons(on_face[:2], outline_polys):
            raise PlanError(
                f"Trajectory '{name}' does not pass through the {end} footplate's free face.",
                "Move its entry point onto the footplate.",
            )
        rb = (drill + gp.sleeve_clearance_mm) / 2
        axis_lines.append((on_face, up, t + c, (top - t) / up[2], rb))  # sleeve end set below, once room is known
        inner_d.append(2 * rb)
        names.append(name)
        angles.append(float(np.arctan2(*(on_face[:2] - strut_centre)[::-1])))

    # Cap: offset footplate outline, open on the bone side; the rim wall stops short of the contact plane.
    inner = seat.outline.offset(c, m3d.JoinType.Round, 2.0, ROUND_SEGMENTS) if c > 0 else seat.outline
    outer = seat.outline.offset(c + w, m3d.JoinType.Round, 2.0, ROUND_SEGMENTS)
    z_lip = min(float(gp.rim_relief_mm), t - 0.1)
    cap = outer.extrude(top - z_lip).translate((0.0, 0.0, z_lip))
    cavity = inner.extrude(t + c + 10.0).translate((0.0, 0.0, -10.0))

    # Slot/keep-out around the strut, swept along it in the seat frame, opening towards the emptiest side,
    # posteriorly if that is as good: the guide is then slid on from, and pulled off towards, the front.
    slot_angle = _best_direction(angles, prefer=np.pi)
    u = np.array([np.cos(slot_angle), np.sin(slot_angle)])
    section = _strut_section(geom, path, frames, s)
    reach = float(max(np.abs(np.asarray(p)).max() for p in outline_polys)) + c + w + 30.0
    slot_2d = m3d.CrossSection.batch_hull([section, section.translate(tuple(reach * u))])
    if c > 0:
        slot_2d = slot_2d.offset(c, m3d.JoinType.Round, 2.0, ROUND_SEGMENTS)
    slot_poly = max((np.asarray(p) for p in slot_2d.to_polygons()), key=len)
    height = top + gp.sleeve_length_mm + 10.0
    kp, kf = _extended_end_path(path, frames, s, t + 12.0, height + 5.0)

    keep_world = to_manifold(sweep(kp, kf, slot_poly))
    keepout = keep_world.transform(seat.to_local_matrix())

    # Sleeves: sleeve_length_mm above the cap, shortened where the implant's other footplate (or anything of the
    # implant outside the strut slot) is nearer along the sleeve: a sleeve must end short of it by the depth the cap
    # is lowered over its footplate plus a margin, or the guide could neither be seated nor pass the implant.
    implant = to_manifold(geom.mesh)  # once: the sleeves' room, the cap's carving and the last check
    implant_local = implant.transform(seat.to_local_matrix())
    obstacle = implant_local - keepout
    lift = t + c - min(float(gp.rim_relief_mm), t - 0.1) + SLEEVE_END_GAP_MM
    for i, (on_face, up, _, s_top, rb) in enumerate(axis_lines):
        ro = rb + gp.sleeve_wall_mm
        tan_tilt = np.sqrt(max(1.0 - up[2] ** 2, 0.0)) / up[2]
        room = _sleeve_room(m3d, obstacle, on_face, up, s_top + (ro + c) * tan_tilt, ro + c,
                            gp.sleeve_length_mm + lift + 5.0)
        length = min(float(gp.sleeve_length_mm), room - s_top - lift)
        if length < SLEEVE_RANGE_MM[0]:
            raise PlanError(
                f"The {end} drill guide has no room for the sleeve of '{names[i]}' (at most {max(length, 0.0):.1f} "
                f"mm long): the implant's other footplate lies {max(room - s_top, 0.0):.1f} mm above the guide's cap "
                f"along that drill axis (a sleeve needs {SLEEVE_RANGE_MM[0]:g} mm and must end {lift:.1f} mm short "
                "of it so the guide can be seated).",
                "Export without drill guides (--parts without drill_guides, or the plan's outputs.parts), or use "
                "thinner footplates (implant.footplate_thickness_mm).",
            )
        if length < gp.sleeve_length_mm - 1e-6:
            sleeve_notes.append(
                f"sleeve '{names[i]}' shortened to {length:.1f} mm (from {gp.sleeve_length_mm:g}): the implant's "
                f"other footplate is {room - s_top:.1f} mm above the cap along its axis"
            )
        s_start = -(ro * tan_tilt + 1.0)  # whole bottom disc below the free face; trimmed to the cap below
        tube = _cylinder_between(m3d, on_face + s_start * up, up, s_top + length - s_start, ro)
        sleeves.append(tube.trim_by_plane((0.0, 0.0, 1.0), t + c))
        bore_start = -(t + 10.0) / up[2]
        bores.append(_cylinder_between(m3d, on_face + bore_start * up, up, s_top + length + 1 - bore_start, rb))
        axes.append((on_face + s_top * up, -up))
        axis_lines[i] = (on_face, up, t + c, s_top + length, rb)
        sleeve_lengths.append(float(length))

    # Removal tab with the label, on the rim away from the slot and the sleeves.
    tab_angle = _best_direction(angles, prefer=0.0, exclude=slot_angle, min_gap=np.radians(90.0))
    v = np.array([np.cos(tab_angle), np.sin(tab_angle)])
    outer_pts = np.concatenate([np.asarray(p) for p in outer.to_polygons()])
    rim = float((outer_pts @ v).max())
    sl = _size_short(size_label) if size_label not in ("all sizes", "nominal") else ""
    label = f"{level or end[:4].upper()} {sl}".strip().upper()
    label_len = text_size(label, gp.label_height_mm)[0]  # the tab is sized for it even when labels are off
    tab_len = max(8.0, label_len + 3.0)
    tab_w = max(8.0, gp.label_height_mm + 3.0)
    start = rim - w - OVERLAP_MM
    tab_2d = m3d.CrossSection.square((rim + tab_len - start, tab_w)).translate((start, -tab_w / 2))
    tab_2d = tab_2d.rotate(float(np.degrees(tab_angle)))
    tab = tab_2d.extrude(w).translate((0.0, 0.0, t + c))

    positive = m3d.Manifold.batch_boolean([cap, tab] + sleeves, m3d.OpType.Add)
    negative = m3d.Manifold.batch_boolean([cavity, keepout] + bores, m3d.OpType.Add)
    guide = positive - negative
    if (guide ^ implant_local).volume() > 0.01:
        # A strut leaving its footplate steeply (30 deg, a CT angiogram) runs out over the rim beside the pocket.
        slide = seat.dir_to_local(u[0] * frames[0, 0] + u[1] * frames[0, 1])  # the slot's opening
        guide = guide - slid_out(m3d, implant_local, seat, slide, top, reach)
    label_volume = 0.0
    if gp.labels:
        # Text X radially outward along the tab, Y across it (X x Y = +z), Z out of the tab's top face.
        perp = np.array([-v[1], v[0]])
        origin = np.concatenate([(rim + 1.0) * v - (gp.label_height_mm / 2) * perp, [top]])
        placement = np.column_stack([[v[0], v[1], 0.0], [perp[0], perp[1], 0.0], [0.0, 0.0, 1.0], origin])
        depth = float(gp.label_depth_mm)
        label_volume = text_outline(label, gp.label_height_mm).area() * depth
        if gp.emboss:
            guide = guide + _label_solid(label, gp.label_height_mm, -0.1, depth, placement)
        else:
            guide = guide - _label_solid(label, gp.label_height_mm, -depth, 0.2, placement)

    # Sleeve walls beside the strut, measured against the keep-out surface.
    sleeve_walls = _sleeve_walls(from_manifold(keepout), axis_lines)
    for name, wall in zip(names, sleeve_walls):
        if wall < MIN_PRINTABLE_WALL_MM:
            raise PlanError(
                f"The drill sleeve for '{name}' runs so close to the strut that "
                + (f"its wall there would be only {wall:.2f} mm." if wall > 0 else "the drill would touch the strut."),
                "Move the screw's entry further from the strut or tilt it away from the strut (converging screws).",
            )
    # A boolean can cut off a speck where a bore or the slot grazes an edge (measured: a 4-triangle tetrahedron of
    # 3e-5 mm3 on the chest CT resampled to 1 mm slices, T6 -> T8): no piece of the guide.
    guide_w = without_flat_shells(guide.transform(seat.to_world_matrix()), SPECK_MM3)
    mesh = from_manifold(guide_w)
    check = require_valid(mesh, f"{end} drill guide", min_volume_mm3=1.0)
    if check.n_components != 1:
        raise GeometryError(
            f"The {end} drill guide falls apart into {check.n_components} pieces.",
            "Check the trajectories: a sleeve far outside the footplate or a slot through a sleeve can cause this.",
        )
    overlap = (guide_w ^ implant).volume()
    if overlap > 0.01:
        tilt = angle_deg(unit(seat.dir_to_local(frames[0, 2])), np.array([0.0, 0.0, 1.0]))
        raise GeometryError(
            f"The {end} drill guide overlaps the implant by {overlap:.2f} mm3, so it could not be seated (the strut "
            f"leaves the {end} footplate {tilt:.0f} deg off its normal).",
            (f"Check the {end} endplate's tilt ({end}_endplate; a steep strut often means a mis-tilted face), or "
             if tilt > 15.0 else "Check the implant and trajectories (this is a bug if they are sensible), or ")
            + "export without drill guides (--parts without drill_guides, or the plan's outputs.parts).",
        )
    world_axes = [(seat.centre + p @ seat.rot, unit(dd @ seat.rot)) for p, dd in axes]
    walls = [min(gp.sleeve_wall_mm, x) for x in sleeve_walls]
    min_wall = min([w, *walls] + ([w - gp.label_depth_mm] if gp.labels and not gp.emboss else []))
    lvl = level or end
    notes = [
        f"strut slot opens towards {np.degrees(slot_angle):.0f} deg (slid on towards it, off away from it), "
        f"tab towards {np.degrees(tab_angle):.0f} deg (0 = anterior, 90 = lateral in the footplate frame)",
    ]
    notes += [
        f"sleeve '{n}': wall beside the strut {x:.2f} mm" for n, x in zip(names, sleeve_walls) if x < gp.sleeve_wall_mm
    ]
    notes += sleeve_notes
    return Guide(
        name=f"Drill guide {lvl} {size_label}",
        role="drill guide",
        end=end,
        size_label=size_label,
        mesh=mesh,
        label_text=label,
        docking_face=None,
        sleeve_axes=world_axes,
        sleeve_inner_diameters_mm=inner_d,
        min_wall_mm=float(min_wall),
        file_stem=_slug("drill", end, level, size_label),
        trajectory_names=names,
        label_volume_mm3=float(label_volume),
        notes=notes,
        removal_direction=unit(np.array([-u[0], -u[1], 0.0]) @ seat.rot),
        sleeve_lengths_mm=sleeve_lengths,
    )


def _sleeve_walls(keepout: TriMesh, axis_lines: list) -> list:
    """Per sleeve: smallest distance from its bore axis (over the sleeve's height) to the strut keep-out, minus
    the bore radius: the wall left on the strut side (or the full wall if the strut is far)."""
    import vtk

    dist = vtk.vtkImplicitPolyDataDistance()
    dist.SetInput(to_polydata(keepout))
    out = []
    for base, up, z_from, s_to, rb in axis_lines:
        s0 = (z_from - base[2]) / up[2]
        pts = base + np.linspace(s0, s_to, max(int((s_to - s0) / 0.2), 2))[:, None] * up
        d = np.array([dist.EvaluateFunction(*map(float, p)) for p in pts])
        out.append(float(d.min() - rb))
    return out


# ---- all guides for a plan -------------------------------------------------------------------------------------


def _size_label(geom) -> str:
    extra = float(getattr(geom, "extra_length_mm", 0.0))
    return "nominal" if extra == 0 else f"+{extra:g} mm"


def _trajectory_end(traj, nominal) -> str:
    end = getattr(traj, "end", None)
    if end in ENDS:
        return end
    entry = np.asarray(traj.entry, float)
    d = {r.end: float(np.linalg.norm(entry - r.centre)) for r in nominal.porous_regions}
    return min(d, key=d.get)


def strut_deviation_mm(nominal, variant, end: str, height_mm: float) -> float:
    """How far the variant's strut centre line, within ``height_mm`` of this end's contact plane, is from the
    nominal one moved with the footplate (the distal end moves by the variant's distal shift)."""
    pn, _, sn = _end_path(nominal, end)
    pv, _, sv = _end_path(variant, end)
    if end == "distal":
        pn = pn + (np.asarray(variant.distal_shift, float) - np.asarray(nominal.distal_shift, float))
    near = pv[sv <= height_mm]
    ref = pn[sn <= height_mm + 5.0]
    if len(near) == 0 or len(ref) < 2:
        return float("inf")
    return float(distance_to_polyline(near, ref).max())


def guides_for_plan(
    nominal,
    variants: dict,
    implant_params,
    trajectories,
    screw_diameters,
    proximal_level: str,
    distal_level: str,
    gp: GuideParameters,
) -> list:
    """Docking guides for both ends of the nominal implant and every variant; drill guides for each end with
    screws (one per end for all sizes where the strut near that end is the same, else one per size)."""
    gp.validate()
    sizes = [nominal] + [variants[k] for k in sorted(variants, key=lambda k: float(variants[k].extra_length_mm))]
    labels = [_size_label(g) for g in sizes]
    if len(set(labels)) != len(labels):
        raise PlanError("Two implant sizes have the same extra length.", "Give each variant a different oversize.")
    trajectories = list(trajectories)
    diameters = list(screw_diameters)
    if len(diameters) != len(trajectories):
        raise PlanError(
            f"{len(trajectories)} trajectories but {len(diameters)} screw diameters.", "Give one per trajectory."
        )
    levels = {"proximal": proximal_level, "distal": distal_level}
    guides = []
    for end in ENDS:
        for geom, label in zip(sizes, labels):
            guides.append(docking_guide(geom, implant_params, end, levels[end], label, gp))
    for end in ENDS:
        mine = [(tr, d) for tr, d in zip(trajectories, diameters) if _trajectory_end(tr, nominal) == end]
        if not mine:
            continue
        trs, ds = [tr for tr, _ in mine], [d for _, d in mine]
        height = _seat(nominal, end).thickness + gp.fit_clearance_mm + gp.guide_wall_mm + gp.sleeve_length_mm + 5.0
        shared = all(strut_deviation_mm(nominal, g, end, height) <= SHARED_GUIDE_TOLERANCE_MM for g in sizes[1:])
        if shared:
            g = drill_guide(nominal, end, trs, ds, "all sizes" if len(sizes) > 1 else "nominal", gp, levels[end])
            if len(sizes) > 1:
                g.notes.append(
                    f"fits every size: the strut within {height:.0f} mm of the footplate differs by at most "
                    f"{SHARED_GUIDE_TOLERANCE_MM} mm between sizes"
                )
            guides.append(g)
        else:
            for geom, label in zip(sizes, labels):
                guides.append(drill_guide(geom, end, trs, ds, label, gp, levels[end]))
    return guides
