"""The plan's geometry as markups nodes and back: the spinal axis as a curve, each endplate as a plane, each screw
as a line. One converter per kind, used by the plan folder, so what is written is exactly what is read back (world
coordinates: a transform the user applies counts).
"""

import json
from typing import Optional

import numpy as np

from ..core.anatomy import Endplate, angle_deg, resample_polyline, smooth_axis
from ..core.errors import PlanError
from ..design.screws import ENDS, Trajectory

LEVEL_ATTRIBUTE = "PatientImplantPlanner.Level"
DESIGNED_ATTRIBUTE = "PatientImplantPlanner.DesignedPose"  # [centre, normal] as the planner placed the plane
RADII_ATTRIBUTE = "PatientImplantPlanner.Radii"  # [lateral, anterior-posterior] radii of the endplate (mm)
END_ATTRIBUTE = "PatientImplantPlanner.End"  # which end of the implant a screw belongs to
SCREW_NAME_ATTRIBUTE = "PatientImplantPlanner.ScrewName"


def _point(node, i: int) -> np.ndarray:
    p = np.zeros(3)
    node.GetNthControlPointPositionWorld(i, p)
    return p


# ---- spinal axis


def set_curve(curve, points) -> None:
    curve.RemoveAllControlPoints()
    for p in np.asarray(points, dtype=float):
        curve.AddControlPointWorld(*map(float, p))


def curve_control_points(curve) -> list:
    """The curve's control points (world RAS); refuses fewer than two."""
    n = 0 if curve is None else curve.GetNumberOfControlPoints()
    if n < 2:
        raise PlanError(f"The spinal axis curve has {n} control point(s); at least two are needed.",
                        "Add control points in the proximal and the distal vertebral bodies.")
    return [_point(curve, i).tolist() for i in range(n)]


def axis_from_curve(curve, spacing_mm: float = 1.0) -> np.ndarray:
    """The axis as the user sees it: the curve node's own interpolated points, resampled to ``spacing_mm``."""
    control = np.array(curve_control_points(curve))
    pts = curve.GetCurvePointsWorld()
    if pts is None or pts.GetNumberOfPoints() < 2:
        return smooth_axis(control, spacing_mm)
    arr = np.array([pts.GetPoint(i) for i in range(pts.GetNumberOfPoints())])
    return resample_polyline(arr, spacing_mm * 0.999)


# ---- endplates


def set_plane(plane, ep: Endplate) -> None:
    """X axis anterior, Y lateral, Z the normal; size = 2 x radii; the level and exact radii kept as attributes."""
    plane.SetPlaneType(plane.PlaneTypePointNormal)
    plane.SetCenterWorld(*map(float, ep.centre))
    plane.SetAxesWorld([float(x) for x in ep.anterior], [float(x) for x in ep.lateral], [float(x) for x in ep.normal])
    plane.SetSizeMode(plane.SizeModeAbsolute)
    plane.SetSize(2.0 * ep.radius_ap, 2.0 * ep.radius_lr)
    plane.SetAttribute(RADII_ATTRIBUTE, json.dumps([float(ep.radius_lr), float(ep.radius_ap)]))
    plane.SetAttribute(LEVEL_ATTRIBUTE, ep.level or "")
    plane.SetAttribute(DESIGNED_ATTRIBUTE, json.dumps([*map(float, ep.centre), *map(float, ep.normal)]))


def plane_moved(plane, tolerance_mm: float = 0.1, tolerance_deg: float = 0.1) -> bool:
    """Whether the user moved or turned an endplate plane since the planner placed it (a plane without the
    planner's pose counts as moved: it was made by hand)."""
    designed = json.loads(plane.GetAttribute(DESIGNED_ATTRIBUTE) or "null")
    if designed is None:
        return True
    now = endplate_from_plane(plane)
    turned = angle_deg(now.normal, designed[3:])
    return bool(np.linalg.norm(now.centre - np.asarray(designed[:3])) > tolerance_mm or turned > tolerance_deg)


def endplate_from_plane(plane) -> Endplate:
    """The endplate a (possibly user-moved) markups plane describes: centre, normal and in-plane axes in world RAS."""
    if plane is None or plane.GetNumberOfControlPoints() < 1:
        raise PlanError("The endplate plane is missing or has no position.",
                        "Design the implant again, or place the endplate plane again.")
    centre, x, y, z = np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3)
    plane.GetCenterWorld(centre)
    plane.GetAxesWorld(x, y, z)
    radii = json.loads(plane.GetAttribute(RADII_ATTRIBUTE) or "null")
    if radii is None:  # a plane made by hand: its size gives the radii
        size = plane.GetSize()
        radii = [size[1] / 2.0, size[0] / 2.0]
    return Endplate(centre, z, x, radii[0], radii[1], plane.GetAttribute(LEVEL_ATTRIBUTE) or "")


# ---- screws


def set_screw_line(line, trajectory: Trajectory, length_mm: Optional[float] = None) -> None:
    """The line runs from the screw's entry along it; given the screw's length it ends at the screw's tip, so the
    line's own length readout in the views is the screw's (a direction-only target point would show 30 mm)."""
    line.RemoveAllControlPoints()
    line.AddControlPointWorld(*map(float, trajectory.entry))
    tip = trajectory.target if not length_mm else trajectory.entry + float(length_mm) * trajectory.direction
    line.AddControlPointWorld(*map(float, tip))
    line.SetAttribute(END_ATTRIBUTE, trajectory.end)
    line.SetAttribute(SCREW_NAME_ATTRIBUTE, trajectory.name)


def trajectory_from_line(line) -> Trajectory:
    """The screw trajectory of a markups line: entry, then a point along the screw."""
    label = line.GetName() if line is not None else "?"
    if line is None or line.GetNumberOfControlPoints() != 2:
        raise PlanError(f"Screw line '{label}' is not a markups line with exactly two points.",
                        "Use the screw lines created by the planner (entry point, then a point along the screw).")
    name = line.GetAttribute(SCREW_NAME_ATTRIBUTE) or line.GetName()
    end = line.GetAttribute(END_ATTRIBUTE) or name.split(" ")[0]
    if end not in ENDS:
        raise PlanError(f"Screw line '{label}' does not say which end of the implant it belongs to.",
                        f"Set its attribute {END_ATTRIBUTE} to 'proximal' or 'distal', or start its name with one.")
    t = Trajectory(name, end, _point(line, 0), _point(line, 1))
    _ = t.direction  # refuse a zero-length line now, naming it
    return t
