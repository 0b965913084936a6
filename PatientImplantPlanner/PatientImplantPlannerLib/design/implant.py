"""Implant geometry: a strut swept along the spinal axis between two endplates, fused with two footplates,
with screw holes cut through them. Pure geometry (numpy + manifold3d), no MRML.

Conventions: RAS, mm. A profile is a 2-D polygon in (anterior, lateral) coordinates; along the path each point
has a frame whose rows are (anterior, lateral, tangent), right-handed, tangent running proximal -> distal.
The anterior vector is the endplates' anterior direction (interpolated along the path) projected perpendicular
to the tangent, so the profile never twists: "anterior stays anterior".

Every solid produced here is verified (watertight, manifold, outward, plausible volume) before it is returned.
"""

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..core.anatomy import Endplate, polyline_length, resample_polyline, unit
from ..core.errors import GeometryError, PlanError
from ..core.mesh import TriMesh, check_mesh, from_manifold, require_manifold3d, require_valid, to_manifold

PROFILES = ("circle", "rounded_rectangle", "curved_plate")
PATH_SPACING_MM = 1.0
PATH_SMOOTHING_SIGMA_MM = 5.0  # rounds the corners of a coarse axis polyline; shrinks a 140 mm arc by < 0.1 mm
STRUT_OVERLAP_MM = 1.0  # how far the strut reaches into each footplate: fused by overlap, never flush contact
MIN_OVERLAP_MM = 0.1
HOLE_RUN_IN_MM = 3.0  # the cutting cylinder starts this far outside the entry so the hole opens cleanly
MAX_AXIS_TILT_DEG = 70.0  # larger angles between endplate normal and axis: the plane is nearly parallel to it
MAX_VARIANT_MM = 30.0
ROD_DIAMETER_MM = 5.5  # conventional titanium rod the strut's stiffness is compared with
TI6AL4V_DENSITY_G_CM3 = 4.43


# ---- parameters and records ---------------------------------------------------------------------------------


@dataclass
class ImplantParameters:
    """Everything that shapes the implant besides the anatomy. Defaults follow the reference cases."""

    profile: str = "circle"  # "circle" | "rounded_rectangle" | "curved_plate"
    diameter_mm: float = 12.0  # circle
    width_mm: float = 10.0  # rounded_rectangle / curved_plate: lateral extent
    depth_mm: float = 5.0  # antero-posterior thickness
    corner_radius_mm: float = 1.0  # rounded_rectangle
    plate_curvature_radius_mm: float = 20.0  # curved_plate: radius of its mid-surface arc, centre posterior
    offset_anterior_mm: float = 0.0  # strut offset from the axis, in the path frame
    offset_lateral_mm: float = 0.0
    footplate_fraction: float = 0.7  # footprint semi-axes = fraction x the measured endplate semi-axes
    # Footplate centre moved anteriorly from the endplate centre: a plate lying on the anterior bodies docks with
    # protrusions reaching back onto the anterior part of each endplate (published case 2).
    footplate_offset_anterior_mm: float = 0.0
    # ... and laterally, in the path frame (lateral = caudal tangent x anterior: the patient's right).
    footplate_offset_lateral_mm: float = 0.0
    # The profile turned about the path (degrees from anterior towards lateral): a plate placed anterolaterally
    # faces the bodies with its concave side.
    profile_angle_deg: float = 0.0
    footplate_thickness_mm: float = 3.0
    porous_layer_mm: float = 1.5  # depth of the bone-contact layer marked porous (lattice comes later)
    profile_segments: int = 48  # tessellation of round outlines

    def validate(self) -> None:
        """Raise PlanError for a value no implant could be made from."""

        def bad(name, value, rule):
            raise PlanError(f"Implant parameter {name} = {value!r} is invalid: {rule}.", f"Set {name} {rule}.")

        if self.profile not in PROFILES:
            raise PlanError(f"Unknown strut profile {self.profile!r}.", f"Choose one of {', '.join(PROFILES)}.")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "profile" and not (isinstance(v, (int, float, np.number)) and np.isfinite(v)):
                bad(f.name, v, "to a finite number")
        if self.profile == "circle" and not 1.0 <= self.diameter_mm <= 40.0:
            bad("diameter_mm", self.diameter_mm, "between 1 and 40 mm")
        if self.profile in ("rounded_rectangle", "curved_plate"):
            if not 1.0 <= self.width_mm <= 60.0:
                bad("width_mm", self.width_mm, "between 1 and 60 mm")
            if not 1.0 <= self.depth_mm <= 40.0:
                bad("depth_mm", self.depth_mm, "between 1 and 40 mm")
        if (
            self.profile == "rounded_rectangle"
            and not 0.0 <= self.corner_radius_mm <= min(self.width_mm, self.depth_mm) / 2
        ):
            bad("corner_radius_mm", self.corner_radius_mm, "between 0 and half the smaller of width and depth")
        if self.profile == "curved_plate":
            r, d, w = self.plate_curvature_radius_mm, self.depth_mm, self.width_mm
            if not d / 2 + 1.0 <= r <= 1000.0:
                bad("plate_curvature_radius_mm", r, f"between depth/2 + 1 mm ({d / 2 + 1:.1f}) and 1000 mm")
            if w / 2 >= 0.95 * (r + d / 2):
                bad("width_mm", w, f"below {1.9 * (r + d / 2):.1f} mm for this curvature (the arc would close)")
        for name in ("offset_anterior_mm", "offset_lateral_mm", "footplate_offset_anterior_mm",
                     "footplate_offset_lateral_mm"):
            if abs(getattr(self, name)) > 50.0:
                bad(name, getattr(self, name), "between -50 and 50 mm")
        if abs(self.profile_angle_deg) > 180.0:
            bad("profile_angle_deg", self.profile_angle_deg, "between -180 and 180 degrees")
        if not 0.0 < self.footplate_fraction <= 1.0:
            bad("footplate_fraction", self.footplate_fraction, "in (0, 1]")
        if not 0.5 <= self.footplate_thickness_mm <= 20.0:
            bad("footplate_thickness_mm", self.footplate_thickness_mm, "between 0.5 and 20 mm")
        if not 0.0 <= self.porous_layer_mm <= self.footplate_thickness_mm:
            bad("porous_layer_mm", self.porous_layer_mm, "between 0 and the footplate thickness")
        if int(self.profile_segments) != self.profile_segments or not 8 <= self.profile_segments <= 512:
            bad("profile_segments", self.profile_segments, "to a whole number between 8 and 512")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImplantParameters":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PlanError(f"Unknown implant parameter(s): {', '.join(unknown)}.", f"Use only: {', '.join(known)}.")
        return cls(**d)


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


def _drop_repeats(poly: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    keep = np.linalg.norm(poly - np.roll(poly, 1, axis=0), axis=1) > tol
    return poly[keep]


def profile_polygon(params: ImplantParameters) -> np.ndarray:
    """The strut cross-section as a (P, 2) polygon in (anterior, lateral) mm, counter-clockwise, its bounding
    box centred on the path, turned by ``profile_angle_deg``."""
    poly = _unturned_profile(params)
    a = np.radians(params.profile_angle_deg)
    if a == 0.0:
        return poly
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return poly @ rot.T


def _unturned_profile(params: ImplantParameters) -> np.ndarray:
    params.validate()
    n = int(params.profile_segments)
    if params.profile == "circle":
        t = 2 * np.pi * np.arange(n) / n
        return 0.5 * params.diameter_mm * np.stack([np.cos(t), np.sin(t)], axis=1)
    if params.profile == "rounded_rectangle":
        ha, hl, rc = params.depth_mm / 2, params.width_mm / 2, params.corner_radius_mm
        k = max(2, n // 4 + 1) if rc > 0 else 1
        pts = []
        for quadrant, (sa, sl) in enumerate(((1, 1), (-1, 1), (-1, -1), (1, -1))):
            centre = np.array([sa * (ha - rc), sl * (hl - rc)])
            ang = np.linspace(0, np.pi / 2, k) + quadrant * np.pi / 2
            pts.append(centre + rc * np.stack([np.cos(ang), np.sin(ang)], axis=1))
        return _drop_repeats(np.concatenate(pts))
    # curved_plate: annular sector, centre of curvature posterior, so the plate is concave towards posterior.
    r, d = params.plate_curvature_radius_mm, params.depth_mm
    ro, ri = r + d / 2, r - d / 2
    phi = np.arcsin(params.width_mm / 2 / ro)  # lateral extent of the outer corners = width
    k = max(4, n // 2)
    ang = np.linspace(-phi, phi, k)
    outer = ro * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    inner = ri * np.stack([np.cos(ang[::-1]), np.sin(ang[::-1])], axis=1)
    poly = np.concatenate([outer, inner])
    poly[:, 0] -= (ro + ri * np.cos(phi)) / 2  # centre the antero-posterior extent on the path
    return poly


def _polygon_moments(poly: np.ndarray) -> tuple:
    """Area, centroid and second moments (about the centroid) of a simple CCW polygon."""
    x, y = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    c = x * y1 - x1 * y
    area = c.sum() / 2
    cx = ((x + x1) * c).sum() / (6 * area)
    cy = ((y + y1) * c).sum() / (6 * area)
    ixx = ((y * y + y * y1 + y1 * y1) * c).sum() / 12 - area * cy * cy  # integral of y^2
    iyy = ((x * x + x * x1 + x1 * x1) * c).sum() / 12 - area * cx * cx  # integral of x^2
    ixy = ((x * y1 + 2 * x * y + 2 * x1 * y1 + x1 * y) * c).sum() / 24 - area * cx * cy
    return area, np.array([cx, cy]), ixx, iyy, ixy


def section_properties(params: ImplantParameters) -> dict:
    """Cross-section properties of the strut, computed from the tessellated profile polygon.

    Ia is the second moment about the lateral axis (integral of anterior^2: governs bending in the sagittal
    plane), Il about the anterior axis. ``polar_mm4`` = Ia + Il, the torsion constant only for a circle.
    """
    area, centroid, i_ll, i_aa, i_al = _polygon_moments(profile_polygon(params))
    mean, half = (i_aa + i_ll) / 2, np.hypot((i_aa - i_ll) / 2, i_al)
    return {
        "area_mm2": float(area),
        "centroid_mm": [float(v) for v in centroid],
        "Ia_mm4": float(i_aa),
        "Il_mm4": float(i_ll),
        "Ial_mm4": float(i_al),
        "I_min_mm4": float(mean - half),
        "I_max_mm4": float(mean + half),
        "polar_mm4": float(i_aa + i_ll),
        "J_mm4": float(i_aa + i_ll),
    }


# ---- path ----------------------------------------------------------------------------------------------------------


def _plane_crossings(pts: np.ndarray, centre: np.ndarray, normal: np.ndarray) -> list:
    """(segment index, fraction) where the polyline crosses the plane."""
    f = (pts - centre) @ normal
    idx = np.nonzero((f[:-1] < 0) != (f[1:] < 0))[0]
    return [(int(i), float(f[i] / (f[i] - f[i + 1]))) for i in idx]


def _end_direction(pts: np.ndarray, at_start: bool, reach_mm: float = 5.0) -> np.ndarray:
    """Outward direction at one end, averaged over the last few mm so a noisy end point does not steer it."""
    p = pts if not at_start else pts[::-1]
    d = np.linalg.norm(p - p[-1], axis=1)
    far = np.nonzero(d >= reach_mm)[0]
    ref = p[far[-1]] if len(far) else p[0]
    return unit(p[-1] - ref)


def _clip_to_gap(points: np.ndarray, proximal: Endplate, distal: Endplate, what: str) -> np.ndarray:
    """The part of a polyline between the proximal and distal endplate planes (ends exactly on the planes),
    extending it linearly at either end if it stops short."""
    span = float(np.linalg.norm(proximal.centre - distal.centre)) + polyline_length(points) + 100.0
    ext = np.concatenate(
        [
            [points[0] + span * _end_direction(points, True)],
            points,
            [points[-1] + span * _end_direction(points, False)],
        ]
    )
    ends = []
    for name, plate, sign in (("proximal", proximal, 1.0), ("distal", distal, -1.0)):
        crossings = _plane_crossings(ext, plate.centre, plate.normal)
        if ends:  # the distal crossing must come after the proximal one
            crossings = [c for c in crossings if c > ends[0][:2]]
        if not crossings:
            raise PlanError(
                f"The {what} does not cross the {name} endplate plane beyond the other one (it runs parallel to it, "
                "away from it, or the endplates are swapped).",
                "Check the endplate normals and the axis points; the axis must run from one endplate to the other.",
            )
        pos = [ext[i] + t * (ext[i + 1] - ext[i]) for i, t in crossings]
        best = int(np.argmin([np.linalg.norm(p - plate.centre) for p in pos]))
        i, t = crossings[best]
        direction = unit(ext[i + 1] - ext[i])
        cos = float(direction @ plate.normal) * sign
        tilt = np.degrees(np.arccos(np.clip(abs(cos), 0.0, 1.0)))
        if tilt > MAX_AXIS_TILT_DEG:
            raise PlanError(
                f"The {name} endplate plane is nearly parallel to the {what} ({tilt:.0f} deg between its normal "
                f"and the axis, at most {MAX_AXIS_TILT_DEG:.0f} allowed).",
                "Check the endplate normal and the axis points (the normal should follow the spine's axis).",
            )
        if cos < 0:
            raise PlanError(
                f"The {name} endplate normal points away from the gap to bridge.",
                "Its normal must point out of its own vertebral body towards the other endplate.",
            )
        ends.append((i, t, pos[best]))
    (i0, _, p0), (i1, _, p1) = ends
    inner = ext[i0 + 1 : i1 + 1]
    path = np.concatenate([[p0], inner, [p1]])
    keep = np.concatenate([[True], np.linalg.norm(np.diff(path, axis=0), axis=1) > 1e-6])
    keep[-1] = True
    path = path[keep]
    if len(path) > 2 and np.linalg.norm(path[-1] - path[-2]) < 1e-6:
        path = np.delete(path, -2, axis=0)
    return path


def _smooth(path: np.ndarray, sigma_samples: float) -> np.ndarray:
    """Gaussian smoothing with both end points kept; point reflection at the ends keeps the end tangents."""
    from scipy.ndimage import gaussian_filter1d

    n = len(path)
    pad = min(int(np.ceil(3 * sigma_samples)), n - 1)
    if n < 3 or pad < 1:
        return path
    head = 2 * path[0] - path[pad:0:-1]
    tail = 2 * path[-1] - path[-2 : -pad - 2 : -1]
    ext = np.concatenate([head, path, tail])
    out = gaussian_filter1d(ext, sigma_samples, axis=0, mode="nearest", truncate=3.0)[pad : pad + n]
    out[0], out[-1] = path[0], path[-1]
    return out


def _arc_fraction(path: np.ndarray) -> np.ndarray:
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    return s / s[-1]


def _slerp(a: np.ndarray, b: np.ndarray, u: np.ndarray) -> np.ndarray:
    angle = np.arccos(np.clip(a @ b, -1.0, 1.0))
    if angle < 1e-9:
        return np.repeat(a[None], len(u), axis=0)
    s = np.sin(angle)
    return (np.sin((1 - u) * angle)[:, None] * a + np.sin(u * angle)[:, None] * b) / s


def _tangents(path: np.ndarray) -> np.ndarray:
    t = np.gradient(path, axis=0, edge_order=2) if len(path) > 2 else np.repeat(path[1:] - path[:1], 2, axis=0)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def path_frames(path: np.ndarray, proximal: Endplate, distal: Endplate) -> np.ndarray:
    """(N, 3, 3) twist-free frames, rows (anterior, lateral, tangent): the endplates' anterior direction slerped
    by arc length and projected perpendicular to the tangent."""
    if float(proximal.anterior @ distal.anterior) < -0.5:
        raise PlanError(
            "The proximal and distal endplates' anterior directions disagree by more than 120 degrees.",
            "Check the endplates' anterior vectors: both should point to the patient's front.",
        )
    tangent = _tangents(path)
    ref = _slerp(proximal.anterior, distal.anterior, _arc_fraction(path))
    anterior = ref - (ref * tangent).sum(axis=1, keepdims=True) * tangent
    norm = np.linalg.norm(anterior, axis=1)
    if norm.min() < 0.3:
        raise PlanError(
            "The anterior direction runs along the axis somewhere, so the strut's orientation is undefined.",
            "Check the endplates' anterior vectors: they must lie across the spine's axis.",
        )
    anterior /= norm[:, None]
    lateral = np.cross(tangent, anterior)
    return np.stack([anterior, lateral, tangent], axis=1)


def _axis_path(axis_points, proximal: Endplate, distal: Endplate) -> tuple:
    """Axis clipped to the gap, resampled, smoothed and bent so it ends exactly at the endplate centres."""
    pts = np.asarray(axis_points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 3 or not np.all(np.isfinite(pts)):
        raise PlanError("The spinal axis must be a list of 3-D points.", "Give the axis as an (N, 3) point list.")
    keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6]) if len(pts) else []
    pts = pts[keep]
    if len(pts) < 2:
        raise PlanError(
            "The spinal axis needs at least two distinct points.", "Place (or detect) more points along the axis."
        )
    # Accept an axis given distal-first: the brief is proximal-first, but a reversed curve is an easy slip.
    if np.linalg.norm(pts[0] - distal.centre) + np.linalg.norm(pts[-1] - proximal.centre) < np.linalg.norm(
        pts[0] - proximal.centre
    ) + np.linalg.norm(pts[-1] - distal.centre):
        pts = pts[::-1]
    # Smooth the whole axis before clipping, so the smoothing's end effects stay outside the gap when the axis
    # reaches beyond the endplates (it usually does); an axis that stops short is extended straight anyway.
    pts = resample_polyline(pts, PATH_SPACING_MM)
    pts = _smooth(pts, PATH_SMOOTHING_SIGMA_MM / PATH_SPACING_MM)
    path = resample_polyline(_clip_to_gap(pts, proximal, distal, "spinal axis"), PATH_SPACING_MM)
    # The ends lie on the planes; slide them within the planes onto the centres, blending along the length.
    d0, d1 = proximal.centre - path[0], distal.centre - path[-1]
    u = _arc_fraction(path)[:, None]
    path = path + (1 - u) * d0 + u * d1
    return path, (float(np.linalg.norm(d0)), float(np.linalg.norm(d1)))


def gap_length(axis_points, proximal: Endplate, distal: Endplate) -> float:
    """Length (mm) of the axis between the two endplates, as the implant is built along it."""
    return polyline_length(_axis_path(axis_points, proximal, distal)[0])


def _fold_ratio(path: np.ndarray, frames: np.ndarray, section: np.ndarray) -> tuple:
    """How close the swept section comes to folding over itself: max over the path of (reach of the section
    towards the centre of curvature) / (radius of curvature); the sweep self-intersects at 1. Only the side
    towards the centre matters: an anterior strut on a lordotic (posteriorly concave) axis is on the outside.
    ``section`` is (P, 2) in (anterior, lateral), offsets included. Returns (ratio, radius at the worst point)."""
    t = _tangents(path)
    ds = np.linalg.norm(np.diff(path, axis=0), axis=1)
    k = np.diff(t, axis=0) / np.maximum(ds, 1e-9)[:, None]  # curvature vector: towards the centre, |k| = 1/R
    k = np.vstack([k, k[-1:]])
    ka = np.sum(k * frames[:, 0], axis=1)  # its components in the section's plane
    kl = np.sum(k * frames[:, 1], axis=1)
    towards = section[None, :, 0] * ka[:, None] + section[None, :, 1] * kl[:, None]  # = reach * (1/R) per point
    ratio = towards.max(axis=1)
    worst = int(np.argmax(ratio))
    kn = float(np.hypot(ka[worst], kl[worst]))
    return float(max(ratio[worst], 0.0)), (1.0 / kn if kn > 1e-12 else np.inf)


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

    ra, rl = params.footplate_fraction * plate.radius_ap, params.footplate_fraction * plate.radius_lr
    n = max(64, int(params.profile_segments))
    t = 2 * np.pi * np.arange(n) / n
    out = [np.column_stack([ra * np.cos(t), rl * np.sin(t)])]
    if _placed_on_bodies(params):
        sign = 1.0 if end == "proximal" else -1.0  # path lateral -> this endplate's lateral
        to_strut = np.array([params.offset_anterior_mm - params.footplate_offset_anterior_mm,
                             sign * (params.offset_lateral_mm - params.footplate_offset_lateral_mm)])
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
    a = poly[:, 0] + params.offset_anterior_mm - params.footplate_offset_anterior_mm
    lat = poly[:, 1] + params.offset_lateral_mm - params.footplate_offset_lateral_mm
    ext_a, ext_l = float(np.abs(a).max()), float(np.abs(lat).max())
    for name, plate in plates:
        fa, fl = params.footplate_fraction * plate.radius_ap, params.footplate_fraction * plate.radius_lr
        if ext_a > fa + 1e-6 or ext_l > fl + 1e-6:
            raise PlanError(
                f"The strut profile (with its offset) reaches {ext_a:.1f} mm anteroposteriorly and {ext_l:.1f} mm "
                f"laterally from the footplate centre, beyond the {name} footplate ({fa:.1f} x {fl:.1f} mm semi-axes).",
                "Make the strut smaller, reduce its offset, or raise footplate_fraction.",
            )


def build_implant(
    axis_points,
    proximal: Endplate,
    distal: Endplate,
    params: ImplantParameters,
    holes=(),
    extra_length_mm: float = 0.0,
) -> ImplantGeometry:
    """Build the implant solid (strut along the axis + two footplates - screw holes), verified.

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
            "Check the endplates (they should bound the defect) or set implant.footplate_thickness_mm to at "
            f"most {max(np.floor((length - 1.0) / 2 * 10) / 10, 0.5):.1f} mm.",
        )
    # Offset the centre line in the twist-free frame, then re-clip it to the contact planes.
    axis_frames = path_frames(axis, proximal, distal_v)
    section = poly + np.array([params.offset_anterior_mm, params.offset_lateral_mm])
    reach = float(np.linalg.norm(section, axis=1).max())
    fold, bend = _fold_ratio(axis, axis_frames, section)
    if fold > 1.0 / 1.5:
        raise PlanError(
            f"The spinal axis bends too sharply (radius {bend:.1f} mm) for a strut reaching "
            f"{fold * bend:.1f} mm towards the inside of the bend: the sweep would fold over itself.",
            "Smooth the axis (more, evenly spaced points), reduce the strut offset or use a slimmer strut.",
        )
    offset = params.offset_anterior_mm * axis_frames[:, 0] + params.offset_lateral_mm * axis_frames[:, 1]
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
        raise GeometryError(
            f"The implant falls apart into {result.n_components} pieces ({where or 'slivers without volume'}), so it "
            "cannot be exported.",
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
            params.footplate_fraction * plate.radius_lr,
            params.footplate_fraction * plate.radius_ap,
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
