"""The lattice's pores as copies of one meshed tile: the gyroid is triply periodic (period L = the cell), so the
void's surface is meshed once inside a box of TILE_PERIODS periods (the "cube"), closed off with planar caps on its
faces, and copies of that closed tile are laid side by side over the tiles a layer needs (``pore_cells``).

The tile is meshed as ``gyroid.pore_mesh`` meshes a box (contour, vertices projected onto the exact implicit,
remeshed against it, every triangle with a point of its grid of sixths more than the tolerance off split), but on a
grid of a whole number of steps a period (CELL_SAMPLES, unbiased) whose planes include the cube's faces and whose
samples repeat with the period. The contour's vertices on a cube face (the seam) are moved onto the exact surface
within that face (on a cube edge, along it) and pinned: the remesh neither moves nor removes them (it may split,
flip or collapse their edges inwards), so the vertices on face x = 0 stay the translates of those on x = Tx (likewise
y, z; edges and corners). Before and after the remesh the seam is thinned where the bound allows
(``_decimate_seam``: a seam vertex goes together with its translate); a seam edge the refinement splits is split on
all its translates. Inner vertices are kept inside the cube (a projection that would leave it is made within a
plane parallel to the face, or not at all). Each face pair is capped once: the face's region in the void (bounded by
the seam and the square's edges in the void) is triangulated from those points only (manifold3d.triangulate, no new
points) and the opposite face gets the same triangles, moved and flipped. Copies of the tile are joined by index
(each seam vertex knows the translate it is a copy of) and the caps between two copies dropped: any set of tiles is
one closed, consistently oriented mesh of the void in them.

Where the cube lies in the period matters: a face near a height where the surface is parallel to it cuts it in
slivers and tiny loops the projection within the face cannot follow. The faces are put as far as possible from those
heights (``_phases``), the next position tried if a tile cannot be made. Tiles are cached in memory and on disk (see
CACHE_ENV) by (cell, level to 1e-4, kind, step, tolerance): ~0.8 s for a new one at the defaults (load 2; 2.8 s at
load 5). The network gyroid only: for the sheet (two surfaces a wall apart) no tile came within the bound, so
lattice.py meshes its pores as a whole.
"""

import functools
import hashlib
import math
import os

import numpy as np

from ..core.errors import GeometryError
from ..core.mesh import TriMesh, closed_edges
from . import gyroid as gyroid_module
from . import remesh as remesh_module
from .gyroid import (
    MESH_REFINE_PASSES,
    MESH_REMESH_MODES,
    MESH_SAMPLES_PER_CELL,
    MESH_TOLERANCE_MM,
    _flying_edges,
    _gyroid_distance_grid,
    _gyroid_eval,
    _oracle,
    _project,
    _sampled_errors,
    gyroid_distance,
)
from .remesh import Oracle, remesh, split_marked_edges

# Samples a period at least. pore_mesh's 4.6 keeps the topology only with its contour biased a quarter step towards
# the solid, and projecting that contour puts ~3 % of the vertices next to a face outside the cube; unbiased, none
# left it from 5 samples on. The contour's seam is what the cell keeps, thinned to the bound (_decimate_seam): the
# finer the contour the more of it can go. Triangles of the 70 % cell: 284 at 5 samples (no thinning possible),
# 272 at 6, 248 at 8, 234 at 10, 204 at 12, 242 at 16 (one-period tiles, before the seam was pinned).
CELL_SAMPLES = 12
SEAM_DECIMATION = True  # thin the contour's seam before the remesh (70 % cell: 204 triangles, 272 without)
SEAM_AGAIN = 2  # then thinned again and two more error-driven remesh iterations (70 % cell: 194 triangles)
# Periods along each edge of the tile (u, v, w in the plane frame): the seam costs triangles (its vertices are fixed
# by the contour, the remesh cannot move them), less per period in a larger tile. Triangles a period at 70 %: 194 in
# one period, 183 in 2 x 2 x 2 (the whole layer remeshed at once, from the same cell / 12 contour: 156; from
# pore_mesh's cell / 4.6: 145). One period across the layer (a thin slab along w) keeps the block of copies to cut
# small. The 40 x 30 mm plate's part, triangles: 451 754 at 1 x 1 x 1, 426 010 at 2 x 2 x 2, 421 396 at 2 x 2 x 1,
# 419 224 at 3 x 3 x 1 (tile 0.7, 1.4, 0.8 and 1.6 s at low load).
TILE_PERIODS = (2, 2, 1)
PIN_SEAM = True  # the remesh may flip, split and collapse the edges from the seam inwards (seam vertices stay)
_INSIDE = 0.02  # inner vertices stay this many steps inside the cube (no triangle flat on a face)
_UV = {0: (2, 1), 1: (0, 2), 2: (1, 0)}  # in-face axes (u, v) of face `axis` = lo: (u, v, -e_axis) right-handed


class CellMesh:
    """One tile's closed void mesh (``cell``: the tile's edges T, (3,)): vertices in the box [origin, origin + T],
    faces (surface, then the caps of each face as ``caps[axis] = (lower, upper)`` face indices), and for each vertex
    the translate it is a copy of (``rep``, a vertex on no upper face) and its offset from it in tiles (``off``, 0
    or 1 per axis)."""

    def __init__(self, cell, origin, vertices, faces, caps, rep, off, worst, n_surface):
        self.cell, self.origin = cell, origin
        self.vertices, self.faces, self.caps = vertices, faces, caps
        self.rep, self.off, self.worst, self.n_surface = rep, off, worst, n_surface


def _project_in_faces(p, fixed, cell, level, kind, iterations=8):
    """Points moved onto the exact surface keeping their ``fixed`` coordinates (N, 3 bool); (points, converged)."""
    p = np.array(p, dtype=float)
    k = 2.0 * np.pi / cell
    for _ in range(iterations):
        d, grad = _gyroid_eval(p, cell, level, kind)
        full = np.linalg.norm(grad, axis=1)
        f = d * np.maximum(full, 0.2 * k)  # back to the implicit's value
        grad = np.where(fixed, 0.0, grad)
        g2 = np.maximum(np.einsum("ij,ij->i", grad, grad), 1e-300)
        step = f[:, None] * grad / g2[:, None]
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        p -= step * np.minimum(1.0, 0.1 * cell / np.maximum(norm, 1e-300))
    return p, np.abs(gyroid_distance(p, cell, level, kind)) < 1e-7


def _planes(v, lo, hi, tol):
    """(on lower face, on upper face) per vertex and axis, (N, 3) each; those coordinates snapped onto the face."""
    on_lo, on_hi = np.abs(v - lo) < tol, np.abs(v - hi) < tol
    v[on_lo] = np.broadcast_to(lo, v.shape)[on_lo]
    v[on_hi] = np.broadcast_to(hi, v.shape)[on_hi]
    return on_lo, on_hi


def _mesh_cell(cell, level, kind, h, tolerance, phase, periods=1):
    """The CellMesh of the box of ``periods`` periods (per axis, or all) at ``phase`` (fractions of L per axis), or
    None if it cannot be made."""
    n = max(CELL_SAMPLES, int(math.ceil(cell / h - 1e-9)))
    h = cell / n
    o = np.asarray(phase, dtype=float) * cell
    periods = np.broadcast_to(np.asarray(periods, dtype=np.int64), (3,))
    lo, hi = o, o + periods * cell
    idx = [np.arange(-2, p * n + 3) % n for p in periods]
    # The samples repeat with the period exactly: computed on one period and indexed.
    period = _gyroid_distance_grid([o[d] + h * np.arange(n) for d in range(3)], cell, level, kind)
    field_ = period[np.ix_(*idx)]
    np.negative(field_, out=field_)
    near = np.abs(field_) < 0.2 * h
    field_[near] = np.where(field_[near] < 0, np.float32(-0.2 * h), np.float32(0.2 * h))
    for side in (np.s_[[0, -1]], np.s_[:, [0, -1]], np.s_[:, :, [0, -1]]):
        field_[side] = h
    mesh = _flying_edges(field_, o - 2 * h, h)
    v, f = np.array(mesh.vertices, dtype=float), mesh.faces
    on_lo, on_hi = _planes(v, lo, hi, 1e-4 * h)
    fixed = on_lo | on_hi
    inside = np.all((v >= lo) & (v <= hi), axis=1)
    seam = inside & fixed.any(axis=1)
    inner = inside & ~seam
    v[inner] = _project(v[inner], cell, level, kind)
    v[seam], ok = _project_in_faces(v[seam], fixed[seam], cell, level, kind)
    margin = _INSIDE * h
    if not ok.all() or not np.all((v[inner] > lo + margin) & (v[inner] < hi - margin)):
        return None
    oracle = _oracle(cell, level, kind, tolerance)
    boxed = Oracle(lambda p: _inside_or_stay(p, oracle.project(p), lo, hi, margin, cell, level, kind),
                   oracle.normals, oracle.size, oracle.distance, tolerance)
    if SEAM_DECIMATION:
        f = _decimate_seam(v, f, lo, hi, cell, level, kind, tolerance)
    v, f, origin = remesh(v, f, inner, boxed, MESH_REMESH_MODES, seam, pinned=seam if PIN_SEAM else None)
    if SEAM_AGAIN:
        seam, inner = seam[origin] & (origin >= 0), (origin < 0) | inner[origin]
        f = _decimate_seam(v, f, lo, hi, cell, level, kind, tolerance)
        v, f, _ = remesh(v, f, inner, boxed, MESH_REMESH_MODES[-SEAM_AGAIN:], seam, pinned=seam)
    on_lo, on_hi = _planes(v, lo, hi, 1e-9)
    inside = np.all((v >= lo) & (v <= hi), axis=1)
    inner = inside & ~(on_lo | on_hi).any(axis=1)
    if not np.all((v[inner] > lo + 0.5 * margin) & (v[inner] < hi - 0.5 * margin)):
        return None
    v, f, worst = _refine(v, f, inside, cell, level, kind, tolerance, lo, hi, 0.5 * margin)
    if v is None:
        return None
    return _close(v, f, worst, cell, level, kind, lo, hi)


def _try_collapse(v, f, star, alive, s, n, tolerance, cell, level, kind, inside, box):
    """Faces to rewrite (s replaced by n) and faces to drop for collapsing vertex s into its neighbour n, or None
    if the link condition fails or a triangle in the cube would tilt, lie flat on a face or exceed the bound."""
    fs = [i for i in star[s] if alive[i]]
    shared = [i for i in fs if n in f[i]]
    if len(shared) != 2:
        return None
    ns = {x for i in fs for x in f[i]} - {s}
    nn = {x for i in star[n] if alive[i] for x in f[i]} - {n}
    if len(ns & nn) != 2:
        return None
    rest = [i for i in fs if i not in shared]
    old = f[rest]
    new = np.where(old == s, n, old)
    cube = inside[new].all(axis=1)
    if cube.any():
        a, b = old[cube], new[cube]
        n0 = np.cross(v[a[:, 1]] - v[a[:, 0]], v[a[:, 2]] - v[a[:, 0]])
        n1 = np.cross(v[b[:, 1]] - v[b[:, 0]], v[b[:, 2]] - v[b[:, 0]])
        l0, l1 = np.linalg.norm(n0, axis=1), np.linalg.norm(n1, axis=1)
        if (l1 < 1e-12).any() or (np.einsum("ij,ij->i", n0, n1) < 0.5 * l0 * l1).any():
            return None
        corners = v[b]
        if any((corners[:, :, a] == plane[a]).all(axis=1).any() for plane in box for a in range(3)):
            return None  # flat on a face
        if (_sampled_errors(v, b, cell, level, kind) > tolerance).any():
            return None
    return rest, new, shared


def _decimate_seam(v, f, lo, hi, cell, level, kind, tolerance, rounds=6):
    """Seam vertices collapsed into a neighbour along the seam where every triangle in the cube stays within the
    bound, each together with its translate on the opposite face (the contour leaves a seam vertex every ~0.7
    steps: at 12 samples a period about 60 % of them go)."""
    f = f.copy()
    inside = np.all((v >= lo) & (v <= hi), axis=1)
    for _ in range(rounds):
        rep, off = _seam_partners(v, lo, hi)
        if rep is None:
            return f
        on = inside[:, None] & ((np.abs(v - lo) < 1e-12) | (np.abs(v - hi) < 1e-12))
        star = [[] for _ in range(len(v))]
        for i, tri in enumerate(f.tolist()):
            for x in tri:
                star[x].append(i)
        where = {(int(rep[i]),) + tuple(int(x) for x in off[i]): i for i in np.flatnonzero(rep >= 0)}
        alive = np.ones(len(f), dtype=bool)
        touched = np.zeros(len(v), dtype=bool)
        done = 0
        for s in np.flatnonzero((on.sum(axis=1) == 1) & (off.sum(axis=1) == 0)):
            axis = int(np.flatnonzero(on[s])[0])
            step = np.eye(3, dtype=np.int64)[axis]
            t = where.get((int(rep[s]),) + tuple(int(x) for x in step))
            if t is None or touched[s] or touched[t]:
                continue
            along = {x for i in star[s] for x in f[i] if x != s and on[x, axis] and v[x, axis] == v[s, axis]}
            for n in sorted(along, key=lambda x: np.linalg.norm(v[x] - v[s])):
                m = where.get((int(rep[n]),) + tuple(int(x) for x in off[n] + step))
                if m is None or touched[n] or touched[m]:
                    continue
                one = _try_collapse(v, f, star, alive, s, n, tolerance, cell, level, kind, inside, (lo, hi))
                two = one and _try_collapse(v, f, star, alive, t, m, tolerance, cell, level, kind, inside,
                                            (lo, hi))
                if not two:
                    continue
                for (rest, new, shared), gone in ((one, s), (two, t)):
                    touched[f[[i for i in star[gone] if alive[i]]].ravel()] = True
                    f[rest] = new
                    alive[shared] = False
                done += 1
                break
        f = f[alive]
        if done == 0:
            break
    return f


def _seam_partners(v, lo, hi):
    """For each vertex on a face of the cube, its translate with no upper-face coordinate: (rep index or -1 each,
    offsets (N, 3)); rep None if some vertex has no translate."""
    from scipy.spatial import cKDTree

    cube = np.all((v >= lo) & (v <= hi), axis=1)[:, None]
    on_lo, on_hi = cube & (np.abs(v - lo) < 1e-12), cube & (np.abs(v - hi) < 1e-12)
    off = on_hi.astype(np.int64)
    base = v - off * (hi - lo)
    is_rep = (on_lo | on_hi).any(axis=1) & ~on_hi.any(axis=1)
    reps = np.flatnonzero(is_rep)
    rep = np.full(len(v), -1, dtype=np.int64)
    rep[reps] = reps
    other = np.flatnonzero((on_lo | on_hi).any(axis=1) & ~is_rep)
    if len(other):
        d, j = cKDTree(v[reps]).query(base[other])
        if d.max() > 1e-9 * (hi - lo).max() + 1e-9:
            return None, off
        rep[other] = reps[j]
    return rep, off


def _inside_or_stay(p, q, lo, hi, margin, cell, level, kind):
    """q (p projected), except where it lies outside the cube less ``margin``: there p moved onto the surface
    keeping the coordinates it left the cube by (within a plane parallel to that face), or p itself if that does
    not land in the cube either (then off the surface: a collapse or relaxation to it is refused)."""
    out = np.flatnonzero(~np.all((q > lo + margin) & (q < hi - margin), axis=1))
    if out.size:
        fixed = (q[out] <= lo + margin) | (q[out] >= hi - margin)
        r, ok = _project_in_faces(p[out], fixed, cell, level, kind)
        ok &= np.all((r > lo + margin) & (r < hi - margin), axis=1)
        q[out] = np.where(ok[:, None], r, p[out])
    return q


def _refine(v, f, inside, cell, level, kind, tolerance, lo, hi, margin):
    """Triangles of the cube with a point of their grid of sixths off by more than ``tolerance`` split at their
    longest edge; a seam edge on both its translates (the new point found within the face, on both: the same)."""
    surf = inside[f].all(axis=1)
    err = np.where(surf, _sampled_errors(v, f, cell, level, kind), 0.0)
    n = np.int64(len(v) + 10 ** 7)
    n_bad = []
    for _ in range(4 * MESH_REFINE_PASSES):
        bad = np.flatnonzero(err > tolerance)
        n_bad.append(bad.size)
        if bad.size == 0 or (len(n_bad) > 4 and bad.size >= n_bad[-4]):  # done, or not converging (a point
            break  # the surface can't be reached from inside the cube: another cube position is tried)
        corners = v[f[bad]]
        length = np.linalg.norm(corners - np.roll(corners, -1, axis=1), axis=2)
        marked = np.zeros(f.shape, dtype=bool)
        marked[bad, np.argmax(length, axis=1)] = True
        rep, off = _seam_partners(v, lo, hi)
        if rep is None:
            return None, None, None
        a, b = f, np.roll(f, -1, axis=1)
        seam_edge = (rep[a] >= 0) & (rep[b] >= 0)
        # A seam edge and its translates have the same (rep a, rep b, offset difference): mark them all.
        d = off[b] - off[a] + 1
        key = np.where(seam_edge, np.minimum(rep[a], rep[b]) * n + np.maximum(rep[a], rep[b]), -1)
        key = np.where(rep[a] < rep[b], key * 27 + (d[..., 0] * 9 + d[..., 1] * 3 + d[..., 2]),
                       key * 27 + ((2 - d[..., 0]) * 9 + (2 - d[..., 1]) * 3 + (2 - d[..., 2])))
        chosen = np.unique(key[marked & seam_edge])
        marked |= seam_edge & np.isin(key, chosen)

        def project(p, lo=lo, hi=hi):
            fixed = (np.abs(p - lo) < 1e-12) | (np.abs(p - hi) < 1e-12)
            q = p.copy()
            free = ~fixed.any(axis=1)
            q[free] = _inside_or_stay(p[free], _project(p[free], cell, level, kind), lo, hi, margin, cell,
                                      level, kind)
            q[~free] = _project_in_faces(p[~free], fixed[~free], cell, level, kind)[0]
            return q

        n_old = len(v)
        v, f, unchanged = split_marked_edges(v, f, marked, project)
        inside = np.concatenate([inside, np.ones(len(v) - n_old, dtype=bool)])
        new_faces = f[int(unchanged.sum()):]
        new_err = _sampled_errors(v, new_faces, cell, level, kind)
        err = np.concatenate([err[unchanged], np.where(inside[new_faces].all(axis=1), new_err, 0.0)])
    rep, off = _seam_partners(v, lo, hi)
    if rep is None or (err > tolerance).any():
        return None, None, None
    seam = rep >= 0
    v[seam] = np.where(off[seam] > 0, hi, v[rep[seam]])  # the translates exactly: free coordinates from the rep
    f = f[inside[f].all(axis=1)]
    for plane in (lo, hi):  # a triangle flat on a face would be a cap's too
        if (np.abs(v[f] - plane) < 1e-12).all(axis=1).any():
            return None, None, None
    return v, f, float(err.max()) if len(err) else 0.0


def _close(v, f, worst, cell, level, kind, lo, hi):
    """The surface in the cube closed with caps on its six faces: CellMesh, or None if it cannot be."""
    import manifold3d

    used = np.zeros(len(v), dtype=bool)
    used[f] = True
    remap = np.cumsum(used) - 1
    v, f = v[used], remap[f]
    # The corners (all void or all solid: translates of one another).
    corners = lo + (hi - lo) * np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    corner_void = gyroid_distance(corners[:1], cell, level, kind)[0] > 0
    if corner_void:
        v = np.concatenate([v, corners])
    rep, off = _seam_partners(v, lo, hi)
    if rep is None:
        return None
    on_lo = np.abs(v - lo) < 1e-12
    a, b = f.ravel(), np.roll(f, -1, axis=1).ravel()
    nv = np.int64(len(v))
    ka, kb = a * nv + b, b * nv + a
    open_ = ~np.isin(ka, kb)  # boundary half-edges of the surface
    caps, faces = {}, [f]
    count = len(f)
    for axis in range(3):
        iu, iv = _UV[axis]
        here = np.flatnonzero(on_lo[:, axis])
        edges = np.stack([b[open_], a[open_]], axis=1)  # reversed: the cap runs the other way
        edges = edges[on_lo[edges[:, 0], axis] & on_lo[edges[:, 1], axis]]
        # The square's edges, split at the seam points on them, where they run in the void (counter-clockwise).
        rim = here[(np.abs(v[here][:, [iu, iv]] - lo[[iu, iv]]) < 1e-12).any(axis=1)
                   | (np.abs(v[here][:, [iu, iv]] - hi[[iu, iv]]) < 1e-12).any(axis=1)]
        s, t = (v[rim, iu] - lo[iu]) / (hi - lo)[iu], (v[rim, iv] - lo[iv]) / (hi - lo)[iv]
        param = np.where(t < 1e-9, s, np.where(s > 1 - 1e-9, 1 + t, np.where(t > 1 - 1e-9, 3 - s, 4 - t)))
        rim = rim[np.argsort(param % 4.0)]
        if len(rim) > 1:
            mids = (v[rim] + v[np.roll(rim, -1)]) / 2.0
            void = gyroid_distance(mids, cell, level, kind) > 0
            edges = np.concatenate([edges, np.stack([rim, np.roll(rim, -1)], axis=1)[void]])
        if len(edges) == 0:
            caps[axis] = (np.zeros(0, np.int64),) * 2
            continue
        loops = _loops(edges)
        if loops is None:
            return None
        tri = manifold3d.triangulate([v[loop][:, [iu, iv]] for loop in loops])
        lo_cap = np.concatenate(loops)[np.asarray(tri, dtype=np.int64)]
        # The opposite face: the same triangles on the translates, flipped.
        partner = _translates(v, rep, off, axis)
        if partner is None:
            return None
        hi_cap = partner[lo_cap][:, ::-1]
        caps[axis] = (np.arange(count, count + len(lo_cap)), np.arange(count + len(lo_cap),
                                                                       count + 2 * len(lo_cap)))
        count += 2 * len(lo_cap)
        faces += [lo_cap, hi_cap]
    faces = np.concatenate(faces)
    if not closed_edges(faces, len(v)):
        return None
    return CellMesh(hi - lo, lo.copy(), v, faces, caps, np.where(rep >= 0, rep, np.arange(len(v))), off,
                    worst, len(f))


def _translates(v, rep, off, axis):
    """For each vertex, its translate one tile up along ``axis`` (-1 where there is none in the tile)."""
    want = {}
    for i in np.flatnonzero(rep >= 0):
        want[(int(rep[i]),) + tuple(int(x) for x in off[i])] = i
    out = np.full(len(v), -1, dtype=np.int64)
    for i in np.flatnonzero((rep >= 0) & (off[:, axis] == 0)):
        o = [int(x) for x in off[i]]
        o[axis] = 1
        j = want.get((int(rep[i]),) + tuple(o))
        if j is not None:
            out[i] = j
    return out


def _loops(edges):
    """Directed edges (E, 2) chained into closed loops of vertex indices; None if they do not chain."""
    nxt = {}
    for s, t in edges.tolist():
        if s in nxt:
            return None
        nxt[s] = t
    loops, seen = [], set()
    for start in list(nxt):
        if start in seen:
            continue
        loop, p = [], start
        while p not in seen:
            seen.add(p)
            loop.append(p)
            p = nxt.get(p)
            if p is None:
                return None
        if p != start:
            return None
        loops.append(np.array(loop, dtype=np.int64))
    return loops


def _phases(cell, level, kind, tries=3):
    """Positions of the cube in the period (fractions of L per axis) to try, best first: each face as far as
    possible from where the surface is parallel to it (there a face would cut it in thin slivers and tiny loops;
    at 70 % porosity the surface is parallel to a face at 8 heights a period, the best face lies 0.067 L from
    the nearest)."""
    n = 32
    s = (np.arange(n) + 0.5) / n * cell
    pts = np.stack([a.ravel() for a in np.meshgrid(s, s, s, indexing="ij")], axis=1)
    pts = _project(pts[np.abs(gyroid_distance(pts, cell, level, kind)) < 0.05 * cell], cell, level, kind)
    pts = pts[np.abs(gyroid_distance(pts, cell, level, kind)) < 1e-6]
    grad = _gyroid_eval(pts, cell, level, kind)[1]
    normal = grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-300)
    cand = np.arange(240) / 240.0
    best = []
    for axis in range(3):
        c = (pts[np.abs(normal[:, axis]) > 0.95, axis] / cell) % 1.0
        d = np.abs(c[None, :] - cand[:, None]) if len(c) else np.full((len(cand), 1), 0.5)
        score = np.minimum(d, 1.0 - d).min(axis=1)
        picks = []
        for i in np.argsort(-score, kind="stable"):  # the best, then the best well apart from those
            if all(min(abs(cand[i] - q), 1 - abs(cand[i] - q)) > 0.05 for q in picks):
                picks.append(cand[i])
            if len(picks) == tries:
                break
        best.append(picks)
    return [tuple(best[a][i % len(best[a])] for a in range(3)) for i in range(tries)]


@functools.lru_cache(maxsize=8)
def _cell_cached(cell, level, kind, h, tolerance):
    path = _disk_path((cell, level, kind, h, tolerance, CELL_SAMPLES, TILE_PERIODS))
    out = _load(path) if path else None
    if out is not None:
        return out
    # The best cube position first; the next ones only if it cannot be meshed. None (cached too) if none can.
    for phase in _phases(cell, level, kind):
        out = _mesh_cell(cell, level, kind, h, tolerance, phase, TILE_PERIODS)
        if out is not None:
            if path:
                _save(path, out)
            return out
    return None


# Tiles are also kept on disk (a new level costs ~1 s; the same part regenerated finds its tiles there), keyed by
# their parameters and the source of the modules that make them (a changed mesher never reads an old tile).
# IMPLANT_PLANNER_CACHE_DIR sets the folder ("none": no disk cache); anything unreadable or unwritable is skipped.
CACHE_ENV = "IMPLANT_PLANNER_CACHE_DIR"
# At most this many tiles are kept (about 55 kB each: ~14 MB), the least recently used removed first: every changed
# pore setting and every new version of the mesher writes new tiles, and the old ones would never be read again.
MAX_DISK_TILES = 256


@functools.lru_cache(maxsize=1)
def _source_digest() -> bytes:
    h = hashlib.sha256()
    for module_file in (__file__, gyroid_module.__file__, remesh_module.__file__):
        with open(module_file, "rb") as fh:
            h.update(fh.read())
    return h.digest()


def _disk_path(key):
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "PatientImplantPlanner")
    if root.lower() == "none":
        return None
    try:
        digest = hashlib.sha256(repr(key).encode() + _source_digest()).hexdigest()[:32]
    except OSError:
        return None
    return os.path.join(root, f"gyroid-tile-{digest}.npz")


def _load(path):
    try:
        with np.load(path) as z:
            caps = {a: (z[f"cap{a}lo"], z[f"cap{a}hi"]) for a in range(3)}
            out = CellMesh(z["cell"], z["origin"], z["vertices"], z["faces"], caps, z["rep"], z["off"],
                           float(z["worst"]), int(z["n_surface"]))
    except (OSError, KeyError, ValueError, EOFError):
        return None
    try:
        os.utime(path)  # recently used: kept by the eviction
    except OSError:
        pass
    return out


def _evict(folder, keep=None):
    """Remove the least recently used tiles beyond ``keep`` (MAX_DISK_TILES) in the folder; errors are skipped."""
    keep = MAX_DISK_TILES if keep is None else keep
    try:
        tiles = [e for e in os.scandir(folder) if e.name.startswith("gyroid-tile-") and e.name.endswith(".npz")]
        tiles.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    except OSError:
        return
    for entry in tiles[keep:]:
        try:
            os.remove(entry.path)
        except OSError:
            pass


def _save(path, c):
    caps = {f"cap{a}{side}": c.caps[a][i] for a in range(3) for i, side in enumerate(("lo", "hi"))}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as fh:
            np.savez(fh, cell=c.cell, origin=c.origin, vertices=c.vertices, faces=c.faces, rep=c.rep, off=c.off,
                     worst=c.worst, n_surface=c.n_surface, **caps)
        os.replace(tmp, path)  # whole files only: a reader never sees a half-written one
        _evict(os.path.dirname(path))
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass


def cell_mesh(cell: float, level: float, kind: str = "gyroid", h=None, tolerance: float = MESH_TOLERANCE_MM):
    """The closed void mesh of one tile (CellMesh), made once per rounded (cell, level, kind, step, tolerance):
    the level to 1e-4 (porosity moves by under 0.01 points). GeometryError if it cannot be made."""
    h = float(h or cell / MESH_SAMPLES_PER_CELL)
    out = _cell_cached(round(float(cell), 6), round(float(level), 4), kind, round(h, 6), float(tolerance))
    if out is None:
        raise GeometryError("The lattice's unit cell could not be meshed.",
                            "Try a slightly different pore size or porosity; report this as a bug.")
    return out


def tiled_pores(c: CellMesh, cells: np.ndarray) -> TriMesh:
    """The void in the given tiles (integer (M, 3): tile (i, j, k) is the box origin + (i, j, k) T + [0, T])
    as one closed mesh: copies of ``c`` joined along their shared faces, the caps between two copies dropped."""
    cells = np.unique(np.asarray(cells, dtype=np.int64).reshape(-1, 3), axis=0)
    base = cells.min(axis=0) - 1
    dims = cells.max(axis=0) - base + 2
    code = lambda q: ((q[..., 0] - base[0]) * dims[1] + (q[..., 1] - base[1])) * dims[2] + (q[..., 2] - base[2])  # noqa: E731
    present = np.zeros(int(np.prod(dims)), dtype=bool)
    present[code(cells)] = True
    nf = len(c.faces)
    keep = np.ones((len(cells), nf), dtype=bool)
    for axis in range(3):
        lo_cap, hi_cap = c.caps[axis]
        step = np.eye(3, dtype=np.int64)[axis]
        keep[np.ix_(present[code(cells - step)], lo_cap)] = False  # a neighbour below: its hi cap is ours flipped
        keep[np.ix_(present[code(cells + step)], hi_cap)] = False
    # Global vertex: (the rep, the cell it lies in counting its offset).
    nv = np.int64(len(c.vertices))
    gkey = c.rep[None, :] + nv * code(cells[:, None, :] + c.off[None, :, :])
    cell_of, face_of = np.nonzero(keep)
    tri = gkey[cell_of[:, None], c.faces[face_of]]
    used = np.zeros(int(nv * np.prod(dims)), dtype=bool)  # a table over all keys: no sort of millions
    used[tri.ravel()] = True
    uniq = np.flatnonzero(used)
    index = np.cumsum(used) - 1
    inverse = index[tri]
    del used, index
    rep = uniq % nv
    q = uniq // nv
    ijk = np.stack([q // (dims[1] * dims[2]), (q // dims[2]) % dims[1], q % dims[2]], axis=1) + base
    vertices = c.vertices[rep] + ijk * c.cell
    return TriMesh(vertices, inverse.reshape(-1, 3))


def pore_cells(axes, h: float, inside: np.ndarray, cell: float, level: float, kind: str = "gyroid",
               mesh_h=None, tolerance: float = MESH_TOLERANCE_MM) -> tuple:
    """The lattice's void as a closed mesh of whole tiles covering the samples ``inside`` (a mask on the grid
    ``axes``, step ``h``) and a step and a half around them: (TriMesh, largest error of the cell's triangles).
    Every surface triangle has its grid of sixths within ``tolerance`` of the exact implicit surface; the faces
    closing the block off lie on tile faces at least about half a step outside the samples' region."""
    from scipy import ndimage

    c = cell_mesh(cell, level, kind, mesh_h, tolerance)
    grown = ndimage.binary_dilation(inside, np.ones((3, 3, 3), dtype=bool))
    # The cells any of those samples' voxels reaches into: a sample's cell, per axis, at -h/2 and +h/2.
    cells = []
    for d in range(3):
        first = np.floor((axes[d] - 0.5 * h - c.origin[d]) / c.cell[d]).astype(np.int64)
        last = np.floor((axes[d] + 0.5 * h - c.origin[d]) / c.cell[d]).astype(np.int64)
        cells.append((first, last, first.min()))
    shape = tuple(int(last.max() - base) + 1 for first, last, base in cells)
    hit = np.zeros(shape, dtype=bool)
    ijk = np.nonzero(grown)
    for pick in np.ndindex(2, 2, 2):
        hit[tuple(cells[d][pick[d]][ijk[d]] - cells[d][2] for d in range(3))] = True
    return tiled_pores(c, np.argwhere(hit) + np.array([b for _, _, b in cells])), c.worst
