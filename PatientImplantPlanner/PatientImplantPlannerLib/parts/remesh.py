"""Adaptive isotropic remeshing of a closed triangle mesh lying on an implicit surface (Botsch & Kobbelt's split,
collapse, flip and relax passes), vectorised with numpy: every pass works on a set of independent edges at once.

The surface is known only through an oracle: ``project`` moves points onto it, ``normals`` gives its unit normal
near a point, ``size`` the wanted edge length there and ``distance`` how far off the surface a point lies (a
triangle's chordal error is estimated from its edge midpoints and centroid). Each iteration (a ``Mode``) splits
edges longer than 4/3 of the wanted length or whose midpoint lies off by more than its error bound, collapses edges
shorter than 4/5 of it (link condition, no triangle tilted or over the bound, no edge made too long), flips edges
towards valence 6 and relaxes the vertices along the surface. Isotropic iterations (a loose bound) shape the
triangles; error-mode iterations (the tolerance as the bound, longer wanted lengths) then merge every triangle the
tolerance allows. Vertices marked not movable (where the mesh is closed off, or is to stay as it is) are never moved
or removed, and no edge touching one is split, collapsed or flipped, except for vertices marked pinned: they stay
where they are, but their edges to movable vertices may be split or flipped and a movable neighbour collapsed into
them (a periodic tile's seam, parts/gyrocell.py). The mesh stays closed, manifold and consistently oriented.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np

SPLIT_ABOVE = 4.0 / 3.0  # edges longer than this times the wanted length are split
COLLAPSE_BELOW = 4.0 / 5.0  # edges shorter than this times the wanted length are collapsed
MIN_NORMAL_COS = 0.5  # a collapse or flip may tilt no triangle by more than 60 degrees
MIN_VALENCE = 4  # no operation leaves a vertex with fewer neighbours
ON_SURFACE = 1e-4  # mm: a projected point further off than this did not reach the surface
_KEY = np.int64(1 << 31)  # edge keys min * _KEY + max, stable while vertices are added
ROUNDS = 8  # selection rounds of independent collapses or flips per pass


SAMPLE_BARY = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1], [4, 1, 1], [1, 4, 1], [1, 1, 4]], float)
SAMPLE_BARY = SAMPLE_BARY / SAMPLE_BARY.sum(axis=1, keepdims=True)  # the points of a triangle its error is taken at
_PAIR = SAMPLE_BARY * np.roll(SAMPLE_BARY, -1, axis=1)  # b0 b1, b1 b2, b2 b0 at the sample points


@dataclass
class Oracle:
    project: Callable  # (N, 3) points -> (N, 3) points on the surface
    normals: Callable  # (N, 3) points -> (N, 3) unit normals of the surface there
    size: Callable  # (N, 3) points -> (N,) wanted edge length there (mm)
    distance: Callable  # (N, 3) points -> (N,) signed distance to the surface (mm)
    tolerance: float  # chordal error bound (mm)


@dataclass
class Mode:
    """One remeshing iteration: its splits, collapses, flips and relaxation."""

    error: bool = False  # error mode: the bounds below are ``bound``, else ``loose`` (times the tolerance)
    scale: float = 1.0  # times the oracle's wanted length
    bound: float = 1.0  # edges whose midpoint lies further off are split; no triangle made may exceed it
    loose: float = 2.0  # the same outside error mode (keeps isotropic passes from bridging thin struts)
    collapses: int = 3  # collapse passes
    flips: int = 2  # flip passes
    relax: bool = True  # tangential relaxation

    def limit(self, oracle: "Oracle") -> float:
        return (self.bound if self.error else self.loose) * oracle.tolerance


def _rmax(a: np.ndarray) -> np.ndarray:
    """Row maxima of a narrow (N, k) array (numpy's reductions along a short axis are several times slower)."""
    out = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        np.maximum(out, a[:, j], out=out)
    return out


def _rall(a: np.ndarray) -> np.ndarray:
    return a[:, 0] & a[:, 1] & a[:, 2]


def _rany(a: np.ndarray) -> np.ndarray:
    return a[:, 0] | a[:, 1] | a[:, 2]


def _rnorm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(a[:, 0] * a[:, 0] + a[:, 1] * a[:, 1] + a[:, 2] * a[:, 2])


def estimated_errors(v: np.ndarray, f: np.ndarray, distance: Callable) -> np.ndarray:
    """Largest error over each triangle's sample points, from its three edge midpoints and its centroid: with the
    corners on the surface the error over a small triangle is a quadratic vanishing at the corners,
    e(b) = 4 (m01 b0 b1 + m12 b1 b2 + m20 b2 b0) with m the signed errors at the edge midpoints; the centroid's own
    distance catches a triangle far from that (one bridging a thin strut)."""
    corners = v[f]
    mid = (corners + np.roll(corners, -1, axis=1)) / 2.0
    d = distance(np.concatenate([mid.reshape(-1, 3), corners.mean(axis=1)]))
    m = d[:3 * len(f)].reshape(-1, 3)
    return np.maximum(_rmax(np.abs(4.0 * m @ _PAIR.T)), np.abs(d[3 * len(f):]))


def split_marked_edges(v, f, marked, project, edges=None):
    """Split every edge marked (in any face, (M, 3) over edges f0f1, f1f2, f2f0) at its midpoint projected onto the
    surface; faces with one, two or three split edges become two, three or four (the mesh stays conforming).
    Returns (vertices, faces, mask of the old faces kept unchanged: they come first in the new faces, in order)."""
    n = np.int64(len(v))
    if edges is None:
        a, b = f, np.roll(f, -1, axis=1)
        uniq, edge = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_inverse=True)
    else:
        uniq, edge = edges.keys, edges.edge_of_half
    edge = edge.reshape(f.shape)
    chosen = np.zeros(len(uniq), dtype=bool)
    chosen[edge[marked]] = True
    split = chosen[edge]
    number = np.cumsum(chosen) - 1
    uniq = uniq[chosen]
    mid = project((v[uniq // n] + v[uniq % n]) / 2.0)
    new = np.full(f.shape, -1, dtype=np.int64)
    new[split] = len(v) + number[edge[split]]
    count = split.sum(axis=1)
    out = [f[count == 0]]
    for r in range(3):
        one = (count == 1) & split[:, r]  # rotated so the split edge is f0f1
        q, m = np.roll(f[one], -r, axis=1), np.roll(new[one], -r, axis=1)[:, 0]
        out += [np.stack([q[:, 0], m, q[:, 2]], 1), np.stack([m, q[:, 1], q[:, 2]], 1)]
        two = (count == 2) & ~split[:, r]  # rotated so the edge kept whole is f2f0
        q, m = np.roll(f[two], -(r + 1) % 3, axis=1), np.roll(new[two], -(r + 1) % 3, axis=1)
        out += [np.stack([q[:, 1], m[:, 1], m[:, 0]], 1), np.stack([q[:, 0], m[:, 0], m[:, 1]], 1),
                np.stack([q[:, 0], m[:, 1], q[:, 2]], 1)]
    three = count == 3
    q, m = f[three], new[three]
    out += [np.stack([q[:, 0], m[:, 0], m[:, 2]], 1), np.stack([m[:, 0], q[:, 1], m[:, 1]], 1),
            np.stack([m[:, 2], m[:, 1], q[:, 2]], 1), m]
    return np.concatenate([v, mid]), np.concatenate(out), count == 0


class _Edges:
    """The undirected edges of a closed manifold mesh: for edge e, half-edge h1[e] (face h1 // 3, corner h1 % 3)
    runs a -> b with c opposite, h2[e] runs b -> a with d opposite."""

    def __init__(self, f: np.ndarray, nv: int):
        n = np.int64(nv)
        a, b = f.ravel(), np.roll(f, -1, axis=1).ravel()
        key = np.minimum(a, b) * n + np.maximum(a, b)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        if len(sk) % 2 or not np.array_equal(sk[0::2], sk[1::2]):
            raise ValueError("remesh needs a closed manifold mesh (every edge in exactly two triangles)")
        self.keys, self.n = sk[0::2], n
        self.h1, self.h2 = order[0::2], order[1::2]
        self.a, self.b = a[self.h1], b[self.h1]
        self.c = np.roll(f, -2, axis=1).ravel()[self.h1]
        self.d = np.roll(f, -2, axis=1).ravel()[self.h2]
        self.f1, self.f2 = self.h1 // 3, self.h2 // 3
        self.edge_of_half = np.empty(len(key), dtype=np.int64)
        self.edge_of_half[order] = np.repeat(np.arange(len(self.keys)), 2)

    def exists(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        k = np.minimum(p, q) * self.n + np.maximum(p, q)
        i = np.clip(np.searchsorted(self.keys, k), 0, len(self.keys) - 1)
        return self.keys[i] == k


def _normals(v, f):
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.maximum(_rnorm(n), 1e-300)[:, None]


def _independent(prio: np.ndarray, a: np.ndarray, b: np.ndarray, f: np.ndarray, nv: int) -> np.ndarray:
    """Edges (a, b) with distinct priorities (-1: not a candidate) such that no triangle of f touches the endpoints
    of two chosen edges: each is chosen where its priority is the largest of all edges touching any triangle
    around its endpoints (f: at least the triangles touching a candidate's endpoint)."""
    vp = np.full(nv, -1, dtype=np.int64)
    np.maximum.at(vp, a, prio)
    np.maximum.at(vp, b, prio)
    fp = _rmax(vp[f])
    vq = np.full(nv, -1, dtype=np.int64)
    np.maximum.at(vq, f.ravel(), np.repeat(fp, 3))
    return (prio >= 0) & (vq[a] == prio) & (vq[b] == prio)


def _split_pass(v, f, movable, surface, vsize, oracle: Oracle, mode: Mode, pinned):
    e = _Edges(f, len(v))
    length = _rnorm(v[e.a] - v[e.b])
    long_ = length > SPLIT_ABOVE * mode.scale * 0.5 * (vsize[e.a] + vsize[e.b])
    long_ |= np.abs(oracle.distance((v[e.a] + v[e.b]) / 2.0)) > mode.limit(oracle)
    long_ &= (movable[e.a] | movable[e.b]) & (movable[e.a] | pinned[e.a]) & (movable[e.b] | pinned[e.b])
    if not long_.any():
        return v, f, movable, surface, vsize, pinned, 0, np.zeros(0, dtype=np.int64)
    n_old = len(v)
    marked = long_[e.edge_of_half].reshape(f.shape)
    touched = f[_rany(marked)].ravel()
    v, f, _ = split_marked_edges(v, f, marked, oracle.project, e)
    new = np.ones(len(v) - n_old, dtype=bool)
    return (v, f, np.concatenate([movable, new]), np.concatenate([surface, new]),
            np.concatenate([vsize, oracle.size(v[n_old:])]), np.concatenate([pinned, ~new]), int(long_.sum()), touched)


def _vertex_faces(f: np.ndarray, nv: int):
    """(start, faces): the triangles around vertex i are faces[start[i]:start[i + 1]]."""
    start = np.zeros(nv + 1, dtype=np.int64)
    np.cumsum(np.bincount(f.ravel(), minlength=nv), out=start[1:])
    return start, np.argsort(f.ravel(), kind="stable") // 3


def _around(vf, items: np.ndarray):
    """Triangles around each of ``items``, concatenated: (faces, position in items)."""
    start, faces = vf
    counts = start[items + 1] - start[items]
    owner = np.repeat(np.arange(len(items)), counts)
    offs = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    return faces[start[items][owner] + offs], owner


def _collapse_checks(v, f, vf, a, b, length, surface, oracle: Oracle, mode: Mode, pinned):
    """Which of the independent collapses of edges (a, b) are valid, the merged vertices, their wanted sizes and
    the vertices of the triangles around the valid ones."""
    nv, n_win = np.int64(len(v)), len(a)
    fa, oa = _around(vf, a)
    fb, ob = _around(vf, b)
    # Link condition: a and b share exactly their two opposite vertices.
    ta, tb = f[fa], f[fb]
    na, nb = ta[ta != a[oa, None]], tb[tb != b[ob, None]]  # two per triangle, in order
    wa, wb = np.repeat(oa, 2), np.repeat(ob, 2)
    keys_a = np.unique((wa * nv + na)[na != b[wa]])
    keys_b = np.unique((wb * nv + nb)[nb != a[wb]])
    ok = np.bincount(np.intersect1d(keys_a, keys_b, assume_unique=True) // nv, minlength=n_win) == 2
    # Geometry: the merged vertex on the surface; no triangle of the two stars tilts, gets edges too long for the
    # size wanted there or exceeds the error bound.
    mid = (v[a] + v[b]) / 2.0
    pin = pinned[b]  # collapsed into b, which stays where it is
    p = oracle.project(mid)
    p[pin] = v[b[pin]]
    size_p = oracle.size(p)
    ok &= pin | ((_rnorm(p - mid) < 0.5 * length) & (np.abs(oracle.distance(p)) < ON_SURFACE))
    faces, owner = np.concatenate([fa, fb]), np.concatenate([oa, ob])
    tri = f[faces]
    is_a, is_b = tri == a[owner, None], tri == b[owner, None]
    keep = ~(_rany(is_a) & _rany(is_b)) & ok[owner]  # the two triangles of the collapsing edge go
    tri, owner, moving = tri[keep], owner[keep], (is_a | is_b)[keep]
    pos = v[tri]
    pos[moving] = p[owner]
    pos_flat, local = pos.reshape(-1, 3), np.arange(3 * len(tri)).reshape(-1, 3)
    bad = np.einsum("ij,ij->i", _normals(v, tri), _normals(pos_flat, local)) < MIN_NORMAL_COS
    bad |= _rall(pinned[np.where(moving, b[owner, None], tri)])  # no triangle of pinned vertices only
    side = pos - np.roll(pos, -1, axis=1)
    bad |= np.sqrt(_rmax(np.einsum("tkd,tkd->tk", side, side))) > (
        SPLIT_ABOVE * mode.scale * size_p[owner])
    checked = _rall(surface[tri]) & ~bad  # triangles closing the mesh off are not on the surface
    bad[checked] |= estimated_errors(pos_flat, local[checked], oracle.distance) > mode.limit(oracle)
    ok &= np.bincount(owner, weights=bad, minlength=n_win) == 0
    return ok, p, size_p, tri[ok[owner]].ravel()


def _collapse_pass(v, f, movable, surface, vsize, oracle: Oracle, rng, mode: Mode, tried, version, pinned):
    """Collapse short edges to their midpoints (on the surface), shortest first, an independent set at a time: a
    few rounds, each adding the independent valid collapses left (the invalid ones dropped). ``tried``: (sorted
    keys of the edges whose collapse was found invalid, the sum of their endpoints' ``version`` then): not tried
    again while no collapse, split or flip has changed the triangles around them (``version`` counts those changes
    per vertex; updated here). Returns (vertices, faces, sizes, number collapsed, tried)."""
    nv = len(v)
    e = _Edges(f, nv)
    length = _rnorm(v[e.a] - v[e.b])
    valence = np.bincount(f.ravel(), minlength=nv)
    # Both movable (merged at the midpoint) or one pinned (the other merged into it).
    pair = (movable[e.a] & movable[e.b]) | (movable[e.a] & pinned[e.b]) | (pinned[e.a] & movable[e.b])
    cand = (pair & (length < COLLAPSE_BELOW * mode.scale * 0.5 * (vsize[e.a] + vsize[e.b]))
            & (valence[e.a] + valence[e.b] - 4 >= MIN_VALENCE)
            & (valence[e.c] > MIN_VALENCE) & (valence[e.d] > MIN_VALENCE))
    idx = np.flatnonzero(cand)
    key = np.minimum(e.a[idx], e.b[idx]) * _KEY + np.maximum(e.a[idx], e.b[idx])
    stamp = version[e.a[idx]] + version[e.b[idx]]
    if len(tried[0]):
        i = np.clip(np.searchsorted(tried[0], key), 0, len(tried[0]) - 1)
        fresh = (tried[0][i] != key) | (tried[1][i] != stamp)
        idx, key, stamp = idx[fresh], key[fresh], stamp[fresh]
    if idx.size == 0:
        return v, f, vsize, 0, tried
    prio = np.empty(idx.size, dtype=np.int64)
    prio[np.argsort(-length[idx] * rng.uniform(0.9, 1.1, idx.size))] = np.arange(idx.size)  # shortest first
    # Only the triangles touching a candidate's endpoints are looked at.
    near = np.zeros(nv, dtype=bool)
    swap = pinned[e.a[idx]]  # the pinned end is b, the one kept
    ca, cb = np.where(swap, e.b[idx], e.a[idx]), np.where(swap, e.a[idx], e.b[idx])
    near[ca] = near[cb] = True
    sub_f = f[_rany(near[f])]
    vf = _vertex_faces(sub_f, nv)
    done, points, sizes, bad = [], [], [], []
    blocked = np.zeros(nv, dtype=bool)
    for _ in range(ROUNDS):
        win = np.flatnonzero(_independent(prio, ca, cb, sub_f, nv))
        if win.size == 0:
            break
        ok, p, size_p, star = _collapse_checks(v, sub_f, vf, ca[win], cb[win], length[idx[win]], surface, oracle,
                                               mode, pinned)
        prio[win] = -1
        # Candidates sharing a triangle with an accepted collapse's endpoints can no longer be made.
        blocked[star] = True
        prio[blocked[ca] | blocked[cb]] = -1
        done.append(idx[win[ok]])
        bad.append(win[~ok])
        points.append(p[ok])
        sizes.append(size_p[ok])
    win = np.concatenate(done)
    a, b = np.where(pinned[e.a[win]], e.b[win], e.a[win]), np.where(pinned[e.a[win]], e.a[win], e.b[win])
    v, vsize = v.copy(), vsize.copy()
    v[b], vsize[b] = np.concatenate(points), np.concatenate(sizes)
    remap = np.arange(nv)
    remap[a] = b
    f = remap[f]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    version[blocked] += 1
    bad = np.concatenate(bad)
    keys, first = np.unique(np.concatenate([key[bad], tried[0]]), return_index=True)  # the newest record first
    return v, f, vsize, len(win), (keys, np.concatenate([stamp[bad], tried[1]])[first])


def _flip_checks(v, f, e, win, oracle: Oracle, mode: Mode):
    a, b, c, d = e.a[win], e.b[win], e.c[win], e.d[win]
    ok = ~e.exists(c, d)
    t1, t2 = np.stack([a, d, c], 1), np.stack([b, c, d], 1)
    n_old = _normals(v, f[e.f1[win]]) + _normals(v, f[e.f2[win]])
    n_old /= np.maximum(_rnorm(n_old), 1e-300)[:, None]
    n1, n2 = _normals(v, t1), _normals(v, t2)
    ok &= (np.einsum("ij,ij->i", n1, n_old) > MIN_NORMAL_COS) & (np.einsum("ij,ij->i", n2, n_old) > MIN_NORMAL_COS)
    ok &= np.einsum("ij,ij->i", n1, n2) > MIN_NORMAL_COS
    ok &= estimated_errors(v, np.concatenate([t1, t2]), oracle.distance).reshape(2, -1).max(axis=0) <= (
        mode.limit(oracle))
    return ok, t1, t2


def _flip_pass(v, f, movable, oracle: Oracle, rng, mode: Mode, pinned):
    """Flip edges where that brings the valences of the four vertices closer to 6, an independent set at a time
    (no vertex in two flips, so each flip's valences are exact), the largest gains first, in a few rounds."""
    nv = len(v)
    e = _Edges(f, nv)
    valence = np.bincount(f.ravel(), minlength=nv)
    va, vb, vc, vd = valence[e.a], valence[e.b], valence[e.c], valence[e.d]
    gain = va + vb - vc - vd  # sum of (valence - 6)^2 drops by 2 gain - 4
    free = movable | pinned
    cand = free[e.a] & free[e.b] & free[e.c] & free[e.d] & (va > MIN_VALENCE) & (vb > MIN_VALENCE)
    cand &= (movable[e.a] | movable[e.b]) & ~(pinned[e.c] & pinned[e.d])  # no edge between two pinned made or lost
    cand &= (e.c != e.d) & (gain >= 3)
    idx = np.flatnonzero(cand)
    prio = np.argsort(np.argsort(gain[idx] + rng.uniform(0.0, 0.5, idx.size)))
    quad = np.stack([e.a[idx], e.b[idx], e.c[idx], e.d[idx]], axis=1)
    done = []
    f = f.copy()
    used = np.zeros(nv, dtype=bool)
    for _ in range(ROUNDS if idx.size else 0):
        vp = np.full(nv, -1, dtype=np.int64)
        np.maximum.at(vp, quad.ravel(), np.repeat(prio, 4))
        new = np.flatnonzero((vp[quad] == prio[:, None]).all(axis=1) & (prio >= 0))
        if new.size == 0:
            break
        ok, t1, t2 = _flip_checks(v, f, e, idx[new], oracle, mode)
        prio[new] = -1
        used[quad[new[ok]].ravel()] = True  # candidates sharing a vertex with an accepted flip wait
        prio[used[quad].any(axis=1)] = -1
        done.append((idx[new[ok]], t1[ok], t2[ok]))
    for win, t1, t2 in done:
        f[e.f1[win]] = t1
        f[e.f2[win]] = t2
    return f, sum(len(d[0]) for d in done), np.flatnonzero(used)


def _relax_pass(v, f, movable, surface, oracle: Oracle, mode: Mode):
    """Each movable vertex to the mean of its neighbours along the tangent plane, back onto the surface; vertices
    of triangles that would tilt, or exceed both the mode's error bound and their error before, stay."""
    nv = len(v)
    a, b = f.ravel(), np.roll(f, -1, axis=1).ravel()  # each neighbour once (closed, consistently oriented)
    degree = np.maximum(np.bincount(a, minlength=nv), 1)
    idx = np.flatnonzero(movable)
    mean = np.stack([np.bincount(a, weights=v[b, i], minlength=nv) for i in range(3)], axis=1)[idx]
    p = v[idx]
    delta = mean / degree[idx, None] - p
    nrm = oracle.normals(p)
    delta -= np.einsum("ij,ij->i", delta, nrm)[:, None] * nrm
    q = oracle.project(p + delta)
    off = np.abs(oracle.distance(q)) > ON_SURFACE  # did not reach the surface: stays
    q[off] = p[off]
    new = v.copy()
    new[idx] = q
    checked = _rall(surface[f])
    look = np.arange(len(f))
    while True:  # vertices of a bad triangle go back; the triangles around them are checked again
        tri = f[look]
        bad = np.einsum("ij,ij->i", _normals(v, tri), _normals(new, tri)) < MIN_NORMAL_COS
        sel = np.flatnonzero(checked[look])
        err = estimated_errors(new, tri[sel], oracle.distance)
        over = err > mode.limit(oracle)  # then it may not grow
        sel, err = sel[over], err[over]
        bad[sel] |= err > estimated_errors(v, tri[sel], oracle.distance)
        if not bad.any():
            return new
        back = np.zeros(nv, dtype=bool)
        back[tri[bad].ravel()] = True
        new[back] = v[back]
        look = np.flatnonzero(_rany(back[f]))


def remesh(v, f, movable, oracle: Oracle, modes, surface=None, seed: int = 0, log=None, pinned=None):
    """The mesh remeshed, one iteration of split, collapse, flip and relax passes per mode: (vertices, faces,
    origin: the index in ``v`` of each vertex kept, -1 for new ones). ``surface``: the vertices on the surface
    (default: the movable ones); triangles with all three on it are held to the error bounds. ``pinned``: vertices
    that are not movable but whose edges to movable ones may be split, flipped or collapsed into them (kept)."""
    rng = np.random.default_rng(seed)
    v, f, movable = np.asarray(v, float), np.asarray(f, np.int64), np.asarray(movable, bool)
    surface = movable | (False if surface is None else np.asarray(surface, bool))
    pinned = np.zeros(len(v), bool) if pinned is None else np.asarray(pinned, bool) & ~movable
    n_in = len(v)
    version = np.zeros(n_in, dtype=np.int64)
    none = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    tried, last = none, None
    for it, mode in enumerate(modes):
        if mode != last:  # what failed under other bounds may pass now
            tried, last = none, mode
        vsize = oracle.size(v)
        v, f, movable, surface, vsize, pinned, n_split, touched = _split_pass(v, f, movable, surface, vsize, oracle,
                                                                              mode, pinned)
        version = np.concatenate([version, np.zeros(len(v) - len(version), dtype=np.int64)])
        version[touched] += 1
        n_collapse = n_flip = 0
        for _ in range(mode.collapses):
            v, f, vsize, k, tried = _collapse_pass(v, f, movable, surface, vsize, oracle, rng, mode, tried, version,
                                                   pinned)
            n_collapse += k
        for _ in range(mode.flips):
            f, k, quads = _flip_pass(v, f, movable, oracle, rng, mode, pinned)
            version[quads] += 1
            n_flip += k
        if mode.relax:
            v = _relax_pass(v, f, movable, surface, oracle, mode)
        if log is not None:
            log(f"remesh {it}: split {n_split}, collapsed {n_collapse}, flipped {n_flip}, {len(f)} triangles")
    used = np.zeros(len(v), dtype=bool)
    used[f.ravel()] = True
    origin = np.where(np.arange(len(v)) < n_in, np.arange(len(v)), -1)
    return v[used], (np.cumsum(used) - 1)[f], origin[used]
