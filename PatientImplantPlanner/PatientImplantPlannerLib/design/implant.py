"""Implant geometry: a strut swept along the spinal axis between two endplates, fused with two footplates,
with screw holes cut through them. Pure geometry (numpy + manifold3d), no MRML.

Conventions: RAS, mm. A profile is a 2-D polygon in (anterior, lateral) coordinates; along the path each point
has a frame whose rows are (anterior, lateral, tangent), right-handed, tangent running proximal -> distal.
The anterior vector is the endplates' anterior direction (interpolated along the path) projected perpendicular
to the tangent, so the profile never twists: "anterior stays anterior".

Every solid produced here is verified (watertight, manifold, outward, plausible volume) before it is returned.
"""

from dataclasses import dataclass, field

import numpy as np

from ..core.anatomy import Endplate, angle_deg, polyline_length, resample_polyline, unit
from ..core.errors import GeometryError, PlanError
from ..core.mesh import TriMesh, check_mesh, from_manifold, require_manifold3d, require_valid, to_manifold
from .strut import (
    PATH_SPACING_MM,
    ImplantParameters,
    _axis_path,
    _clip_to_gap,
    _end_direction,
    _fold_ratio,
    end_offset_scale,
    path_frames,
    profile_polygon,
    section_properties,
    strut_offsets,
)

STRUT_OVERLAP_MM = 1.0  # how far the strut reaches into each footplate: fused by overlap, never flush contact
MIN_OVERLAP_MM = 0.1
HOLE_RUN_IN_MM = 3.0  # the cutting cylinder starts this far outside the entry so the hole opens cleanly
MAX_VARIANT_MM = 30.0
# A footplate this far from square to the axis is named as the likely cause when the implant falls apart.
SLANTED_FACE_DEG = 25.0
_DRAG_FACE = ("Check the endplate named on the CT and drag its plane onto the vertebra's endplate face, then design "
              "again.")
ROD_DIAMETER_MM = 5.5  # conventional titanium rod the strut's stiffness is compared with
TI6AL4V_DENSITY_G_CM3 = 4.43


# ---- parameters and records ---------------------------------------------------------------------------------


@dataclass
class HoleSpec:
    """A screw hole to cut. ``end`` says which footplate it belongs to (it moves with it in variants)."""

    end: str  # "proximal" | "distal"
    entry: np.ndarray  # RAS point on or near the implant's outer surface
    direction: np.ndarray  # unit, into the bone
    diameter_mm: float  # already includes clearance
    length_mm: float = 40.0  # how deep the cutting cylinder reaches beyond the entry

    def __post_init__(self):
        self.entry = np.asarray(self.entry, dtype=float).reshape(3)
        d = np.asarray(self.direction, dtype=float).reshape(3)
        if not np.all(np.isfinite(d)) or np.linalg.norm(d) < 1e-9:
            raise PlanError(f"The {self.end} screw hole has no direction.", "Give the hole a non-zero direction.")
        self.direction = d / np.linalg.norm(d)

    def shifted(self, translation) -> "HoleSpec":
        return HoleSpec(
            self.end,
            self.entry + np.asarray(translation, float),
            self.direction.copy(),
            self.diameter_mm,
            self.length_mm,
        )

    def as_dict(self) -> dict:
        return {
            "end": self.end,
            "entry": [float(x) for x in self.entry],
            "direction": [float(x) for x in self.direction],
            "diameter_mm": float(self.diameter_mm),
            "length_mm": float(self.length_mm),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "HoleSpec":
        return cls(d["end"], d["entry"], d["direction"], d["diameter_mm"], d.get("length_mm", 40.0))


@dataclass
class PorousRegion:
    """A bone-contact face kept as data for the lattice step; ``normal`` points into the bone."""

    end: str
    centre: np.ndarray
    normal: np.ndarray
    anterior: np.ndarray
    radius_lr: float
    radius_ap: float
    thickness_mm: float

    def as_dict(self) -> dict:
        return {
            "end": self.end,
            "centre": [float(x) for x in self.centre],
            "normal": [float(x) for x in self.normal],
            "anterior": [float(x) for x in self.anterior],
            "radius_lr": float(self.radius_lr),
            "radius_ap": float(self.radius_ap),
            "thickness_mm": float(self.thickness_mm),
        }


@dataclass
class ImplantGeometry:
    mesh: TriMesh  # final solid: strut U footplates - holes, verified
    strut_path: np.ndarray  # (N, 3) swept centre line (after offset), contact plane to contact plane
    frames: np.ndarray  # (N, 3, 3) rows = (anterior, lateral, tangent) per strut_path point
    proximal_footplate: TriMesh
    distal_footplate: TriMesh
    porous_regions: list  # [PorousRegion] proximal, distal
    length_mm: float  # contact face to contact face along the axis
    extra_length_mm: float
    holes: list  # [HoleSpec] actually cut (variant-shifted)
    distal_shift: np.ndarray  # translation applied to the distal end (zero for the nominal implant)
    axis_path: np.ndarray = field(default=None)  # (N, 3) the axis between the endplate centres, before offset
    axis_correction_mm: tuple = (0.0, 0.0)  # how far the given axis missed the proximal / distal endplate centre
    hole_volumes_mm3: list = field(default_factory=list)  # material removed by each hole, in order


# ---- profiles and section properties ---------------------------------------------------------------------------


# ---- path ----------------------------------------------------------------------------------------------------------


# ---- solids --------------------------------------------------------------------------------------------------------


def sweep(path: np.ndarray, frames: np.ndarray, polygon: np.ndarray) -> TriMesh:
    """Closed tube: the polygon placed in each frame, consecutive rings joined, both ends capped.
    Outward orientation for a CCW polygon and right-handed frames."""
    m3d = require_manifold3d()
    n, p = len(path), len(polygon)
    rings = (
        path[:, None, :]
        + polygon[None, :, 0, None] * frames[:, None, 0]
        + polygon[None, :, 1, None] * frames[:, None, 1]
    )
    verts = rings.reshape(-1, 3)
    i = np.arange(n - 1)[:, None] * p
    j = np.arange(p)[None, :]
    a, b = i + j, i + (j + 1) % p
    c, d = b + p, a + p
    side = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    cap = np.asarray(m3d.triangulate([np.ascontiguousarray(polygon, dtype=float)]), dtype=np.int64)
    start = cap[:, ::-1]  # faces -tangent
    end = cap + (n - 1) * p
    return TriMesh(verts, np.concatenate([side, start, end]))


def _slanted_faces(axis: np.ndarray, proximal: Endplate, distal: Endplate) -> list:
    """'the <end> endplate plane lies N deg from the spinal axis' for each face beyond SLANTED_FACE_DEG of its end."""
    tilts = [(name, angle_deg(abs(float(plate.normal @ _end_direction(axis, at_start=start))), 1.0))
             for name, plate, start in (("proximal", proximal, True), ("distal", distal, False))]
    return [f"the {name} endplate plane lies {tilt:.0f} deg from the spinal axis" for name, tilt in tilts
            if tilt > SLANTED_FACE_DEG]


def _frame_matrix(x: np.ndarray, y: np.ndarray, z: np.ndarray, origin: np.ndarray) -> np.ndarray:
    return np.column_stack([x, y, z, origin])


def _placed_on_bodies(params: ImplantParameters) -> bool:
    """A strut placed against the bodies: its footplates are moved off the endplate centre towards it."""
    return bool(params.footplate_offset_anterior_mm or params.footplate_offset_lateral_mm)


def footplate_outlines(plate: Endplate, params: ImplantParameters, end: str) -> list:
    """The footplate's outline as CCW polygons in the endplate's (anterior, lateral) plane, relative to the
    footplate centre: the ellipse, and for a strut placed against the bodies a tongue that joins the strut to it
    (the convex hull of the strut's cross-section and of the ellipse's rim facing it, as wide as the strut). The
    ellipse stays on the endplate (placement.py sets its centre); only the strut-wide tongue leaves it, where the
    strut itself stands, so the footplate never overhangs the bodies towards the anatomy around them, and the
    tongue never reaches behind the footplate centre (towards the canal), however wide the strut."""
    from scipy.spatial import ConvexHull

    ra, rl = params.footplate_semi_axes(plate)
    n = max(64, int(params.profile_segments))
    t = 2 * np.pi * np.arange(n) / n
    out = [np.column_stack([ra * np.cos(t), rl * np.sin(t)])]
    if _placed_on_bodies(params):
        sign = 1.0 if end == "proximal" else -1.0  # path lateral -> this endplate's lateral
        k = end_offset_scale(params, end)
        to_strut = np.array([k * params.offset_anterior_mm - params.footplate_offset_anterior_mm,
                             sign * (k * params.offset_lateral_mm - params.footplate_offset_lateral_mm)])
        sec = profile_polygon(params) * np.array([1.0, sign]) + to_strut
        if sign < 0:
            sec = sec[::-1]  # mirroring flips the winding
        # The tongue stands MIN_OVERLAP_MM proud of the strut all round: walls flush with the strut's sides made
        # the union leave a zero-area sliver along a shared edge (an implant "in 2 pieces", issue 7 seed 154).
        m3d = require_manifold3d()
        grown = m3d.CrossSection([np.ascontiguousarray(sec, dtype=float)]).offset(MIN_OVERLAP_MM, m3d.JoinType.Miter)
        sec = max((np.asarray(q, dtype=float) for q in grown.to_polygons()), key=len)
        dist = float(np.linalg.norm(to_strut))
        if dist < 1e-9:
            out.append(sec)
            return out
        e = to_strut / dist
        across = np.array([-e[1], e[0]])
        half = float(np.abs((sec - to_strut) @ across).max())
        rim = out[0][(out[0] @ e >= 0) & (np.abs(out[0] @ across) <= half)]
        # The rim point towards the strut, pulled 1 mm in, as wide as the strut: overlap even for a thin strut.
        reach = 1.0 / np.hypot(e[0] / ra, e[1] / rl)
        inner = (reach - min(1.0, reach / 2)) * e + np.outer([-half, 0.0, half], across)
        pts = np.vstack([sec, rim, inner])
        out.append(pts[ConvexHull(pts).vertices])  # counter-clockwise in 2-D
    return out


def _footplate(plate: Endplate, params: ImplantParameters, end: str):
    """Plate of ``footplate_outlines``, contact face on the endplate plane, thickness into the gap: it carries the
    whole strut even where the strut stands out beyond the endplate."""
    m3d = require_manifold3d()
    shape = m3d.CrossSection([np.ascontiguousarray(p, dtype=float) for p in footplate_outlines(plate, params, end)])
    solid = shape.extrude(params.footplate_thickness_mm)
    centre = footplate_centre(plate, params, end)
    return solid.transform(_frame_matrix(plate.anterior, plate.lateral, plate.normal, centre))


def path_lateral(plate: Endplate, end: str) -> np.ndarray:
    """The implant path frame's lateral direction at an end: the proximal endplate's own lateral, the distal
    endplate's opposite (its normal points the other way along the path)."""
    return plate.lateral if end == "proximal" else -plate.lateral


def footplate_centre(plate: Endplate, params: ImplantParameters, end: str = "proximal") -> np.ndarray:
    """Centre of the footplate's contact face: on the endplate plane, shifted anteriorly / laterally if asked."""
    return (plate.centre + params.footplate_offset_anterior_mm * plate.anterior
            + params.footplate_offset_lateral_mm * path_lateral(plate, end))


def _hole_cylinder(hole: HoleSpec, segments: int):
    m3d = require_manifold3d()
    d = hole.direction
    u = unit(np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0]))
    v = np.cross(d, u)
    # Polygon circumscribing the circle: the specified diameter is the narrowest the hole gets, so a screw fits.
    radius = hole.diameter_mm / 2 / np.cos(np.pi / segments)
    cyl = m3d.Manifold.cylinder(hole.length_mm + HOLE_RUN_IN_MM, radius, radius, segments)
    return cyl.transform(_frame_matrix(u, v, d, hole.entry - HOLE_RUN_IN_MM * d))


def _validate_holes(holes) -> list:
    out = []
    for k, h in enumerate(holes):
        h = HoleSpec.from_dict(h) if isinstance(h, dict) else h
        if h.end not in ("proximal", "distal"):
            raise PlanError(f"Screw hole {k + 1} has end {h.end!r}.", "Set it to 'proximal' or 'distal'.")
        if not (np.all(np.isfinite(h.entry)) and 0.5 <= h.diameter_mm <= 20.0 and 0.5 <= h.length_mm <= 200.0):
            raise PlanError(
                f"Screw hole {k + 1} ({h.end}) has an invalid entry, diameter ({h.diameter_mm}) or length "
                f"({h.length_mm}).",
                "Use a finite entry point, a diameter of 0.5-20 mm and a length of 0.5-200 mm.",
            )
        out.append(h)
    return out


def _check_footprint(poly: np.ndarray, params: ImplantParameters, plates) -> None:
    """The strut (profile + offset) must not be wider than either footplate in either direction."""
    for name, plate in plates:
        k = end_offset_scale(params, name)
        ext_a = float(np.abs(poly[:, 0] + k * params.offset_anterior_mm - params.footplate_offset_anterior_mm).max())
        ext_l = float(np.abs(poly[:, 1] + k * params.offset_lateral_mm - params.footplate_offset_lateral_mm).max())
        fa, fl = params.footplate_semi_axes(plate)
        if ext_a > fa + 1e-6 or ext_l > fl + 1e-6:
            raise PlanError(
                f"The strut profile (with its offset) reaches {ext_a:.1f} mm anteroposteriorly and {ext_l:.1f} mm "
                f"laterally from the footplate centre, beyond the {name} footplate (semi-axes A-P {fa:.1f} x L-R "
                f"{fl:.1f} mm).",
                "Make the strut smaller, reduce its offset, or raise footplate_fraction.",
            )


def build_implant(
    axis_points,
    proximal: Endplate,
    distal: Endplate,
    params: ImplantParameters,
    holes=(),
    extra_length_mm: float = 0.0,
    doubts=None,
) -> ImplantGeometry:
    """Build the implant solid (strut along the axis + two footplates - screw holes), verified.

    ``doubts`` ({end: why}): the level detection's doubts about the endplates, named if the implant falls apart.

    ``extra_length_mm`` > 0 builds an oversized variant: the distal footplate and its holes are moved by that much
    along the distal endplate's -normal (away from the proximal end) and the strut is regenerated to reach it.
    """
    m3d = require_manifold3d()
    params.validate()
    extra = float(extra_length_mm)
    if not np.isfinite(extra) or not 0.0 <= extra <= MAX_VARIANT_MM:
        raise PlanError(
            f"Variant extra length {extra_length_mm!r} mm is outside 0-{MAX_VARIANT_MM:.0f} mm.",
            "Use a small positive oversize such as 2, 3 or 4 mm.",
        )
    if float(np.linalg.norm(proximal.centre - distal.centre)) < 1.0:
        raise PlanError(
            "The proximal and distal endplates are at the same place.",
            "Pick the inferior endplate of the vertebra above and the superior endplate of the one below the defect.",
        )
    holes = _validate_holes(holes)
    t = float(params.footplate_thickness_mm)
    poly = profile_polygon(params)
    if not _placed_on_bodies(params):
        _check_footprint(poly, params, (("proximal", proximal), ("distal", distal)))

    # Oversize "in the axial direction": the distal end moves along the axis where it meets the distal endplate
    # (not along the endplate normal, which a lordotic or tilted endplate turns away from the axis).
    shift = np.zeros(3)
    if extra > 0:
        nominal_axis, _ = _axis_path(axis_points, proximal, distal)
        shift = extra * _end_direction(nominal_axis, at_start=False)
    distal_v = Endplate(
        distal.centre + shift, distal.normal, distal.anterior, distal.radius_lr, distal.radius_ap, distal.level
    )
    axis, correction = _axis_path(axis_points, proximal, distal_v)
    length = polyline_length(axis)
    if length < 2 * t + 1.0:
        raise PlanError(
            f"The gap between the endplates is only {length:.1f} mm along the axis, too short for two "
            f"{t:.1f} mm footplates and a strut.",
            "Check the endplates (they should bound the defect), dock one level further (proximal_level / "
            "distal_level: a strut replaces at least one vertebral body, adjacent levels leave only the disc) or "
            "set implant.footplate_thickness_mm to at most "
            f"{max(np.floor((length - 1.0) / 2 * 10) / 10, 0.5):.1f} mm.",
        )
    # Offset the centre line in the twist-free frame, then re-clip it to the contact planes.
    axis_frames = path_frames(axis, proximal, distal_v)
    offset = strut_offsets(params, axis, axis_frames)
    base = np.array([params.offset_anterior_mm, params.offset_lateral_mm])
    widest = float(np.linalg.norm(offset, axis=1).max()) / max(float(np.linalg.norm(base)), 1e-9)
    section = poly + base * max(widest, 1.0)  # the farthest the contour takes it
    reach = float(np.linalg.norm(section, axis=1).max())
    fold, bend = _fold_ratio(axis, axis_frames, section)
    if fold > 1.0 / 1.5:
        # A face far off the axis (a misread endplate) bends the axis's ends towards it: name it first.
        slanted = _slanted_faces(axis, proximal, distal_v)
        raise PlanError(
            f"The spinal axis bends too sharply (radius {bend:.1f} mm) for a strut reaching "
            f"{fold * bend:.1f} mm towards the inside of the bend: the sweep would fold over itself"
            + (f"; {' and '.join(slanted)}." if slanted else "."),
            _DRAG_FACE if slanted else
            "Smooth the axis (more, evenly spaced points), reduce the strut offset or use a slimmer strut.",
        )
    strut_path = axis + offset
    if np.any(offset):
        strut_path = resample_polyline(
            _clip_to_gap(strut_path, proximal, distal_v, "offset strut path"), PATH_SPACING_MM
        )
    frames = path_frames(strut_path, proximal, distal_v)

    # Sweep past both contact planes (straight run-outs), then trim each end to sit inside its footplate.
    overlap = min(STRUT_OVERLAP_MM, t / 2)
    run_out = 3.0 * reach + t + 2.0
    n_out = int(np.ceil(run_out / PATH_SPACING_MM))
    steps = np.linspace(run_out, 0.0, n_out + 1)[:-1, None]
    head = strut_path[0] - steps * frames[0, 2]
    tail = strut_path[-1] + steps[::-1] * frames[-1, 2]
    sweep_path = np.concatenate([head, strut_path, tail])
    sweep_frames = np.concatenate([np.repeat(frames[:1], n_out, 0), frames, np.repeat(frames[-1:], n_out, 0)])
    tube = sweep(sweep_path, sweep_frames, poly)
    strut = to_manifold(tube)
    for plate in (proximal, distal_v):
        strut = strut.trim_by_plane(plate.normal, float(plate.normal @ plate.centre) + t - overlap)
    if strut.is_empty():
        raise GeometryError("The strut vanished when trimmed to the footplates.", "Check the endplates and axis.")

    fp_prox, fp_dist = _footplate(proximal, params, "proximal"), _footplate(distal_v, params, "distal")
    solid = m3d.Manifold.batch_boolean([strut, fp_prox, fp_dist], m3d.OpType.Add)

    cut, removed = [], []
    segments = max(32, int(params.profile_segments))
    for k, hole in enumerate(holes):
        h = hole.shifted(shift) if hole.end == "distal" else hole
        before = solid.volume()
        solid = solid - _hole_cylinder(h, segments)
        gone = before - solid.volume()
        if gone < 0.01 * np.pi * (h.diameter_mm / 2) ** 2:
            raise PlanError(
                f"Screw hole {k + 1} ({h.end}) misses the implant: its cylinder removes no material.",
                "Move the hole's entry onto the footplate and aim it through the footplate into the bone.",
            )
        cut.append(h)
        removed.append(float(gone))

    mesh = from_manifold(solid)
    fp_volume = fp_prox.volume() + fp_dist.volume()
    expected = fp_volume + section_properties(params)["area_mm2"] * max(length - 2 * t, 0.0)
    result = require_valid(mesh, "implant", min_volume_mm3=0.3 * expected)
    if result.volume_mm3 > 1.5 * expected + 1.0:
        raise GeometryError(
            f"The implant volume {result.volume_mm3:.0f} mm3 is far above the expected {expected:.0f} mm3.",
            "Check the axis and endplates; this is a bug if they are sensible.",
        )
    if result.n_components != 1:
        pieces = sorted(((p.volume(), from_manifold(p).vertices.mean(axis=0)) for p in solid.decompose()),
                        key=lambda vc: -vc[0])
        where = "; ".join(f"{v:.1f} mm3 around RAS ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f})" for v, c in pieces)
        # A face far off the axis (a doubtful endplate accepted as found) makes the strut leave its footplate.
        slanted = _slanted_faces(axis, proximal, distal_v)
        # Faces the detection itself doubted (e.g. a band inside a body taken for the disc) are the likelier cause.
        doubted = " ".join(doubts.values()) if doubts else ""
        raise GeometryError(
            f"The implant falls apart into {result.n_components} pieces ({where or 'slivers without volume'}), so it "
            "cannot be exported" + (f": {' and '.join(slanted)}, so the strut leaves its footplate." if slanted
                                    else f": the endplates it was built on are in doubt. {doubted}" if doubted
                                    else "."),
            _DRAG_FACE if slanted or doubted else
            "Check that the screw holes (the plan's trajectories) do not cut through the strut and that the strut "
            "reaches both footplates (implant.footplate_fraction, anterior_clearance_mm); this is a bug if they do.",
        )
    proximal_fp, distal_fp = from_manifold(fp_prox), from_manifold(fp_dist)
    for name, fp in (("proximal footplate", proximal_fp), ("distal footplate", distal_fp)):
        require_valid(fp, name)

    porous = [
        PorousRegion(
            end,
            footplate_centre(plate, params, end),
            -plate.normal,
            plate.anterior.copy(),
            params.footplate_semi_axes(plate)[1],
            params.footplate_semi_axes(plate)[0],
            float(params.porous_layer_mm),
        )
        for end, plate in (("proximal", proximal), ("distal", distal_v))
    ]
    return ImplantGeometry(
        mesh=mesh,
        strut_path=strut_path,
        frames=frames,
        proximal_footplate=proximal_fp,
        distal_footplate=distal_fp,
        porous_regions=porous,
        length_mm=float(length),
        extra_length_mm=extra,
        holes=cut,
        distal_shift=shift,
        axis_path=axis,
        axis_correction_mm=correction,
        hole_volumes_mm3=removed,
    )


def measurements(
    geom: ImplantGeometry, params: ImplantParameters, density_g_cm3: float = TI6AL4V_DENSITY_G_CM3
) -> dict:
    """Numbers for the design record: size, mass and stiffness relative to a 5.5 mm titanium rod (same E, so
    the axial ratio is the area ratio and the bending ratio the minimum second-moment ratio)."""
    sec = section_properties(params)
    volume = float(geom.mesh.volume())
    rod_r = ROD_DIAMETER_MM / 2
    rod_area, rod_i = np.pi * rod_r**2, np.pi * rod_r**4 / 4
    check = check_mesh(geom.mesh)
    return {
        "length_mm": float(geom.length_mm),
        "extra_length_mm": float(geom.extra_length_mm),
        "cross_section_area_mm2": sec["area_mm2"],
        "second_moment_mm4": {"min": sec["I_min_mm4"], "max": sec["I_max_mm4"]},
        "polar_moment_mm4": sec["polar_mm4"],
        "volume_mm3": volume,
        "mass_g": volume / 1000.0 * float(density_g_cm3),
        "density_g_cm3": float(density_g_cm3),
        "axial_stiffness_ratio": sec["area_mm2"] / rod_area,
        "bending_stiffness_ratio": sec["I_min_mm4"] / rod_i,
        "reference_rod_diameter_mm": ROD_DIAMETER_MM,
        "holes": len(geom.holes),
        "triangles": geom.mesh.n_triangles,
        "watertight": check.watertight and check.manifold,
    }
