"""Measurement helpers shared by the tests (fitting what is measured on meshes)."""

import numpy as np


def fit_circle(pts):
    """Algebraic (Kasa) circle fit of 2D points: centre, radius."""
    a = np.column_stack([2 * pts, np.ones(len(pts))])
    b = (pts**2).sum(axis=1)
    cx, cy, c = np.linalg.lstsq(a, b, rcond=None)[0]
    return np.array([cx, cy]), float(np.sqrt(c + cx * cx + cy * cy))


def basis(d):
    """Two unit vectors completing the unit direction d to an orthonormal frame."""
    u = np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    return u, np.cross(d, u)


def outward_overlap_mm3(solid, entry, direction, radius, reach=40.0) -> float:
    """Volume a drill or driver of ``radius`` would share with ``solid`` (a manifold3d Manifold) coming in along a
    screw's axis: the cylinder from ``entry`` ``reach`` mm along -``direction`` (outward from the screw head)."""
    import manifold3d as m3d

    d = np.asarray(direction, float) / np.linalg.norm(direction)
    a, b = basis(d)
    cyl = m3d.Manifold.cylinder(reach, radius, radius, 64).transform(np.column_stack([a, b, -d, entry]))
    return float((solid ^ cyl).volume())


def markups_line_ras(path):
    """(first point, unit direction to the second) of an exported markups line file, in RAS."""
    import json

    with open(path, encoding="utf-8") as f:
        mk = json.load(f)["markups"][0]
    flip = np.array([-1.0, -1.0, 1.0]) if mk.get("coordinateSystem", "LPS") == "LPS" else np.ones(3)
    a, b = (np.asarray(p["position"], float) * flip for p in mk["controlPoints"][:2])
    return a, (b - a) / np.linalg.norm(b - a)
