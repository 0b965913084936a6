"""Voxel operations on [k, j, i] masks with anisotropic spacing: structuring elements in mm, bounding boxes, holes
enclosed in a slice, distances, nearest labelled voxels and island removal."""

import numpy as np

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def ball_kernel(radius_mm: float, spacing_kji) -> np.ndarray:
    r = np.maximum(np.floor(radius_mm / np.asarray(spacing_kji) + 1e-6), 0).astype(int)
    zz, yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1, -r[2] : r[2] + 1]
    d2 = (zz * spacing_kji[0]) ** 2 + (yy * spacing_kji[1]) ** 2 + (xx * spacing_kji[2]) ** 2
    return d2 <= radius_mm**2 + 1e-9


def bbox_slices(mask: np.ndarray, pad, shape) -> tuple:
    """Slices of the bounding box of mask, padded by ``pad`` voxels per axis and clipped to ``shape``."""
    out = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(int(idx[0]) - int(pad[ax]), 0)
        hi = min(int(idx[-1]) + 1 + int(pad[ax]), shape[ax])
        out.append(slice(lo, hi))
    return tuple(out)


def nearest_on(labels: np.ndarray, ok: np.ndarray, v, radius_mm: float, spacing_kji):
    """Nearest voxel within radius_mm of voxel v whose component label is ``ok``, with its distance; or None."""
    r = np.ceil(radius_mm / spacing_kji).astype(int)
    lo = np.maximum(v - r, 0)
    hi = np.minimum(v + r + 1, labels.shape)
    win = ok[labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]]
    idx = np.argwhere(win)
    if len(idx) == 0:
        return None
    d = np.linalg.norm((idx + lo - v) * spacing_kji, axis=1)
    n = int(np.argmin(d))
    if d[n] > radius_mm + 1e-6:
        return None
    return idx[n] + lo, float(d[n])


def enclosed_by(bone_like: np.ndarray, v, reach_mm: float, spacing_kji) -> bool:
    """Whether at least 7 of 8 rays from v in the axial plane meet bone-like voxels within reach_mm.

    The centre of an osteopenic vertebral body can be below 50 HU with the 226 HU cortex far away and, on thick
    slices, full of gaps; cancellous bone (>= 100 HU) around it still encloses it.
    """
    hits = 0
    for dj, di in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        step_mm = float(np.hypot(dj * spacing_kji[1], di * spacing_kji[2]))
        for step in range(1, int(np.ceil(reach_mm / step_mm)) + 1):
            w = (v[0], v[1] + dj * step, v[2] + di * step)
            if not (0 <= w[1] < bone_like.shape[1] and 0 <= w[2] < bone_like.shape[2]):
                break
            if bone_like[w]:
                hits += 1
                break
    return hits >= 7


def nearest_label(lab, v, radius_mm, spacing):
    """Label at 2D index v, or the nearest non-zero label within radius_mm; None if there is none."""
    if 0 <= v[0] < lab.shape[0] and 0 <= v[1] < lab.shape[1] and lab[v[0], v[1]]:
        return int(lab[v[0], v[1]])
    idx = np.argwhere(lab > 0)
    if len(idx) == 0:
        return None
    d = np.linalg.norm((idx - v) * spacing, axis=1)
    n = int(np.argmin(d))
    return int(lab[tuple(idx[n])]) if d[n] <= radius_mm else None


def filled_in_slices(mask: np.ndarray, axis: int = 0) -> np.ndarray:
    """``mask`` with the holes of each slice across ``axis`` filled (an osteopenic body's segment is often its
    cortical shell: filled slice by slice it is the whole body, without closing the canal through the arch)."""
    import scipy.ndimage as ndi

    return np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(np.asarray(mask, dtype=bool), axis, 0)], axis=axis)


def enclosed_holes(mask: np.ndarray) -> np.ndarray:
    """Background voxels not connected to the array border (face connectivity), via one labelling pass
    (scipy's binary_fill_holes propagates iteratively and is several times slower on large crops)."""
    import scipy.ndimage as ndi

    lab, n = ndi.label(~mask)
    if n == 0:
        return np.zeros_like(mask)
    border = np.zeros(n + 1, bool)
    border[0] = True  # the mask itself
    for ax in range(mask.ndim):
        for end in (0, -1):
            border[np.take(lab, end, axis=ax)] = True
    return ~border[lab]


def label_counts(labels: np.ndarray, size: int) -> np.ndarray:
    """Voxels per value 0..size-1 of a non-negative integer array, counted slab by slab (a whole-volume bincount
    makes an 8-byte copy of it: 1 GB for a 0.7 mm chest CT)."""
    counts = np.zeros(size, np.int64)
    for k in range(0, labels.shape[0], 16):
        counts += np.bincount(labels[k:k + 16].ravel().astype(np.intp), minlength=size)[:size]
    return counts


def holes_by_median(mask: np.ndarray, ct: np.ndarray, min_hu: float, holes=None) -> np.ndarray:
    """Holes of mask (3D or one slice) whose median CT value is >= min_hu: marrow, not fluid or fat."""
    import scipy.ndimage as ndi

    if holes is None:
        holes = enclosed_holes(mask)
    if not holes.any():
        return holes
    lab, n = ndi.label(holes)
    # median >= min_hu  <=>  at least half of the voxels are >= min_hu (counting beats ndi.median by far). Only the
    # hole voxels are counted: counting the whole volume made 8-byte copies of it (1.6 GB more on a 0.7 mm chest CT).
    inside = lab[holes]
    total = np.bincount(inside, minlength=n + 1)
    high = np.bincount(inside[ct[holes] >= min_hu], minlength=n + 1)
    ok = 2 * high >= total
    ok[0] = False
    out = np.zeros_like(holes)
    out[holes] = ok[inside]
    return out


def near_mask(mask: np.ndarray, dist_mm: float, spacing_kji) -> np.ndarray:
    """Voxels within about dist_mm of mask. The distance map runs on a ~2 mm grid (max-pooled mask, so the
    result is a superset within one coarse cell): an exact map of a large crop costs seconds."""
    import scipy.ndimage as ndi

    f = np.maximum(np.floor(2.0 / np.asarray(spacing_kji)), 1).astype(int)
    shape = np.array(mask.shape)
    n = -(-shape // f)
    padded = np.zeros(n * f, bool)
    padded[: shape[0], : shape[1], : shape[2]] = mask
    coarse = padded.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).any(axis=(1, 3, 5))
    near = ndi.distance_transform_edt(~coarse, sampling=f * np.asarray(spacing_kji)) <= dist_mm
    for ax in range(3):
        near = np.repeat(near, f[ax], axis=ax)
    return near[: shape[0], : shape[1], : shape[2]]


def disk_kernel(radius_mm: float, spacing_ji) -> np.ndarray:
    """In-plane structuring element of radius_mm, at least one voxel."""
    r = np.maximum(np.round(radius_mm / np.asarray(spacing_ji)), 1).astype(int)
    yy, xx = np.ogrid[-r[0] : r[0] + 1, -r[1] : r[1] + 1]
    return (yy / r[0]) ** 2 + (xx / r[1]) ** 2 <= 1.0 + 1e-9


def drop_islands(mask: np.ndarray, min_vox: float, seeds) -> np.ndarray:
    import scipy.ndimage as ndi

    if min_vox <= 1:
        return mask
    lab, n = ndi.label(mask, structure=CONNECTIVITY_26)
    if n == 0:
        return mask
    ok = np.bincount(lab[mask], minlength=n + 1) >= min_vox
    for v in seeds:
        ok[lab[tuple(v)]] = True  # a seeded piece is what the user asked for, whatever its size
    ok[0] = False
    return ok[lab]
