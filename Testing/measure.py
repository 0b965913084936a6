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
