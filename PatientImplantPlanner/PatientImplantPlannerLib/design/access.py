"""Drill and driver access to the screws with the implant in place.

A screw through a footplate is drilled and driven along its own axis from outside the footplate: the drill (in its
guide sleeve) and then the screwdriver come in along the line that continues the screw outward past its head. With
the implant in place that line must not run into the implant: the strut beside the footplate, or, in a short gap,
the other footplate facing it across the gap (a T6 -> T8 strut on a chest CT has its footplates ~18 mm apart, and
10-degree screws aimed straight across hit the other footplate).

``DrillAccess`` holds the implant solid without holes, split into the strut and the two footplates, for the nominal
size and the largest oversized variant (whose distal end sits further along the axis and carries its holes with
it), and measures how far a screw's outward line keeps from the strut and from the other footplate over
DRIVER_REACH_MM. ``tilt_candidates`` lists the screw tilts the layout may choose from, nearest the user's
convergence first. screws.default_trajectories uses both to choose trajectories that clear and to refuse when none
does; the plan checks user-edited trajectories with it. Numpy, manifold3d and VTK; no scene access.
"""

from typing import Optional

import numpy as np

from ..core.anatomy import Endplate
from ..core.errors import PlannerError
from ..core.mesh import distance_function, from_manifold, to_manifold
from .implant import build_implant
from .strut import ImplantParameters

DRIVER_REACH_MM = 40.0  # the drill and the driver approach along the screw axis; this much of that line must clear
ACCESS_GAP_MM = 0.5  # the drill / driver keeps this much beyond its radius from the implant
SAMPLE_MM = 0.5  # step along the outward line (the distance is 1-Lipschitz: half a step is added to the margin)
MAX_CONVERGENCE_DEG = 30.0  # the screws' convergence is raised at most to this (ScrewParameters' upper limit)
CONVERGENCE_STEP_DEG = 2.5
SKEW_STEP_DEG = 15.0  # the tilt may turn sideways by multiples of this (screws pass beside each other, not through)
MAX_SKEW_DEG = 45.0
OUTWARD_STEP_MM = 1.0  # screws may move this much at a time away from the pattern's centre (the hole must still fit)
MAX_OUTWARD_MM = 4.0
SHEET_MM = 0.05  # the footplates are removed from the implant this much into the gap too (see strut_without_footplates)
GROW_FRACTION = 0.002  # ... and grown this much about its centre (0.02-0.05 mm at its rims)
MIN_PART_MM3 = 1.0  # pieces of the strut below this volume are subtraction sheets
SCREW_GAP_MM = 1.0  # bone kept between the threads of two screws of the same end
SCREW_DEPTH_FACTOR = 1.5  # screws of an end are kept apart down to this x the endplate's larger radius


def access_radius_mm(screw_type) -> float:
    """Radius of the line that must stay clear: the wider of the drill and the driver (about as wide as the screw's
    thread), plus ACCESS_GAP_MM."""
    return max(float(screw_type.diameter_mm), float(screw_type.drill_mm)) / 2 + ACCESS_GAP_MM


def tilt_candidates(convergence_deg: float) -> list:
    """[[(convergence deg, skew deg, outward mm), ...], ...]: the tilts (and shifts of the screws away from the
    pattern's centre, towards the footplate's rim) a screw layout may take, in groups of equal cost: one step of
    convergence above the user's value, one skew step and one OUTWARD_STEP_MM each cost the same; the user's own
    tilt comes first. Both skew senses are in each group, so a mirrored patient can get the mirrored choice."""
    c0 = float(convergence_deg)
    convs = [c0] + list(np.arange(np.ceil(c0 / CONVERGENCE_STEP_DEG + 1e-9) * CONVERGENCE_STEP_DEG,
                                  MAX_CONVERGENCE_DEG + 1e-9, CONVERGENCE_STEP_DEG))
    skews = np.arange(0.0, MAX_SKEW_DEG + 1e-9, SKEW_STEP_DEG)
    shifts = np.arange(0.0, MAX_OUTWARD_MM + 1e-9, OUTWARD_STEP_MM)
    groups = {}
    for i, c in enumerate(convs):
        for j, k in enumerate(skews):
            for h, o in enumerate(shifts):
                for sign in ((1.0,) if k == 0 else (1.0, -1.0)):
                    groups.setdefault(i + j + h, []).append((float(c), float(sign * k), float(o)))
    return [groups[k] for k in sorted(groups)]


def segment_distance(p1, d1, len1: float, p2, d2, len2: float, samples: int = 128) -> float:
    """Smallest distance between the segments p1 + s d1 (0 <= s <= len1) and p2 + t d2 (0 <= t <= len2), unit
    directions: the nearest t for each of ``samples`` s (exact along the second segment)."""
    s = np.linspace(0.0, float(len1), samples)[:, None]
    a = np.asarray(p1, float) + s * np.asarray(d1, float)
    t = np.clip((a - np.asarray(p2, float)) @ np.asarray(d2, float), 0.0, float(len2))[:, None]
    return float(np.linalg.norm(a - (np.asarray(p2, float) + t * np.asarray(d2, float)), axis=1).min())


class DrillAccess:
    """The implant (no holes) as the drill and driver see it; see the module notes.

    ``margin(end, entry, direction, radius)`` is the smallest distance from the outward line (entry - s direction,
    0 <= s <= DRIVER_REACH_MM) to the strut or the other footplate, less ``radius`` and half a sample step, over
    the nominal implant and the largest variant: >= 0 means the drill and the driver clear the implant."""

    def __init__(self, axis_points, proximal: Endplate, distal: Endplate, params: ImplantParameters,
                 largest_variant_mm: float = 0.0):
        self._sizes = []  # [(distal shift, {part name: distance function})]
        for extra in sorted({0.0, max(float(largest_variant_mm), 0.0)}):
            geom = build_implant(axis_points, proximal, distal, params, extra_length_mm=extra)
            plates = {"proximal": to_manifold(geom.proximal_footplate), "distal": to_manifold(geom.distal_footplate)}
            strut = strut_without_footplates(geom, plates, proximal, distal)
            parts = {f"{end} footplate": distance_function(from_manifold(m)) for end, m in plates.items()}
            if not strut.is_empty():
                parts["strut"] = distance_function(from_manifold(strut))
            self._sizes.append((np.asarray(geom.distal_shift, dtype=float), parts))

    def margin(self, end: str, entry, direction, radius: float) -> tuple:
        """(margin mm, the implant part nearest the line: 'strut' or '<other end> footplate')."""
        d = np.asarray(direction, dtype=float)
        d = d / np.linalg.norm(d)
        s = np.arange(0.0, DRIVER_REACH_MM + 1e-9, SAMPLE_MM)
        worst, part = np.inf, ""
        for shift, parts in self._sizes:
            p = np.asarray(entry, dtype=float) + (shift if end == "distal" else 0.0)
            pts = p[None, :] - s[:, None] * d[None, :]
            for name, dist in parts.items():
                if name == f"{end} footplate":
                    continue  # its own footplate: the line leaves its free face (the hole is cut there)
                # Unsigned: VTK's sign is unreliable near a thin part's edges, and the line starts outside
                # both parts, so it cannot get inside one without passing its surface.
                m = float(np.abs(dist(pts)).min()) - float(radius) - SAMPLE_MM / 2
                if m < worst:
                    worst, part = m, name
        return worst, part


def strut_without_footplates(geom, plates: dict, proximal: Endplate, distal: Endplate):
    """The implant less its footplates, without the sheets that subtraction leaves. The footplates, taken from the
    implant's mesh and subtracted again, do not quite coincide with it: sheets without volume stayed on their free
    faces and rims, and a drill line starting on the free face measured 0.25 mm to the "strut" there. On the CT
    angiogram's T7 -> T10 no screw had access (0.7 mm short at best) until they were removed; the strut itself was
    4.5 mm from that line. Each footplate is removed together with a copy lifted SHEET_MM into the gap and a copy
    grown by GROW_FRACTION about its centre (its rims and the tongue to the strut; the footplate is star-shaped
    about its centre), and what is left without volume is dropped."""
    strut = to_manifold(geom.mesh)
    for end, plate in (("proximal", proximal), ("distal", distal)):
        m = plates[end]
        c = np.asarray(from_manifold(m).vertices, float).mean(axis=0)
        grown = m.translate([float(x) for x in -c]).scale([1.0 + GROW_FRACTION] * 3).translate([float(x) for x in c])
        strut = strut - (m + m.translate([float(x) for x in SHEET_MM * plate.normal]) + grown)
    return type(strut).compose([p for p in strut.decompose() if p.volume() >= MIN_PART_MM3])


def drill_access(axis_points, proximal: Endplate, distal: Endplate, params: ImplantParameters,
                 largest_variant_mm: float = 0.0) -> Optional[DrillAccess]:
    """A DrillAccess for the implant ``params`` describes, or None when that implant cannot be built (the design
    step then refuses with the implant's own message)."""
    try:
        return DrillAccess(axis_points, proximal, distal, params, largest_variant_mm)
    except PlannerError:
        return None
