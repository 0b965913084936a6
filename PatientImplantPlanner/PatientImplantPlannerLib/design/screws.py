"""Screw planning: default trajectories through the footplates, screw length and bone quality along each
trajectory from the CT, screw holes for the implant, and editable markups lines in the scene.

A trajectory starts on the footplate's free face (where the screw head seats) and runs through the footplate into
the vertebral body. Along it we find where the ray enters the filled bone mask and where it first leaves again
(the far cortex); the screw stops a safety margin before that and is rounded down to a catalogue length. The CT
values along the screw grade the bone it holds in. Everything is RAS, mm; numpy volumes are [k, j, i].
"""

from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy as np

from ..core.anatomy import Endplate, unit
from ..core.errors import PlanError
from ..core.mesh import TriMesh, require_manifold3d, to_manifold
from .access import (
    DRIVER_REACH_MM,
    MAX_CONVERGENCE_DEG,
    MAX_OUTWARD_MM,
    MAX_SKEW_DEG,
    SCREW_DEPTH_FACTOR,
    SCREW_GAP_MM,
    access_radius_mm,
    segment_distance,
    tilt_candidates,
)
from .implant import HoleSpec
from .screwtrace import _crossings, _perpendiculars, _Volume

ENDS = ("proximal", "distal")
DEFAULT_TARGET_MM = 30.0  # the markups line's second point: far enough to show the direction clearly
RIM_LINES = 8  # lines on the screw's outer thread diameter checked for breaches besides the axis
HU_BANDS = ("lt130", "130to250", "gt250")
LOW_DENSITY_HU, HIGH_DENSITY_HU = 130.0, 250.0
HOLE_WALL_MM = 1.0  # titanium left between a hole and the footplate's rim (printable, does not tear out)
HEAD_STRUT_GAP_MM = 0.5  # the screw head must seat flat beside the strut, not touch it
HEAD_HEIGHT_MM = 4.0  # above this the driver's shaft, not the head, must clear the strut
MAX_PER_END = 4


# ---- catalogue and parameters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScrewType:
    name: str
    diameter_mm: float  # outer thread diameter
    drill_mm: float
    min_length_mm: float
    max_length_mm: float
    step_mm: float  # lengths available: min, min + step, ... max
    head_diameter_mm: float = 0.0  # 0: taken as 1.75 x the thread diameter

    @property
    def head_mm(self) -> float:
        return self.head_diameter_mm if self.head_diameter_mm > 0 else 1.75 * self.diameter_mm

    def lengths(self) -> np.ndarray:
        n = int(np.floor((self.max_length_mm - self.min_length_mm) / self.step_mm + 1e-9))
        return self.min_length_mm + self.step_mm * np.arange(n + 1)

    def as_dict(self) -> dict:
        return asdict(self)


# Standard AO small-fragment 3.5 mm cancellous screw (6.0 mm head, 2.5 mm drill) and 6.5 mm fully threaded
# cancellous screw (8.0 mm head, 3.2 mm drill), lengths as commonly stocked. Editable: plans refer to keys.
SCREW_CATALOGUE = {
    "3.5 cancellous": ScrewType("3.5 mm cancellous (small fragment)", 3.5, 2.5, 10, 60, 2, 6.0),
    "6.5 cancellous": ScrewType("6.5 mm fully threaded cancellous", 6.5, 3.2, 20, 110, 5, 8.0),
}


def screw_type(key) -> ScrewType:
    """The catalogue entry for a key (a ScrewType passes through); PlanError listing the catalogue otherwise."""
    if isinstance(key, ScrewType):
        return key
    if isinstance(key, str) and key in SCREW_CATALOGUE:
        return SCREW_CATALOGUE[key]
    listing = "; ".join(f"{k!r} ({t.name})" for k, t in SCREW_CATALOGUE.items())
    raise PlanError(f"Unknown screw type {key!r}.", f"Choose one of the catalogue: {listing}.")


@dataclass
class ScrewParameters:
    """How screws are chosen and placed. Defaults follow the reference case (two 3.5 mm screws per end)."""

    screw_type: str = "3.5 cancellous"
    per_end: int = 2  # screws through each footplate (1-4)
    hole_clearance_mm: float = 0.25  # hole diameter = screw diameter + this
    safety_margin_mm: float = 2.0  # the tip stops this far before the far cortex
    # Tilt of each screw towards the vertebral body's centre line; the layout raises it (up to 30 degrees, and may
    # skew it) where the drill and driver line would otherwise run into the implant (design/access.py).
    convergence_deg: float = 10.0
    lateral_fraction: float = 0.45  # screw offset from the strut, as a fraction of the footplate's lateral semi-axis

    def validate(self) -> None:
        def bad(name, value, rule):
            raise PlanError(f"Screw parameter {name} = {value!r} is invalid.", f"Set {name} {rule}.")

        screw_type(self.screw_type)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name != "screw_type" and not (
                isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v)
            ):
                bad(f.name, v, "to a finite number")
        if int(self.per_end) != self.per_end or not 1 <= self.per_end <= MAX_PER_END:
            bad("per_end", self.per_end, f"to a whole number from 1 to {MAX_PER_END}")
        if not 0.0 <= self.hole_clearance_mm <= 2.0:
            bad("hole_clearance_mm", self.hole_clearance_mm, "between 0 and 2 mm")
        if not 0.0 <= self.safety_margin_mm <= 15.0:
            bad("safety_margin_mm", self.safety_margin_mm, "between 0 and 15 mm")
        if not -15.0 <= self.convergence_deg <= 30.0:
            bad("convergence_deg", self.convergence_deg, "between -15 (diverging) and 30 degrees")
        if not 0.0 <= self.lateral_fraction <= 0.95:
            bad("lateral_fraction", self.lateral_fraction, "between 0 and 0.95")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScrewParameters":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise PlanError(f"Unknown screw parameter(s): {', '.join(unknown)}.", f"Use only: {', '.join(known)}.")
        return cls(**d)


# ---- trajectories and plans --------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    name: str  # e.g. "proximal left"
    end: str  # "proximal" | "distal"
    entry: np.ndarray  # RAS, on the footplate's free (non-bone) face: where the screw head seats
    target: np.ndarray  # RAS, further along the trajectory (the markups line's second point)
    notes: list = field(default_factory=list)  # placement remarks, passed on to the plan's warnings
    # How the default layout tilted it: {"convergence_deg", "skew_deg", "outward_mm"} (empty for a user's line).
    layout: dict = field(default_factory=dict)

    def __post_init__(self):
        self.entry = np.asarray(self.entry, dtype=float).reshape(3)
        self.target = np.asarray(self.target, dtype=float).reshape(3)

    @property
    def direction(self) -> np.ndarray:
        d = self.target - self.entry
        n = float(np.linalg.norm(d))
        if not np.isfinite(n) or n < 1e-6:
            raise PlanError(
                f"Screw '{self.name}' has zero length: its entry and target are the same point.",
                "Drag the line's second point along the intended screw direction.",
            )
        return d / n

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "end": self.end,
            "entry": [float(x) for x in self.entry],
            "target": [float(x) for x in self.target],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        return cls(d["name"], d["end"], d["entry"], d["target"])


@dataclass
class ScrewPlan:
    trajectory: Trajectory
    screw_type: ScrewType
    bone_entry_mm: float  # entry -> where the ray enters bone
    far_cortex_mm: float  # entry -> where the ray first leaves bone after entering (pessimistic by half a voxel)
    raw_length_mm: float  # far_cortex_mm - safety margin
    length_mm: float  # raw rounded down to the catalogue, clamped to its range
    grade: dict  # share of the in-bone screw length per HU band
    breach: bool
    breach_at_mm: Optional[float]
    warnings: list
    hole_diameter_mm: float
    mean_hu: float = float("nan")  # mean CT value over the in-bone screw length
    voxel_uncertainty_mm: float = 0.0  # half a voxel along the ray, already taken off far_cortex_mm
    # Longest catalogue screw that is no breach by the same test: the tip the margin short of the far cortex, the
    # thread's rim inside bone to the tip (it once took the margin off the rim too and read shorter than screws the
    # test passed: 10 mm beside a chosen 14 mm).
    safe_length_mm: Optional[float] = None

    @property
    def tip(self) -> np.ndarray:
        return self.trajectory.entry + self.length_mm * self.trajectory.direction

    def as_dict(self) -> dict:
        return {
            "trajectory": self.trajectory.as_dict(),
            "direction": [float(x) for x in self.trajectory.direction],
            "screw_type": self.screw_type.as_dict(),
            "bone_entry_mm": float(self.bone_entry_mm),
            "far_cortex_mm": float(self.far_cortex_mm),
            "raw_length_mm": float(self.raw_length_mm),
            "length_mm": float(self.length_mm),
            "tip": [float(x) for x in self.tip],
            "grade": {k: float(v) for k, v in self.grade.items()},
            "mean_hu": float(self.mean_hu) if np.isfinite(self.mean_hu) else None,
            "breach": bool(self.breach),
            "breach_at_mm": None if self.breach_at_mm is None else float(self.breach_at_mm),
            "warnings": list(self.warnings),
            "hole_diameter_mm": float(self.hole_diameter_mm),
            "voxel_uncertainty_mm": float(self.voxel_uncertainty_mm),
            "safe_length_mm": self.safe_length_mm,
            "layout": dict(self.trajectory.layout),
        }


# ---- default trajectories ----------------------------------------------------------------------------------------


def _side_name(offset: np.ndarray, plate: Endplate) -> str:
    """'left'/'right' from the RAS x of the offset (+x is the patient's right), 'anterior'/'posterior' added for
    screws off the left-right line."""
    parts = []
    a = float(offset @ plate.anterior)
    if abs(offset[0]) > 1e-6 * max(1.0, np.linalg.norm(offset)):
        parts.append("right" if offset[0] > 0 else "left")
    if abs(a) > 1e-6 and (not parts or abs(a) > 0.25 * np.linalg.norm(offset)):
        parts.append("anterior" if a > 0 else "posterior")
    return " ".join(parts) or "centre"


def _layout(per_end: int, fl: float, fa: float, lateral_fraction: float) -> list:
    """Initial in-plane offsets (anterior, lateral) from the strut centre, before pushing clear of the strut.

    Two screws sit left and right of the strut (the footplate is widest there); a third goes anterior on the
    midline (posterior is the spinal canal side); four sit at the corners of a rectangle.
    """
    lat = lateral_fraction * fl
    ap = lateral_fraction * fa
    if per_end == 1:
        return [(ap, 0.0)]
    if per_end == 2:
        return [(0.0, lat), (0.0, -lat)]
    if per_end == 3:
        return [(0.0, lat), (0.0, -lat), (ap, 0.0)]
    return [(ap, lat), (ap, -lat), (-ap, lat), (-ap, -lat)]


def _hole_fits_footplate(a: float, lat: float, u: np.ndarray, conv: float, hole_r: float, t: float, fa: float,
                         fl: float) -> bool:
    """The hole (both its openings, tilted by ``conv`` towards -u) stays HOLE_WALL_MM inside the footplate ellipse."""
    ra, rl = fa - HOLE_WALL_MM, fl - HOLE_WALL_MM
    if ra <= 0 or rl <= 0:
        return False
    ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    v = np.array([-u[1], u[0]])
    for shift in (0.0, t * np.tan(conv)):  # free face, contact face
        c = np.array([a, lat]) - shift * u
        # The tilted hole cuts the face in an ellipse stretched along u by 1 / cos(conv).
        pts = c + hole_r / np.cos(conv) * np.cos(ang)[:, None] * u + hole_r * np.sin(ang)[:, None] * v
        if np.any((pts[:, 0] / ra) ** 2 + (pts[:, 1] / rl) ** 2 > 1.0):
            return False
    return True


def _clear_of_strut(offset2: np.ndarray, u: np.ndarray, conv: float, head_clearance: float,
                    shaft_clearance: float) -> bool:
    """The head (at the entry) clears the strut by ``head_clearance`` from its axis, and the driver's line back
    along the screw axis (DRIVER_REACH_MM of it, starting above the head) by ``shaft_clearance``."""
    if np.linalg.norm(offset2) < head_clearance:
        return False
    s = np.linspace(HEAD_HEIGHT_MM, DRIVER_REACH_MM, 36)
    # Going back along the screw, the in-plane position moves by sin(conv) per mm away from the centre (-u tilt).
    pts = offset2[None, :] + (s * np.sin(conv))[:, None] * u[None, :]
    return bool(np.linalg.norm(pts, axis=1).min() >= shaft_clearance)


def _rotate2(v, angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def default_trajectories(
    proximal: Endplate,
    distal: Endplate,
    footplate_thickness_mm: float,
    params: ScrewParameters,
    footplate_fraction: float = 0.7,
    footplate_lateral_fraction: float = 0.0,
    strut_offset_anterior_mm: float = 0.0,
    strut_radius_mm: float = 6.0,
    strut_offset_lateral_mm: float = 0.0,
    footplate_offset_anterior_mm: float = 0.0,
    pattern_offset_anterior_mm: Optional[float] = None,
    footplate_offset_lateral_mm: float = 0.0,
    pattern_offset_lateral_mm: float = 0.0,
    pattern_angle_deg: float = 0.0,
    access=None,
    strut_offset_scale: tuple = (1.0, 1.0),
) -> list:
    """``per_end`` screws per footplate, proximal first, placed around the strut and aimed into each vertebral body.

    Offsets are measured from the endplate centre in the implant's path frame (anterior; lateral = caudal tangent x
    anterior, which is the proximal endplate's lateral and the distal endplate's opposite);
    ``footplate_offset_*`` move the footplate (a plate lying on the anterior or lateral bodies). A strut standing
    in the outer half of the footplate (or beside it) does not centre the pattern: the screws then centre on the
    footplate, behind the strut, where the body is. ``pattern_offset_*`` put the pattern's centre at that offset
    from the endplate centre, and ``pattern_angle_deg`` turns the pattern with a strut placed around the body.

    Placement: symmetric either side of the strut centre at ``lateral_fraction`` x the footplate's semi-axis,
    pushed away from the strut until the screw head clears it (radius ``strut_radius_mm``, the strut profile's
    bounding radius) and the driver's line clears it too. The hole must keep a HOLE_WALL_MM wall to the footplate
    rim. Where ``per_end`` screws do not fit, fewer are placed (down to one, which may sit at the pattern's centre)
    and a note says so; PlanError only when not even one screw fits. A third screw goes on the pattern's midline
    towards the strut, four sit at the corners of a rectangle.

    Direction: into the body (-normal) tilted by ``convergence_deg`` towards the body's centre line. Why 10
    degrees converging by default: converging (toe-in) screws triangulate, which resists pull-out better than
    parallel screws; their tips move towards the middle of the body, away from the lateral cortex and the
    segmental vessels on it; the driver's line, traced back from the head, diverges from the strut so the
    screwdriver clears it; and a small angle keeps the screw nearly perpendicular to the endplate and the hole's
    two openings within 0.5 mm of each other in a 3 mm footplate.

    Access (``access``, an access.DrillAccess of the implant): the drill and the driver come in along the screw
    axis from outside, so that line (DRIVER_REACH_MM, as wide as the drill or driver plus a gap) must clear the
    strut and the other footplate (short gaps), and the screws of an end must not cross in the body (checked to
    SCREW_DEPTH_FACTOR x the endplate's radius). The layout then takes, nearest the user's tilt first, a
    convergence up to MAX_CONVERGENCE_DEG and a sideways skew of the tilt up to MAX_SKEW_DEG (screws pass beside
    each other), the most room among equally near choices; places fewer screws when no tilt clears; and refuses
    (naming the part in the way) when not even one screw has access. Without ``access`` the tilt is the user's and
    only the strut is checked (in 2-D).
    """
    params.validate()
    st = screw_type(params.screw_type)
    t = float(footplate_thickness_mm)
    if not np.isfinite(t) or not 0.5 <= t <= 20.0:
        raise PlanError(f"Footplate thickness {footplate_thickness_mm!r} mm is invalid.", "Use 0.5-20 mm.")
    if not 0.0 < footplate_fraction <= 1.0:
        raise PlanError(f"footplate_fraction {footplate_fraction!r} is invalid.", "Use a value in (0, 1].")
    if not np.isfinite(strut_radius_mm) or strut_radius_mm < 0:
        raise PlanError(f"Strut radius {strut_radius_mm!r} mm is invalid.", "Use the strut profile's bounding radius.")
    conv0 = np.radians(params.convergence_deg)
    turn = np.radians(pattern_angle_deg)
    hole_r = (st.diameter_mm + params.hole_clearance_mm) / 2
    head_clearance = strut_radius_mm + st.head_mm / 2 + HEAD_STRUT_GAP_MM
    shaft_clearance = strut_radius_mm + st.diameter_mm / 2 + HEAD_STRUT_GAP_MM  # a driver is about as wide
    reach_r = access_radius_mm(st)
    out = []
    for end, plate, lat_sign in (("proximal", proximal, 1.0), ("distal", distal, -1.0)):
        fa = footplate_fraction * plate.radius_ap
        fl = (footplate_lateral_fraction or footplate_fraction) * plate.radius_lr
        fp_centre = (plate.centre + footplate_offset_anterior_mm * plate.anterior
                     + footplate_offset_lateral_mm * lat_sign * plate.lateral)
        # Positions below are in the endplate's (anterior, lateral) plane, relative to the footplate centre.
        fp = np.array([footplate_offset_anterior_mm, lat_sign * footplate_offset_lateral_mm])
        k = strut_offset_scale[0 if end == "proximal" else 1]  # the strut may stand off each end differently
        strut = k * np.array([strut_offset_anterior_mm, lat_sign * strut_offset_lateral_mm]) - fp
        # Screws sit around the strut where it stands in the middle of the footplate; a strut near or beyond its
        # rim (placement on the bodies) leaves the footplate centre for them.
        centre = strut if (strut[0] / fa) ** 2 + (strut[1] / fl) ** 2 < 0.25 else np.zeros(2)
        if pattern_offset_anterior_mm is not None:
            centre = np.array([pattern_offset_anterior_mm, lat_sign * pattern_offset_lateral_mm]) - fp
        depth = SCREW_DEPTH_FACTOR * max(plate.radius_ap, plate.radius_lr)
        blocked = []  # (margin, part) of layouts whose drill line runs into the implant

        def ray(pos, u, conv, plate=plate, fp_centre=fp_centre):
            """(entry on the free face, unit direction into the body) of a screw at ``pos`` tilted ``conv`` to -u."""
            u3 = u[0] * plate.anterior + u[1] * plate.lateral
            direction = unit(np.cos(conv) * -plate.normal - np.sin(conv) * u3)
            return fp_centre + pos[0] * plate.anterior + pos[1] * plate.lateral + t * plate.normal, direction

        def place(layout, conv=conv0, skew=0.0, outward=0.0, centre=centre, strut=strut, lat_sign=lat_sign, fa=fa,
                  fl=fl):
            placed = []
            for a0, l0 in layout:
                off = _rotate2(np.array([a0, l0]), turn)
                pos = centre + np.array([off[0], lat_sign * off[1]])
                away = centre - strut if np.linalg.norm(centre - strut) > 1e-9 else np.array([-1.0, 0.0])
                tilt = _rotate2(unit(pos - centre) if np.linalg.norm(pos - centre) > 1e-9 else unit(away), skew)
                push = unit(pos - strut) if np.linalg.norm(pos - strut) > 1e-9 else tilt
                while not _clear_of_strut(pos - strut, tilt, conv, head_clearance, shaft_clearance):
                    pos = pos + 0.25 * push
                    if np.linalg.norm(pos - centre) > 2 * max(fa, fl):
                        break
                if outward and np.linalg.norm(pos - centre) > 1e-9:
                    pos = pos + outward * unit(pos - centre)
                    if not _clear_of_strut(pos - strut, tilt, conv, head_clearance, shaft_clearance):
                        return None
                if not _hole_fits_footplate(pos[0], pos[1], tilt, conv, hole_r, t, fa, fl):
                    return None
                placed.append((pos, tilt, conv, skew, outward))
            heads = [p for p, *_ in placed]
            for i in range(len(heads)):
                for j in range(i + 1, len(heads)):
                    if np.linalg.norm(heads[i] - heads[j]) < st.head_mm + HEAD_STRUT_GAP_MM:
                        return None
            return placed

        def room(placed, end=end, depth=depth, blocked=blocked):
            """The drill line's smallest margin over the layout, or None: screws crossing, or a line blocked."""
            rays = [ray(p, u, c) for p, u, c, *_ in placed]
            length = t / np.cos(max(abs(c) for _, _, c, *_ in placed)) + depth
            for i in range(len(rays)):
                for j in range(i + 1, len(rays)):
                    if segment_distance(*rays[i], length, *rays[j], length) < st.diameter_mm + SCREW_GAP_MM:
                        return None
            worst = min((access.margin(end, e, d, reach_r) for e, d in rays), key=lambda m: m[0])
            if worst[0] < 0:
                blocked.append(worst)
                return None
            return worst[0]

        def search(layout):
            if access is None:
                return place(layout)
            for group in tilt_candidates(params.convergence_deg):
                found = [(m, placed) for placed in (place(layout, np.radians(c), np.radians(k), o) for c, k, o in group)
                         if placed is not None for m in [room(placed)] if m is not None]
                if found:
                    return max(found, key=lambda f: f[0])[1]
            return None

        placed = None
        for n in range(int(params.per_end), 0, -1):
            blocked.clear()
            placed = search(_layout(n, fl, fa, params.lateral_fraction))
            if placed is None and n == 1:
                # One screw beside a wide strut: where the two-screw layout puts them (the footplate is widest
                # there), the side with more room; else in the pattern's centre.
                lat = params.lateral_fraction * fl
                sides = [p for p in (search([(0.0, lat)]), search([(0.0, -lat)])) if p is not None]
                placed = max(sides, key=lambda p: float(np.linalg.norm(p[0][0] - strut))) if sides \
                    else search([(0.0, 0.0)])
            if placed is not None:
                break
        if placed is None and blocked:
            margin, part = max(blocked)
            gap = float(np.linalg.norm(proximal.centre - distal.centre)) - 2 * t
            raise PlanError(
                f"No drill or driver access to any {st.name} screw on the {end} footplate: at every tilt the planner "
                f"may choose (convergence {params.convergence_deg:g} to {MAX_CONVERGENCE_DEG:g} deg, skewed up to "
                f"{MAX_SKEW_DEG:g} deg, up to {MAX_OUTWARD_MM:g} mm nearer the rim) the line the drill and the "
                f"screwdriver come in along ({DRIVER_REACH_MM:g} mm outward from the screw head, {2 * reach_r:.1f} mm "
                f"wide) runs into the implant's {part} (by {-margin:.1f} mm at best; the footplates are about "
                f"{gap:.0f} mm apart).",
                "Place the screws by hand (edit the screw lines: the plan's trajectories) so the drill comes in past "
                "the implant, "
                # What helps depends on the part in the way: a footplate shrunk by the placement for the keep-out
                # clearance does not grow back, so beside a strut only a slimmer strut makes room.
                + ("use a slimmer strut (implant.diameter_mm / width_mm), raise screws.lateral_fraction (screws "
                   "nearer the footplate's rim)" if part == "strut" else
                   "lower implant.footplate_fraction (a smaller footplate opposite), raise screws.lateral_fraction "
                   "(screws nearer the footplate's rim)")
                + ", or dock one level further (proximal_level / distal_level) for a longer gap.",
            )
        if placed is None:
            raise PlanError(
                f"No room for even one {st.name} screw on the {end} footplate (semi-axes A-P {fa:.1f} x L-R "
                f"{fl:.1f} mm): clear of a {strut_radius_mm:.1f} mm-radius strut the hole would come within "
                f"{HOLE_WALL_MM:.0f} mm of the footplate's rim.",
                # Only fixes that are left: a footplate already covering the endplate cannot grow.
                ("Raise implant.footplate_fraction (up to 1.0), use" if footplate_fraction < 1.0 else "Use")
                + " a slimmer strut (implant.width_mm / diameter_mm)"
                + (", choose screws.screw_type '3.5 cancellous'" if st.diameter_mm > 3.5 else "")
                + ", or place the screws by hand (edit the screw lines: the plan's trajectories).",
            )
        notes = []
        if len(placed) < params.per_end:
            notes.append(f"only {len(placed)} of {params.per_end} screws fit on the {end} footplate "
                         f"(semi-axes A-P {fa:.1f} x L-R {fl:.1f} mm) clear of the strut"
                         + (" with drill and driver access" if access is not None else ""))
        names = []
        for pos, u, conv, skew, outward in placed:
            entry, direction = ray(pos, u, conv)
            offset = pos[0] * plate.anterior + pos[1] * plate.lateral
            name = f"{end} {_side_name(offset - centre[0] * plate.anterior - centre[1] * plate.lateral, plate)}"
            if name in names:
                name = f"{name} {len(names) + 1}"
            names.append(name)
            layout = {"convergence_deg": round(float(np.degrees(conv)), 2),
                      "skew_deg": round(float(np.degrees(skew)), 2), "outward_mm": float(outward)}
            out.append(Trajectory(name, end, entry, entry + DEFAULT_TARGET_MM * direction, notes=list(notes),
                                  layout=layout))
    return out


# ---- sampling the volume along a ray -----------------------------------------------------------------------------


def _round_length(raw: float, st: ScrewType) -> tuple:
    """(catalogue length, clamped?) rounding ``raw`` down to the catalogue steps."""
    lengths = st.lengths()
    ok = lengths[lengths <= raw + 1e-9]
    if len(ok) == 0:
        return float(lengths[0]), True
    return float(ok[-1]), bool(raw >= lengths[-1] + st.step_mm)


# ---- planning ------------------------------------------------------------------------------------------------------


def plan_screw(trajectory: Trajectory, ct_array, bone_mask, ijk_to_ras, screw_type_or_key, params: ScrewParameters,
               _volume: Optional[_Volume] = None) -> ScrewPlan:
    """Length, bone grade and breach check of one screw along ``trajectory`` (see the module docstring).

    ``bone_mask`` is the filled bone segmentation (cortex + cancellous) on the CT's grid, so the far cortex is
    where the mask ends. The far cortex is taken at the mask's half level minus half a voxel along the ray: the
    mask boundary is uncertain by that much, and the screw must not come out longer than the bone allows.
    The breach check follows the axis and RIM_LINES lines on the thread's outer diameter.
    """
    st = screw_type(screw_type_or_key)
    params.validate()
    vol = _volume if _volume is not None else _Volume(ct_array, bone_mask, ijk_to_ras)
    name = trajectory.name
    if trajectory.end not in ENDS:
        raise PlanError(f"Screw '{name}' has end {trajectory.end!r}.", "Set it to 'proximal' or 'distal'.")
    if not (np.all(np.isfinite(trajectory.entry)) and np.all(np.isfinite(trajectory.target))):
        raise PlanError(f"Screw '{name}' has a non-finite entry or target point.", "Place both points in the scene.")
    d = trajectory.direction  # raises for zero length
    p = trajectory.entry
    if not vol.contains(p):
        raise PlanError(
            f"Screw '{name}' starts at {np.round(p, 1).tolist()} (RAS), outside the CT volume.",
            "Move the line's first point onto the footplate, inside the scanned region.",
        )
    s_max = vol.exit_distance(p, d)
    bone_entry, exit_ = _crossings(vol, p, d, s_max)
    if bone_entry is None:
        raise PlanError(
            f"Screw '{name}' never enters bone within the CT ({s_max:.0f} mm along its line).",
            "Aim the line's second point into the vertebral body (check the bone segmentation covers it).",
        )
    warnings = list(trajectory.notes)
    if bone_entry >= st.max_length_mm:
        raise PlanError(
            f"Screw '{name}' reaches bone only {bone_entry:.1f} mm from its entry, beyond the longest "
            f"{st.name} ({st.max_length_mm:g} mm).",
            "Move the entry onto the footplate over the vertebra, or aim the line into the vertebral body.",
        )
    uncertainty = vol.half_voxel_along(d)
    if exit_ is None:
        warnings.append(f"the bone continues to the edge of the CT ({s_max:.1f} mm); the far cortex is not imaged")
        exit_ = s_max
    far = max(exit_ - uncertainty, bone_entry)
    margin = float(params.safety_margin_mm)
    raw = far - margin
    length, clamped = _round_length(raw, st)
    if raw < st.min_length_mm:
        warnings.append(
            f"the bone allows only {raw:.1f} mm (far cortex at {far:.1f} mm less the {margin:g} mm margin), less "
            f"than the shortest screw ({st.min_length_mm:g} mm): re-aim the screw through more bone"
        )
    elif clamped:
        warnings.append(f"the bone allows {raw:.1f} mm; clamped to the longest screw ({st.max_length_mm:g} mm)")

    # Breach: the screw body (axis and outer thread) must stay in bone from where it enters to its tip, and the
    # tip must stay the margin short of the far cortex. The same lines give the longest screw that does, and the
    # screw is that long: sized on its axis alone, a screw whose thread grazes a wall near its tip came out 0.2 mm
    # too long and was refused at export, with "use an 18 mm screw" as the fix, which no setting gives (5 mm chest CT).
    a, b = _perpendiculars(d)
    r = st.diameter_mm / 2
    rims, body_limit = [], far
    for ang in np.linspace(0, 2 * np.pi, RIM_LINES, endpoint=False):
        q = p + r * (np.cos(ang) * a + np.sin(ang) * b)
        if not vol.contains(q):
            body_limit = -np.inf
            continue
        e_k, x_k = _crossings(vol, q, d, min(vol.exit_distance(q, d), exit_ + 10.0))
        rims.append((e_k, x_k))
        if e_k is None:
            body_limit = -np.inf
        elif x_k is not None:
            body_limit = min(body_limit, x_k + margin)  # the rim may reach its exit, as the breach test allows
    safe, _ = _round_length(body_limit - margin, st)
    safe_length = float(safe) if body_limit - margin >= st.min_length_mm else None
    if safe_length is not None and safe_length < length:
        exits = [x for e, x in rims if e is not None and x is not None and x < length]
        warnings.append(f"shortened from {length:g} to {safe_length:g} mm: its thread would leave the bone "
                        f"{min(exits, default=far):.1f} mm from its entry (aim it more centrally for a longer screw)")
        length = safe_length
    breach_at = [exit_] if length > exit_ else []
    for e_k, x_k in rims:
        if e_k is None or e_k >= length:
            breach_at.append(bone_entry)  # this side of the screw never reaches bone before the tip
        elif x_k is not None and x_k < length:
            breach_at.append(x_k)
    breach = bool(breach_at) or bool(far - length < margin - 1e-9)
    breach_at_mm = float(min(breach_at)) if breach_at else (float(far) if breach else None)
    if breach_at:
        warnings.append(
            f"the screw leaves the bone {breach_at_mm:.1f} mm from its entry, before its tip at {length:g} mm "
            "(cortical breach): no catalogue screw stays in the bone, re-aim it"
        )

    # Bone quality along the in-bone part of the screw.
    grade = {k: 0.0 for k in HU_BANDS}
    mean_hu = float("nan")
    inbone = length - bone_entry
    if inbone > 0:
        n = max(int(np.ceil(inbone / vol.step)), 1)
        s = bone_entry + (np.arange(n) + 0.5) * (inbone / n)  # midpoints: every sample weighs the same length
        hu = vol.hu(p + s[:, None] * d)
        grade = {
            "lt130": float(np.mean(hu < LOW_DENSITY_HU)),
            "130to250": float(np.mean((hu >= LOW_DENSITY_HU) & (hu <= HIGH_DENSITY_HU))),
            "gt250": float(np.mean(hu > HIGH_DENSITY_HU)),
        }
        mean_hu = float(hu.mean())
        if grade["lt130"] > 0.5:
            warnings.append(
                f"{100 * grade['lt130']:.0f} % of the screw is in bone below {LOW_DENSITY_HU:g} HU "
                "(osteoporotic range): expect weak purchase"
            )
    return ScrewPlan(
        trajectory=trajectory,
        screw_type=st,
        bone_entry_mm=float(bone_entry),
        far_cortex_mm=float(far),
        raw_length_mm=float(raw),
        length_mm=float(length),
        grade=grade,
        breach=breach,
        breach_at_mm=breach_at_mm,
        warnings=warnings,
        hole_diameter_mm=float(st.diameter_mm + params.hole_clearance_mm),
        mean_hu=mean_hu,
        voxel_uncertainty_mm=float(uncertainty),
        safe_length_mm=safe_length,
    )


def plan_screws(trajectories, ct_array, bone_mask, ijk_to_ras, params: ScrewParameters,
                docking_masks: Optional[dict] = None) -> list:
    """plan_screw for each trajectory with the parameters' screw type (each volume is checked once).

    ``docking_masks`` {end: bool array on the CT grid} limits each end's screws to its docking vertebra (its label,
    or its body isolated from the bone): the far cortex is then where the screw would leave that vertebra
    (its far endplate, its walls), never the disc and the next vertebra beyond."""
    params.validate()
    st = screw_type(params.screw_type)
    volumes = {}
    out = []
    for t in trajectories:
        mask = (docking_masks or {}).get(t.end, bone_mask)
        key = id(mask)
        if key not in volumes:
            volumes[key] = _Volume(ct_array, mask, ijk_to_ras)
        out.append(plan_screw(t, ct_array, mask, ijk_to_ras, st, params, _volume=volumes[key]))
    return out


def hole_specs(plans) -> list:
    """One implant.HoleSpec per planned screw: from its entry along it, the hole's diameter, the screw's length
    + 5 mm so the hole always opens through the footplate."""
    return [
        HoleSpec(p.trajectory.end, p.trajectory.entry.copy(), p.trajectory.direction, p.hole_diameter_mm,
                 p.length_mm + 5.0)
        for p in plans
    ]


def screw_misses_implant(trajectory: Trajectory, implant_mesh_or_footplate, hole_diameter: float,
                         length_mm: Optional[float] = None) -> bool:
    """True when a hole of ``hole_diameter`` along the trajectory would cut (almost) nothing from the implant: less
    than a 0.5 mm long plug of the hole's cross-section. Accepts a TriMesh or a manifold3d Manifold."""
    m3d = require_manifold3d()
    if not np.isfinite(hole_diameter) or hole_diameter <= 0:
        raise PlanError(f"Hole diameter {hole_diameter!r} mm is invalid.", "Use the screw diameter + clearance.")
    solid = to_manifold(implant_mesh_or_footplate) if isinstance(implant_mesh_or_footplate, TriMesh) \
        else implant_mesh_or_footplate
    d = trajectory.direction
    reach = float(length_mm) if length_mm is not None else float(np.linalg.norm(trajectory.target - trajectory.entry))
    run_in = 5.0  # start outside the free face so a hole whose entry sits just inside it still counts
    a, b = _perpendiculars(d)
    r = hole_diameter / 2
    cylinder = m3d.Manifold.cylinder(max(reach, 1.0) + run_in, r, r, 32).transform(
        np.column_stack([a, b, d, trajectory.entry - run_in * d]))
    cut = (solid ^ cylinder).volume()
    return bool(cut < 0.5 * np.pi * (hole_diameter / 2) ** 2)

