"""The strut's parameters, cross-section and path: profiles and their section properties (compared with a rod), the
path along the spinal axis clipped to the gap between the endplates, and the frames the section is swept along."""

from dataclasses import asdict, dataclass, fields

import numpy as np

from ..core.anatomy import Endplate, angle_deg, polyline_length, resample_polyline, unit
from ..core.errors import PlanError

PROFILES = ("circle", "rounded_rectangle", "curved_plate")


PATH_SPACING_MM = 1.0


PATH_SMOOTHING_SIGMA_MM = 5.0  # rounds the corners of a coarse axis polyline; shrinks a 140 mm arc by < 0.1 mm


MAX_AXIS_TILT_DEG = 70.0  # larger angles between endplate normal and axis: the plane is nearly parallel to it


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
    # The lateral semi-axis' own fraction (0: footplate_fraction). A footplate widened sideways makes room for the
    # screws beside the strut without reaching back towards the canal (placement.fit_footplates sets it).
    footplate_lateral_fraction: float = 0.0
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
    # The strut's distance from the axis changing along the gap so it follows the bone (placement.py sets it):
    # ((arc mm from the proximal endplate, change of the offset mm), ...), at most zero (the offset is the
    # farthest point); each end's value also moves that end's footplate tongue and screw layout
    # (end_offset_scale). Empty: the constant offset all along.
    offset_contour_mm: tuple = ()

    def validate(self) -> None:
        """Raise PlanError for a value no implant could be made from."""

        def bad(name, value, rule):
            raise PlanError(f"Implant parameter {name} = {value!r} is invalid: {rule}.", f"Set {name} {rule}.")

        if self.profile not in PROFILES:
            raise PlanError(f"Unknown strut profile {self.profile!r}.", f"Choose one of {', '.join(PROFILES)}.")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("profile", "offset_contour_mm"):
                continue
            if not (isinstance(v, (int, float, np.number)) and np.isfinite(v)):
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
        try:
            contour = np.asarray(list(self.offset_contour_mm) or np.zeros((0, 2)), dtype=float).reshape(-1, 2)
        except (TypeError, ValueError):  # not a list of number pairs (a hand-edited plan)
            contour = np.full((1, 2), np.nan)
        if (contour.ndim != 2 or contour.shape[1] != 2 or not np.all(np.isfinite(contour))
                or np.any(np.diff(contour[:, 0]) <= 0) or np.any(np.abs(contour[:, 1]) > 50.0)):
            bad("offset_contour_mm", self.offset_contour_mm,
                "to [[arc mm, offset change mm], ...] with increasing arcs and changes within +-50 mm (or [])")
        if abs(self.profile_angle_deg) > 180.0:
            bad("profile_angle_deg", self.profile_angle_deg, "between -180 and 180 degrees")
        if not 0.0 < self.footplate_fraction <= 1.0:
            bad("footplate_fraction", self.footplate_fraction, "in (0, 1]")
        if not 0.0 <= self.footplate_lateral_fraction <= 1.0:
            bad("footplate_lateral_fraction", self.footplate_lateral_fraction, "in (0, 1] (0: footplate_fraction)")
        if not 0.5 <= self.footplate_thickness_mm <= 20.0:
            bad("footplate_thickness_mm", self.footplate_thickness_mm, "between 0.5 and 20 mm")
        if not 0.0 <= self.porous_layer_mm <= self.footplate_thickness_mm:
            bad("porous_layer_mm", self.porous_layer_mm, "between 0 and the footplate thickness")
        if int(self.profile_segments) != self.profile_segments or not 8 <= self.profile_segments <= 512:
            bad("profile_segments", self.profile_segments, "to a whole number between 8 and 512")

    def footplate_semi_axes(self, plate: Endplate) -> tuple:
        """(anteroposterior, lateral) semi-axes of the footplate on ``plate``, mm."""
        lateral = self.footplate_lateral_fraction or self.footplate_fraction
        return self.footplate_fraction * plate.radius_ap, lateral * plate.radius_lr

    def as_dict(self) -> dict:
        d = asdict(self)
        d["offset_contour_mm"] = [[float(a), float(b)] for a, b in self.offset_contour_mm]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ImplantParameters":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PlanError(f"Unknown implant parameter(s): {', '.join(unknown)}.", f"Use only: {', '.join(known)}.")
        d = dict(d)
        if isinstance(d.get("offset_contour_mm"), list):  # JSON lists -> the dataclass's tuples; else validate() says
            d["offset_contour_mm"] = tuple(tuple(p) if isinstance(p, list) else p for p in d["offset_contour_mm"])
        return cls(**d)


def strut_offsets(params: ImplantParameters, path: np.ndarray, frames: np.ndarray, start: int = 0) -> np.ndarray:
    """(N, 3) offset of the strut's centre line from each point of ``path`` (frames from path_frames): the
    constant offset, changed along the gap by ``offset_contour_mm`` (arc measured from ``path[start]``, the
    proximal endplate)."""
    base = np.array([params.offset_anterior_mm, params.offset_lateral_mm], dtype=float)
    r = float(np.hypot(*base))
    scale = np.ones(len(path))
    if len(params.offset_contour_mm) and r > 1e-9:
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
        s_c, d_c = np.asarray(params.offset_contour_mm, dtype=float).T
        scale = np.maximum(r + np.interp(arc - arc[start], s_c, d_c), 0.0) / r
    return scale[:, None] * (base[0] * frames[:, 0] + base[1] * frames[:, 1])


def end_offset_scale(params: ImplantParameters, end: str) -> float:
    """How far the strut stands off at the ``end`` ("proximal" / "distal") footplate, as a multiple of the
    constant offset (offset_contour_mm may move the two ends differently)."""
    r = float(np.hypot(params.offset_anterior_mm, params.offset_lateral_mm))
    if not len(params.offset_contour_mm) or r <= 1e-9:
        return 1.0
    delta = params.offset_contour_mm[0 if end == "proximal" else -1][1]
    return max(r + float(delta), 0.0) / r


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
        tilt = angle_deg(abs(cos), 1.0)
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
        # The slerped front turns along the path where an endplate lies far across the spine (on the chest CT a T1
        # face 75 deg off its labels did so): name the end nearer that place, the face to check.
        at = int(np.argmin(norm))
        end, plate = ("proximal", proximal) if _arc_fraction(path)[at] < 0.5 else ("distal", distal)
        where = ", ".join(f"{v:.1f}" for v in path[at])
        raise PlanError(
            f"The strut's front direction runs along the spine's axis near RAS ({where}), so its orientation is "
            f"undefined there: the {end} endplate ({plate.level or end}) is probably tilted far off the spine.",
            f"Check the {end} endplate in the sagittal and coronal views and drag its plane onto the vertebra's "
            "endplate face (its normal along the spine, its front to the patient's front), then design again.",
        )
    anterior /= norm[:, None]
    lateral = np.cross(tangent, anterior)
    return np.stack([anterior, lateral, tangent], axis=1)


def check_faces_across_axis(axis_points, proximal: Endplate, distal: Endplate, doubts=None) -> None:
    """Refuse, before placement and building, an endplate plane that the spine runs (nearly) along: no strut can rest
    on it. On the RIDER lung CT, smoothed, T5 -> T7 found a T7 "superior face" facing forwards (81-87 deg), which the
    axis clip reported only later as "does not cross the plane ... or the endplates are swapped". ``doubts``
    {end: why} are the detection's own doubts, passed on."""
    # The spine's direction from end to end of the axis: near a misread face the axis bends towards it (57 deg there)
    # and the line between the two faces' centres is as wrong as the face (58-78 deg, against 81-87 end to end).
    pts = np.asarray(axis_points, dtype=float)
    if len(pts) < 2 or not np.linalg.norm(pts[-1] - pts[0]) > 1.0:
        return
    direction = unit(pts[-1] - pts[0])
    for end, plate in (("proximal", proximal), ("distal", distal)):
        tilt = angle_deg(abs(float(direction @ plate.normal)), 1.0)
        if tilt > MAX_AXIS_TILT_DEG:
            c, name = plate.centre, f" ({plate.level} {'inferior' if end == 'proximal' else 'superior'})" \
                if plate.level else ""
            why = (doubts or {}).get(end)
            raise PlanError(
                f"The {end} endplate plane{name} at RAS ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) lies {tilt:.0f} deg "
                f"from the spinal axis (at most {MAX_AXIS_TILT_DEG:.0f}): the spine runs along it, so no strut can "
                "rest on it.",
                (f"It was found from the CT and doubted: {why}" if why else
                 f"Turn the plane ('{end.capitalize()} endplate' in the module, or {end}_endplate in the plan) so "
                 "that its normal follows the spine's axis, or give vertebra labels (--levels) to fit it from them."),
            )


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
