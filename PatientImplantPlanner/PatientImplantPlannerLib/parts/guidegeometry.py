"""Geometry the guides are built on: the footplate seat (its contact face and frame), the strut path near each end,
and small solid helpers (cylinders, sleeve room along an axis, engraved labels)."""

from dataclasses import dataclass

import numpy as np

from ..core.anatomy import unit
from ..core.errors import GeometryError, PlanError
from ..core.mesh import TriMesh, from_manifold, require_manifold3d, to_manifold
from .textmesh import text_outline

ENDS = ("proximal", "distal")


ROUND_SEGMENTS = 64


LABEL_MARGIN_MM = 0.5


@dataclass
class _Seat:
    """One footplate in its own frame: rows of ``rot`` are (anterior, lateral, normal into the gap)."""

    centre: np.ndarray
    rot: np.ndarray
    thickness: float
    outline: object  # manifold3d CrossSection of the footplate in local (x, y)

    def to_local(self, p) -> np.ndarray:
        return (np.asarray(p, float) - self.centre) @ self.rot.T

    def dir_to_local(self, d) -> np.ndarray:
        return np.asarray(d, float) @ self.rot.T

    def to_world_matrix(self) -> np.ndarray:
        return np.column_stack([self.rot.T, self.centre])

    def to_local_matrix(self) -> np.ndarray:
        return np.column_stack([self.rot, -self.rot @ self.centre])


def _check_end(end: str) -> None:
    if end not in ENDS:
        raise PlanError(f"Guide end {end!r} is unknown.", "Use 'proximal' or 'distal'.")


def _seat(geom, end: str) -> _Seat:
    """The footplate's frame from the implant's porous-region record, its outline sliced from its own mesh."""
    region = next((r for r in geom.porous_regions if r.end == end), None)
    if region is None:
        raise GeometryError(f"The implant has no {end} footplate record.", "Rebuild the implant.")
    n = unit(-np.asarray(region.normal, float))  # the region's normal points into the bone
    a = unit(np.asarray(region.anterior, float) - (np.asarray(region.anterior, float) @ n) * n)
    rot = np.array([a, np.cross(n, a), n])
    centre = np.asarray(region.centre, float)
    fp = geom.proximal_footplate if end == "proximal" else geom.distal_footplate
    z = (fp.vertices - centre) @ n
    t = float(z.max())
    if abs(z.min()) > 1e-3 or t <= 0:
        raise GeometryError(
            f"The {end} footplate does not lie on its contact plane (from {z.min():.3f} to {t:.3f} mm).",
            "Rebuild the implant; this is a bug if its inputs are sensible.",
        )
    seat = _Seat(centre, rot, t, None)
    local = to_manifold(fp).transform(seat.to_local_matrix())
    seat.outline = local.slice(t / 2)
    if seat.outline.is_empty():
        raise GeometryError(f"The {end} footplate has no cross-section.", "Rebuild the implant.")
    return seat


def _end_path(geom, end: str) -> tuple:
    """Strut centre line starting on this end's contact plane and running into the gap, with frames whose rows
    are (anterior, lateral, direction), right-handed, and the arc length of each point."""
    path = np.asarray(geom.strut_path, float)
    frames = np.asarray(geom.frames, float)
    if end == "distal":
        path = path[::-1].copy()
        frames = frames[::-1].copy()
        frames[:, 1] *= -1.0
        frames[:, 2] *= -1.0
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    return path, frames, s


def _frame_at(path, frames, s, at: float) -> tuple:
    """Point and orthonormal frame (rows anterior, lateral, direction) at arc length ``at``."""
    point = np.array([np.interp(at, s, path[:, i]) for i in range(3)])
    k = int(np.clip(np.searchsorted(s, at), 1, len(s) - 1))
    d = unit(path[k] - path[k - 1])
    a = frames[k, 0] - (frames[k, 0] @ d) * d
    a = unit(a)
    return point, np.array([a, np.cross(d, a), d])


def _extended_end_path(path, frames, s, before: float, length: float) -> tuple:
    """The end path from ``before`` mm behind the contact plane (straight, into the bone) to arc length
    ``length`` (straight beyond the path's end if it is shorter), sampled about every mm."""
    n_back = max(int(np.ceil(before)), 1)
    back = path[0] - np.linspace(before, 0.0, n_back + 1)[:-1, None] * frames[0, 2]
    keep = s <= length
    mid, mid_f = path[keep], frames[keep]
    out = [back, mid]
    out_f = [np.repeat(frames[:1], n_back, 0), mid_f]
    if s[-1] < length:
        extra = length - s[-1]
        n_fwd = max(int(np.ceil(extra)), 1)
        out.append(path[-1] + np.linspace(0.0, extra, n_fwd + 1)[1:, None] * frames[-1, 2])
        out_f.append(np.repeat(frames[-1:], n_fwd, 0))
    return np.concatenate(out), np.concatenate(out_f)


def _strut_section(geom, path, frames, s):
    """Convex hull of the strut's cross-section in the end path's frame (x anterior, y lateral).

    The strut is one polygon swept along the path, so any cut shows the same section; cutting half-way along
    keeps away from the footplates (a tilted cut near the end would catch the footplate) and from the holes."""
    m3d = require_manifold3d()
    point, rot = _frame_at(path, frames, s, 0.5 * s[-1])
    local = to_manifold(geom.mesh).transform(np.column_stack([rot, -rot @ point]))
    polys = [np.asarray(p) for p in local.slice(0.0).to_polygons() if len(p) >= 3]
    around = [p for p in polys if _point_in_polygons(np.zeros(2), [p])]
    if not around:
        raise GeometryError("The strut has no cross-section around its centre line.", "Rebuild the implant.")
    return m3d.CrossSection([np.ascontiguousarray(p) for p in around]).hull()


def _cylinder_between(m3d, p0, direction, length, radius, segments=ROUND_SEGMENTS):
    """Cylinder from p0 along a unit direction; the polygon circumscribes the circle (narrowest = radius)."""
    d = unit(direction)
    u = unit(np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0]))
    v = np.cross(d, u)
    r = radius / np.cos(np.pi / segments)
    cyl = m3d.Manifold.cylinder(float(length), float(r), float(r), segments)
    return cyl.transform(np.column_stack([u, v, d, p0]))


def _sleeve_room(m3d, obstacle, base, up, s_from: float, radius: float, length: float) -> float:
    """Distance along a sleeve axis (from ``base``, unit ``up``) to the first part of ``obstacle`` inside a cylinder
    of ``radius`` around it, searched from ``s_from`` over ``length``; inf when nothing is there. Exact for the
    polyhedral meshes: the nearest point of the intersection is one of its vertices."""
    probe = _cylinder_between(m3d, base + s_from * up, up, length, radius)
    hit = probe ^ obstacle
    if hit.is_empty():
        return float("inf")
    return float(((from_manifold(hit).vertices - base) @ up).min())


def slid_out(m3d, implant_local, seat, slide, top: float, reach: float):
    """The implant's material beside its footplate up to the cap's top (seat frame), swept ``reach`` mm along the
    in-plane direction ``slide``: per 1 mm slab, the hull of the slab and its shifted copy. Carved out of a drill
    guide's cap where a strut leaving its footplate steeply runs out over the rim beside the cap's pocket (30 deg on
    a CT angiogram, T6 -> T8, a doubtful face accepted as found), so the guide still goes on and comes off along
    the slot's opening."""
    slide = np.array([slide[0], slide[1], 0.0])
    slide = slide / max(np.linalg.norm(slide), 1e-9)
    footplate = seat.outline.extrude(seat.thickness + 10.0).translate((0.0, 0.0, -10.0))
    beside = implant_local - footplate
    span = reach + 60.0
    pieces = []
    for z0 in np.arange(-1.0, top + 1.0, 1.0):
        box = m3d.Manifold.cube((2 * span, 2 * span, 1.0)).translate((-span, -span, float(z0)))
        slab = beside ^ box
        if not slab.is_empty():
            pieces.append(m3d.Manifold.batch_hull([slab, slab.translate(tuple(reach * slide))]))
    return m3d.Manifold.batch_boolean(pieces, m3d.OpType.Add) if pieces else m3d.Manifold()


def _angle_gap(a, b) -> float:
    return float(abs((a - b + np.pi) % (2 * np.pi) - np.pi))


def _point_in_polygons(p, polys) -> bool:
    """Even-odd rule over all loops (holes included)."""
    inside = False
    for poly in polys:
        x, y = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x, -1), np.roll(y, -1)
        cross = (y > p[1]) != (y1 > p[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = x + (p[1] - y) * (x1 - x) / (y1 - y)
        inside ^= bool(np.count_nonzero(cross & (p[0] < xi)) % 2)
    return inside


def _label_solid(text: str, height: float, z0: float, z1: float, placement: np.ndarray):
    """Label outline extruded from z0 to z1 in text coordinates, then placed by a 3x4 matrix."""
    outline = text_outline(text, height)
    return outline.extrude(float(z1 - z0)).translate((0.0, 0.0, float(z0))).transform(placement)


def _size_short(size_label: str) -> str:
    return size_label.replace("mm", "").strip()


def _slug(*parts) -> str:
    out = "_".join(str(p) for p in parts if str(p))
    out = out.replace("+", "plus").replace(" ", "").replace(".", "p")
    return "".join(c for c in out if c.isalnum() or c in "_-")


def _contact_face(mesh: TriMesh, seat: _Seat, tol: float = 1e-3) -> TriMesh:
    """Triangles lying on the contact plane and facing the bone (an open surface)."""
    v = mesh.vertices[mesh.faces]
    z = (v - seat.centre) @ seat.rot[2]
    normals = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    facing = normals @ -seat.rot[2] > 0.999 * np.linalg.norm(normals, axis=1)
    on = np.all(np.abs(z) < tol, axis=1) & facing
    faces = mesh.faces[on]
    used, inverse = np.unique(faces, return_inverse=True)
    return TriMesh(mesh.vertices[used], inverse.reshape(-1, 3))
