"""Separating bone from contrast-filled structures that touch it: blood pools grown from the exclude seeds, the
vertebral column's outline, and Slicer's GrowCut between the two."""

from typing import Optional

import numpy as np

from ..scene.slicerfilters import grow_cut
from .voxelops import CONNECTIVITY_26, ball_kernel, bbox_slices, disk_kernel, enclosed_holes, near_mask, nearest_label

# Separation from contrast structures (see _separate_excluded).
_POOL_STATS_MM = 4.0  # intensity statistics of an exclude seed's pool within this radius


_POOL_MIN_TOL_HU = 150.0  # a pool's band is its median +- max(3 SD, this)...
_POOL_MAX_TOL_HU = 250.0  # ...and at most this (blood SD is 15-40 HU; more means wall and fat were sampled)


_POOL_RADIUS_MM = 2.0  # pools are at least this thick (aorta ~25 mm, heart); cortex in the band is thinner


_POOL_CLEARANCE_MM = 5.0  # column voxels this far from a pool are seeded as bone


_COLUMN_WINDOW_MM = 45.0  # vertebra outlines are followed within this of the column's centre (ribs, kidneys cut)


_COLUMN_MARGIN_MM = 15.0  # bone beyond this from the outlines is not spine (heart >= 28 mm, SVC >= 46 mm away)


_DISC_MEMORY_MM = 15.0  # outlines carry over this far along the axis (a lumbar disc is ~10 mm)


_FOOTPRINT_CLOSING_MM = 2.0  # in-plane closing of cortex gaps before filling the outlines


def _paint_balls(labels: np.ndarray, region: np.ndarray, centres, value: int, ball: np.ndarray) -> None:
    r = np.array(ball.shape) // 2
    for c in centres:
        c = np.asarray(c)
        lo = np.maximum(c - r, 0)
        hi = np.minimum(c + r + 1, labels.shape)
        b = ball[tuple(slice(lo[a] - c[a] + r[a], hi[a] - c[a] + r[a]) for a in range(3))]
        win = tuple(slice(lo[a], hi[a]) for a in range(3))
        labels[win][b & region[win]] = value


def _separate_excluded(
    ct, region, seeds, origins, excludes, spacing_kji, min_island_vox, snap_mm, bone_like_hu, timings, thin
) -> Optional[np.ndarray]:
    """Bone part of ``region`` (thresholded voxels holding bone and the structures to exclude).

    Contrast blood (aorta, heart, great veins: 300-500 HU, some veins brighter than cortex) touches the vertebral
    bodies and, through ribs, clavicles and shoulders, the rest of the skeleton, so neither a threshold nor a single
    pair of competing seeds separates it (measured on a contrast chest CT: 66 ml of heart, 90 % of the superior vena
    cava). Three steps:

    1. Blood pools: each exclude seed's intensity band, opened by a box of half-size ``_POOL_RADIUS_MM`` (thin
       cortex in the band drops out) and reconstructed from the seed: the aorta, the heart and the pools touching
       them.
    2. The column: the vertebra outlines followed slice by slice from the keep seeds (``_column_footprint``).
       Thresholded voxels further than ``_COLUMN_MARGIN_MM`` from it are never bone (ribs beyond, shoulders, veins
       reached through them); bone there would not count as spine anyway.
    3. Slicer's GrowCut between bone seeds (thresholded voxels of the column at least ``_POOL_CLEARANCE_MM`` from
       a pool) and background seeds (the pools and everything outside the column): it only decides the band where
       bone and blood touch.

    ``seeds`` are the snapped bone seed voxels (on thresholded voxels), ``origins`` the seed points as given;
    ``timings`` gets the seconds of the three steps, ``thin`` the indices of exclude seeds in structures too thin
    for a pool. None when no vertebra outline holds a keep seed.
    """
    import time

    import scipy.ndimage as ndi

    t = time.perf_counter()
    pools = _blood_pools(ct, excludes, spacing_kji, thin)
    timings["growcut: blood pools"] = time.perf_counter() - t
    t = time.perf_counter()
    column = _column_footprint(ct, pools, origins, spacing_kji, snap_mm, bone_like_hu)
    timings["growcut: column"] = time.perf_counter() - t
    t = time.perf_counter()
    if not column.any():
        return None
    margin = np.maximum(np.round(_COLUMN_MARGIN_MM / spacing_kji), 1).astype(int)
    zone = ndi.maximum_filter(column.view(np.uint8), size=tuple(2 * margin + 1)).view(bool)
    labels = np.zeros(region.shape, np.uint8)
    labels[region & ~zone] = 2
    labels[pools] = 2
    labels[region & column & ~pools & ~near_mask(pools, _POOL_CLEARANCE_MM, spacing_kji)] = 1
    ball = ball_kernel(max(1.5, float(spacing_kji.max())), spacing_kji)
    _paint_balls(labels, region & ~pools, seeds, 1, ball)
    _paint_balls(labels, region, excludes, 2, ball)
    # GrowCut only where something is undecided: the box of the column's zone.
    bb = bbox_slices(zone, (1, 1, 1), zone.shape)
    grown = np.zeros_like(region)
    grown[bb] = grow_cut(ct[bb], labels[bb], region[bb] | (labels[bb] > 0), spacing_kji) == 1
    grown &= region & zone
    lab, n = ndi.label(grown, structure=CONNECTIVITY_26)
    ok = np.bincount(lab[grown], minlength=n + 1) >= min_island_vox
    for v in seeds:
        ok[lab[tuple(v)]] = True
    ok[0] = False
    timings["growcut: competition"] = time.perf_counter() - t
    return ok[lab]


def _blood_pools(ct, excludes, spacing_kji, thin) -> np.ndarray:
    """Voxels of the contrast-filled pools holding the exclude seeds (see ``_separate_excluded``); indices of seeds
    without a pool (a structure thinner than the opening) are appended to ``thin``."""
    import scipy.ndimage as ndi

    stats_r = np.maximum(np.round(_POOL_STATS_MM / spacing_kji), 1).astype(int)
    bands = []
    for w in excludes:
        lo, hi = np.maximum(w - stats_r, 0), np.minimum(w + stats_r + 1, ct.shape)
        vals = ct[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].astype(np.float32)
        # Statistics of the blood around the seed only: a seed near the vessel wall (the aorta at T8 is ~20 mm
        # across) has fat and wall in its box, which widened the band into soft tissue and grew the "pool" over
        # the whole body (measured on the chest CT: 15 l, every vertebra; the column was then lost).
        near = ct[tuple(slice(max(c - 1, 0), c + 2) for c in w)].astype(np.float32)
        centre = float(np.median(near))
        vals = vals[np.abs(vals - centre) <= _POOL_MAX_TOL_HU]
        med = float(np.median(vals))
        q1, q3 = np.percentile(vals, [25, 75])
        tol = min(max(3.0 * float(q3 - q1) / 1.349, _POOL_MIN_TOL_HU), _POOL_MAX_TOL_HU)
        bands.append([med - tol, med + tol, [len(bands)]])
    # Seeds whose bands overlap share one pass (aorta and heart: one connected pool).
    bands.sort(key=lambda b: b[0])
    merged = []
    for b in bands:
        if merged and b[0] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b[1])
            merged[-1][2] += b[2]
        else:
            merged.append(b)
    r = np.maximum(np.round(_POOL_RADIUS_MM / spacing_kji), 1).astype(int)
    size = tuple(2 * r + 1)
    pools = np.zeros(ct.shape, bool)
    for lo_hu, hi_hu, group in merged:
        band = (ct >= lo_hu) & (ct <= hi_hu)
        core = ndi.minimum_filter(band.view(np.uint8), size=size).view(bool)
        lab, n = ndi.label(core)
        keep = np.zeros(n + 1, bool)
        for index in group:
            lo, hi = np.maximum(excludes[index] - r, 0), np.minimum(excludes[index] + r + 1, ct.shape)
            ids = np.unique(lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
            keep[ids] = True
            if not ids.any():
                thin.append(index)
        keep[0] = False
        del core
        pools |= ndi.maximum_filter(keep[lab].view(np.uint8), size=size).view(bool) & band
    return pools


def _column_footprint(ct, pools, origins, spacing_kji, snap_mm, bone_hu) -> np.ndarray:
    """Axial outlines of the vertebrae (body, canal, arch) followed slice by slice from each seed.

    Each slice's voxels at or above ``bone_hu`` (cancellous level, lightly smoothed; blood pools removed) are closed
    in-plane and their holes filled, giving solid vertebra outlines; the seed's slice keeps the outline holding the
    seed (or within ``snap_mm`` of it); each next slice keeps the outlines that overlap those of the slices just
    before it (within ``_DISC_MEMORY_MM``, enough to cross a disc), inside a window of ``_COLUMN_WINDOW_MM`` around
    the column's centre, which follows the outlines (ribs leaving the window are cut).
    """
    import scipy.ndimage as ndi

    nk = ct.shape[0]
    sp_ji = np.asarray(spacing_kji[1:])
    half = np.ceil(_COLUMN_WINDOW_MM / sp_ji).astype(int)
    disk = disk_kernel(_FOOTPRINT_CLOSING_MM, sp_ji)
    pad = max(disk.shape) // 2 + 1
    memory = max(1, int(np.ceil(_DISC_MEMORY_MM / spacing_kji[0])))
    grow = disk_kernel(1.5, sp_ji)
    pool_rim = disk_kernel(1.0, sp_ji)
    foot = np.zeros(ct.shape, bool)
    yy, xx = np.ogrid[-half[0] : half[0] + 1, -half[1] : half[1] + 1]
    in_circle = (yy * sp_ji[0]) ** 2 + (xx * sp_ji[1]) ** 2 <= _COLUMN_WINDOW_MM**2

    def outlines(k, centre):
        c = np.round(centre).astype(int)
        lo = c - half
        win = tuple(slice(max(a, 0), min(a + 2 * h + 1, n)) for a, h, n in zip(lo, half, ct.shape[1:]))
        circle = in_circle[tuple(slice(w.start - a, w.stop - a) for w, a in zip(win, lo))]
        # Cancellous level, lightly smoothed: a thin osteopenic cortex has gaps at the bone threshold.
        smooth = ndi.gaussian_filter(ct[k][win].astype(np.float32), 1.0 / sp_ji)
        sl = (smooth >= bone_hu) & ~ndi.binary_dilation(pools[k][win], pool_rim) & circle
        closed = ndi.binary_closing(np.pad(sl, pad), structure=disk)[pad:-pad, pad:-pad] | sl
        lab, _ = ndi.label(closed | enclosed_holes(closed), structure=np.ones((3, 3), bool))
        return win, lab

    for origin in origins:
        k0 = int(np.clip(round(origin[0]), 0, nk - 1))
        start = np.asarray(origin[1:], float)
        win, lab = outlines(k0, start)
        v = np.round(start).astype(int) - [w.start for w in win]
        hit = nearest_label(lab, v, snap_mm, sp_ji)
        if hit is None:
            continue
        foot[k0][win] |= lab == hit
        for step in (1, -1):
            centre = start.copy()
            last = k0
            k = k0 + step
            while 0 <= k < nk and abs(k - last) <= memory:
                win, lab = outlines(k, centre)
                ks = slice(min(k - step * memory, k - step), max(k - step * memory, k - step) + 1)
                ks = slice(max(ks.start, 0), min(ks.stop, nk))
                ref = ndi.binary_dilation(foot[ks][(slice(None),) + win].any(axis=0), grow)
                ids = np.unique(lab[ref])
                ids = ids[ids > 0]
                if len(ids):
                    now = np.isin(lab, ids)
                    foot[k][win] |= now
                    centroid = np.argwhere(now).mean(axis=0) + [w.start for w in win]
                    centre = 0.7 * centre + 0.3 * centroid  # damped: a rib in one slice barely moves it
                    last = k
                k += step
    return foot
