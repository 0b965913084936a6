"""Spinal levels from the bone segmentation: vertebral bodies, the endplates to bridge and the spinal axis.

The surgeon picks one point in the last healthy vertebra above the defect (proximal) and one in the first
healthy vertebra below it (distal). From the bone mask (or a per-vertebra label map) this module

- isolates each clicked vertebral body: in real CT neighbours touch at facets and osteophytes and the body is
  joined to its posterior elements, so the body is taken as a morphological opening of the bone with a ball
  about half the body's half-height: thin parts (pedicles, processes, bridges) vanish, the compact body stays;
- measures each body: local axis, superior and inferior endplate planes (least squares on the central part of
  each face, at sub-voxel precision), footprint centre and radii, anterior direction (from the posterior
  elements towards the body, checked against the patient's anterior);
- walks from the proximal to the distal body collecting the vertebral bodies in between (missing ones, e.g. a
  corpectomy gap, are simply not found);
- on thick slices (2-3 mm, no labels, the CT given) measures the two docking bodies from the CT instead: the disc
  bands (endplate - disc - endplate, bright) along the axis, the body's cross-section between them, the docking
  face fitted per column at the band's near edge; the bodies between are the spans between bands;
- fits a smooth axis through the body centres whose end tangents are the measured axes of the two end
  vertebrae, so it follows kyphosis/lordosis/scoliosis even across a gap.

All coordinates RAS, mm; volume arrays are indexed [k, j, i].
"""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import interpolate, ndimage

from ..core.anatomy import Endplate, resample_polyline, unit
from ..core.errors import PlanError
from ..core.progress import Progress

PATIENT_SUPERIOR = np.array([0.0, 0.0, 1.0])
PATIENT_ANTERIOR = np.array([0.0, 1.0, 0.0])

# Standard vertebral order, cranial to caudal; used to name intermediates between two labelled levels.
SPINE_ORDER = (
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    + ["L6", "S1", "S2", "S3", "S4", "S5", "sacrum"]
)

CORE_FRACTION = 0.5  # opening radius as a fraction of the body's largest inscribed radius
FACE_ANGLE_DEG = 30.0  # surface normals within this angle of the axis belong to an endplate face
FACE_CENTRAL = 0.65  # endplate fit uses the face inside this fraction of the footprint ellipse (rim excluded)
MAX_CORE_TO_HEIGHT = 0.35  # an opening radius above this fraction of the body height is redone at...
REDO_CORE_TO_HEIGHT = 0.3  # ...this fraction (a free body gets about 0.26: half of half its height)
SEED_SEARCH_MM = 5.0  # a clicked point may miss the bone by this much
THICK_SLICE_MM = 1.5  # slices above this (and much thicker than the pixels): labelled docking faces refitted
MIN_LEVEL_SEPARATION_MM = 15.0  # points farther apart than this are never in the same vertebra (bodies 17-30 mm)
CONTROL_STEP_LEVELS = 0.55  # axis control points at most this many level spacings apart


@dataclass
class VertebraMeasurement:
    level: str
    body_centre: np.ndarray
    body_mask_voxels: int
    superior_endplate: Endplate
    inferior_endplate: Endplate
    axis_direction: np.ndarray  # unit, caudal (from the superior towards the inferior endplate)
    body_height: float = 0.0  # distance between the endplate centres along the axis, mm
    warnings: list = field(default_factory=list)


@dataclass
class LevelsResult:
    proximal: VertebraMeasurement
    distal: VertebraMeasurement
    intermediate_centres: np.ndarray  # (K, 3) body centres found between them, proximal to distal
    axis_control_points: np.ndarray  # (M, 3) proximal body centre ... distal body centre
    axis_points: np.ndarray  # (N, 3) dense smooth axis, <= 1 mm spacing
    proximal_endplate: Endplate  # proximal.inferior_endplate, normal towards the distal vertebra
    distal_endplate: Endplate  # distal.superior_endplate, normal towards the proximal vertebra
    warnings: list = field(default_factory=list)
    intermediate_levels: list = field(default_factory=list)  # names where known ("" otherwise)
    # Each docking vertebra as (bool crop [k, j, i], crop origin): its label, or its body isolated from the bone.
    docking: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- grid helpers


class _Grid:
    """Index <-> RAS mapping of a [k, j, i] array with a 4x4 IJK-to-RAS matrix."""

    def __init__(self, ijk_to_ras, shape):
        m = np.asarray(ijk_to_ras, dtype=float)
        if m.shape != (4, 4) or abs(np.linalg.det(m[:3, :3])) < 1e-9:
            raise PlanError("The IJK-to-RAS matrix is not a valid 4x4 volume geometry.",
                            "Pass the bone segmentation's own geometry (volumes.ijk_to_ras_matrix(node)).")
        self.m = m
        self.inv = np.linalg.inv(m)
        self.shape = tuple(shape)
        self.spacing_ijk = np.linalg.norm(m[:3, :3], axis=0)
        self.spacing_kji = self.spacing_ijk[::-1].copy()

    def to_ras(self, kji) -> np.ndarray:
        ijk = np.atleast_2d(np.asarray(kji, dtype=float))[:, ::-1]
        return ijk @ self.m[:3, :3].T + self.m[:3, 3]

    def to_kji(self, ras) -> np.ndarray:
        p = np.atleast_2d(np.asarray(ras, dtype=float))
        return (p @ self.inv[:3, :3].T + self.inv[:3, 3])[:, ::-1]

    def gradient_to_ras(self, g_kji) -> np.ndarray:
        """Spatial gradient in RAS from per-index derivatives (d/dk, d/dj, d/di), rows."""
        return g_kji[:, ::-1] @ self.inv[:3, :3]

    def half_voxel_along(self, u) -> float:
        """Half the extent of one voxel projected on the unit direction u (mm)."""
        return 0.5 * float(np.abs(self.m[:3, :3].T @ u).sum())


def _crop_box(shape, centre_kji, radius_vox):
    lo = np.maximum(np.floor(centre_kji - radius_vox).astype(int), 0)
    hi = np.minimum(np.ceil(centre_kji + radius_vox).astype(int) + 1, shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


def _box_of(mask, margin_vox):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin_vox, 0)
    hi = np.minimum(idx.max(axis=0) + margin_vox + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


# ------------------------------------------------------------------------------------------ body isolation


@dataclass
class _Body:
    """One isolated vertebral body and the bone around it (for the posterior elements), each in its own crop."""

    body: np.ndarray  # bool crop
    offset: np.ndarray  # body crop origin (k, j, i) in the full array
    context: np.ndarray  # bool crop: thin bone connected to the body (posterior elements; not bodies/vessels)
    context_offset: np.ndarray
    core_radius: float  # opening radius used, mm

    def voxels_kji(self) -> np.ndarray:
        return np.argwhere(self.body) + self.offset


def _window(shape, grid, point_ras, search_mm):
    c = grid.to_kji(point_ras)[0]
    if np.any(c < -0.5) or np.any(c > np.array(shape) - 0.5):
        return None, None
    return _crop_box(shape, c, np.maximum(search_mm / grid.spacing_kji, 1.0) + 1)


def _nearest_true(mask, grid: _Grid, point_ras, search_mm: float, predicate=None):
    """Index (k, j, i) of the voxel nearest to a point where ``predicate(mask)`` holds (default: mask is
    true), with a status: "ok", "outside" (the volume) or "no bone" (none within search_mm)."""
    box, lo = _window(mask.shape, grid, point_ras, search_mm)
    if box is None:
        return None, "outside"
    win = mask[box]
    idx = np.argwhere(predicate(win) if predicate is not None else win)
    if len(idx) == 0:
        return None, "no bone"
    d = np.linalg.norm(grid.to_ras(idx + lo) - np.asarray(point_ras, float), axis=1)
    best = int(np.argmin(d))
    if d[best] > search_mm:
        return None, "no bone"
    return tuple(int(x) for x in idx[best] + lo), "ok"


def _component_at(crop, seed):
    """The connected component of a bool crop containing the seed (or nearest to it)."""
    labels, _ = ndimage.label(crop)
    lab = labels[tuple(seed)]
    if lab == 0:
        # Seed in a marrow hole or just outside the bone: take the nearest component.
        _, ind = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        lab = labels[tuple(ind[:, seed[0], seed[1], seed[2]])]
    return labels == lab


def _nearest_component(mask, seed, spacing):
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    pts = np.argwhere(mask)
    d = np.linalg.norm((pts - seed) * spacing, axis=1)
    return labels == labels[tuple(pts[int(np.argmin(d))])]


def _no_body(which=""):
    return PlanError(f"No compact vertebral body was found near the {which} point.".replace("  ", " "),
                     "Place the point inside a vertebral body and check the bone segmentation.")


def _body_at(mask, grid: _Grid, seed_kji, core_radius: Optional[float] = None) -> _Body:
    """Isolate the vertebral body containing (or nearest to) the seed voxel.

    The body is the opening of the bone with a ball of ``core_radius`` (default: half the deepest inscribed
    radius): its core (bone deeper than the radius) is found first on a coarse grid in a box around the seed,
    then the opening is done at full resolution in a box fitting that core.
    """
    seed = np.asarray(seed_kji, dtype=int)
    stride = np.maximum(np.floor(1.5 / grid.spacing_kji), 1).astype(int)
    box, lo = _crop_box(mask.shape, seed, 40.0 / grid.spacing_kji)
    coarse = mask[box][::stride[0], ::stride[1], ::stride[2]]
    cseed = np.minimum((seed - lo) // stride, np.array(coarse.shape) - 1)
    comp = _component_at(coarse, cseed)
    depth = ndimage.distance_transform_edt(comp, sampling=grid.spacing_kji * stride)
    if core_radius is None:
        core_radius = CORE_FRACTION * float(depth.max())
    core = _nearest_component(depth >= core_radius, cseed, grid.spacing_kji * stride)
    if core is None:
        raise _no_body()
    pts = np.argwhere(core) * stride + lo
    centre = pts.mean(axis=0)
    extent = np.linalg.norm((pts - centre) * grid.spacing_kji, axis=1).max()
    return _open_near(mask, grid, centre, extent + core_radius + 15.0, core_radius, seed)


def _open_near(mask, grid, centre_kji, radius_mm, core_radius, seed) -> _Body:
    box, lo = _crop_box(mask.shape, centre_kji, radius_mm / grid.spacing_kji)
    crop = mask[box]
    local_seed = np.clip(np.asarray(seed) - lo, 0, np.array(crop.shape) - 1)
    comp = _component_at(crop, local_seed)
    depth = ndimage.distance_transform_edt(comp, sampling=grid.spacing_kji)
    core = _nearest_component(depth >= core_radius, local_seed, grid.spacing_kji)
    if core is None:
        raise _no_body()
    # Union of balls of the core radius around the core = the opened body; computed in the core's box.
    cbox, clo = _box_of(core, np.ceil(core_radius / grid.spacing_kji).astype(int) + 2)
    near_core = ndimage.distance_transform_edt(~core[cbox], sampling=grid.spacing_kji)
    body = comp[cbox] & (near_core <= core_radius + 1e-6)
    # Thin bone (what an opening of everything removes): posterior elements, ribs; not other bodies or a
    # contrast-filled aorta touching the body, which would pull the 'anterior' direction sideways.
    near_any = ndimage.distance_transform_edt(depth < core_radius, sampling=grid.spacing_kji)
    thin = comp & (near_any > core_radius + 1e-6)
    return _Body(body=body, offset=lo + clo, context=thin, context_offset=lo, core_radius=core_radius)


# ------------------------------------------------------------------------------------------- measurement


def _surface_points(body, grid: _Grid, offset):
    """Sub-voxel surface points and outward normals of a binary body (0.5 level of the smoothed mask)."""
    pad = 4
    f = ndimage.gaussian_filter(np.pad(body, pad).astype(np.float32), sigma=1.0)
    gk, gj, gi = np.gradient(f)
    band = (f > 0.25) & (f < 0.75)
    pts = np.argwhere(band).astype(float)
    # Newton steps along the gradient to the 0.5 level, with trilinear interpolation.
    for _ in range(3):
        coords = pts.T
        val = ndimage.map_coordinates(f, coords, order=1)
        g = np.stack([ndimage.map_coordinates(a, coords, order=1) for a in (gk, gj, gi)], axis=1)
        g2 = np.maximum((g * g).sum(axis=1), 1e-6)
        step = ((val - 0.5) / g2)[:, None] * g
        step = np.clip(step, -1.0, 1.0)
        pts = pts - step
    coords = pts.T
    g = np.stack([ndimage.map_coordinates(a, coords, order=1) for a in (gk, gj, gi)], axis=1)
    g_ras = grid.gradient_to_ras(g)
    norm = np.linalg.norm(g_ras, axis=1)
    ok = norm > 1e-6
    normals = -g_ras[ok] / norm[ok, None]
    return grid.to_ras(pts[ok] - pad + offset), normals


def _fit_plane(points):
    c = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - c, full_matrices=False)
    return c, vt[2]


def _footprint(points, centre, normal, anterior, grid):
    """Centre (3D, on the line through ``centre`` along ``normal``) and half-extents of points in a plane."""
    a = unit(anterior - np.dot(anterior, normal) * normal)
    lat = np.cross(normal, a)
    rel = points - centre
    u, v = rel @ a, rel @ lat
    cu, cv = 0.5 * (u.max() + u.min()), 0.5 * (v.max() + v.min())
    r_ap = 0.5 * (u.max() - u.min()) + grid.half_voxel_along(a)
    r_lr = 0.5 * (v.max() - v.min()) + grid.half_voxel_along(lat)
    return centre + cu * a + cv * lat, a, lat, r_ap, r_lr


def _fit_face(surf, normals, body_pts, centroid, direction, anterior, grid):
    """Fit the endplate facing ``direction`` (outward normal): (point on the plane, unit normal)."""
    cos_max = np.cos(np.radians(FACE_ANGLE_DEG))
    side_pts = body_pts[(body_pts - centroid) @ direction >= 0]
    if len(side_pts) < 10:
        side_pts = body_pts
    fc, a, lat, r_ap, r_lr = _footprint(side_pts, centroid, direction, anterior, grid)
    face = (normals @ direction > cos_max) & ((surf - centroid) @ direction > 0)
    pts = surf[face]
    if len(pts) < 10:
        raise PlanError("The vertebral body has no recognisable endplate face.",
                        "Check that the point is in a vertebral body and the bone segmentation covers it fully.")
    rel = pts - fc
    rho = np.hypot((rel @ a) / max(r_ap, 1e-3), (rel @ lat) / max(r_lr, 1e-3))
    for limit in (FACE_CENTRAL, 0.8, 1.0, np.inf):
        central = pts[rho < limit]
        if len(central) >= 20:
            break
    p0, n = _fit_plane(central)
    # One robust pass: drop points far from the first plane (osteophytes, rim remnants).
    res = (central - p0) @ n
    mad = np.median(np.abs(res)) * 1.4826 + 1e-6
    keep = np.abs(res) < max(2.5 * mad, 0.5 * grid.spacing_kji.min())
    if keep.sum() >= 10:
        p0, n = _fit_plane(central[keep])
    if np.dot(n, direction) < 0:
        n = -n
    return p0, n


def _anterior_direction(context_pts, body_pts, centroid, axis, radius, warnings):
    """From the posterior elements (thin bone beside the body at its level) towards the body, in the axial
    plane; the patient's anterior when there are none or they point elsewhere."""
    prior = PATIENT_ANTERIOR - np.dot(PATIENT_ANTERIOR, axis) * axis
    prior = unit(prior) if np.linalg.norm(prior) > 0.2 else unit(np.cross(axis, [1.0, 0, 0]))
    if len(context_pts):
        half_height = 0.5 * np.ptp(body_pts @ axis)
        rel = context_pts - centroid
        h = rel @ axis
        radial = rel - np.outer(h, axis)
        slab = (np.abs(h) < 0.7 * half_height) & (np.linalg.norm(radial, axis=1) < 3.0 * radius)
        if slab.sum() > 0.01 * len(body_pts):
            measured = -radial[slab].mean(axis=0)
            if np.linalg.norm(measured) > 0.1 * radius:
                measured = unit(measured)
                if np.dot(measured, prior) > np.cos(np.radians(75)):
                    return measured
                warnings.append("The posterior elements do not lie behind the body as expected; the patient's "
                                "anterior direction is used as the vertebra's front.")
                return prior
    return prior


def _measure_body(b: _Body, grid: _Grid, level: str, cranial_hint) -> VertebraMeasurement:
    warnings = []
    vox = b.voxels_kji()
    body_pts = grid.to_ras(vox)
    centroid = body_pts.mean(axis=0)
    context = b.context.copy()
    rel = b.offset - b.context_offset
    sl = tuple(slice(r, r + n) for r, n in zip(rel, b.body.shape))
    context[sl] &= ~ndimage.binary_dilation(b.body, iterations=1)
    ctx_idx = np.argwhere(context)
    context_pts = grid.to_ras(ctx_idx + b.context_offset) if len(ctx_idx) else np.zeros((0, 3))
    surf, normals = _surface_points(b.body, grid, b.offset)

    hint = unit(cranial_hint if cranial_hint is not None else PATIENT_SUPERIOR)
    # Start from the principal axis of the body closest to the hint (height is usually its smallest extent).
    _, _, vt = np.linalg.svd(body_pts - centroid, full_matrices=False)
    best = vt[int(np.argmax(np.abs(vt @ hint)))]
    up = best * np.sign(np.dot(best, hint)) if abs(np.dot(best, hint)) > np.cos(np.radians(40)) else hint
    radius = np.sqrt(np.linalg.eigvalsh(np.cov((body_pts - centroid).T))[-1]) * 2.0
    anterior = _anterior_direction(context_pts, body_pts, centroid, up, radius, [])
    for _ in range(4):
        p_sup, n_sup = _fit_face(surf, normals, body_pts, centroid, up, anterior, grid)
        p_inf, n_inf = _fit_face(surf, normals, body_pts, centroid, -up, anterior, grid)
        new_up = unit(n_sup - n_inf)
        converged = np.degrees(np.arccos(np.clip(np.dot(new_up, up), -1, 1))) < 0.05
        up = new_up
        anterior = _anterior_direction(context_pts, body_pts, centroid, up, radius, [])
        if converged:
            break
    anterior = _anterior_direction(context_pts, body_pts, centroid, up, radius, warnings)
    if np.degrees(np.arccos(np.clip(np.dot(up, hint), -1, 1))) > 60:
        warnings.append(f"Vertebra {level or '?'}: its measured axis is more than 60 deg from the expected "
                        "cranio-caudal direction; check the endplates.")

    endplates = []
    for p0, n in ((p_sup, n_sup), (p_inf, n_inf)):
        side = body_pts[(body_pts - centroid) @ n >= 0]
        fc, a, _, r_ap, r_lr = _footprint(side if len(side) >= 10 else body_pts, centroid, n, anterior, grid)
        centre = fc + np.dot(p0 - fc, n) * n
        endplates.append(Endplate(centre, n, a, r_lr, r_ap, level))
    sup, inf = endplates
    axis = unit(-up)
    height = float(np.dot(inf.centre - sup.centre, axis))
    centre = 0.5 * (sup.centre + inf.centre)
    return VertebraMeasurement(level=level, body_centre=centre, body_mask_voxels=int(b.body.sum()),
                               superior_endplate=sup, inferior_endplate=inf, axis_direction=axis,
                               body_height=height, warnings=warnings)


def _column_face(b: _Body, grid: _Grid, endplate: Endplate, column_mm: float = 2.0, label=None) -> Endplate:
    """Refit a docking endplate from the body's voxels themselves: per ``column_mm`` column along the endplate's
    normal the outermost voxel, the central 70 % of the footprint, a least-squares plane, its centre moved half
    a voxel outward (voxel centre -> face). On thick slices this follows the labelled face more closely than the
    smoothed surface does (no blur across 2.5 mm slices)."""
    pts = grid.to_ras(b.voxels_kji())
    n, a = endplate.normal, endplate.anterior
    lat = np.cross(n, a)
    if label is not None:
        # The whole labelled vertebra in front of the isolated body's posterior wall (the opening loses the rim).
        crop, lo = label
        whole = grid.to_ras(np.argwhere(crop) + lo)
        pts = whole[whole @ a >= (pts @ a).min() - 0.5]
    h = pts @ n
    key = np.floor(pts @ a / column_mm).astype(np.int64) * 1_000_003 + np.floor(pts @ lat / column_mm).astype(np.int64)
    order = np.lexsort((-h, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    face = pts[order[first]]
    fa, fl = face @ a, face @ lat
    r = np.hypot((fa - fa.mean()) / (np.ptp(fa) + 1e-9) * 2, (fl - fl.mean()) / (np.ptp(fl) + 1e-9) * 2)
    face = face[r < 0.7]
    if len(face) < 10:
        return endplate
    centre, normal = _fit_plane(face)
    normal = normal if normal @ n > 0 else -normal
    if np.degrees(np.arccos(np.clip(normal @ n, -1, 1))) > 15.0:
        return endplate  # not a face (a fragment or a tilted rim): keep the surface fit
    centre = centre + grid.half_voxel_along(normal) * normal
    return Endplate(centre, normal, a, endplate.radius_lr, endplate.radius_ap, endplate.level)


def _measured(make_body, grid, level, cranial_hint):
    """Isolate and measure a body; redo with a smaller opening if the first one was too deep for its height.

    Where neighbours touch across thin discs the deepest inscribed radius spans two bodies and the opening
    radius comes out too large; about a quarter of the measured height is the radius that fits one body.
    """
    b = make_body(None)
    m = _measure_body(b, grid, level, cranial_hint)
    if m.body_height > 0 and b.core_radius > MAX_CORE_TO_HEIGHT * m.body_height:
        b = make_body(REDO_CORE_TO_HEIGHT * m.body_height)
        m = _measure_body(b, grid, level, cranial_hint)
    return b, m


def measure_vertebra(bone_mask_of_one_vertebra, ijk_to_ras, level: str = "",
                     cranial_hint=None) -> VertebraMeasurement:
    """Measure one vertebra given its bone mask [k, j, i] (the body, optionally with its posterior elements).

    ``cranial_hint`` is a rough cranial direction (RAS); patient superior by default. The superior endplate is
    the face towards it.
    """
    mask = np.asarray(bone_mask_of_one_vertebra, dtype=bool)
    if mask.ndim != 3 or not mask.any():
        raise PlanError(f"The mask of vertebra {level or '?'} is empty.",
                        "Segment the vertebra (or check the label value) before measuring it.")
    grid = _Grid(ijk_to_ras, mask.shape)
    box, lo = _box_of(mask, 3)
    crop = mask[box]
    depth = ndimage.distance_transform_edt(crop, sampling=grid.spacing_kji)
    seed = np.unravel_index(int(np.argmax(depth)), crop.shape)
    return _measured(lambda t: _body_at(mask, grid, np.array(seed) + lo, t), grid, level, cranial_hint)[1]


# ---------------------------------------------------------------------------------------------------- axis


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


def _densify(points, dense_axis, max_step):
    """The control points plus evenly spaced points of the dense axis, so that no two are over max_step apart.

    An editable markups curve interpolates only its control points; with a point every half level (and
    through gaps) it keeps the curvature the end tangents gave the dense axis.
    """
    out = [points[0]]
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense_axis, axis=0), axis=1))])
    pos = [float(s[np.argmin(np.linalg.norm(dense_axis - q, axis=1))]) for q in points]
    for i in range(1, len(points)):
        n = int(np.ceil((pos[i] - pos[i - 1]) / max_step - 1e-6))
        for t in np.linspace(pos[i - 1], pos[i], max(n, 1) + 1)[1:-1]:
            out.append(np.array([np.interp(t, s, dense_axis[:, c]) for c in range(3)]))
        out.append(points[i])
    return np.array(out)


# -------------------------------------------------------------------------------------------- detection


def _label_at(label_map, grid, point_ras, valid_values):
    valid = list(valid_values)
    seed, status = _nearest_true(label_map, grid, point_ras, SEED_SEARCH_MM,
                                 (lambda a: np.isin(a, valid)) if valid else (lambda a: a > 0))
    return (None, status) if seed is None else (int(label_map[seed]), seed)


def _require_seed(mask, grid, point, which):
    seed, status = _nearest_true(mask, grid, point, SEED_SEARCH_MM)
    pt = ", ".join(f"{x:.1f}" for x in np.asarray(point, float))
    if status == "outside":
        raise PlanError(f"The {which} point ({pt}) is outside the CT volume.",
                        f"Place the {which} point inside a vertebral body.")
    if seed is None:
        raise PlanError(f"The {which} point ({pt}) is not inside bone (no bone within {SEED_SEARCH_MM:g} mm).",
                        f"Place the {which} point inside the vertebral body, or check the bone segmentation.")
    return seed


def _profile(mask, grid, path, radius):
    """Fraction of bone on a disc of ``radius`` across the path at each path point (the mean value across it
    when ``mask`` is a CT array)."""
    tangent = np.gradient(path, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    ref = np.where(np.abs(tangent[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    e1 = np.cross(tangent, ref)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(tangent, e1)
    offsets = [(0.0, 0.0)] + [(r * np.cos(a), r * np.sin(a)) for r in (0.35, 0.7, 1.0)
                              for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
    hits = np.zeros(len(path))
    shape = np.array(mask.shape)
    for u, v in offsets:
        q = path + radius * (u * e1 + v * e2)
        kji = np.round(grid.to_kji(q)).astype(int)
        ok = np.all((kji >= 0) & (kji < shape), axis=1)
        inside = np.zeros(len(path), dtype=float)
        inside[ok] = mask[tuple(kji[ok].T)]
        hits += inside
    return hits / len(offsets)


def _cut_at_discs(mask, grid, p_prox, p_dist, ct=None, radius_mm: float = 8.0, cut_radius_mm: float = 45.0):
    """A copy of the mask with a one-voxel slab removed across the spine at each disc space between two points:
    the clear local minima across the line of the CT's mean value (discs are darker than bone) or, without the CT,
    of the bone fraction, over a disc of ``radius_mm``."""
    line = np.linspace(p_prox, p_dist, max(int(np.linalg.norm(p_dist - p_prox) / 0.5), 8))
    frac = _profile(mask if ct is None else ct, grid, line, radius_mm)
    frac = ndimage.uniform_filter1d(frac, 5)
    inner = np.arange(len(line))
    inner = inner[(inner > 0.1 * len(line)) & (inner < 0.9 * len(line))]
    # A disc: a local minimum clearly below the profile's median (bone fraction: half of it; HU: 80 HU below).
    low = 0.5 * np.median(frac) if ct is None else np.median(frac) - 80.0
    window = max(int(round(6.0 / 0.5)), 1)  # a minimum within +-6 mm: one per disc
    cuts = [i for i in inner if frac[i] == frac[max(i - window, 0): i + window + 1].min() and frac[i] < low]
    out = np.array(mask, dtype=bool, copy=True)  # no clear disc: nothing is cut (one vertebra after all)
    u = unit(p_dist - p_prox)
    half = 0.5 * float(grid.spacing_ijk.max())
    for i in cuts:
        c = line[i]
        box, lo = _crop_box(out.shape, grid.to_kji(c)[0], (cut_radius_mm + 2 * half) / grid.spacing_kji)
        pts = grid.to_ras(np.argwhere(np.ones(out[box].shape, dtype=bool)) + lo).reshape(out[box].shape + (3,))
        rel = pts - c
        along = rel @ u
        radial = np.linalg.norm(rel - along[..., None] * u, axis=-1)
        out[box] &= ~((np.abs(along) <= half) & (radial <= cut_radius_mm))
    return out


def _runs(flags):
    """(start, stop) index pairs of the runs of True."""
    d = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _walk(mask, grid, prox, dist, warnings):
    """Vertebral bodies between the proximal and distal ones, proximal first: [(centre, measurement or None)].

    Walks along the current axis estimate (first the curve through the two end bodies with their measured
    axes as tangents) and looks at the bone across it: bodies show as runs of bone, discs and missing
    vertebrae as gaps. Each run's body is isolated and measured; the axis is refitted through what was found
    and the walk repeated until nothing new turns up.
    """
    height = 0.5 * (prox.body_height + dist.body_height)
    radius = 0.5 * min(prox.inferior_endplate.radius_ap, prox.inferior_endplate.radius_lr,
                       dist.superior_endplate.radius_ap, dist.superior_endplate.radius_lr)
    found = []  # (centre, measurement)
    for _ in range(4):
        control = np.vstack([prox.body_centre] + [c for c, _ in found] + [dist.body_centre])
        path = smooth_axis(control, 1.0, prox.axis_direction, dist.axis_direction)
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
        frac = _profile(mask, grid, path, radius)
        known = [0.0, s[-1]] + [s[int(np.argmin(np.linalg.norm(path - c, axis=1)))] for c, _ in found]
        new = []
        for a, b in _runs(frac > 0.5):
            length = s[b - 1] - s[a]
            if length < 0.4 * height:
                continue
            n = max(int(round(length / (1.3 * height))), 1)
            for mid in s[a] + (np.arange(n) + 0.5) * length / n:
                if min(abs(mid - k) for k in known) < 0.6 * height:
                    continue
                point = path[int(np.argmin(np.abs(s - mid)))]
                m = _measure_intermediate(mask, grid, point, -path[min(int(np.argmin(np.abs(s - mid))) + 1,
                                                                       len(path) - 1)] + point)
                if m is None:
                    continue
                d_path = np.linalg.norm(path - m.body_centre, axis=1).min()
                if d_path < radius and 0.4 * height < m.body_height < 1.6 * height:
                    new.append((m.body_centre, m))
                    known.append(mid)
                else:
                    warnings.append(f"Bone between the vertebrae at ({', '.join(f'{x:.0f}' for x in point)}) "
                                    "does not look like a vertebral body; the axis ignores it.")
        if not new:
            break
        found += new
        order = np.argsort([np.linalg.norm(path - c, axis=1).argmin() for c, _ in found])
        found = [found[i] for i in order]
    return found


def _measure_intermediate(mask, grid, point, cranial):
    seed, _ = _nearest_true(mask, grid, point, 10.0)
    if seed is None:
        return None
    try:
        return _measured(lambda t: _body_at(mask, grid, seed, t), grid, "", unit(cranial))[1]
    except PlanError:
        return None


def _check_distinct(prox, dist, same_body, prox_name, dist_name):
    if not same_body:
        sep = np.linalg.norm(prox.body_centre - dist.body_centre)
        same_body = sep < 0.5 * max(prox.body_height, dist.body_height, 1.0)
    if same_body:
        names = f" ({prox_name})" if prox_name and prox_name == dist_name else ""
        raise PlanError(f"The proximal and distal points are in the same vertebra{names}.",
                        "Place the proximal point in the last healthy vertebra above the defect and the distal "
                        "point in the first healthy vertebra below it.")


def detect_levels(bone_mask, ijk_to_ras, proximal_point_ras, distal_point_ras, proximal_name: str = "",
                  distal_name: str = "", label_map=None, label_values: Optional[dict] = None,
                  progress=None, ct_array=None) -> LevelsResult:
    """Measure the proximal and distal vertebrae, the bodies between them and the spinal axis.

    ``bone_mask`` is a bool array [k, j, i] of filled bone; with ``label_map``/``label_values`` ({name: value},
    e.g. TotalSegmentator) each vertebra is its label instead of being separated from the bone mask.
    """
    prog = Progress(progress)
    mask = np.asarray(bone_mask, dtype=bool)
    if mask.ndim != 3:
        raise PlanError("The bone mask must be a 3D array.", "Pass the bone segmentation as a [k, j, i] array.")
    grid = _Grid(ijk_to_ras, mask.shape)
    p_prox = np.asarray(proximal_point_ras, dtype=float).reshape(3)
    p_dist = np.asarray(distal_point_ras, dtype=float).reshape(3)
    warnings = []
    cranial = unit(p_prox - p_dist) if np.linalg.norm(p_prox - p_dist) > 1e-6 else PATIENT_SUPERIOR
    if np.dot(cranial, PATIENT_SUPERIOR) < 0:
        warnings.append("The proximal point lies caudal of the distal point; 'proximal' and 'distal' are taken "
                        "as given (the proximal endplate faces the distal vertebra).")
    use_labels = label_map is not None
    prog.report(0.0, "Finding the proximal and distal vertebrae")
    if use_labels:
        labels = np.asarray(label_map)
        if labels.shape != mask.shape:
            raise PlanError("The vertebra label map does not match the bone mask's grid.",
                            "Resample the label map onto the bone segmentation's geometry.")
        values = dict(label_values) if label_values else {str(v): int(v) for v in np.unique(labels) if v}
        names_by_value = {int(v): k for k, v in values.items()}
        boxes = ndimage.find_objects(labels.astype(np.int32)) if labels.dtype.kind in "iub" else []
        ends = []
        for point, name, which in ((p_prox, proximal_name, "proximal"), (p_dist, distal_name, "distal")):
            value, seed = _label_at(labels, grid, point, names_by_value.keys())
            if value is None:
                if name in values and _label_box(labels, values[name], boxes) is not None:
                    value, seed = int(values[name]), None
                    warnings.append(f"The {which} point is not inside a labelled vertebra; {name} is used.")
                else:
                    _require_seed(labels > 0, grid, point, which)
                    raise PlanError(f"The {which} point is not inside a labelled vertebra.",
                                    f"Place the {which} point inside a vertebral body.")
            found_name = names_by_value.get(value, "")
            if name and found_name and name != found_name:
                # The name is engraved on the implant and guides: a mismatch with the labels is an error.
                raise PlanError(
                    f"The {which} point lies in {found_name} according to the vertebra labels, but the plan names "
                    f"the {which} level {name}.",
                    f"Set {which}_level to {found_name}, or move the {which} point into {name}.")
            if name and name not in values and names_by_value:
                raise PlanError(f"The plan names the {which} level {name}, which the vertebra labels do not contain "
                                f"({', '.join(sorted(values))}).",
                                f"Set {which}_level to the labelled vertebra the implant docks on.")
            ends.append((value, seed, found_name or name))
        (v_prox, s_prox, proximal_name), (v_dist, s_dist, distal_name) = ends
        if v_prox == v_dist:
            _check_distinct(None, None, True, proximal_name, distal_name)
        prog.report(0.1, "Measuring the proximal vertebra")
        prox_body, prox = _measured(lambda t: _body_of_label(labels, v_prox, boxes, grid, s_prox, t), grid,
                                    proximal_name, cranial)
        prog.report(0.3, "Measuring the distal vertebra")
        dist_body, dist = _measured(lambda t: _body_of_label(labels, v_dist, boxes, grid, s_dist, t), grid,
                                    distal_name, cranial)
        # With labels on thick slices the docking faces are refitted from the labelled body's own voxels (the
        # smoothed surface blurs a face across a 2.5 mm slice; on fine grids it is the better fit).
        thick = grid.spacing_ijk.max() > THICK_SLICE_MM and grid.spacing_ijk.max() > 1.8 * grid.spacing_ijk.min()
        for v, body, m, attr in ((v_prox, prox_body, prox, "inferior_endplate"),
                                 (v_dist, dist_body, dist, "superior_endplate")) if thick else ():
            box, lo = _label_box(labels, v, boxes)
            setattr(m, attr, _column_face(body, grid, getattr(m, attr), label=(labels[box] == v, lo)))
        prog.report(0.5, "Measuring the vertebrae between them")
        names = _label_intermediates(labels, boxes, grid, values, names_by_value, v_prox, v_dist, prox, dist)
        walked, cur_dir = [], prox.axis_direction
        for name in names:
            try:
                _, m = _measured(lambda t, v=values[name]: _body_of_label(labels, v, boxes, grid, None, t), grid,
                                 name, -cur_dir)
                walked.append((m.body_centre, m))
                cur_dir = m.axis_direction
            except PlanError:
                box, lo = _label_box(labels, values[name], boxes)
                walked.append((grid.to_ras(np.argwhere(labels[box] == values[name]).mean(axis=0) + lo)[0], None))
                warnings.append(f"Vertebra {name} could not be measured; the centre of its label is used.")
        intermediate_levels = list(names)
        docking = {}
        for end, v in (("proximal", v_prox), ("distal", v_dist)):
            box, lo = _label_box(labels, v, boxes)
            docking[end] = (labels[box] == v, np.asarray(lo))
    else:
        s_prox = _require_seed(mask, grid, p_prox, "proximal")
        s_dist = _require_seed(mask, grid, p_dist, "distal")
        thick = None
        if ct_array is not None and _thick_slices(grid) and (
                np.linalg.norm(p_prox - p_dist) >= MIN_LEVEL_SEPARATION_MM):
            prog.report(0.1, "Measuring the vertebrae from the CT (thick slices)")
            thick = _thick_levels(np.asarray(ct_array), mask, grid, p_prox, p_dist, proximal_name, distal_name)
    if not use_labels and thick is not None:
        prox, dist, docking, walked = thick
        intermediate_levels = [""] * len(walked)
    elif not use_labels:
        prog.report(0.1, "Measuring the proximal vertebra")
        prox_body, prox = _measured(lambda t: _body_at(mask, grid, s_prox, t), grid, proximal_name, cranial)
        prog.report(0.3, "Measuring the distal vertebra")
        dist_body, dist = _measured(lambda t: _body_at(mask, grid, s_dist, t), grid, distal_name, cranial)
        if (_contains(prox_body, s_dist) or _contains(dist_body, s_prox)) and (
                np.linalg.norm(p_prox - p_dist) >= MIN_LEVEL_SEPARATION_MM):
            # Points this far apart are in different vertebrae: the bodies merged through bridged discs (thick
            # slices, osteophytes, a contaminated segment). Cut the bone at the disc spaces between them, again.
            mask = _cut_at_discs(mask, grid, p_prox, p_dist, ct_array)
            prox_body, prox = _measured(lambda t: _body_at(mask, grid, s_prox, t), grid, proximal_name, cranial)
            dist_body, dist = _measured(lambda t: _body_at(mask, grid, s_dist, t), grid, distal_name, cranial)
            warnings.append("The bone was continuous between the two vertebrae; it was separated at the disc "
                            "spaces (the narrowest bone across the spine). Check the endplates.")
        if _contains(prox_body, s_dist) or _contains(dist_body, s_prox):
            _check_distinct(None, None, True, proximal_name, distal_name)
        for body, seed, which in ((prox_body, s_prox, "proximal"), (dist_body, s_dist, "distal")):
            if not _contains(body, seed):
                warnings.append(f"The {which} point is not inside a vertebral body; the nearest body was used. "
                                "Check that it is the intended level.")
        _check_distinct(prox, dist, False, proximal_name, distal_name)
        prog.report(0.5, "Looking for vertebrae between them")
        walked = _walk(mask, grid, prox, dist, warnings)
        intermediate_levels = [""] * len(walked)
        docking = {"proximal": (prox_body.body, np.asarray(prox_body.offset)),
                   "distal": (dist_body.body, np.asarray(dist_body.offset))}
    _check_distinct(prox, dist, False, proximal_name, distal_name)
    warnings += prox.warnings + dist.warnings
    centres = np.array([c for c, _ in walked]).reshape(-1, 3)

    prog.report(0.9, "Fitting the spinal axis")
    control = np.vstack([prox.body_centre[None], centres, dist.body_centre[None]])
    dense = smooth_axis(control, 1.0, prox.axis_direction, dist.axis_direction)
    heights = [m for m in (prox.body_height, dist.body_height) if m > 0]
    steps = np.linalg.norm(np.diff(control, axis=0), axis=1)
    level_spacing = float(np.min(steps)) if len(control) > 2 else 1.3 * float(np.mean(heights or [25.0]))
    level_spacing = max(level_spacing, 10.0)
    control = _densify(control, dense, CONTROL_STEP_LEVELS * level_spacing)
    axis_points = smooth_axis(control, 1.0, prox.axis_direction, dist.axis_direction)
    prog.report(1.0, "Levels found")
    return LevelsResult(proximal=prox, distal=dist, intermediate_centres=centres, axis_control_points=control,
                        axis_points=axis_points, proximal_endplate=prox.inferior_endplate,
                        distal_endplate=dist.superior_endplate, warnings=warnings,
                        intermediate_levels=intermediate_levels, docking=docking)


def _contains(b: _Body, seed_kji) -> bool:
    local = np.asarray(seed_kji) - b.offset
    if np.any(local < 0) or np.any(local >= b.body.shape):
        return False
    return bool(b.body[tuple(local)])


def _label_box(labels, value, boxes):
    """(box slices, origin) of a label's voxels grown by 2 voxels, or None if the label is absent."""
    value = int(value)
    if boxes and 0 < value <= len(boxes):
        box = boxes[value - 1]
        if box is None:
            return None
        lo = np.maximum([b.start - 2 for b in box], 0)
        hi = np.minimum([b.stop + 2 for b in box], labels.shape)
        return tuple(slice(a, b) for a, b in zip(lo, hi)), lo
    present = labels == value
    return _box_of(present, 2) if present.any() else None


def _body_of_label(labels, value, boxes, grid, seed=None, core_radius=None) -> _Body:
    """The body of one labelled vertebra; seed (k, j, i) defaults to its deepest voxel."""
    found = _label_box(labels, value, boxes)
    if found is None:
        raise _no_body()
    box, lo = found
    crop = labels[box] == value
    if seed is None:
        depth = ndimage.distance_transform_edt(crop, sampling=grid.spacing_kji)
        local = np.array(np.unravel_index(int(np.argmax(depth)), crop.shape))
    else:
        local = np.clip(np.asarray(seed) - lo, 0, np.array(crop.shape) - 1)
    b = _body_at(crop, grid, local, core_radius)
    b.offset = b.offset + lo
    b.context_offset = b.context_offset + lo
    return b


def _label_intermediates(labels, boxes, grid, values, names_by_value, v_prox, v_dist, prox, dist):
    """Names of the labelled vertebrae between the two ends: by name order when known, else by position."""
    p_name, d_name = names_by_value.get(v_prox, ""), names_by_value.get(v_dist, "")
    present = {v for v in names_by_value if v not in (v_prox, v_dist) and _label_box(labels, v, boxes) is not None}
    if p_name in SPINE_ORDER and d_name in SPINE_ORDER:
        a, b = SPINE_ORDER.index(p_name), SPINE_ORDER.index(d_name)
        step = 1 if b > a else -1
        return [n for n in SPINE_ORDER[a + step:b:step] if n in values and int(values[n]) in present]
    chord = dist.body_centre - prox.body_centre
    length = np.linalg.norm(chord)
    keyed = []
    for v in present:
        box, lo = _label_box(labels, v, boxes)
        c = grid.to_ras(np.argwhere(labels[box] == v).mean(axis=0) + lo)[0]
        s = np.dot(c - prox.body_centre, chord) / length**2
        if 0.1 < s < 0.9 and np.linalg.norm(c - prox.body_centre - s * chord) < 0.5 * length:
            keyed.append((s, names_by_value[v]))
    return [n for _, n in sorted(keyed)]


# -------------------------------------------------------------------------------------------- MRML helpers


# ------------------------------------------------------------------------------- thick slices, from the CT

# On 2-3 mm slices the thin thoracic discs blur with the endplates into one bright band and the filled bone is one
# column (measured on a 0.7 x 0.7 x 2.5 mm contrast chest CT): the bodies are found from the CT instead. The band
# is endplate - disc - endplate: the docking face lies between its near edge (body side) and its centre.
BAND_PROMINENCE_HU = 40.0  # a disc band stands out this much from the cancellous bone on either side
BODY_MIN_HU = 60.0  # body in the mid-body plane: bone >= this (osteoporotic cancellous ~100 HU; cord/CSF below)
BODY_HOLE_MM2 = 40.0  # low-density spots inside the body up to this area are filled (the canal is ~200 mm2)
FACE_BEYOND_EDGE_MM = 2.8  # docking face beyond the band's near edge (half-max), measured against label faces


def _thick_slices(grid: _Grid) -> bool:
    return grid.spacing_ijk.max() > THICK_SLICE_MM and grid.spacing_ijk.max() > 1.8 * grid.spacing_ijk.min()


class _Sampler:
    """Trilinear samples of a [k, j, i] array at RAS points, in a crop around the region of interest."""

    def __init__(self, arr, grid: _Grid, box, lo):
        self.arr, self.grid, self.lo = np.asarray(arr[box], dtype=np.float32), grid, np.asarray(lo, float)

    def __call__(self, pts):
        pts = np.asarray(pts, float)
        kji = self.grid.to_kji(pts.reshape(-1, 3)) - self.lo
        return ndimage.map_coordinates(self.arr, kji.T, order=1, mode="nearest").reshape(pts.shape[:-1])


def _frame(d):
    a = unit(PATIENT_ANTERIOR - np.dot(PATIENT_ANTERIOR, d) * d)
    return a, np.cross(d, a)


def _central(pts, a, b, fraction=0.7):
    """Points of a footprint inside ``fraction`` of its normalised radius (the rim left out)."""
    fa, fb = pts @ a, pts @ b
    r = np.hypot((fa - fa.mean()) / (np.ptp(fa) + 1e-9) * 2, (fb - fb.mean()) / (np.ptp(fb) + 1e-9) * 2)
    return pts[r < fraction]


def _robust_plane(pts, d):
    c, n = _fit_plane(pts)
    res = (pts - c) @ n
    mad = np.median(np.abs(res)) * 1.4826 + 1e-6
    keep = np.abs(res) < 2.5 * mad
    if keep.sum() >= 10:
        c, n = _fit_plane(pts[keep])
    return c, (n if n @ d > 0 else -n)


def _bands(prof, h):
    from scipy.signal import find_peaks

    peaks, _ = find_peaks(prof, prominence=BAND_PROMINENCE_HU)
    return h[peaks]


def _bone_means(ct, bone, centres, ds, radius=6.0):
    """Mean CT of the bone voxels on a disc of ``radius`` across each direction ds[i] at centres[i] (NaN: none)."""
    out = np.full(len(centres), np.nan)
    rings = [(0.0, 0.0)] + [(r * np.cos(t), r * np.sin(t)) for r in (0.5 * radius, radius)
                            for t in np.linspace(0, 2 * np.pi, 8, endpoint=False)]
    for i, (c, d) in enumerate(zip(centres, ds)):
        a, b = _frame(d)
        pts = c + np.array([u * a + v * b for u, v in rings])
        inside = bone(pts) > 0.5
        if inside.any():
            out[i] = ct(pts)[inside].mean()
    return out


def _smoothed(prof):
    if np.all(np.isnan(prof)):
        return None
    return ndimage.gaussian_filter1d(np.nan_to_num(prof, nan=np.nanmin(prof)), 2)


def _bone_profile(ct, bone, centre, d, h):
    """Smoothed mean CT of the bone across the line centre + h d (gaps bridged by the lowest value)."""
    return _smoothed(_bone_means(ct, bone, centre + h[:, None] * d, np.repeat(d[None], len(h), axis=0)))


def _footprint_2d(ct, bone, mid, d, height):
    """The body's cross-section in the mid-body plane: bone >= BODY_MIN_HU (the canal and cord are darker), small
    low-density holes filled, posterior elements and ribs cut off by an opening of half the deepest radius."""
    a, b = _frame(d)
    g = np.arange(-30.0, 30.01, 1.0)
    u, w = np.meshgrid(g, g, indexing="ij")
    votes = []
    for s in (-0.2, 0.0, 0.2):
        p = mid + s * height * d + u[..., None] * a + w[..., None] * b
        votes.append((bone(p) > 0.5) & (ct(p) >= BODY_MIN_HU))
    fp = np.mean(votes, axis=0) > 0.5
    holes = ndimage.binary_fill_holes(fp) & ~fp
    lab, n = ndimage.label(holes)
    if n:
        sizes = ndimage.sum(holes, lab, np.arange(1, n + 1))
        fp |= np.isin(lab, 1 + np.flatnonzero(sizes < BODY_HOLE_MM2))
    if not fp.any():
        return None
    r2 = u ** 2 + w ** 2
    lab, _ = ndimage.label(fp)
    comp = lab == lab.flat[np.argmin(np.where(fp, r2, np.inf))]
    depth = ndimage.distance_transform_edt(comp)
    radius = CORE_FRACTION * depth.max()
    core_lab, _ = ndimage.label(depth >= radius)
    core = core_lab == core_lab.flat[np.argmin(np.where(depth >= radius, r2, np.inf))]
    fp = ndimage.binary_fill_holes(comp & (ndimage.distance_transform_edt(~core) <= radius))
    return u[fp], w[fp]


def _band_edges(ct, foot, d, h):
    """Per footprint column across a band at h = 0: the half-max crossings on the near (h < 0) and far side."""
    prof = ndimage.gaussian_filter1d(ct(foot[:, None, :] + h[None, :, None] * d), 1.0, axis=1)
    win = np.flatnonzero(np.abs(h) <= 5.0)
    near, far = [], []
    for p0, row in zip(foot, prof):
        ip = win[np.argmax(row[win])]
        base_n, base_f = np.median(row[:6]), np.median(row[-6:])
        if row[ip] - max(base_n, base_f) < BAND_PROMINENCE_HU:
            continue
        lvl_n, lvl_f = 0.5 * (row[ip] + base_n), 0.5 * (row[ip] + base_f)
        j = ip
        while j > 0 and row[j] > lvl_n:
            j -= 1
        i = ip
        while i < len(row) - 1 and row[i] > lvl_f:
            i += 1
        if j == 0 or i == len(row) - 1:
            continue
        step = h[1] - h[0]
        near.append(p0 + (h[j] + (lvl_n - row[j]) / (row[j + 1] - row[j] + 1e-9) * step) * d)
        far.append(p0 + (h[i - 1] + (row[i - 1] - lvl_f) / (row[i - 1] - row[i] + 1e-9) * step) * d)
    return np.array(near).reshape(-1, 3), np.array(far).reshape(-1, 3)


def _ct_body(ct, bone, grid: _Grid, point, toward, level: str):
    """The vertebral body around a clicked point measured from the CT on thick slices: the disc bands on either
    side along the axis, the body's cross-section between them, the face towards ``toward`` fitted per column
    (normal: mean of the near-edge and band-centre planes; the centre: the footprint's central part on it).
    Returns (measurement, (docking crop, origin)) or None when no band pair is found."""
    d, centre = unit(toward), np.asarray(point, float)
    h = np.arange(-40.0, 40.01, 0.5)
    hb_loc = np.arange(-9.0, 9.01, 0.5)
    result = None
    for _ in range(4):
        prof = _bone_profile(ct, bone, centre, d, h)
        if prof is None:
            return None
        peaks = _bands(prof, h)
        fwd, back = peaks[peaks > 3.0], peaks[peaks < -3.0]
        if len(fwd) == 0 or len(back) == 0:
            return None
        hf, hb = float(fwd.min()), float(back.max())
        mid = centre + 0.5 * (hf + hb) * d
        height = hf - hb
        found = _footprint_2d(ct, bone, mid, d, height)
        if found is None or len(found[0]) < 30:
            return None
        u, w = found
        a, b = _frame(d)
        centre = mid + u.mean() * a + w.mean() * b
        foot = centre + 0.5 * height * d + u[:, None] * a + w[:, None] * b - u.mean() * a - w.mean() * b
        near, far = _band_edges(ct, foot, d, hb_loc)
        if len(near) < 30:
            return None
        c_near, n_near = _robust_plane(_central(near, a, b), d)
        _, n_mid = _robust_plane(_central(0.5 * (near + far), a, b), d)
        normal = unit(n_near + n_mid)  # the near edge alone is noisy, the band centre alone misses wedged discs
        result = (normal, c_near, foot, a, b, d, centre, height, hb, hf)
        if np.degrees(np.arccos(np.clip(n_near @ d, -1, 1))) < 0.2:
            break
        d = n_near  # the next axis: the body's own face (the band centre is shared with the neighbour)
    normal, c_near, foot, a, b, d, centre, height, hb, hf = result
    fc = _central(foot, a, b).mean(axis=0)
    face_c = fc + ((c_near - fc) @ normal) / (d @ normal) * d + FACE_BEYOND_EDGE_MM * normal
    # The opposite face: the other band, perpendicular to the axis, the same offset from its centre.
    back_c = face_c - 2.0 * float((face_c - centre) @ d) * d  # the other band lies at -height / 2
    r_ap = 0.5 * float(np.ptp(foot @ a)) + 0.5
    r_lr = 0.5 * float(np.ptp(foot @ b)) + 0.5
    docking_face = Endplate(face_c, normal, unit(a - (a @ normal) * normal), r_lr, r_ap, level)
    other_face = Endplate(back_c, -d, a, r_lr, r_ap, level)
    # The docking body for the screws: its footprint between the faces, kept 3 mm clear of the estimated far face (it
    # tilts with the kyphosis) and inside 90 % of the footprint's radius, so it never reaches into the neighbours.
    shrunk = _central(foot, a, b, 0.9)
    return docking_face, other_face, d, _prism(grid, shrunk, d, back_c + 3.0 * d, face_c - 0.5 * d, (a, b))


def _prism(grid: _Grid, foot, d, lo_c, hi_c, u_w):
    """Bool crop (and origin) of the voxels within the footprint (1 mm columns) between two face points along d."""
    a, b = u_w
    allp = np.vstack([foot + (lo_c - foot.mean(axis=0)) @ d * d, foot + (hi_c - foot.mean(axis=0)) @ d * d])
    kji = grid.to_kji(allp)
    lo = np.maximum(np.floor(kji.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(kji.max(axis=0)).astype(int) + 2, grid.shape)
    idx = np.argwhere(np.ones(tuple(hi - lo), dtype=bool)) + lo
    pts = grid.to_ras(idx)
    t = (pts - lo_c) @ d
    inside = (t >= 0) & (t <= (hi_c - lo_c) @ d)
    cols = np.round(np.stack([foot @ a, foot @ b], axis=1)).astype(int)
    c0 = cols.min(axis=0)
    table = np.zeros(tuple(np.ptp(cols, axis=0) + 1), dtype=bool)
    table[tuple((cols - c0).T)] = True
    key = np.round(np.stack([pts @ a, pts @ b], axis=1)).astype(int) - c0
    ok = np.all((key >= 0) & (key < table.shape), axis=1)
    inside[ok] &= table[tuple(key[ok].T)]
    inside[~ok] = False
    return inside.reshape(tuple(hi - lo)), lo


def _thick_levels(ct_array, mask, grid: _Grid, p_prox, p_dist, proximal_name, distal_name):
    """Both docking vertebrae from the CT on thick slices: (prox, dist, docking) or None to fall back."""
    centre = 0.5 * (p_prox + p_dist)
    radius = 0.5 * np.linalg.norm(p_prox - p_dist) + 70.0
    box, lo = _crop_box(grid.shape, grid.to_kji(centre)[0], radius / grid.spacing_kji)
    sub = np.asarray(mask[box], dtype=bool)
    thick_axis = int(np.argmax(grid.spacing_kji))
    # Bone filled slice by slice: the segment leaves the low-density cancellous centres of osteoporotic bodies open.
    filled = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(sub, thick_axis, 0)], axis=thick_axis)
    full = np.zeros(grid.shape, dtype=bool)
    full[box] = filled
    ct, bone = _Sampler(ct_array, grid, box, lo), _Sampler(full, grid, box, lo)
    out = []
    for point, other, name in ((p_prox, p_dist, proximal_name), (p_dist, p_prox, distal_name)):
        found = _ct_body(ct, bone, grid, point, other - point, name)
        if found is None:
            return None
        out.append(found)
    measured = []
    for (face, back, d, _), is_prox in zip(out, (True, False)):
        axis = d if is_prox else -d  # caudal
        sup, inf = (back, face) if is_prox else (face, back)
        centre_b = 0.5 * (sup.centre + inf.centre)
        measured.append(VertebraMeasurement(level=face.level, body_centre=centre_b, body_mask_voxels=0,
                                            superior_endplate=sup, inferior_endplate=inf, axis_direction=axis,
                                            body_height=float(np.dot(inf.centre - sup.centre, axis))))
    (prox, dist) = measured
    docking = {"proximal": out[0][3], "distal": out[1][3]}
    for m, (crop, _) in zip(measured, docking.values()):
        m.body_mask_voxels = int(crop.sum())
    walked = _walk_bands(ct, bone, prox, dist)
    return prox, dist, docking, walked


def _walk_bands(ct, bone, prox, dist):
    """Bodies between the docking vertebrae on thick slices: midway between consecutive disc bands of the CT
    along the axis through the two end bodies."""
    path = smooth_axis(np.vstack([prox.body_centre, dist.body_centre]), 0.5, prox.axis_direction,
                       dist.axis_direction)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    tangent = np.gradient(path, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    prof = _smoothed(_bone_means(ct, bone, path, tangent))
    if prof is None:
        return []
    peaks = _bands(prof, s)
    s_p = float((prox.inferior_endplate.centre - path[0]) @ tangent[0])
    s_d = s[-1] + float((dist.superior_endplate.centre - path[-1]) @ tangent[-1])
    peaks = np.sort(peaks[(peaks > s_p - 4.0) & (peaks < s_d + 4.0)])
    found = []
    for a, b in zip(peaks[:-1], peaks[1:]):
        if b - a >= 10.0:  # a body between two bands (closer bands are one band's endplates)
            found.append((path[int(np.argmin(np.abs(s - 0.5 * (a + b))))], None))
    return found
