"""The porous ends of a part: each footplate's contact layer cut once per end and reused for every implant size (only
the strut differs between sizes), glued back onto the body along the cut with the seams welded."""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..core.errors import PlanError
from ..core.mesh import TriMesh, closed_edges, from_manifold, to_manifold, without_flat_shells

# The last porous ends (footplate fused with its lattice, cut), keyed by piece and cut: reused by every size.
_END_CACHE: dict = {}
_CACHE_SIZE = 4


@dataclass
class _Piece:
    """One contact layer's pores, in world coordinates, ready to be cut out of the part."""

    piece: object  # Manifold: the lattice's void within the layer's prism (the part minus it is the porous part)
    piece_pf: object  # the same in the plane frame
    zone_pf: object  # the layer's prism in the plane frame
    key: tuple  # cache key of the lattice (region in the plane frame and parameters)
    zone: object  # Manifold: the layer's prism (footprint x beyond -thickness); the core is the part minus it
    to_pf: np.ndarray  # world -> plane frame
    region_pf: object  # Manifold: the part within the layer, plane frame (for the pore measurement)
    level: float
    cell: float
    layer_volume: float
    voxels: int
    h: float


@dataclass
class _End:
    """A footplate above the cut plane fused with its lattice (plane frame), its cap on the cut plane removed."""

    mesh_pf: TriMesh
    lattice_volume: float  # the lattice's volume in the layer (the end minus its solid core)
    fragments: tuple  # (count, volume) of lattice pieces not attached to the core, dropped


_CUT_TOLERANCE_MM = 1e-4  # a vertex this close to the cut plane lies on it (float32 coordinates of ~100 mm)


def _porous_end(m3d, part_world, piece: _Piece, params, cut: float) -> _End:
    key = (piece.key, round(cut, 4))
    cached = _END_CACHE.get(key)
    if cached is not None:
        return cached
    if cut <= params.layer_thickness_mm + params.overlap_mm:
        raise PlanError(f"The cut {cut:.2f} mm below the contact plane is inside the porous layer.",
                        "Cut between the layer and the strut, or fuse without a cut.")
    top = part_world.transform(piece.to_pf[:3, :]).trim_by_plane((0.0, 0.0, 1.0), -cut)
    core = top - piece.zone_pf
    fused = top - piece.piece_pf
    parts = sorted(fused.decompose(), key=lambda q: -q.volume())
    n_core = len(top.decompose())
    kept, dropped = parts[:n_core], [q for q in parts[n_core:] if q.volume() > 0]
    end = m3d.Manifold.compose(kept) if len(kept) > 1 else kept[0]
    end, mesh = _without_slivers(end)
    cap = _cap_faces(mesh, np.array([0.0, 0.0, 1.0]), -cut, outward=-1.0)
    out = _End(TriMesh(mesh.vertices, mesh.faces[~cap]), float(end.volume() - core.volume()),
               (len(dropped), float(sum(q.volume() for q in dropped))))
    if len(_END_CACHE) >= _CACHE_SIZE:
        _END_CACHE.pop(next(iter(_END_CACHE)))
    _END_CACHE[key] = out
    return out


_SLIVER_MM = 1e-3  # edges shorter than this are collapsed (mesh.file_safe's tolerance)


def _without_slivers(manifold) -> tuple:
    """(Manifold, TriMesh) with the sub-um edges a boolean leaves where a pore's surface crosses a face next to a
    vertex (thousands per end) collapsed, and any flat shell this leaves dropped. Done once per end here, so the
    export's file safety finds nothing to simplify on each size (seconds a million triangles). The Manifold is
    rebuilt from its mesh first: manifold3d does not collapse edges between faces of different boolean inputs."""
    simplified = without_flat_shells(to_manifold(from_manifold(manifold)).simplify(_SLIVER_MM))
    return simplified, from_manifold(simplified)


def _cap_faces(mesh: TriMesh, n: np.ndarray, offset: float, outward: float) -> np.ndarray:
    """Faces lying on the plane n.x = offset whose normal points along ``outward`` * n (the cut's cap)."""
    on = np.abs(mesh.vertices @ n - offset) < _CUT_TOLERANCE_MM
    f = mesh.faces
    flat = on[f].all(axis=1)
    v = mesh.vertices
    normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]) @ n
    return flat & (outward * normal > 0)


def _glue_ends(m3d, part_world, pieces, ends, cut: float) -> Optional[TriMesh]:
    """The part below every cut plane with each porous end glued on along its cut loop; None if a loop does not
    match (the caller then fuses with a boolean). Both sides are cuts of the same footplate polygon, so their loop
    vertices coincide to float32 rounding, except points on straight runs that one side's booleans dropped as
    collinear: those are inserted into the other side's boundary edge first, then the loops are welded."""
    body = part_world
    planes = []
    for p in pieces:
        from_pf = np.linalg.inv(p.to_pf)
        n, c = from_pf[:3, 2], from_pf[:3, 3]  # w axis (out of the implant) and plane centre, world
        body = body.trim_by_plane(tuple(-n), float(cut - n @ c))
        planes.append((n, float(n @ c - cut)))
    body_mesh = _without_slivers(body)[1]  # small: cheap
    keep = np.ones(body_mesh.n_triangles, dtype=bool)
    for n, offset in planes:
        keep &= ~_cap_faces(body_mesh, n, offset, outward=1.0)
    glued = TriMesh(body_mesh.vertices, body_mesh.faces[keep])
    for p, end, (n, offset) in zip(pieces, ends, planes):
        glued = _weld_loops(glued, end.mesh_pf.transformed(np.linalg.inv(p.to_pf)), n, offset)
        if glued is None:
            return None
    used = np.zeros(len(glued.vertices), dtype=bool)
    used[glued.faces] = True  # the body's cap vertices off the loops are left over
    remap = np.cumsum(used) - 1
    glued = TriMesh(glued.vertices[used], remap[glued.faces])
    return glued if not verify_closed(glued) else None


def _loop_edges(mesh: TriMesh, on: np.ndarray) -> tuple:
    """(face index, position in the face) of the open-boundary edges with both ends ``on`` (per-vertex mask)."""
    cand = np.flatnonzero(on[mesh.faces].sum(axis=1) >= 2)
    f = mesh.faces[cand]
    a, b = f.reshape(-1), np.roll(f, -1, axis=1).reshape(-1)
    n = np.int64(len(mesh.vertices))
    both = on[a] & on[b]
    open_ = both & ~np.isin(a * n + b, (b * n + a)[both])
    k = np.flatnonzero(open_)
    return cand[k // 3], k % 3


def _insert_points(mesh: TriMesh, on: np.ndarray, points: np.ndarray, tol: float) -> Optional[TriMesh]:
    """Split the open-boundary edges of ``mesh`` (ends ``on``) at ``points`` lying on them (within ``tol``); None
    if a point lies on no such edge."""
    if len(points) == 0:
        return mesh
    face, pos = _loop_edges(mesh, on)
    i, j = mesh.faces[face, pos], mesh.faces[face, (pos + 1) % 3]
    a, b = mesh.vertices[i], mesh.vertices[j]
    ab = b - a
    t = np.clip(np.einsum("pkd,kd->pk", points[:, None, :] - a[None], ab) / np.einsum("kd,kd->k", ab, ab), 0, 1)
    d = np.linalg.norm(points[:, None, :] - (a[None] + t[..., None] * ab[None]), axis=2)
    which = np.argmin(d, axis=1)
    if d[np.arange(len(points)), which].max() > tol:
        return None
    new = []
    for k in np.unique(which):
        on_k = np.flatnonzero(which == k)
        chain = [i[k]] + list(len(mesh.vertices) + on_k[np.argsort(t[on_k, k])]) + [j[k]]
        opposite = mesh.faces[face[k], (pos[k] + 2) % 3]
        new.extend([chain[q], chain[q + 1], opposite] for q in range(len(chain) - 1))
    keep = np.ones(len(mesh.faces), dtype=bool)
    keep[face[np.unique(which)]] = False
    return TriMesh(np.concatenate([mesh.vertices, points]), np.concatenate([mesh.faces[keep], np.array(new)]))


def _weld_loops(body: TriMesh, end: TriMesh, n: np.ndarray, offset: float, tol: float = 1e-3) -> Optional[TriMesh]:
    """``body`` and ``end`` (both open along the plane n.x = offset) joined into one mesh along that plane."""
    from scipy.spatial import cKDTree

    def loop(m):
        on = np.abs(m.vertices @ n - offset) < 10 * _CUT_TOLERANCE_MM
        face, pos = _loop_edges(m, on)
        return on, np.unique(m.faces[face, pos])

    (on_b, lb), (on_e, le) = loop(body), loop(end)
    if len(lb) == 0 or len(le) == 0:
        return None
    # Points of either loop missing on the other: inserted into the other's boundary edges.
    db, _ = cKDTree(end.vertices[le]).query(body.vertices[lb])
    de, _ = cKDTree(body.vertices[lb]).query(end.vertices[le])
    end = _insert_points(end, on_e, body.vertices[lb[db > tol]], tol)
    body = _insert_points(body, on_b, end.vertices[le[de > tol]], tol) if end is not None else None
    if end is None or body is None:
        return None
    (_, lb), (_, le) = loop(body), loop(end)
    d, j = cKDTree(end.vertices[le]).query(body.vertices[lb])
    if len(lb) != len(le) or d.max() > tol or len(np.unique(j)) != len(j):
        return None
    base = len(body.vertices)
    index = np.arange(base)
    index[lb] = base + le[j]
    return TriMesh(np.concatenate([body.vertices, end.vertices]),
                   np.concatenate([index[body.faces], end.faces + base]))


def verify_closed(mesh: TriMesh) -> list:
    """Problems preventing ``mesh`` from being a closed, consistently oriented, outward solid (empty if fine):
    mesh.closed_edges (the edge test of check_mesh) and a positive volume, fast on million-triangle lattices."""
    if len(mesh.faces) == 0:
        return ["empty mesh"]
    problems = []
    if not closed_edges(mesh.faces, len(mesh.vertices)):
        problems.append("not closed, not manifold or inconsistently oriented")
    if mesh.volume() <= 0:
        problems.append("volume is not positive")
    return problems
