"""The gyroid as an implicit field: its value and distance, the unit-cell calibration of the level for a porosity,
porosity and pore-size measurement, and the pore surface meshed within a chordal-error bound."""

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..core.errors import GeometryError, PlanError
from ..core.mesh import TriMesh, isosurface, to_polydata
from .remesh import SAMPLE_BARY, Mode, Oracle, remesh, split_marked_edges

# Sampling steps are cell / (whole number + 0.618...): an irrational ratio puts the voxel grid at every phase of the
# lattice, so nothing depends on where the part's box happens to start (with L / 12 exactly, measured pore sizes and
# fitted levels moved by 5 % and 2 points between plates of different size).
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
CALIBRATION_SAMPLES = 48  # samples per cell for the unit-cell porosity level
KINDS = ("gyroid", "sheet_gyroid")
VOXELS_PER_CELL = 9 + _GOLDEN  # ~9.6 samples a cell; irrational so grid and cell never share a phase (5 % pore drift)
MEASURE_SAMPLES_PER_CELL = 24 + _GOLDEN  # pore-size measurement sampling (within ~2 % of 48 samples a cell)


def gyroid(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """g on the grid x (nx,), y (ny,), z (nz,) in radians, as float32 (nx, ny, nz), built from 1-D sines."""
    sx, cx = np.sin(x).astype(np.float32), np.cos(x).astype(np.float32)
    sy, cy = np.sin(y).astype(np.float32), np.cos(y).astype(np.float32)
    sz, cz = np.sin(z).astype(np.float32), np.cos(z).astype(np.float32)
    out = np.empty((len(x), len(y), len(z)), dtype=np.float32)
    for i in range(len(x)):  # one u-slice at a time keeps temporaries small
        out[i] = sx[i] * cy[:, None] + np.outer(sy, cz) + cx[i] * sz[None, :]
    return out


def _implicit(g: np.ndarray, kind: str) -> np.ndarray:
    """Field whose negative part is the solid, before subtracting the level: g, or |g| for the sheet."""
    return np.abs(g, out=g) if kind == "sheet_gyroid" else g


def measure_porosity(solid_mask: np.ndarray, region_mask: Optional[np.ndarray] = None) -> float:
    """Void fraction of ``region_mask`` (whole array if None): 1 - solid voxels / region voxels."""
    solid = np.asarray(solid_mask, dtype=bool)
    if region_mask is None:
        return float(1.0 - solid.mean())
    region = np.asarray(region_mask, dtype=bool)
    n = int(region.sum())
    if n == 0:
        raise GeometryError("The porosity region is empty.", "Check the layer lies inside the part.")
    return float(1.0 - np.count_nonzero(solid & region) / n)


def inscribed_sphere_diameters(void_mask: np.ndarray, voxel_mm: float,
                               centre_mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Diameters (mm) of the maximal inscribed spheres of the void, one per pore.

    Candidates are the local-maximum plateaus (3x3x3) of the void's Euclidean distance transform; a candidate is
    kept only if no larger candidate lies inside its sphere (so voxel-noise bumps along a channel do not count as
    pores); only centres in ``centre_mask`` count. The radius is the distance from a void voxel centre to the nearest
    solid voxel centre. Discretisation: on gyroids the mean stays within about 2 % from 24 to 48 samples a cell;
    on spheres sampled 25 times across it reads 0-7 % low depending on where the centre falls on the voxel grid
    (3.4 % on average). The lattice calibration uses this same measurement, so the cell size absorbs the bias.
    Outside the array counts as void.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    void = np.asarray(void_mask, dtype=bool)
    dist = ndimage.distance_transform_edt(void).astype(np.float32)
    peak = (dist > 0) & (dist == ndimage.maximum_filter(dist, size=3, mode="nearest"))
    if centre_mask is not None:
        peak &= np.asarray(centre_mask, dtype=bool)
    labels, n = ndimage.label(peak, structure=np.ones((3, 3, 3)))
    del peak
    if n == 0:
        return np.zeros(0)
    index = np.arange(1, n + 1)
    radius = np.asarray(ndimage.maximum(dist, labels, index), dtype=float)
    where = np.asarray(ndimage.maximum_position(dist, labels, index), dtype=float).reshape(-1, 3)
    # Dominance: drop a candidate whose sphere contains the centre of a strictly larger one.
    tree = cKDTree(where)
    keep = np.ones(n, dtype=bool)
    for i, near in enumerate(tree.query_ball_point(where, radius - 1e-6)):
        if len(near) > 1 and radius[near].max() > radius[i] + 1e-6:
            keep[i] = False
    return 2.0 * radius[keep] * voxel_mm


def measure_pore_size(void_mask: np.ndarray, voxel_mm: float, centre_mask: Optional[np.ndarray] = None) -> float:
    """Mean maximal-inscribed-sphere diameter of the void, in um (see :func:`inscribed_sphere_diameters`)."""
    d = inscribed_sphere_diameters(void_mask, voxel_mm, centre_mask)
    if len(d) == 0:
        raise GeometryError("No pores found in the measured region.", "Check the lattice region is not solid.")
    return float(d.mean() * 1000.0)


@dataclass(frozen=True)
class Calibration:
    kind: str
    porosity: float
    level: float  # t for a whole number of periods
    pore_per_cell: float  # pore diameter / L
    strut_per_cell: float  # solid inscribed-sphere diameter / L


@functools.lru_cache(maxsize=1)
def _level_field() -> np.ndarray:
    n = CALIBRATION_SAMPLES
    s = 2.0 * np.pi * (np.arange(n) + 0.5) / n
    return gyroid(s, s, s)


@functools.lru_cache(maxsize=128)
def _calibrate(kind: str, porosity: float) -> Calibration:
    n = MEASURE_SAMPLES_PER_CELL
    # Level: exact quantile of the field over one period, finely sampled.
    level = float(np.quantile(_implicit(_level_field().copy(), kind), 1.0 - porosity))
    # Pore and strut size per cell: measured exactly as on the part, averaged over three grid phases;
    # two periods are sampled so spheres centred in the middle period see their whole neighbourhood.
    pores, struts = [], []
    for phase in (0.5, 0.2, 0.8):
        pos = (np.arange(int(2 * n)) + phase) / n - 0.5  # cell units
        solid = _implicit(gyroid(*[2.0 * np.pi * pos] * 3), kind) < level
        mid = (pos >= 0.0) & (pos < 1.0)
        centre = mid[:, None, None] & mid[None, :, None] & mid[None, None, :]
        pores.append(inscribed_sphere_diameters(~solid, 1.0 / n, centre))
        struts.append(inscribed_sphere_diameters(solid, 1.0 / n, centre))
    return Calibration(kind, porosity, level, float(np.concatenate(pores).mean()),
                       float(np.concatenate(struts).mean()))


def calibrate(kind: str, porosity: float) -> Calibration:
    """Level t and pore/strut size per cell for a target porosity, measured on a periodic cell (cached)."""
    if kind not in KINDS:
        raise PlanError(f"Unknown lattice kind {kind!r}.", f"Use one of {', '.join(KINDS)}.")
    return _calibrate(kind, round(float(porosity), 4))


def _flying_edges(field: np.ndarray, origin, h: float) -> TriMesh:
    """Closed surface {field = 0} (solid where field < 0) of an [x, y, z] grid whose border is already void."""
    mesh = isosurface(field.transpose(2, 1, 0), 0.0, (h, h, h), origin)
    if mesh.volume() < 0:
        mesh = TriMesh(mesh.vertices, mesh.faces[:, ::-1].copy())
    return mesh


def gyroid_distance(points: np.ndarray, cell: float, level: float, kind: str = "gyroid") -> np.ndarray:
    """Signed distance (mm, negative in the solid) of plane-frame points (N, 3) to the exact lattice surface,
    to first order: (g - t) / |grad g| (sheet: (|g| - t) / |grad g|); exact to well under 1 um within 30 um."""
    return _gyroid_eval(points, cell, level, kind)[0]


def _sin_cos(points: np.ndarray, k: float) -> tuple:
    """sin and cos of k x each coordinate of points (N, 3): (sin x, cos x, sin y, cos y, sin z, cos z)."""
    p = np.asarray(points, dtype=float) * k
    return tuple(f(p[:, i]) for i in range(3) for f in (np.sin, np.cos))


def _gyroid_eval(points: np.ndarray, cell: float, level: float, kind: str):
    """(first-order signed distance, gradient of the implicit in mm^-1) at plane-frame points (N, 3)."""
    k = 2.0 * np.pi / cell
    sx, cx, sy, cy, sz, cz = _sin_cos(points, k)
    g = sx * cy + sy * cz + sz * cx
    grad = np.stack([cx * cy - sz * sx, cy * cz - sx * sy, cz * cx - sy * sz], axis=1) * k
    if kind == "sheet_gyroid":
        f, grad = np.abs(g) - level, grad * np.sign(g)[:, None]
    else:
        f = g - level
    norm = np.sqrt(grad[:, 0] * grad[:, 0] + grad[:, 1] * grad[:, 1] + grad[:, 2] * grad[:, 2])
    return f / np.maximum(norm, _MIN_GRADIENT * k), grad


_MIN_GRADIENT = 0.2  # |grad g| floor (per radian) where g is flat, far from the surface: keeps distances finite


def _gyroid_distance_grid(axes, cell: float, level: float, kind: str) -> np.ndarray:
    """gyroid_distance on the grid axes (u, v, w), float32 (nx, ny, nz), one u-slice at a time."""
    k = 2.0 * np.pi / cell
    s = [np.sin(k * a).astype(np.float32) for a in axes]
    c = [np.cos(k * a).astype(np.float32) for a in axes]
    out = np.empty(tuple(len(a) for a in axes), dtype=np.float32)
    syz, cyz = np.outer(s[1], c[2]), np.outer(c[1], c[2])
    ssyz = np.outer(s[1], s[2])
    floor = np.float32(_MIN_GRADIENT)
    for i in range(len(axes[0])):
        g = s[0][i] * c[1][:, None] + syz + c[0][i] * s[2][None, :]
        gx = c[0][i] * c[1][:, None] - s[2][None, :] * s[0][i]
        gy = cyz - s[0][i] * s[1][:, None]
        gz = c[0][i] * c[2][None, :] - ssyz
        if kind == "sheet_gyroid":  # the sheet's walls are about two samples thick: contour |g| - t as it is
            out[i] = (np.abs(g) - level) / np.float32(k)  # (a local normalisation thins them: +3 points porosity)
        else:
            out[i] = (g - level) / (np.maximum(np.sqrt(gx * gx + gy * gy + gz * gz), floor) * np.float32(k))
    return out


# The pores are meshed on their own, as a smooth surface, and cut by the part with exact booleans: the contact face,
# the layer's floor, the walls and a footprint are then exact planes and edges (a contour of a clipped field bevels
# them by half a grid step). The surface is contoured on a coarse grid (MESH_SAMPLES_PER_CELL a cell: the coarsest
# that keeps the gyroid's topology, checked below) and its vertices moved onto the exact implicit surface. Within a
# step of the layer's samples it is then remeshed (parts/remesh.py) with the exact surface as the oracle: first
# isotropically, to edges of sqrt(MESH_SIZE_FACTOR * tolerance / largest principal curvature) (near-equilateral
# triangles instead of marching cubes' slivers), then driven by the error (edges whose midpoint lies off by more
# than the tolerance split, every collapse that keeps all its triangles within it made). Last, every triangle whose
# sample points (edge midpoints, centroid, three inner points) lie more than MESH_TOLERANCE_MM off the exact
# surface is split at its longest edge, the new points projected too (the bound is kept whatever the remesh did).
# Measured on a 20 x 14 mm footplate's pores: 1.5x fewer triangles in the fused part than the contour relaxed in 4
# tangential steps, then refined (313 vs 485 per mm3 of layer), for the same 27 um bound (mean 8.6 vs 6.3 um).
# A layer's pores are now made of copies of one meshed tile of periods (parts/gyrocell.py, the same steps with the
# tile's faces locked periodic); pore_mesh meshes a box as a whole where no tile can be made.
MESH_SAMPLES_PER_CELL = 4 + _GOLDEN  # ~4.6 (with the solid bias; without it some struts come apart below ~5.6)


MESH_SOLID_BIAS = 0.25  # steps


MESH_MARGIN_STEPS = 2  # the pores are accurate this many steps (chessboard) around the layer's samples


MESH_TOLERANCE_MM = 0.027  # chordal error bound at the sample points of every triangle (target 30 um)


MESH_RELAX_ITERATIONS = 0  # tangential relaxation of the contour before the remesh (4 before it existed)


MESH_SIZE_FACTOR = 16.0  # isotropic edge length sqrt(factor * tolerance / curvature); 12-20 within 1 %


# Two isotropic iterations, four error-driven ones (wanted lengths doubled so that the error decides). Pore
# triangles within the 20 x 14 footplate's layer: 67 960 so, 68 860 with three error-driven ones, 71 610 with one
# isotropic and three error-driven ones; each iteration costs about as much as the first (all of the mesh is seen).
MESH_REMESH_MODES = [Mode()] * 2 + [Mode(True, 2.0)] * 4


MESH_REFINE_PASSES = 6


_BARY = SAMPLE_BARY  # the sample points of a triangle the error is bounded at


def _project(points: np.ndarray, cell: float, level: float, kind: str, iterations: int = 4) -> np.ndarray:
    """Points moved onto the exact implicit surface by Newton steps along the gradient (each at most a tenth of a
    cell: where the gradient is weak a full step would jump to another sheet)."""
    p = np.array(points, dtype=float)
    cap = 0.1 * cell
    for _ in range(iterations):
        d, grad = _gyroid_eval(p, cell, level, kind)
        p -= np.clip(d, -cap, cap)[:, None] * grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)
    return p


def triangle_errors(mesh: TriMesh, cell: float, level: float, kind: str = "gyroid") -> np.ndarray:
    """Unsigned distance (mm) of each triangle's seven sample points to the exact implicit surface, (M, 7)."""
    pts = np.einsum("sk,mkd->msd", _BARY, mesh.vertices[mesh.faces])
    return np.abs(gyroid_distance(pts.reshape(-1, 3), cell, level, kind)).reshape(len(mesh.faces), len(_BARY))


# Every point of a triangle (on a barycentric grid of sixths, corners left out: 25 points, the seven sample points
# among them) is checked before the mesh is returned: the booleans cut triangles anywhere, and the pieces' own sample
# points then lie elsewhere on them. Between the seven points the error of the remeshed triangles reached 36 um
# (higher-order terms of the larger triangles), 2.5 % more triangles bring it within the bound on this grid.
_GRID_BARY = np.array([(i, j, 6 - i - j) for i in range(7) for j in range(7 - i) if max(i, j, 6 - i - j) < 6]) / 6.0


def _sampled_errors(v: np.ndarray, f: np.ndarray, cell: float, level: float, kind: str) -> np.ndarray:
    """Largest error over each triangle's points on a grid of sixths, each evaluated (one point a triangle at a
    time: all at once would need ~2 GB of temporaries on a demo footplate)."""
    corners = v[f]
    out = np.zeros(len(f))
    for b in _GRID_BARY:
        np.maximum(out, np.abs(gyroid_distance(b @ corners, cell, level, kind)), out=out)
    return out


def _split_marked_edges(v, f, marked, cell, level, kind):
    return split_marked_edges(v, f, marked, lambda p: _project(p, cell, level, kind))


def max_curvature(points: np.ndarray, cell: float, kind: str = "gyroid") -> np.ndarray:
    """Largest absolute principal curvature (mm^-1) of the level surface of g through each point (N, 3): the
    eigenvalues of P H P / |grad g| on the tangent plane (H the Hessian, P the projection off the normal)."""
    k = 2.0 * np.pi / cell
    sx, cx, sy, cy, sz, cz = _sin_cos(points, k)
    grad = np.stack([cx * cy - sz * sx, cy * cz - sx * sy, cz * cx - sy * sz], axis=1)
    gn = np.maximum(np.linalg.norm(grad, axis=1), _MIN_GRADIENT)
    n = grad / gn[:, None]
    hxx, hyy, hzz = -sx * cy - sz * cx, -sx * cy - sy * cz, -sy * cz - sz * cx
    hxy, hyz, hxz = -cx * sy, -cy * sz, -cz * sx
    hn = np.stack([hxx * n[:, 0] + hxy * n[:, 1] + hxz * n[:, 2], hxy * n[:, 0] + hyy * n[:, 1] + hyz * n[:, 2],
                   hxz * n[:, 0] + hyz * n[:, 1] + hzz * n[:, 2]], axis=1)
    nhn = np.einsum("ij,ij->i", n, hn)
    trace = hxx + hyy + hzz - nhn  # k1 + k2 (times |grad g|)
    frob = (hxx ** 2 + hyy ** 2 + hzz ** 2 + 2 * (hxy ** 2 + hyz ** 2 + hxz ** 2)
            - 2 * np.einsum("ij,ij->i", hn, hn) + nhn ** 2)  # k1^2 + k2^2
    return k * (np.abs(trace) + np.sqrt(np.maximum(2 * frob - trace ** 2, 0.0))) / (2 * gn)


def _oracle(cell: float, level: float, kind: str, tolerance_mm: float) -> Oracle:
    def normals(p):
        grad = _gyroid_eval(p, cell, level, kind)[1]
        return grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)

    def size(p):
        return np.minimum(np.sqrt(MESH_SIZE_FACTOR * tolerance_mm / max_curvature(p, cell, kind)), 0.5 * cell)

    return Oracle(lambda p: _project(p, cell, level, kind), normals, size,
                  lambda p: gyroid_distance(p, cell, level, kind), tolerance_mm)


def pore_mesh(lo, hi, cell: float, level: float, kind: str = "gyroid", h: Optional[float] = None,
              tolerance_mm: float = MESH_TOLERANCE_MM, inside: Optional[np.ndarray] = None) -> tuple:
    """The lattice's void (pores) in the box [lo, hi] (plane frame, mm) as a closed mesh: (TriMesh, max error mm).
    (The lattice tiles one meshed period instead, gyrocell.pore_cells; this is its fallback.)

    Within the box less 1.5 steps every triangle's sample points lie within ``tolerance_mm`` of the exact implicit
    surface (the error returned is the largest there); the box's own faces are marching-cubes bevels and must lie
    outside whatever the pores are cut with. ``inside`` (a mask on the grid ``_grid(lo, hi, h)``) limits the pores
    to those samples and MESH_MARGIN_STEPS + 1 steps around them (accurate MESH_MARGIN_STEPS past them); nothing
    is meshed in the rest of the box. If the coarse grid lost the surface's topology somewhere (a sample point
    stays far off after refining), the grid is refined and the mesh made again.
    """
    h = float(h or cell / MESH_SAMPLES_PER_CELL)
    axes = _grid(lo, hi, h)
    field_ = _gyroid_distance_grid(axes, cell, level, kind)
    np.negative(field_, out=field_)  # negative in the void
    # Sampled a quarter step towards solid: at ~4.6 samples a cell some struts' narrowest part falls between the
    # samples and the contour would cut them (measured: 1-3 % of the triangles far off, the grid refined); the
    # vertices are moved onto the exact surface below, so the bias only keeps the topology.
    field_ += np.float32(MESH_SOLID_BIAS * h)
    accurate = core = None
    if inside is not None:
        from scipy import ndimage

        cube = np.ones((3, 3, 3), dtype=bool)
        core = ndimage.binary_dilation(inside, cube)
        accurate = ndimage.binary_dilation(core, cube, iterations=MESH_MARGIN_STEPS - 1)
        field_[~ndimage.binary_dilation(accurate, cube)] = h  # solid: no pores there
    # Crossings kept at least a fifth of a step from the grid points (no slivers; the signs, so the topology, are
    # unchanged and the projection below puts the vertices on the surface anyway).
    near = np.abs(field_) < 0.2 * h
    field_[near] = np.where(field_[near] < 0, np.float32(-0.2 * h), np.float32(0.2 * h))
    del near
    for side in (np.s_[[0, -1]], np.s_[:, [0, -1]], np.s_[:, :, [0, -1]]):
        field_[side] = h
    mesh = _flying_edges(field_, [a[0] for a in axes], h)
    del field_
    v, f = mesh.vertices, mesh.faces
    inner_lo = np.array([a[1] for a in axes]) + 0.5 * h
    inner_hi = np.array([a[-2] for a in axes]) - 0.5 * h
    movable = np.all((v > inner_lo) & (v < inner_hi), axis=1)
    if accurate is not None:  # on the surface of the gyroid, not on the faces closing it off
        movable &= _on_grid(accurate, v, axes, h)
    v[movable] = _project(v[movable], cell, level, kind)
    if MESH_RELAX_ITERATIONS:
        from scipy.sparse import csr_matrix

        a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
        b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
        adjacency = csr_matrix((np.ones(2 * len(a)), (np.concatenate([a, b]), np.concatenate([b, a]))),
                               shape=(len(v), len(v)))
        adjacency.data[:] = 1.0
        degree = np.maximum(np.asarray(adjacency.sum(axis=1)).ravel(), 1.0)[movable, None]
        for _ in range(MESH_RELAX_ITERATIONS):  # half a step to the neighbours' mean, along the tangent plane
            p = v[movable]
            delta = (adjacency @ v)[movable] / degree - p
            grad = _gyroid_eval(p, cell, level, kind)[1]
            nrm = grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-12)
            delta -= np.einsum("ij,ij->i", delta, nrm)[:, None] * nrm
            step = np.linalg.norm(delta, axis=1, keepdims=True)
            delta *= np.minimum(0.5, 0.25 * h / np.maximum(step, 1e-12))
            q = _project(p + delta, cell, level, kind)
            off = np.abs(gyroid_distance(q, cell, level, kind)) > 1e-4  # did not reach the surface: stays
            q[off] = p[off]
            v[movable] = q
    if MESH_REMESH_MODES:  # remeshed within a step of the layer's samples (the rest is cut away)
        remeshed = movable if core is None else movable & _on_grid(core, v, axes, h)
        v, f, origin = remesh(v, f, remeshed, _oracle(cell, level, kind, tolerance_mm), MESH_REMESH_MODES, movable)
        movable = np.where(origin >= 0, movable[origin], True)
    checked = movable[f].all(axis=1)
    err = np.where(checked, _sampled_errors(v, f, cell, level, kind), 0.0)
    for _ in range(MESH_REFINE_PASSES):
        bad = np.flatnonzero(err > tolerance_mm)
        if bad.size == 0:
            break
        corners = v[f[bad]]
        length = np.linalg.norm(corners - np.roll(corners, -1, axis=1), axis=2)
        marked = np.zeros(f.shape, dtype=bool)
        marked[bad, np.argmax(length, axis=1)] = True
        n_old = len(v)
        v, f, unchanged = _split_marked_edges(v, f, marked, cell, level, kind)
        movable = np.concatenate([movable, np.ones(len(v) - n_old, dtype=bool)])
        new_faces = f[int(unchanged.sum()):]  # faces touching a split edge were rebuilt: only these need errors
        new_err = _sampled_errors(v, new_faces, cell, level, kind)
        err = np.concatenate([err[unchanged], np.where(movable[new_faces].all(axis=1), new_err, 0.0)])
    worst = float(err.max()) if len(err) else 0.0
    if worst > tolerance_mm and h > cell / (2 * VOXELS_PER_CELL):
        finer = None
        if inside is not None:  # the same region on the finer grid
            from scipy import ndimage

            axes2 = _grid(lo, hi, h / 1.4)
            ijk = [np.clip(np.rint((a2 - a[0]) / h).astype(np.int64), 0, len(a) - 1) for a, a2 in zip(axes, axes2)]
            finer = ndimage.binary_dilation(inside, np.ones((3, 3, 3), bool))[np.ix_(*ijk)]
        return pore_mesh(lo, hi, cell, level, kind, h / 1.4, tolerance_mm, finer)
    return TriMesh(v, f), worst


def voxelise(mesh: TriMesh, origin, h: float, shape: Sequence[int]) -> np.ndarray:
    """Boolean (nx, ny, nz) mask of the grid points origin + index * h inside a closed mesh (VTK stencil)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    nx, ny, nz = (int(s) for s in shape)
    if mesh.n_triangles == 0:
        return np.zeros((nx, ny, nz), dtype=bool)
    sten = vtk.vtkPolyDataToImageStencil()
    sten.SetInputData(to_polydata(mesh))
    sten.SetOutputOrigin(*[float(x) for x in origin])
    sten.SetOutputSpacing(h, h, h)
    sten.SetOutputWholeExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    img = vtk.vtkImageStencilToImage()
    img.SetInputConnection(sten.GetOutputPort())
    img.SetInsideValue(1)
    img.SetOutsideValue(0)
    img.SetOutputScalarTypeToUnsignedChar()
    img.Update()
    arr = vtk_to_numpy(img.GetOutput().GetPointData().GetScalars()).reshape(nz, ny, nx)
    return arr.transpose(2, 1, 0).astype(bool)


def _on_grid(mask: np.ndarray, points: np.ndarray, axes, h: float) -> np.ndarray:
    """mask (on the grid ``axes``) at the grid point nearest to each point."""
    ijk = np.rint((points - np.array([a[0] for a in axes])) / h).astype(np.int64)
    ijk = np.clip(ijk, 0, np.array(mask.shape) - 1)
    return mask[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def _grid(lo, hi, h: float):
    """Sample positions per axis covering [lo, hi] with one sample beyond each end."""
    axes = []
    for a, b in zip(lo, hi):
        n = int(math.ceil((b - a) / h)) + 3
        axes.append(a - h + h * np.arange(n))
    return axes


def _box(m3d, lo, hi):
    lo = np.asarray(lo, dtype=float)
    return m3d.Manifold.cube(tuple(np.asarray(hi, dtype=float) - lo)).translate(tuple(lo))






