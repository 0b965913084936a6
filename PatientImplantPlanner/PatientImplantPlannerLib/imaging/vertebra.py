"""One vertebral body, isolated from the bone mask around a point (or from its label) and measured: centre, body
height, the two endplates fitted to the face voxels, and the anterior direction."""

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage

from ..core.anatomy import Endplate, angle_deg, unit
from ..core.errors import PlanError
from ..core.grid import VoxelGrid

PATIENT_SUPERIOR = np.array([0.0, 0.0, 1.0])


PATIENT_ANTERIOR = np.array([0.0, 1.0, 0.0])


CORE_FRACTION = 0.5  # opening radius as a fraction of the body's largest inscribed radius


FACE_ANGLE_DEG = 30.0  # surface normals within this angle of the axis belong to an endplate face


FACE_CENTRAL = 0.65  # endplate fit uses the face inside this fraction of the footprint ellipse (rim excluded)


MAX_CORE_TO_HEIGHT = 0.35  # an opening radius above this fraction of the body height is redone at...


REDO_CORE_TO_HEIGHT = 0.3  # ...this fraction (a free body gets about 0.26: half of half its height)


MAX_WEDGE_DEG = 25.0  # a body's two faces fitted further apart than this are fitted again from other starts
NECK_FRACTION = 1.2  # bone the core reaches only through a neck thinner than this x the opening radius...


MASS_DEPTH, MASS_SHARE = 1.4, 0.08  # ...and that is this thick and this share of the core is not body


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


def _crop_box(shape, centre_kji, radius_vox):
    lo = np.maximum(np.floor(centre_kji - radius_vox).astype(int), 0)
    hi = np.minimum(np.ceil(centre_kji + radius_vox).astype(int) + 1, shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


def _box_of(mask, margin_vox):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - margin_vox, 0)
    hi = np.minimum(idx.max(axis=0) + margin_vox + 1, mask.shape)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), lo


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


def _nearest_true(mask, grid: VoxelGrid, point_ras, search_mm: float, predicate=None):
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


def _body_at(mask, grid: VoxelGrid, seed_kji, core_radius: Optional[float] = None) -> _Body:
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
    core = _without_necks(core, depth, core_radius, local_seed, grid.spacing_kji)
    # Union of balls of the core radius around the core = the opened body; computed in the core's box.
    cbox, clo = _box_of(core, np.ceil(core_radius / grid.spacing_kji).astype(int) + 2)
    near_core = ndimage.distance_transform_edt(~core[cbox], sampling=grid.spacing_kji)
    body = comp[cbox] & (near_core <= core_radius + 1e-6)
    # Thin bone (what an opening of everything removes): posterior elements, ribs; not other bodies or a
    # contrast-filled aorta touching the body, which would pull the 'anterior' direction sideways.
    near_any = ndimage.distance_transform_edt(depth < core_radius, sampling=grid.spacing_kji)
    thin = comp & (near_any > core_radius + 1e-6)
    return _Body(body=body, offset=lo + clo, context=thin, context_offset=lo, core_radius=core_radius)


def _without_necks(core, depth, core_radius, seed, spacing):
    """The core without a second bony mass that it reaches only through a neck barely wider than the opening ball.

    A pedicle a little thicker than the ball joins a lateral mass to the body's core (C7 in a chest CT: its body
    centre came out 5 mm towards the lateral mass). A slightly deeper core is cut at such necks into the body's part
    and the mass's; the core is shared out by the nearest deeper part and what falls to another mass that is thick
    itself and a real share of the core is dropped, with the neck. The small deep specks of an irregular real body
    (3 mm voxels, marrow) are neither.
    """
    deep, n = ndimage.label(core & (depth >= NECK_FRACTION * core_radius))
    if n < 2:
        return core
    peak = ndimage.maximum(depth, deep, np.arange(1, n + 1))
    _, nearest = ndimage.distance_transform_edt(deep == 0, sampling=spacing, return_indices=True)
    owner = deep[tuple(nearest)]
    share = np.bincount(owner[core], minlength=n + 1)[1:] / max(int(core.sum()), 1)
    thick = [c + 1 for c in range(n) if peak[c] >= MASS_DEPTH * core_radius and share[c] >= MASS_SHARE]
    own = owner[tuple(seed)]
    if own not in thick and thick:
        # A point clicked near a speck belongs to the thick part nearest to it, never to the speck (which would make
        # the body's own core a 'mass' to drop).
        own = min(thick, key=lambda c: np.min(np.linalg.norm((np.argwhere(deep == c) - seed) * spacing, axis=1)))
    masses = [c for c in thick if c != own]
    if not masses:
        return core
    # The neck itself goes too: core farther from the deeper core left than the depth step (and a voxel) is neck.
    rest = (deep > 0) & ~np.isin(deep, masses)
    reach = (NECK_FRACTION - 1.0) * core_radius + float(np.linalg.norm(spacing))
    near = ndimage.distance_transform_edt(~rest, sampling=spacing) <= reach
    kept = _nearest_component(core & near & ~np.isin(owner, masses), seed, spacing)
    return core if kept is None else kept


def _surface_points(body, grid: VoxelGrid, offset):
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


def _measure_body(b: _Body, grid: VoxelGrid, level: str, cranial_hint) -> VertebraMeasurement:
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

    def faces(up):
        anterior = _anterior_direction(context_pts, body_pts, centroid, up, radius, [])
        for _ in range(4):
            p_sup, n_sup = _fit_face(surf, normals, body_pts, centroid, up, anterior, grid)
            p_inf, n_inf = _fit_face(surf, normals, body_pts, centroid, -up, anterior, grid)
            new_up = unit(n_sup - n_inf)
            converged = angle_deg(new_up, up) < 0.05
            up = new_up
            anterior = _anterior_direction(context_pts, body_pts, centroid, up, radius, [])
            if converged:
                break
        return angle_deg(n_sup, -n_inf), p_sup, n_sup, p_inf, n_inf, up

    fit = faces(up)
    if fit[0] > MAX_WEDGE_DEG:
        # The faces' fit has more than one outcome on a coarse body: on the 3 mm lumbar CT, L4 started from its
        # principal axis (or the line between the clicked points, 8 deg off the slices) came out with its
        # superior face 53 deg off and 41 deg from its inferior one; started from the hint or the patient's
        # superior, 20 deg apart, each within 7 deg of its label's. The other starts are tried, the most nearly
        # parallel faces kept (a sound body's endplates lie within about 20 deg of each other).
        near_hint = [v * np.sign(v @ hint) for v in vt if abs(v @ hint) > np.cos(np.radians(40))]
        starts = [hint, PATIENT_SUPERIOR] + near_hint
        fit = min([fit] + [faces(unit(s)) for s in starts if angle_deg(s, up) > 1.0], key=lambda f: f[0])
    _, p_sup, n_sup, p_inf, n_inf, up = fit
    anterior = _anterior_direction(context_pts, body_pts, centroid, up, radius, warnings)
    if angle_deg(up, hint) > 60:
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


def _column_face(b: _Body, grid: VoxelGrid, endplate: Endplate, column_mm: float = 2.0, label=None,
                 cord=None) -> Endplate:
    """Refit a docking endplate from the body's voxels themselves: per ``column_mm`` column along the endplate's
    normal the outermost voxel, the central 70 % of the footprint, a least-squares plane, its centre moved half
    a voxel outward (voxel centre -> face). On thick slices this follows the labelled face more closely than the
    smoothed surface does (no blur across 2.5 mm slices). ``cord`` (RAS points of the labelled spinal cord): the
    body is cut from its arch at its posterior wall on the midline, in front of the cord, rather than at the
    isolated body's most posterior voxel (its posterolateral corners reach 1-4 mm further back), and the face is
    also read along the cord's axis (see below)."""
    pts = grid.to_ras(b.voxels_kji())
    n, a = endplate.normal, endplate.anterior
    lat = np.cross(n, a)
    along_cord = None
    if label is not None:
        # The whole labelled vertebra in front of the isolated body's posterior wall (the opening loses the rim).
        crop, lo = label
        whole = grid.to_ras(np.argwhere(crop) + lo)
        in_front = whole @ a >= (pts @ a).min() - 0.5
        near = None if cord is None else cord[np.abs((cord - pts.mean(axis=0)) @ n) < CORD_SPAN_MM]
        if near is not None and len(near) >= 10:
            # The wall in the cord's own frame (its axis, anterior square to it): in the endplate's tilted frame
            # it would cut the body's top and bottom at different depths. Chest CT, 30 labelled faces T2-T12:
            # centres 1.32 -> 1.18 mm at the median (worst 4.2 -> 2.8), normals 1.7 -> 1.5 deg (worst 10.5 -> 5.0).
            c = near.mean(axis=0)
            t = np.linalg.svd(near - c, full_matrices=False)[2][0]
            a_c = unit(a - (a @ t) * t)
            ahead, side = (whole - c) @ a_c, (whole - c) @ np.cross(t, a_c)
            midline = (np.abs(side) < MIDLINE_HALF_WIDTH_MM) & (ahead > 0)
            if midline.sum() >= 10:
                in_front = ahead >= float(np.percentile(ahead[midline], 1)) - 0.5
            t = t if t @ n > 0 else -t
            along_cord = (t, a_c, np.cross(t, a_c))
        pts = whole[in_front]
    face = _outermost_columns(pts, n, a, lat, column_mm)
    if len(face) < 10:
        return endplate
    centre, normal = _fit_plane(face)
    normal = normal if normal @ n > 0 else -normal
    cord_face = [] if along_cord is None else _outermost_columns(pts, *along_cord, column_mm)
    if len(cord_face) >= 10:
        # Two readings of one stair-stepped face: columns along the face's own normal and along the spine's axis
        # (the cord's). The slices' steps bias each differently. Chest CT, 30 labelled faces T2-T12: the axis's
        # centre (1.18 -> 0.94 mm at the median; beyond 2 mm 9 -> 1) and the two normals' mean (1.50 -> 1.08 deg,
        # the worst 5.0 -> 4.0; the axis's normal alone 0.94 deg at the median but T4 inferior 5.6).
        centre, n2 = _fit_plane(cord_face)
        normal = unit(normal + (n2 if n2 @ n > 0 else -n2))
    if angle_deg(normal, n) > 15.0:
        return endplate  # not a face (a fragment or a tilted rim): keep the surface fit
    centre = centre + grid.half_voxel_along(normal) * normal
    return Endplate(centre, normal, a, endplate.radius_lr, endplate.radius_ap, endplate.level)


def _outermost_columns(pts, n, a, lat, column_mm):
    """Per ``column_mm`` column along ``n`` the outermost point, kept for the columns of the central 70 % of the
    footprint (normalised radius in the a/lat plane)."""
    key = np.floor(pts @ a / column_mm).astype(np.int64) * 1_000_003 + np.floor(pts @ lat / column_mm).astype(np.int64)
    order = np.lexsort((-(pts @ n), key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    face = pts[order[first]]
    fa, fl = face @ a, face @ lat
    r = np.hypot((fa - fa.mean()) / (np.ptp(fa) + 1e-9) * 2, (fl - fl.mean()) / (np.ptp(fl) + 1e-9) * 2)
    return face[r < 0.7]


# The posterior wall from the cord (_column_face): the cord within this distance of the body's centre along the
# face's normal; the wall as the body's most posterior labelled voxels (1st percentile) within this distance of the
# cord's midline.
CORD_SPAN_MM = 25.0
MIDLINE_HALF_WIDTH_MM = 4.0


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
    grid = VoxelGrid(ijk_to_ras, mask.shape)
    box, lo = _box_of(mask, 3)
    crop = mask[box]
    depth = ndimage.distance_transform_edt(crop, sampling=grid.spacing_kji)
    seed = np.unravel_index(int(np.argmax(depth)), crop.shape)
    return _measured(lambda t: _body_at(mask, grid, np.array(seed) + lo, t), grid, level, cranial_hint)[1]
