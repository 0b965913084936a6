"""Plain data types for the anatomy a plan is built on: endplates and the spinal axis.

Shared by level detection (which measures them from the bone), implant design (which rests on them) and the
phantom (whose ground truth uses the same types). All coordinates RAS, mm.
"""

from dataclasses import dataclass

import numpy as np
from scipy import interpolate

from .errors import PlanError


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    n = np.linalg.norm(v)
    if n == 0:
        raise ValueError("zero-length vector")
    return v / n


def angle_deg(u, v) -> float:
    """Angle between two unit vectors, in degrees (their dot product clipped against rounding)."""
    return float(np.degrees(np.arccos(np.clip(np.dot(u, v), -1.0, 1.0))))


@dataclass
class Endplate:
    """A vertebral endplate the implant rests on.

    ``normal`` points out of its own vertebral body into the gap to be bridged: for the proximal (upper)
    vertebra's inferior endplate it points caudally, for the distal vertebra's superior endplate cranially.
    ``anterior`` is a unit vector in the endplate plane towards the patient's front.
    """

    centre: np.ndarray
    normal: np.ndarray
    anterior: np.ndarray
    radius_lr: float  # half the left-right extent, mm
    radius_ap: float  # half the antero-posterior extent, mm
    level: str = ""

    def __post_init__(self):
        self.centre = np.asarray(self.centre, dtype=float)
        self.normal = unit(self.normal)
        a = np.asarray(self.anterior, dtype=float)
        self.anterior = unit(a - np.dot(a, self.normal) * self.normal)

    @property
    def lateral(self) -> np.ndarray:
        """Unit in-plane vector completing (anterior, lateral, normal) as a right-handed frame."""
        return np.cross(self.normal, self.anterior)

    def as_dict(self) -> dict:
        return {
            "level": self.level,
            "centre": [float(x) for x in self.centre],
            "normal": [float(x) for x in self.normal],
            "anterior": [float(x) for x in self.anterior],
            "radius_lr": float(self.radius_lr),
            "radius_ap": float(self.radius_ap),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Endplate":
        return cls(d["centre"], d["normal"], d["anterior"], d["radius_lr"], d["radius_ap"], d.get("level", ""))


def polyline_length(points) -> float:
    p = np.asarray(points, dtype=float)
    return float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) if len(p) > 1 else 0.0


def resample_polyline(points, spacing_mm: float) -> np.ndarray:
    """Points spaced ``spacing_mm`` apart along a polyline (first and last point kept)."""
    p = np.asarray(points, dtype=float)
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1] / spacing_mm)), 1) + 1
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, p[:, i]) for i in range(3)], axis=1)


def distance_to_polyline(points, polyline) -> np.ndarray:
    """Shortest distance from each point to a polyline (segments), mm."""
    q = np.atleast_2d(np.asarray(points, dtype=float))
    p = np.asarray(polyline, dtype=float)
    a, b = p[:-1], p[1:]
    ab = b - a
    denom = np.maximum((ab * ab).sum(axis=1), 1e-12)
    t = np.clip(((q[:, None, :] - a[None]) * ab[None]).sum(axis=2) / denom[None], 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(q[:, None, :] - closest, axis=2).min(axis=1)


def smooth_axis(control_points, spacing_mm: float = 1.0, start_direction=None, end_direction=None) -> np.ndarray:
    """Dense smooth curve through the control points (cubic spline in chord length), <= ``spacing_mm`` apart.

    With ``start_direction``/``end_direction`` (unit tangents at the first/last point, pointing along the
    curve) the spline is clamped to them, so two control points already give a curve that follows the spine's
    curvature; without them the ends are natural (and two points give a straight line).
    """
    p = np.asarray(control_points, dtype=float).reshape(-1, 3) if np.size(control_points) else np.zeros((0, 3))
    if len(p) >= 2:
        keep = np.concatenate([[True], np.linalg.norm(np.diff(p, axis=0), axis=1) > 1e-6])
        p = p[keep]
    if len(p) < 2:
        raise PlanError("The spinal axis needs at least two distinct points.",
                        "Place points in (at least) the proximal and the distal vertebra.")
    if spacing_mm <= 0:
        raise PlanError("The axis point spacing must be positive.", "Use a spacing such as 1 mm.")
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    if len(p) == 2 and start_direction is None and end_direction is None:
        return resample_polyline(p, spacing_mm)
    start = (1, unit(start_direction)) if start_direction is not None else (2, np.zeros(3))
    end = (1, unit(end_direction)) if end_direction is not None else (2, np.zeros(3))
    spline = interpolate.CubicSpline(s, p, axis=0, bc_type=(start, end))
    fine = spline(np.linspace(0.0, s[-1], max(int(s[-1] / (0.1 * spacing_mm)), 10) + 1))
    out = resample_polyline(fine, spacing_mm * 0.999)
    out[0], out[-1] = p[0], p[-1]
    return out
