"""Where the strut goes around the vertebral bodies: an angle about the spinal axis (0 = anterior, +90 = the
patient's right, -90 = the left), the strut lying a bone gap outside the bone found in that direction, the
footplates reaching back from it onto the endplates, and the keep-out anatomy kept at a clearance. The strut's
distance from the axis follows the bodies' front along the gap (``offset_contour_mm``, smooth): on the chest CT's
T4 -> T9 a constant offset, set by the furthest bone (an osteophyte at T7/T8 and the larger T8), stood 6.5 mm off T6.

Automatic placement tries every angle from -90 to +90 degrees, measures the clearance of the strut and footplates
to every keep-out structure on a distance field, and takes the middle of the widest run of angles that keeps the
required clearance (so it stays clear of both neighbours, and a mirrored patient gets the mirrored plan). Without
keep-out structures every angle passes and the strut goes anterior. Numpy only, no scene access.
"""

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d
from scipy.spatial import cKDTree

from ..core.anatomy import Endplate
from ..core.errors import PlanError
from .access import drill_access
from .implant import footplate_centre, footplate_outlines
from .screws import default_trajectories, screw_type
from .strut import (
    ImplantParameters,
    end_offset_scale,
    gap_length,
    path_frames,
    profile_polygon,
    strut_offsets,
)

NAMED_ANGLES = {
    "anterior": 0.0,
    "anterolateral_right": 45.0,
    "lateral_right": 90.0,
    "anterolateral_left": -45.0,
    "lateral_left": -90.0,
}
AUTO_STEP_DEG = 5.0
AUTO_RANGE_DEG = 90.0
# Beside the cervical bodies run the vertebral arteries (in the transverse foramina, C6 up), the nerve roots and the
# sympathetic chain on longus colli; neither CT nor TotalSegmentator's keep-out labels show them. The anterior
# approach works medial to longus colli, so at a cervical docking level the automatic angle stays within this of
# anterior: a strut about 16 mm from the axis (C5 -> C7 phantom: clear of the bodies along the lordosis) then has its
# centre within about 5.5 mm of the midline (at 30 deg it was 8 mm, a 12 mm strut's edge 14 mm out, over longus
# colli). On that phantom with its oesophagus labelled the search had gone to -75 deg.
CERVICAL_RANGE_DEG = 20.0
SCREW_PATTERN = 0.15  # screws centre this x the endplate's radius (in the strut's direction) towards the strut
BONE_REACH = 1.5  # bone farther from the axis than this x the larger endplate radius is not "the body" (ribs)
FIELD_MARGIN_MM = 0.5  # the 1 mm placement field may differ from the 0.5 mm measurement by this much
CLEARANCE_CAP_MM = 3.0  # clearance beyond required + this does not make an angle better
CLEARANCE_MIN_FRACTION = 0.4  # footplates shrink towards the strut for clearance down to this fraction
MIN_FOOTPLATE_MM = 1.5  # footplates are not thinned below this to fit a short gap (adjacent levels)
FRACTION_STEP = 0.05  # footplates grow by this fraction of the endplate until the screws fit
FIELD_PAD_MM = 60.0  # the placement field reaches this far around the axis
CONTOUR_RADIUS_MM = 20.0  # the strut follows the bodies' front with bends no sharper than this ...
CONTOUR_SMOOTH_MM = 3.0  # ... smoothed over this (Gaussian sigma, mm along the gap)
CONTOUR_MIN_MM = 0.5  # a contour changing the offset by less than this is left out
END_BLEND_MM = 10.0  # an end held at the constant offset blends into the contour over at least this


@dataclass
class Placement:
    angle_deg: float
    offset_mm: float  # strut centre line from the spinal axis, in the angle's direction
    parameters: ImplantParameters  # the implant parameters to build (offsets, footplates, profile turned)
    screw_pattern: dict  # keyword arguments for screws.default_trajectories' pattern
    how: str  # "automatic", "fixed", "named"
    clearance_mm: Optional[float] = None  # estimated on the placement field (None: no keep-out structures)
    nearest: str = ""
    by_angle: list = field(default_factory=list)  # [(angle, clearance or None, nearest)] tried
    note: str = ""  # for the plan's warnings: why the search took a position short of the clearance

    def as_dict(self) -> dict:
        return {"angle_deg": self.angle_deg, "offset_mm": round(self.offset_mm, 2), "how": self.how,
                "estimated_clearance_mm": None if self.clearance_mm is None else round(self.clearance_mm, 2),
                "nearest_structure": self.nearest}


def angle_name(angle_deg: float) -> str:
    a = float(angle_deg)
    if abs(a) < 22.5:
        return "anterior"
    side = "right" if a > 0 else "left"
    return f"anterolateral {side}" if abs(a) < 67.5 else f"lateral {side}"


def _extent(ra: float, rl: float, angle: float) -> float:
    """The support of an (ra, rl) ellipse in the in-plane direction at ``angle`` from anterior."""
    return float(np.hypot(ra * np.cos(angle), rl * np.sin(angle)))


class _Bone:
    """Spine bone between the footplate zones in the path frame: (anterior, lateral) coordinates of each voxel."""

    def __init__(self, axis, proximal, distal, bone_mask, ijk_to_ras, keep_mm):
        self.ok = False
        if bone_mask is None:
            return
        axis = np.asarray(axis, dtype=float)
        k, j, i = np.nonzero(bone_mask)
        m = np.asarray(ijk_to_ras, dtype=float)
        pts = np.stack([i, j, k], axis=1) @ m[:3, :3].T + m[:3, 3]
        inside = ((pts - proximal.centre) @ proximal.normal > keep_mm) & (
            (pts - distal.centre) @ distal.normal > keep_mm)
        pts = pts[inside]
        if len(pts) == 0:
            return
        frames = path_frames(axis, proximal, distal)
        _, nearest = cKDTree(axis).query(pts)
        rel = pts - axis[nearest]
        self.a = np.einsum("ij,ij->i", rel, frames[nearest, 0])
        self.l = np.einsum("ij,ij->i", rel, frames[nearest, 1])
        # Arc along the axis from the proximal endplate (as strut.strut_offsets measures it), and the gap's length.
        arc, start, stop = _gap_arc(axis, proximal, distal)
        self.s = arc[nearest] - arc[start]
        self.length = float(arc[stop] - arc[start])
        reach = BONE_REACH * max(proximal.radius_ap, proximal.radius_lr, distal.radius_ap, distal.radius_lr)
        near = np.hypot(self.a, self.l) <= reach
        self.a, self.l, self.s = self.a[near], self.l[near], self.s[near]
        self.half_voxel = float(np.linalg.norm(m[:3, :3], axis=0).max()) / 2.0
        self.ok = len(self.a) > 0

    def contour(self, angle: float, half_band: float, reach_mm: float) -> Optional[tuple]:
        """(offset at the footplates, offset_contour_mm) for a strut at ``angle`` whose centre line keeps
        ``reach_mm`` beyond the bone within +-half_band across it: the bone's front per millimetre along the gap
        under a smooth curve (bends no sharper than CONTOUR_RADIUS_MM, then a Gaussian), so the strut lies against
        each body instead of standing off the one that reaches furthest. The offset is the curve's highest point,
        the contour at most zero; each end keeps its own (fit_footplates moves an end out to the offset where
        that frees room for screws). None without bone in that direction."""
        if not self.ok or self.length < 1.0:
            return None
        u = self.a * np.cos(angle) + self.l * np.sin(angle)
        v = -self.a * np.sin(angle) + self.l * np.cos(angle)
        band = np.abs(v) <= half_band
        if not band.any():
            return None
        n = int(np.ceil(self.length)) + 1
        stations = np.linspace(0.0, self.length, n)
        need = np.full(n, -np.inf)
        idx = np.clip(np.rint(self.s[band] / self.length * (n - 1)).astype(int), 0, n - 1)
        np.maximum.at(need, idx, u[band] + self.half_voxel + reach_mm)

        def above(need):
            known = np.isfinite(need)
            d = stations[:, None] - stations[None, known]
            env = (need[None, known] - d * d / (2.0 * CONTOUR_RADIUS_MM)).max(axis=1)
            # Widened by the Gaussian's reach first, so smoothing rounds the peaks off above the bone, not into it.
            sigma = CONTOUR_SMOOTH_MM / (stations[1] - stations[0])
            wide = maximum_filter1d(env, size=2 * int(np.ceil(1.5 * sigma)) + 1, mode="nearest")
            smooth = gaussian_filter1d(wide, sigma, mode="nearest")
            return smooth + max(0.0, float((env - smooth).max()))  # never nearer the bone than the envelope

        curve = above(need)
        base = float(curve.max())
        delta = curve - base
        if float(np.abs(delta).max()) < CONTOUR_MIN_MM:
            return base, ()
        return base, tuple((round(float(a), 3), round(float(b), 3)) for a, b in zip(stations, delta))


def _gap_arc(axis: np.ndarray, proximal: Endplate, distal: Endplate) -> tuple:
    """(arc length at each axis point, index of the first and of the last point inside the gap)."""
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(axis, axis=0), axis=1))])
    inside = np.flatnonzero(((axis - proximal.centre) @ proximal.normal > 0)
                            & ((axis - distal.centre) @ distal.normal > 0))
    if len(inside) == 0:
        return arc, 0, len(axis) - 1
    return arc, int(inside[0]), int(inside[-1])


def _inset(ra: float, rl: float, angle: float) -> float:
    """How far an ellipse scaled by f and shifted by c in the direction ``angle`` may move: it stays inside the
    (ra, rl) ellipse while c <= (1 - f) x this (the smallest support / projection over the outward normals)."""
    u = np.array([np.cos(angle), np.sin(angle)])
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    n = np.stack([np.cos(t), np.sin(t)], axis=1)
    proj = n @ u
    ok = proj > 1e-6
    return float(np.min(np.hypot(ra * n[ok, 0], rl * n[ok, 1]) / proj[ok]))


def _parameters_at(implant: ImplantParameters, proximal: Endplate, distal: Endplate, angle_deg: float,
                   bone: _Bone, bone_gap_mm: float) -> tuple:
    """(implant parameters, offset, screw pattern) of a strut at ``angle_deg`` lying ``bone_gap_mm`` off the bone.
    The footplates keep their fraction of the endplate and move towards the strut only as far as they stay on
    both endplates (an overhang would reach the vessels and organs around the bodies); the strut-wide tongue
    of implant.footplate_outlines joins them to the strut."""
    ang = np.radians(angle_deg)
    turned = replace(implant, profile_angle_deg=float(angle_deg))
    base = profile_polygon(replace(implant, profile_angle_deg=0.0))
    back = float(-base[:, 0].min())
    half_width = float(np.abs(base[:, 1]).max())
    r = min(_extent(p.radius_ap, p.radius_lr, ang) for p in (proximal, distal))
    followed = bone.contour(ang, half_width + 2.0, back + bone_gap_mm)
    contour = ()
    if followed is None:
        offset = max(_extent(p.radius_ap, p.radius_lr, ang) for p in (proximal, distal)) + back + bone_gap_mm
    else:
        offset, contour = followed
    fraction = implant.footplate_fraction
    centre = (1.0 - fraction) * min(_inset(p.radius_ap, p.radius_lr, ang) for p in (proximal, distal))
    u = np.array([np.cos(ang), np.sin(ang)])
    params = replace(turned, offset_anterior_mm=float(offset * u[0]), offset_lateral_mm=float(offset * u[1]),
                     offset_contour_mm=contour,
                     footplate_offset_anterior_mm=float(centre * u[0]),
                     footplate_offset_lateral_mm=float(centre * u[1]))
    pattern = {"pattern_offset_anterior_mm": float(SCREW_PATTERN * r * u[0]),
               "pattern_offset_lateral_mm": float(SCREW_PATTERN * r * u[1]),
               "pattern_angle_deg": float(angle_deg)}
    return params, float(offset), pattern


def _sample_points(axis, proximal, distal, params: ImplantParameters, extra_mm: float) -> np.ndarray:
    """Points on the strut's outline along the gap and over both footplates (their outlines and inside them, on
    the contact and free faces), the distal one also where the largest oversized variant puts it."""
    axis = np.asarray(axis, dtype=float)
    frames = path_frames(axis, proximal, distal)
    poly = profile_polygon(params)
    _, start, _ = _gap_arc(axis, proximal, distal)
    centre = axis + strut_offsets(params, axis, frames, start)
    keep = ((axis - proximal.centre) @ proximal.normal > 0) & ((axis - distal.centre) @ distal.normal > 0)
    step = max(1, len(axis) // 60)
    idx = np.flatnonzero(keep)[::step]
    strut = (centre[idx, None, :] + poly[None, :, 0, None] * frames[idx, None, 0]
             + poly[None, :, 1, None] * frames[idx, None, 1]).reshape(-1, 3)
    pts = [strut]
    down = axis[-1] - axis[-2] if len(axis) > 1 else -distal.normal
    down = down / max(np.linalg.norm(down), 1e-9)
    for end, plate, shifts in (("proximal", proximal, (0.0,)), ("distal", distal, (0.0, extra_mm))):
        c0 = footplate_centre(plate, params, end)
        outline = np.concatenate([s * o for o in footplate_outlines(plate, params, end) for s in (0.35, 0.7, 1.0)])
        disc = outline[:, :1] * plate.anterior + outline[:, 1:] * plate.lateral
        for s in shifts:
            for h in (0.0, params.footplate_thickness_mm):
                pts.append(c0 + s * down + h * plate.normal + disc)
    return np.concatenate(pts)


def keep_out_field(keep_out, axis):
    """The placement's distance field to the keep-out structures around the axis (None without structures)."""
    if keep_out is None or not keep_out.structures:
        return None
    ax = np.asarray(axis, dtype=float)
    return keep_out.distance_field(ax.min(axis=0) - FIELD_PAD_MM, ax.max(axis=0) + FIELD_PAD_MM)


def _clearances(field, axis, proximal, distal, params, extra_mm) -> dict:
    """{structure: clearance mm} of the implant ``params`` describes, for each structure nearest to some part of it."""
    if field is None:
        return {}
    d, which = field.sample(_sample_points(axis, proximal, distal, params, extra_mm))
    ok = np.isfinite(d) & (which >= 0)
    return {field.names[int(k)]: float(d[ok & (which == k)].min()) for k in np.unique(which[ok])}


def _clearance(field, axis, proximal, distal, params, extra_mm) -> tuple:
    """(clearance mm or None when nothing is near, nearest structure) of the implant ``params`` describes."""
    by_structure = _clearances(field, axis, proximal, distal, params, extra_mm)
    if not by_structure:
        return None, ""
    nearest = min(by_structure, key=by_structure.get)
    return by_structure[nearest], nearest


def _nearer_than(floors: dict, default: float, clearances: dict) -> Optional[tuple]:
    """(clearance, structure) of the structure furthest inside its floor, None if all keep theirs."""
    inside = [(c, name) for name, c in clearances.items() if c < floors.get(name, default)]
    return min(inside) if inside else None


def place_strut(implant: ImplantParameters, axis, proximal: Endplate, distal: Endplate, bone_mask, ijk_to_ras,
                keep_out=None, placement: str = "auto", angle_deg: Optional[float] = None,
                required_clearance_mm: float = 2.0, bone_gap_mm: float = 1.0, largest_variant_mm: float = 0.0,
                field=None, levels: tuple = ()) -> Placement:
    """The strut's place around the bodies. ``placement`` "auto" searches the angle (within CERVICAL_RANGE_DEG of
    anterior when one of the docking ``levels`` is cervical); a named placement (NAMED_ANGLES) or ``angle_deg``
    fixes it (the clearance is then measured, not enforced here)."""
    search = CERVICAL_RANGE_DEG if _cervical_docking(levels) else AUTO_RANGE_DEG
    keep_mm = implant.footplate_thickness_mm + 1.0
    bone = _Bone(axis, proximal, distal, bone_mask, ijk_to_ras, keep_mm)
    if angle_deg is not None:
        angles, how = [float(angle_deg)], "fixed"
    elif placement in NAMED_ANGLES:
        angles, how = [NAMED_ANGLES[placement]], "named"
    elif placement == "auto":
        angles = list(np.arange(-search, search + 1e-9, AUTO_STEP_DEG))
        how = "automatic"
    else:
        raise PlanError(f"Unknown placement {placement!r}.",
                        f"Choose auto, axis or one of {', '.join(NAMED_ANGLES)} (or set placement_angle_deg).")
    structures = keep_out is not None and len(keep_out.structures) > 0
    if structures and field is None:
        field = keep_out_field(keep_out, axis)
    need = required_clearance_mm + FIELD_MARGIN_MM

    def clearance_of(params):
        return _clearance(field if structures else None, axis, proximal, distal, params, largest_variant_mm)

    # Footplates that would come too close (a wide footplate reaching back towards the canal, or round the body
    # towards a vessel) shrink towards the strut, down to CLEARANCE_MIN_FRACTION of the endplate.
    fractions = [implant.footplate_fraction] + [f for f in np.arange(implant.footplate_fraction - 0.1,
                                                                      CLEARANCE_MIN_FRACTION - 1e-9, -0.1)]
    tried = []
    for a in angles:
        best = None
        for f in fractions:
            params, offset, pattern = _parameters_at(replace(implant, footplate_fraction=float(f)), proximal, distal,
                                                     a, bone, bone_gap_mm)
            if how == "automatic":
                try:
                    params.validate()
                except PlanError:  # bone reaches too far that way (ribs, osteophytes): no strut there
                    best = best or (a, -np.inf, "bone", params, offset, pattern)
                    break
            clearance, nearest = clearance_of(params)
            row = (a, clearance, nearest, params, offset, pattern)
            if best is None or (clearance is not None and best[1] is not None and clearance > best[1]):
                best = row
            if clearance is None or clearance >= need:
                best = row
                break
        tried.append(best)
    if how != "automatic" or not structures and all(t[1] is None for t in tried):
        pick = len(tried) // 2 if how == "automatic" else 0  # no structures: the middle angle, anterior
        a, c, n, params, offset, pattern = tried[pick]
    else:
        ok = [c is None or c >= need for _, c, *_ in tried]  # None: no structure near
        runs, start = [], None
        for i, good in enumerate(ok + [False]):
            if good and start is None:
                start = i
            if not good and start is not None:
                runs.append((start, i - 1))
                start = None
        if not runs:
            best = max(tried, key=lambda r: np.inf if r[1] is None else r[1])
            if not np.isfinite(best[1]):
                raise PlanError(
                    "Bone reaches more than 50 mm from the spinal axis at every angle around the bodies, so no strut "
                    "can lie against them.",
                    "Check the bone segmentation (exclude seeds in contrast vessels, an ROI around the spine) and the "
                    "vertebra points, or use placement 'axis'.")
            if search < AUTO_RANGE_DEG:
                # At a cervical level the front is the only corridor, and what lies there (the oesophagus and the
                # trachea, retracted in the anterior approach) is for the surgeon to accept: a plan to look at, its
                # clearance a finding that blocks export, rather than a refusal.
                a, c, n, params, offset, pattern = best
                note = (f"At a cervical docking level the strut stays within {search:g} deg of anterior (the "
                        "vertebral arteries and nerve roots lie beside the bodies); no position there keeps "
                        f"{required_clearance_mm:g} mm from the keep-out anatomy, so it lies where it comes least "
                        f"near: {angle_name(a)} ({a:+.0f} deg), an estimated {c:.1f} mm from the "
                        f"{n.replace('_', ' ')}.")
                return Placement(angle_deg=float(a), offset_mm=offset, parameters=params, screw_pattern=pattern,
                                 how=how, clearance_mm=c, nearest=n, by_angle=[(t[0], t[1], t[2]) for t in tried],
                                 note=note)
            raise PlanError(
                f"No strut position around the vertebral bodies keeps {required_clearance_mm:g} mm from the "
                f"keep-out anatomy (sought with a {FIELD_MARGIN_MM:g} mm margin for the estimate: "
                f"{need:g} mm): the best, {angle_name(best[0])} ({best[0]:+.0f} deg), comes within "
                f"{best[1]:.1f} mm of the {best[2].replace('_', ' ')}.",
                "Lower keep_out_clearance_mm (plan) / --clearance, make the strut slimmer (implant width_mm or "
                "diameter_mm), reduce anterior_clearance_mm (the gap to the bone), or fix placement_angle_deg "
                "and accept the clearance in accepted_risks.",
            )

        # Widest run; among equally wide runs the one nearest anterior. Its middle angle (mirror-symmetric).
        def key(run):
            mid = 0.5 * (tried[run[0]][0] + tried[run[1]][0])
            return (run[1] - run[0], -abs(mid))

        lo, hi = max(runs, key=key)
        scores = [min(tried[i][1] if tried[i][1] is not None else np.inf, need + CLEARANCE_CAP_MM)
                  for i in range(lo, hi + 1)]
        mids = [i for i in range(lo, hi + 1)]
        centre = 0.5 * (tried[lo][0] + tried[hi][0])
        i = min(mids, key=lambda i: (abs(tried[i][0] - centre), -scores[i - lo], abs(tried[i][0])))
        a, c, n, params, offset, pattern = tried[i]
    note = ""
    if params.footplate_fraction < implant.footplate_fraction - 1e-9:
        # Said, not silent: the record showed 0.50 for a plan asking 0.7 (chest CT, T2 -> T5 with labels), and a
        # later "footplates enlarged from 0.60" read as growth from the user's own value.
        wide, *_ = _parameters_at(implant, proximal, distal, a, bone, bone_gap_mm)
        c0, n0 = clearance_of(wide)
        near = f", an estimated {c0:.1f} mm from the {n0.replace('_', ' ')}" if c0 is not None and n0 else ""
        note = (f"Footplates shortened to {params.footplate_fraction:.2f} of the endplate front to back (from "
                f"{implant.footplate_fraction:.2f}) to keep {required_clearance_mm:g} mm from the keep-out anatomy "
                f"at this side of the strut (at {implant.footplate_fraction:.2f}{near}): a larger footplate needs "
                "another side (placement_angle_deg) or a smaller clearance (keep_out_clearance_mm).")
    return Placement(angle_deg=float(a), offset_mm=offset, parameters=params, screw_pattern=pattern, how=how,
                     clearance_mm=c, nearest=n, by_angle=[(t[0], t[1], t[2]) for t in tried], note=note)


def _cervical_docking(levels) -> bool:
    return any(str(n).upper().startswith("C") for n in levels or ())


def beside_cervical_bodies(placement: Optional[Placement], levels: tuple) -> list:
    """[(finding id, message)]: a strut placed (by the user) further than CERVICAL_RANGE_DEG from anterior at a
    cervical docking level, where structures the planner cannot see run beside the bodies."""
    if placement is None or not _cervical_docking(levels) or abs(placement.angle_deg) <= CERVICAL_RANGE_DEG + 1e-6:
        return []
    return [("unchecked:vertebral_artery",
             f"the strut lies {placement.angle_deg:+.0f} deg from anterior beside the cervical bodies, where the "
             "vertebral arteries, nerve roots and sympathetic chain run, which neither the CT nor the keep-out "
             f"labels show: place it within {CERVICAL_RANGE_DEG:g} deg of anterior (placement 'anterior' or "
             "placement_angle_deg), or check that side on the CT (CT angiogram) before accepting it")]


def _ends_moved(params: ImplantParameters) -> bool:
    c = params.offset_contour_mm
    return bool(len(c)) and (abs(c[0][1]) > 1e-6 or abs(c[-1][1]) > 1e-6)


def _pinned_ends(params: ImplantParameters) -> ImplantParameters:
    """``params`` with the contour's ends moved out to the constant offset, blended in over END_BLEND_MM
    (outward only: the contour lies at or below the constant offset)."""
    s, d = np.asarray(params.offset_contour_mm, dtype=float).T
    for end, dist in ((d[0], s - s[0]), (d[-1], s[-1] - s)):
        reach = max(END_BLEND_MM, 3.0 * abs(end))  # no steeper than about 1 in 3
        d = d - end * np.where(dist < reach, 0.5 * (1.0 + np.cos(np.pi * dist / reach)), 0.0)
    d = np.maximum(d, np.asarray(params.offset_contour_mm, dtype=float)[:, 1])
    return replace(params, offset_contour_mm=tuple((float(a), round(float(b), 3)) for a, b in zip(s, d)))


def screw_layout_kwargs(params: ImplantParameters, pattern: Optional[dict] = None) -> dict:
    """Keyword arguments of screws.default_trajectories (after the endplates, the footplate thickness and the screw
    parameters) for an implant built with ``params`` and the placement's screw ``pattern``."""
    return dict(footplate_fraction=params.footplate_fraction,
                footplate_lateral_fraction=params.footplate_lateral_fraction,
                strut_offset_anterior_mm=params.offset_anterior_mm,
                strut_radius_mm=float(np.linalg.norm(profile_polygon(params), axis=1).max()),
                strut_offset_lateral_mm=params.offset_lateral_mm,
                footplate_offset_anterior_mm=params.footplate_offset_anterior_mm,
                footplate_offset_lateral_mm=params.footplate_offset_lateral_mm,
                strut_offset_scale=(end_offset_scale(params, "proximal"), end_offset_scale(params, "distal")),
                **(pattern or {}))


def _on_endplates(params: ImplantParameters, proximal: Endplate, distal: Endplate) -> bool:
    """Each footplate's ellipse lies on its endplate (the measured ellipse), to 1e-3 of its radii."""
    t = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
    for end, plate in (("proximal", proximal), ("distal", distal)):
        c = footplate_centre(plate, params, end) - plate.centre
        fa, fl = params.footplate_semi_axes(plate)
        a = (c @ plate.anterior + fa * np.cos(t)) / plate.radius_ap
        lat = (c @ plate.lateral + fl * np.sin(t)) / plate.radius_lr
        if float((a * a + lat * lat).max()) > 1.0 + 1e-3:
            return False
    return True


def _refuse_if_endplate_too_small(params, proximal: Endplate, distal: Endplate, screw_params, counts,
                                  no_room: dict) -> None:
    """Refuse, for the real reason, a plan whose endplate has no room for a screw beside the strut even under a
    footplate covering all of it: there the keep-out anatomy, which stopped the footplate growing, is not what
    keeps the screws out, and neither a larger footplate nor a lower clearance helps. Seen on cervical and upper
    thoracic phantoms with the strut on the axis (C5 -> C7: C5's endplate measured 16 x 21 mm, no 3.5 mm screw beside
    an 8 or 12 mm strut), which were refused as "within 1.3 mm of the spinal canal" with fixes that did not help."""
    whole = replace(params, footplate_fraction=1.0, footplate_lateral_fraction=0.0, footplate_offset_anterior_mm=0.0,
                    footplate_offset_lateral_mm=0.0)
    if min(counts(whole)) > 0 or id(whole) not in no_room:
        return
    end = no_room[id(whole)]
    plate = proximal if end == "proximal" else distal
    radius = float(np.linalg.norm(profile_polygon(params), axis=1).max())
    on_axis = abs(params.offset_anterior_mm) < 1e-6 and abs(params.offset_lateral_mm) < 1e-6 and not len(
        params.offset_contour_mm)
    st = screw_type(screw_params.screw_type)
    raise PlanError(
        f"No room for a screw on the {end} footplate: even a footplate covering the whole {end} endplate "
        f"({2 * plate.radius_ap:.0f} x {2 * plate.radius_lr:.0f} mm{f', {plate.level}' if plate.level else ''}) "
        f"has no room for one {st.name} screw beside the strut ({radius:.1f} mm from its centre line).",
        ("Place the strut against the vertebral bodies instead of on the axis (placement 'auto', a side such as "
         "'anterior', or its angle, placement_angle_deg: its screws then go into the bodies behind it)" if on_axis else
         "Use a slimmer strut (implant.width_mm / diameter_mm)")
        + (", choose screws.screw_type '3.5 cancellous'" if st.diameter_mm > 3.5 else "")
        + ", or place the screws by hand (edit the screw lines: the plan's trajectories).")


def _shortened(params: ImplantParameters, axis, proximal: Endplate, distal: Endplate, field, keep: float,
               extra_mm: float, counts) -> tuple:
    """(parameters, note): footplates that start nearer a keep-out structure than ``keep`` are made shorter front to
    back, FRACTION_STEP of the endplate at a time, keeping their width (the canal and cord lie behind the bodies; the
    sideways widening that follows needs the footplate centred). With the strut on the axis (a corpectomy) the
    centred 0.7 footplate came within 0.8 mm of the canal behind T8 on the chest CT (T6 -> T8), refused with "make the
    footplates smaller": a fix the planner can make itself. Taken: the largest size clear of every structure it was
    too near, with as many screws and the strut's end still on it; else unchanged (the finding names the part)."""
    start = _clearances(field, axis, proximal, distal, params, extra_mm)
    near = sorted(n for n, c in start.items() if c < keep)
    if not near:
        return params, ""
    n0 = min(counts(params))
    f0 = params.footplate_fraction
    width = params.footplate_lateral_fraction or f0
    strut_back = params.offset_anterior_mm - float(np.linalg.norm(profile_polygon(params), axis=1).max())
    f = f0
    while f - FRACTION_STEP >= CLEARANCE_MIN_FRACTION - 1e-9:
        f = round(f - FRACTION_STEP, 6)
        if any(params.footplate_offset_anterior_mm - f * p.radius_ap > strut_back for p in (proximal, distal)):
            break  # the back rim would cut into the strut's end
        short = replace(params, footplate_fraction=f, footplate_lateral_fraction=width)
        c = _clearances(field, axis, proximal, distal, short, extra_mm)
        if all(c.get(n, np.inf) >= keep for n in near) and min(counts(short)) >= n0:
            return short, (f"footplates shortened to {f:.2f} of the endplate front to back (from {f0:.2f}) to "
                           f"keep clear of the {', '.join(near).replace('_', ' ')} (set "
                           "implant.footplate_fraction to choose)")
    return params, ""


def fit_footplates(implant: ImplantParameters, axis, proximal: Endplate, distal: Endplate, screw_params,
                   pattern: Optional[dict] = None, keep_out=None, required_clearance_mm: float = 2.0,
                   largest_variant_mm: float = 0.0, field=None, screws_by_hand: bool = False) -> tuple:
    """(implant parameters, notes): the footplates adapted to the anatomy instead of refusing the plan.

    - A gap shorter than two footplates and a strut (adjacent levels: the disc only) gets thinner footplates,
      down to MIN_FOOTPLATE_MM (and the porous layer no thicker than them).
    - Footplates that start nearer a keep-out structure than ``required_clearance_mm`` are shortened front to back
      first (``_shortened``: a centred footplate on the axis reaches back towards the canal).
    - Footplates too small for the screws beside the strut grow, FRACTION_STEP at a time, until ``per_end`` screws
      fit, or else as many as fit at any size (at least one per end), up to the whole endplate: a footplate placed
      towards the strut keeps its edge there (its centre moves back as it grows, so it stays on the endplate).
      Growth stops before a size comes nearer the keep-out structures (``keep_out`` or its ``field``: the canal
      or cord behind a centred footplate, vessels beside a placed one) than ``required_clearance_mm`` (or than
      the starting size, if that was already nearer). Where that stops short of the screws, the footplate widens
      sideways only (``footplate_lateral_fraction``), both ways or, where one side comes too near (the aorta
      beside the body), only towards the other, under the same clearance rule: the screws sit beside the strut,
      and a centred footplate growing front to back would reach the canal first.
    Each change is a note for the plan's warnings. When nothing helps the parameters are returned unchanged and
    the design step refuses with its own message; if a larger size had room for a screw but no drill access
    (design/access.py), that size is returned instead, so the refusal names the real obstacle. Where only the
    keep-out clearance kept every size without room for a screw, the refusal is raised here, naming the structure
    (not with ``screws_by_hand``: the user's own screw lines need no room from the default layout)."""
    notes = []
    params = implant
    t = params.footplate_thickness_mm
    gap = gap_length(axis, proximal, distal)
    if gap < 2 * t + 1.0:
        thin = float(np.floor((gap - 1.0) / 2 * 10) / 10)
        if thin >= MIN_FOOTPLATE_MM:
            params = replace(params, footplate_thickness_mm=thin, porous_layer_mm=min(params.porous_layer_mm, thin))
            notes.append(f"the gap between the endplates is {gap:.1f} mm: footplates thinned from {t:g} to "
                         f"{thin:g} mm to fit it (set implant.footplate_thickness_mm to choose)")

    no_access = []  # sizes with room beside the strut but no drill access (their refusal says why)
    no_room = {}  # id of a size -> the end with no room for a screw on it

    def counts(p):
        try:
            trs = default_trajectories(proximal, distal, p.footplate_thickness_mm, screw_params,
                                       access=drill_access(axis, proximal, distal, p, largest_variant_mm),
                                       **screw_layout_kwargs(p, pattern))
        except PlanError as exc:
            if exc.problem.startswith("No drill or driver access"):
                no_access.append(p)
            elif exc.problem.startswith("No room"):
                no_room[id(p)] = "distal" if "on the distal footplate" in exc.problem else "proximal"
            return (0, 0)
        return tuple(sum(tr.end == e for tr in trs) for e in ("proximal", "distal"))

    if _ends_moved(params):
        # A strut nearer a footplate's centre (the contour brought that end in) takes room from the screws: where
        # that costs screws, the ends stay at the offset the layout was made for.
        pinned = _pinned_ends(params)
        if min(counts(pinned)) > min(counts(params)):
            params = pinned
    if field is None:
        field = keep_out_field(keep_out, axis)
    # Each structure keeps its own floor: the clearance asked for, or its start if that was already nearer. One
    # structure already near (the oesophagus on the bodies at C7 -> T3 on the chest CT) let the footplates grow
    # towards another, the cord (to 0.7 mm from a footplate_fraction of 0.5, set to keep off it).
    keep = required_clearance_mm + FIELD_MARGIN_MM
    if not screws_by_hand:  # the user's screw lines run through the footplates as they are
        params, shortened = _shortened(params, axis, proximal, distal, field, keep, largest_variant_mm, counts)
        notes += [shortened] if shortened else []
    floors = {name: min(c, keep) for name, c in
              _clearances(field, axis, proximal, distal, params, largest_variant_mm).items()}
    f0 = params.footplate_fraction
    best, best_n = params, counts(params)
    want = int(screw_params.per_end)
    f = f0
    stopped = []  # (clearance, structure) where growth stopped at the keep-out anatomy
    while min(best_n) < want and f < 1.0 - 1e-9:
        f = min(1.0, f + FRACTION_STEP)
        # The footplate centre lies (1 - f) x its reach from the endplate centre towards the strut.
        scale = (1.0 - f) / (1.0 - f0)
        grown = replace(params, footplate_fraction=float(f),
                        footplate_offset_anterior_mm=params.footplate_offset_anterior_mm * scale,
                        footplate_offset_lateral_mm=params.footplate_offset_lateral_mm * scale)
        near = _nearer_than(floors, keep, _clearances(field, axis, proximal, distal, grown, largest_variant_mm))
        if near is not None:
            stopped.append(near)
            break  # larger footplates only come nearer
        n = counts(grown)
        if min(n) > min(best_n):
            best, best_n = grown, n
    # Still short of screws where growth stopped at the keep-out (a wide footplate reaches back towards the canal
    # or round the body towards a vessel): widen it sideways only, where the screws sit beside the strut.
    g0 = best.footplate_lateral_fraction or best.footplate_fraction
    base = best
    reach = min(p.radius_lr for p in (proximal, distal))
    open_sides = [0.0, 1.0, -1.0]  # widened both ways, or only to one side (its other rim stays, e.g. by the aorta)
    g = g0
    while min(best_n) < want and open_sides and g < 1.0 - 1e-9:
        g = min(1.0, g + FRACTION_STEP)
        for side in list(open_sides):
            # Both ways: a footplate placed towards the strut keeps its edge there, as above. One way: the centre
            # moves by the growth of the semi-axis, so the rim on the other side stays where it was.
            shift = (base.footplate_offset_lateral_mm * ((1.0 - g) / (1.0 - g0)) if side == 0.0
                     else base.footplate_offset_lateral_mm + side * (g - g0) * reach)
            wide = replace(base, footplate_lateral_fraction=float(g), footplate_offset_lateral_mm=float(shift))
            if not _on_endplates(wide, proximal, distal):
                continue
            near = _nearer_than(floors, keep, _clearances(field, axis, proximal, distal, wide, largest_variant_mm))
            if near is not None:
                stopped.append(near)
                open_sides.remove(side)  # larger in this way only comes nearer
                continue
            n = counts(wide)
            if min(n) > min(best_n):
                best, best_n = wide, n
    if min(best_n) == 0 and no_access and no_access[0] is not params:
        # No size gives a screw: refuse for the real reason (room was found, but the drill cannot reach it).
        return no_access[0], notes
    if min(best_n) == 0 and not screws_by_hand and not no_access:
        _refuse_if_endplate_too_small(params, proximal, distal, screw_params, counts, no_room)
    if min(best_n) == 0 and stopped and id(best) in no_room and not screws_by_hand:
        # The keep-out anatomy, not the endplate, kept the footplate too small: "raise footplate_fraction" would
        # not help (placement shrinks it again), so say what stopped it and what does help.
        c, near = min(stopped)
        end = no_room[id(best)]
        raise PlanError(
            f"No room for a screw on the {end} footplate: a footplate large enough for one would come within "
            f"{max(c, 0.0):.1f} mm of the {near.replace('_', ' ')} (required {required_clearance_mm:g} mm, kept with "
            f"a {FIELD_MARGIN_MM:g} mm margin for the estimate; the footplate stays at {f0:.2f} of the endplate).",
            "Choose the strut's side yourself (placement_angle_deg; the module's Placement) away from it, use a "
            "slimmer strut (implant.width_mm / diameter_mm), place the screws by hand (edit the screw lines: the "
            "plan's trajectories), or, if you accept it as the surgeon, lower keep_out_clearance_mm (--clearance).",
        )
    if best.footplate_fraction != f0:
        notes.append(f"footplates enlarged from {f0:.2f} to {best.footplate_fraction:.2f} of the endplate so that "
                     f"{min(best_n)} screw(s) per end fit beside the strut (set implant.footplate_fraction to choose)")
    if best.footplate_lateral_fraction != params.footplate_lateral_fraction:
        notes.append(f"footplates widened sideways to {best.footplate_lateral_fraction:.2f} of the endplate's width "
                     f"(front to back {best.footplate_fraction:.2f}, clear of the keep-out anatomy) so that "
                     f"{min(best_n)} screw(s) per end fit beside the strut (set implant.footplate_lateral_fraction "
                     "to choose)")
    return best, notes
