"""The spinal canal found from the bone segment, without labels: the hole each vertebra's bony ring encloses behind
the body. Two cuts find it and are joined: axial slices (the CT's own), and sections across the spinal axis, which
a flexed column needs: at the chest CT's upper thoracic spine (tilted 40-45 deg) the axial slices cut the ring so
obliquely that only 62 % of the labelled cord lay within 0.5 mm of their holes, 6.2 mm away at T1/T2 (99th
percentile); with the sections across the axis, 94 % along the axis and 100 % between the T1 and T4 body centres.
Numpy on [k, j, i] masks; no scene access."""

from typing import Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..core.anatomy import unit

CANAL_AREA_MM2 = (20.0, 600.0)  # cross-section of a spinal canal hole in one slice
# Open slices bridged in the canal: a disc and the part of a body whose ring is open in the axial slices (on a
# phantom with 8 deg of kyphosis per disc the ring closed in 2-3 slices of 2.5 mm per vertebra, 15-22 mm apart).
MAX_OPEN_CANAL_MM = 25.0
CANAL_MAX_WIDEN_MM = 4.0  # the canal widened by at most this for the slices' blur (_widen_by_slice_blur)
CANAL_BEHIND_AXIS_MM = 8.0  # the canal starts behind the body: at least this far posterior of the body centres
SECTION_BEHIND_AXIS_MM = 0.5 * CANAL_BEHIND_AXIS_MM  # in sections across the axis (see there)
CANAL_NEAR_AXIS_MM = 35.0  # and no further than this from the axis
# In a section the canal's hole lies behind the body centre, within this of it sideways (a vertebra rotated 20 deg
# moves it about 9 mm); the holes further out (foramina beside the arch) are not the canal: on the chest CT they were
# 1.7-2.3 ml more than 8 mm from the labelled cord, 0.1-0.5 ml within this limit (T1 -> T4, T4 -> T9).
CANAL_OFF_MIDLINE_MM = 15.0
SECTION_PITCH_MM = 0.5  # sections across the axis are sampled on this grid
# Channels narrower than about twice this are cut from the holes (CT angiogram T10: the basivertebral notch joined a
# pocket of the body's centre, 5 mm in front of the posterior wall, to the canal; the canal is 12-15 mm wide).
CHANNEL_MM = 2.0
SECTION_HALF_WIDTH_MM = 30.0  # left-right half-width of a section; its depth runs from the axis back 50 mm
SECTION_DEPTH_MM = 50.0
ANTERIOR = np.array([0.0, 1.0, 0.0])  # RAS


def find_canal(bone: np.ndarray, ijk_to_ras, axis_points=None, slice_mm: Optional[float] = None):
    """The canal as a mask on bone's grid (None if no ring is found): the axial holes bridged across the slices where
    the ring is open, joined with the holes across the axis (when the axis is given), then widened by the slices'
    blur (``slice_mm``: how thick they blur; their spacing if not given). The cord lies inside it."""
    if bone is None or not bone.any():
        return None
    m = np.asarray(ijk_to_ras, float)
    kji_axis = 2 - int(np.argmax(np.abs(m[2, :3])))
    spacing = np.linalg.norm(m[:3, :3], axis=0)[::-1]
    canal = _axial_canal(bone, m, kji_axis, axis_points)
    if axis_points is not None and len(axis_points) >= 2:
        across = _canal_across_axis(bone, m, np.asarray(axis_points, float))
        canal = across if canal is None else canal | across
    if canal is None or not canal.any():
        return None
    blur = max(float(spacing[kji_axis]), slice_mm or 0.0)
    return _widen_by_slice_blur(canal, m, kji_axis, axis_points, blur)


def _ring_holes(section: np.ndarray, pixel_mm2: float) -> tuple:
    """Labelled holes the bone encloses in one section whose area fits a canal (the chest cavity enclosed by ribs and
    sternum is far larger), with their labels."""
    holes, n = ndimage.label(ndimage.binary_fill_holes(section) & ~section)
    if n == 0:
        return holes, []
    area = ndimage.sum(np.ones_like(holes), holes, range(1, n + 1)) * pixel_mm2
    return holes, [i + 1 for i in range(n) if CANAL_AREA_MM2[0] <= area[i] <= CANAL_AREA_MM2[1]]


def _axial_canal(bone, m, kji_axis, axis_points):
    holes = np.zeros_like(bone)
    moved = np.moveaxis(bone, kji_axis, 0)
    out = np.moveaxis(holes, kji_axis, 0)
    spacing = np.linalg.norm(m[:3, :3], axis=0)[::-1]
    pixel_mm2 = float(np.prod(np.delete(spacing, kji_axis)))
    for s in range(moved.shape[0]):
        if moved[s].any():
            holes2d, keep = _ring_holes(moved[s], pixel_mm2)
            holes2d, keep = _without_narrow_channels(holes2d, keep, float(np.sqrt(pixel_mm2)))
            if keep:
                out[s] = np.isin(holes2d, keep)
    if not holes.any():
        return None
    if axis_points is not None and len(axis_points):
        # Holes near the spinal axis and behind it: the canal lies behind the body; holes around the axis are the
        # body's own cancellous interior where the segment left it unfilled.
        axis = np.asarray(axis_points, float)
        idx = np.argwhere(holes)
        pts = idx[:, ::-1] @ m[:3, :3].T + m[:3, 3]
        d, near = cKDTree(axis).query(pts)
        behind = (pts - axis[near]) @ ANTERIOR <= -CANAL_BEHIND_AXIS_MM
        keep = idx[(d <= CANAL_NEAR_AXIS_MM) & behind]
        holes = np.zeros_like(holes)
        holes[tuple(keep.T)] = True
    lab, n = ndimage.label(holes)
    if n == 0:
        return None
    sizes = ndimage.sum(holes, lab, range(1, n + 1))
    # A canal stretch is at least ~100 mm3 (a 10 mm disc of 3.5 mm radius); smaller holes are vessels' foramina.
    big = [v + 1 for v in range(n) if sizes[v] * float(np.prod(spacing)) >= 100.0]
    if not big:
        return None
    return _bridge_open_slices(np.isin(lab, big), kji_axis, float(spacing[kji_axis]))


def _section_frames(axis: np.ndarray):
    """Per axis point: its tangent, the anterior direction across it and the left-right direction."""
    tangent = np.gradient(axis, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    anterior = ANTERIOR - (tangent @ ANTERIOR)[:, None] * tangent
    anterior /= np.maximum(np.linalg.norm(anterior, axis=1, keepdims=True), 1e-9)
    return tangent, anterior, np.cross(tangent, anterior)


def _without_narrow_channels(holes: np.ndarray, keep: list, pixel_mm: float) -> tuple:
    """Each hole of a section opened by a disc of CHANNEL_MM radius and split into what is left: a channel narrower
    than twice that (the basivertebral notch in the posterior wall) no longer joins a pocket of the body's osteopenic
    centre to the canal, so the pocket is judged on its own place (in front: not canal)."""
    r = max(1, int(round(CHANNEL_MM / pixel_mm)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = yy**2 + xx**2 <= r * r
    out, parts = np.zeros_like(holes), []
    for k in keep:
        lab, n = ndimage.label(ndimage.binary_opening(holes == k, disc))
        for j in range(1, n + 1):
            parts.append(len(parts) + 1)
            out[lab == j] = parts[-1]
    return out, parts


def _canal_across_axis(bone: np.ndarray, m, axis: np.ndarray) -> np.ndarray:
    """The ring's holes in sections across the spinal axis (one per axis point, <= 1 mm apart), behind the body
    centre by CANAL_BEHIND_AXIS_MM measured across the axis and near the midline; a section whose ring is open (at a
    disc) takes the holes of the nearest closed sections on both sides, up to MAX_OPEN_CANAL_MM apart. Rasterised
    onto bone's grid."""
    inv = np.linalg.inv(m)
    u = np.arange(-SECTION_HALF_WIDTH_MM, SECTION_HALF_WIDTH_MM + 1e-6, SECTION_PITCH_MM)
    v = np.arange(-SECTION_DEPTH_MM, 1e-6, SECTION_PITCH_MM)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    bone8 = bone.astype(np.uint8)
    tangent, anterior, lateral = _section_frames(axis)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(axis, axis=0), axis=1))])

    def points(i, where):
        return axis[i] + uu[where][:, None] * lateral[i] + vv[where][:, None] * anterior[i]

    def to_kji(p):
        return (p @ inv[:3, :3].T + inv[:3, 3])[:, ::-1]

    found = []
    everywhere = np.ones(uu.shape, bool)
    for i in range(len(axis)):
        section = ndimage.map_coordinates(bone8, to_kji(points(i, everywhere)).T, order=0, cval=0)
        holes, keep = _ring_holes(section.reshape(uu.shape) > 0, SECTION_PITCH_MM**2)
        holes, keep = _without_narrow_channels(holes, keep, SECTION_PITCH_MM)
        canal = [k for k in keep if vv[holes == k].mean() <= -CANAL_BEHIND_AXIS_MM
                 and abs(uu[holes == k].mean()) <= CANAL_OFF_MIDLINE_MM]
        # Not in the body's centre: a hole open into it through the basivertebral notch (osteopenic bone, its
        # cancellous centre outside the segment) carried a pocket of T10's centre into the canal on the CT angiogram
        # (3.3 mm behind the axis). Half the axial holes' limit: in the flexed upper thoracic spine of the chest CT
        # (bodies ~15 mm deep, the cord against their back) the full 8 mm left 6.5 % of the cord outside, up to 2.6 mm.
        found.append(np.isin(holes, canal) & (vv <= -SECTION_BEHIND_AXIS_MM) if canal else None)
    closed = [i for i, f in enumerate(found) if f is not None]
    out = np.zeros_like(bone)
    for i in range(len(axis)):
        hole = found[i]
        if hole is None:
            before = [j for j in closed if j < i]
            after = [j for j in closed if j > i]
            if not before or not after or arc[after[0]] - arc[before[-1]] > MAX_OPEN_CANAL_MM:
                continue
            hole = found[before[-1]] | found[after[0]]
        p = points(i, hole)
        # Each section stands for 1 mm of axis: thickened along it so the voxels between sections are filled.
        p = np.concatenate([p + s * tangent[i] for s in (-0.5, 0.0, 0.5)])
        kji = np.rint(to_kji(p)).astype(int)
        inside = np.all((kji >= 0) & (kji < bone.shape), axis=1)
        out[tuple(kji[inside].T)] = True
    return out


def _widen_by_slice_blur(canal: np.ndarray, ijk_to_ras, kji_axis: int, axis_points, slice_mm: float) -> np.ndarray:
    """The canal widened in each slice by how far a slice smears the wall in front of it where the column is tilted
    (slice_mm, the slices' thickness, x tan(tilt)). On the chest CT's 2.5 mm slices at T3 (tilted 38 deg) the cord
    labels reached 2.8 mm in front of the ring's hole, and the footplate of a T3 -> T6 plan, 2.6 mm from that hole,
    lay 0.4 mm from the labelled cord's voxels; widened, 1.8 mm (the footplate held back to 2.9 mm from the canal).
    A pixel more took T4 -> T8 from two screws per end to one, 5.8 mm from the cord."""
    if axis_points is None or len(axis_points) < 2:
        return canal
    m = np.asarray(ijk_to_ras, float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)[::-1]
    along = unit(m[:3, 2 - kji_axis])
    axis = np.asarray(axis_points, float)
    tangent = _section_frames(axis)[0]
    tree = cKDTree(axis)
    inplane = np.delete(spacing, kji_axis)
    out = canal.copy()
    moved = np.moveaxis(out, kji_axis, 0)
    for s in np.flatnonzero(moved.reshape(len(moved), -1).any(axis=1)):
        ji = np.argwhere(moved[s]).mean(axis=0)
        kji = np.insert(ji, kji_axis, s)
        _, i = tree.query(m[:3, :3] @ kji[::-1] + m[:3, 3])
        tilt = np.arccos(min(1.0, abs(float(tangent[i] @ along))))
        r = min(slice_mm * np.tan(tilt), CANAL_MAX_WIDEN_MM)
        moved[s] = ndimage.distance_transform_edt(~moved[s], sampling=inplane) <= r
    return out


def _bridge_open_slices(canal: np.ndarray, kji_axis: int, slice_mm: float) -> np.ndarray:
    """The canal across the slices where its ring is open, and so missing: at the discs (no bone in front of the
    canal), exactly where the footplates lie. Each run of open slices gets the sections on both sides slid towards
    each other along the line between their centres (the column is tilted: on the chest CT 2 mm per 2.5 mm slice at
    T3). Measured there: the cord labels 60 % within 0.5 mm of the canal found, the rest up to 5 mm away (two open
    slices)."""
    out = canal.copy()
    moved = np.moveaxis(out, kji_axis, 0)  # a view: filling it fills out
    present = np.flatnonzero(moved.reshape(len(moved), -1).any(axis=1))
    for a, b in zip(present[:-1], present[1:]):
        if b - a < 2 or (b - a - 1) * slice_mm > MAX_OPEN_CANAL_MM:
            continue
        ca, cb = np.argwhere(moved[a]).mean(axis=0), np.argwhere(moved[b]).mean(axis=0)
        for s in range(a + 1, b):
            t = (s - a) / (b - a)
            for section, shift in ((moved[a], t * (cb - ca)), (moved[b], (t - 1) * (cb - ca))):
                moved[s] |= ndimage.shift(section.astype(np.uint8), shift, order=0) > 0
    return out
