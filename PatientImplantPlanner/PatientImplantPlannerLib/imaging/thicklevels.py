"""Vertebral bodies and docking faces on thick, anisotropic slices, found from the CT itself: the disc spaces stand out
as bands of lower density along the column, and each docking face lies a measured distance beyond its band's edge."""

from typing import Optional

import numpy as np
from scipy import ndimage

from ..core.anatomy import Endplate, angle_deg, smooth_axis, unit
from ..core.grid import VoxelGrid
from .vertebra import CORE_FRACTION, PATIENT_ANTERIOR, VertebraMeasurement, _crop_box, _fit_plane
from .voxelops import filled_in_slices

# On 2-3 mm slices the thin thoracic discs blur with the endplates into one bright band and the filled bone is one
# column (measured on a 0.7 x 0.7 x 2.5 mm contrast chest CT): the bodies are found from the CT instead. The band
# is endplate - disc - endplate: the docking face lies between its near edge (body side) and its centre.
BAND_PROMINENCE_HU = 40.0  # a disc band stands out this much from the cancellous bone on either side


# On thin slices a disc shows as its two endplates' peaks (measured on the 1.5 mm CT angiogram: 4-6 mm apart, the
# weaker 15-40 HU above the disc's dip): peaks this far apart, the partner standing this much above the dip, are one
# disc. Bodies are >= 12 mm tall (cervical), so two faces of one body are never paired.
PAIR_MIN_MM, PAIR_MAX_MM = 2.5, 8.0
PAIR_PARTNER_HU = 15.0
# Only on slices up to this thick (the 2.5 mm chest CT's bands are one peak; its few double ones are not discs'
# endplates and pairing them moved its calibrated faces).
PAIR_SLICE_MM = 2.0
PAIR_DIP_MM = 4.0  # a paired band's far edge: the near endplate's descent towards the dip, up to this past the centre


# All bone of the CT (the Bone preset's lower threshold), measured when the segment has no neighbours to the bodies.
ALL_BONE_HU = 226.0

BODY_MIN_HU = 60.0  # body in the mid-body plane: bone >= this (osteoporotic cancellous ~100 HU; cord/CSF below)


# The docking face beyond the band's near edge (half-max), per side: measured against the label faces of the chest CT
# (clicked points, short and long chords, the 23 faces of T2-T12 within 10 deg), one 2.8 mm for both left the
# inferior faces 0.6 mm inside their bodies and the superior ones 1.3 mm out in the disc (means; 10 of 12 inferior
# faces inside, 10 of 11 superior ones out). Inferior 3.1 rather than the 3.4 that centres them: erring inside the
# body, where the screws start in bone (at 3.4 T4's face of T4 -> T9 sat 0.3 mm out and a screw's first millimetre
# ran in the labelled disc). Per side, on the 18 faces of neighbouring pairs: mean error along the normal 1.06 ->
# 0.69 mm, centre distance 2.45 -> 2.24 mm; on the same CT resampled to 1 mm slices, faces within 2 mm of their
# references 5 -> 7 of 10 (figures at 3.4 mm).
FACE_BEYOND_EDGE_MM = {"inferior": 3.1, "superior": 1.5}


def _thick_slices(grid: VoxelGrid) -> bool:
    return grid.spacing_ijk.max() > THICK_SLICE_MM and grid.spacing_ijk.max() > 1.8 * grid.spacing_ijk.min()


def resolution_mm(ct_array, grid: VoxelGrid) -> np.ndarray:
    """The CT's effective resolution (FWHM, mm) along each array axis (k, j, i), estimated from the data: the
    correlation of neighbouring first differences, inverted through a Gaussian blur of white detail. Thick slices
    reconstructed at a finer spacing (overlapping reconstructions, or a volume resampled to thin slices) keep their
    thick blur; measured on the chest CT (2.5 mm slices, 0.7 mm pixels): 4.3 mm across the slices, 1.7-1.9 mm in
    plane; the same resampled to 1.0 / 1.25 / 0.7 mm slices: 3.2 / 3.8 / 2.8 mm; the 3 mm lumbar CT 3.9-4.5 mm
    on every axis."""
    a = np.asarray(ct_array)
    _, nj, ni = a.shape
    # The central half in plane (the patient, not the air around), HU clipped to tissue and bone (no air edges),
    # at most 64 slices evenly spread: a fraction of a second on a 512 x 512 x 300 CT.
    ks = np.unique(np.linspace(0, a.shape[0] - 1, min(a.shape[0], 64)).astype(int))
    crop = np.clip(a[:, nj // 4: 3 * nj // 4, ni // 4: 3 * ni // 4], -200, 1500).astype(np.float32)
    out = np.zeros(3)
    for axis in range(3):
        sub = crop if axis == 0 else crop[ks]
        d = np.diff(sub, axis=axis)
        n = d.shape[axis]
        x, y = np.take(d, range(n - 1), axis=axis), np.take(d, range(1, n), axis=axis)
        c = float((x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-12))
        out[axis] = 2.355 * _blur_for_correlation(c) * grid.spacing_kji[axis]
    return out


def _blur_for_correlation(c: float) -> float:
    """Gaussian sigma (in samples) of blurred white detail whose first differences correlate ``c`` at lag one."""
    r = np.linspace(0.05, 6.0, 1200)
    rho = np.exp(-1.0 / (4 * r * r))
    rho2 = np.exp(-4.0 / (4 * r * r))
    corr = (2 * rho - 1 - rho2) / (2 * (1 - rho))
    return float(r[np.argmin(np.abs(corr - c))])


def thick_slice_axis(grid: VoxelGrid, ct_array=None):
    """(array axis, thickness in mm, whether found from the blur) of thick slices: by spacing, else by the CT's
    blur across its slices (blurred_slice_axis); None on thin slices."""
    if _thick_slices(grid):
        return int(np.argmax(grid.spacing_kji)), float(grid.spacing_kji.max()), False
    found = blurred_slice_axis(ct_array, grid)
    return None if found is None else (found[0], found[1], True)


def blurred_slice_axis(ct_array, grid: VoxelGrid):
    """(array axis, its effective resolution in mm) when the CT is blurred across its slices like thick slices
    (at least BLURRED_SLICE_MM and BLUR_RATIO times the other axes), else None."""
    if ct_array is None:
        return None
    res = resolution_mm(ct_array, grid)
    axis = int(np.argmax(res))
    others = np.delete(res, axis)
    if res[axis] >= BLURRED_SLICE_MM and res[axis] >= BLUR_RATIO * others.mean():
        return axis, float(res[axis])
    return None


class _Sampler:
    """Trilinear samples of a [k, j, i] array at RAS points, in a crop around the region of interest."""

    def __init__(self, arr, grid: VoxelGrid, box, lo):
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


def _disc_bands(prof, h, thin: bool = True):
    """Disc bands along a body's profile: (centres, paired). On thick slices a disc is one band (endplate, disc and
    endplate blurred together); on thin ones its two endplates are two peaks a few mm apart with the disc's dip
    between them, the weaker often under BAND_PROMINENCE_HU next to the brighter: such a pair is one band, centred
    on the disc, and marked ``paired``."""
    from scipy.signal import find_peaks

    main, _ = find_peaks(prof, prominence=BAND_PROMINENCE_HU)
    weak = find_peaks(prof, prominence=PAIR_PARTNER_HU)[0] if thin else []
    centres, paired = [], []
    for p in main:
        partners = [q for q in weak if PAIR_MIN_MM <= abs(h[q] - h[p]) <= PAIR_MAX_MM
                    and prof[q] - prof[min(p, q): max(p, q) + 1].min() >= PAIR_PARTNER_HU]
        if partners:
            q = max(partners, key=lambda q: prof[q])
            centres.append(0.5 * (h[p] + h[q]))
            paired.append(True)
        else:
            centres.append(float(h[p]))
            paired.append(False)
    centres, paired = np.asarray(centres, float), np.asarray(paired, bool)
    keep = np.ones(len(centres), bool)  # both endplates of a pair may be main peaks: one band
    keep[1:] = np.abs(np.diff(centres)) > 1e-6
    return centres[keep], paired[keep]


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


def _in_front_of_wall(foot, a, b):
    """The footprint's columns in front of the body's posterior wall (found beside the midline, where the canal lies
    behind it): the opening leaves the pedicle roots, lobes behind the wall that draw the face's centre back and
    deepen it (CT angiogram T10 superior: a 14 instead of 13 mm anteroposterior radius, the body 26.5 mm deep on the
    CT; the chest CT's T10 inferior centre 4.6 mm behind its label reference, 4.1 with the cut). The same cut as the
    label references'."""
    fa, fb = foot @ a, foot @ b
    strip = np.abs(fb - np.median(fb)) < WALL_STRIP_MM
    if strip.sum() < 5:
        return foot
    kept = foot[fa >= fa[strip].min() - WALL_BEHIND_MM]
    return kept if len(kept) >= 0.5 * len(foot) else foot


def _band_edges(ct, foot, d, h, paired=False):
    """Per footprint column across a band at h = 0: the half-max crossings on the near (h < 0) and far side. A
    ``paired`` band (thin slices, centred on the disc): the near endplate's own edges, the far one towards the disc's
    dip."""
    prof = ndimage.gaussian_filter1d(ct(foot[:, None, :] + h[None, :, None] * d), 1.0, axis=1)
    win = np.flatnonzero((h >= -5.0) & (h <= (0.5 if paired else 5.0)))
    near, far = [], []
    for p0, row in zip(foot, prof):
        ip = win[np.argmax(row[win])]
        base_n = np.median(row[:6])
        base_f = row[ip: np.searchsorted(h, PAIR_DIP_MM) + 1].min() if paired else np.median(row[-6:])
        if row[ip] - max(base_n, base_f) < BAND_PROMINENCE_HU and not paired or paired and (
                row[ip] - base_n < BAND_PROMINENCE_HU or row[ip] - base_f < PAIR_PARTNER_HU):
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


def _ct_body(ct, bone, grid: VoxelGrid, point, toward, level: str, side: str, thin: bool = False):
    """The vertebral body around a clicked point measured from the CT on thick slices: the disc bands on either
    side along the axis, the body's cross-section between them, the face towards ``toward`` fitted per column
    (normal: mean of the near-edge and band-centre planes, refined by the profile fit; the centre: the footprint's
    central part on it).
    ``side``: the docking face's ("inferior" or "superior"); ``thin``: slices thin enough to show a disc's two
    endplates apart (_disc_bands). Returns (docking face, opposite face, axis, (docking crop,
    origin), doubts about the face's tilt) or None when the first fit finds no band pair. A refit that loses the
    bands keeps the fit before it, doubted (the 1 mm copy of the chest CT: T10 -> T12 was refused as one vertebra when
    T12's fourth refit lost them)."""
    d, centre = unit(toward), np.asarray(point, float)
    h = np.arange(-40.0, 40.01, 0.5)
    hb_loc = np.arange(-9.0, 9.01, 0.5)
    result, steps, docking_bands = None, [], []
    for _ in range(4):
        lost = True  # until this refit has found its bands, footprint and edges
        prof = _bone_profile(ct, bone, centre, d, h)
        if prof is None:
            break
        peaks, paired = _disc_bands(prof, h, thin)
        fwd, back = peaks[peaks > 3.0], peaks[peaks < -3.0]
        if len(fwd) == 0 or len(back) == 0:
            break
        hf, hb = float(fwd.min()), float(back.max())
        hf_paired = bool(paired[peaks > 3.0][0])
        docking_bands.append(centre + hf * d)
        mid = centre + 0.5 * (hf + hb) * d
        height = hf - hb
        found = _footprint_2d(ct, bone, mid, d, height)
        if found is None or len(found[0]) < 30:
            break
        u, w = found
        a, b = _frame(d)
        centre = mid + u.mean() * a + w.mean() * b
        foot = centre + 0.5 * height * d + u[:, None] * a + w[:, None] * b - u.mean() * a - w.mean() * b
        near, far = _band_edges(ct, foot, d, hb_loc, hf_paired)
        if len(near) < 30:
            break
        # The face beyond the near edge: on thick slices the measured offset; a paired band's face is the near
        # endplate's own far edge, towards the disc.
        beyond = float(np.median((far - near) @ d)) if hf_paired else FACE_BEYOND_EDGE_MM[side]
        c_near, n_near = _robust_plane(_central(near, a, b), d)
        n_mid_point, n_mid = _robust_plane(_central(0.5 * (near + far), a, b), d)
        normal = unit(n_near + n_mid)  # the near edge alone is noisy, the band centre alone misses wedged discs
        result = (normal, c_near, foot, a, b, d, centre, height, hb, hf, beyond)
        lost = False
        steps.append(angle_deg(n_near, d))
        if steps[-1] < 0.2:
            break
        d = n_near  # the next axis: the body's own face (the band centre is shared with the neighbour)
    if result is None:
        return None
    docking_bands = docking_bands[:len(steps)]  # a refit that lost the bands: the last one that found them is kept
    normal, c_near, foot, a, b, d, centre, height, hb, hf, beyond = result
    # Where the docking face's own band was found in each refit, along the final axis (the first, from the clicked
    # point's rough axis, is not compared).
    band_moves = np.ptp([(q - docking_bands[-1]) @ d for q in docking_bands[1:]]) if len(docking_bands) > 2 else 0.0
    doubts = _doubts(steps, float(band_moves), angle_deg(n_near, n_mid))
    if lost:
        doubts.append(f"the refit along the face's own tilt ({steps[-1]:.0f} deg from the last axis) lost its disc "
                      "bands, so its place is uncertain too")
    fitted, at_edge = _profile_fit_normal(ct, foot, a, b, d, normal, c_near, n_mid_point)
    if at_edge and not doubts:
        # Its best tilt lies at or beyond the edge of the search: the fit did not settle. On the 2.5 mm chest CT 7
        # of 30 faces did so, all 10-14 deg off their labels and already doubted; on a 5 mm chest CT (pyradiomics
        # lung1, T4 inferior) a face ran from 7 to 28 deg off the slices with no other sign. Kept (on the chest CT
        # the fit still took those faces from 25-29 deg to 10-14), but doubted.
        doubts.append(f"the fit of the face's tilt ran to the edge of its {PROFILE_SEARCH_DEG:g} deg search, "
                      f"{angle_deg(fitted, normal):.0f} deg from the disc band's planes")
    normal = fitted
    # The face's centre, size and docking body from the body in front of its posterior wall (chest CT, 30 clicked
    # faces: more than 2 mm from their label references 11 -> 10, the worst undoubted 4.6 -> 4.1 mm). The tilt above
    # from the whole footprint: cut there too, it moved faces either way (median 5.5 -> 4.5 deg, but T10 superior
    # 7.5 -> 11.6 and the lumbar CT's L5 superior 2.7 -> 5.9, its concave back cut).
    foot = _in_front_of_wall(foot, a, b)
    fc = _central(foot, a, b).mean(axis=0)
    face_c = fc + ((c_near - fc) @ normal) / (d @ normal) * d + beyond * normal
    # The opposite face: the other band (it lies at -height / 2), perpendicular to the axis, its own side's offset.
    other = "superior" if side == "inferior" else "inferior"
    back_c = face_c - (2.0 * float((face_c - centre) @ d) + FACE_BEYOND_EDGE_MM[other] - FACE_BEYOND_EDGE_MM[side]) * d
    r_ap = 0.5 * float(np.ptp(foot @ a)) + 0.5
    r_lr = 0.5 * float(np.ptp(foot @ b)) + 0.5
    docking_face = Endplate(face_c, normal, unit(a - (a @ normal) * normal), r_lr, r_ap, level)
    other_face = Endplate(back_c, -d, a, r_lr, r_ap, level)
    # The docking body for the screws: its footprint between the faces, kept 3 mm clear of the estimated far face (it
    # tilts with the kyphosis) and inside 90 % of the footprint's radius, so it never reaches into the neighbours.
    shrunk = _central(foot, a, b, 0.9)
    return docking_face, other_face, d, _prism(grid, shrunk, d, back_c + 3.0 * d, face_c - 0.5 * d, (a, b)), doubts


def _profile_fit_normal(ct, foot, a, b, d, normal, near_point, band_point):
    """The face's normal refined on the CT itself: every central column of the footprint, from the near edge's body
    side across the band, is taken as one common profile of the distance to a tilted plane; the tilt that leaves the
    least spread around that profile (each column's own mean removed, so slow density changes across the body do not
    tilt it) wins. It uses every sample rather than one half-max crossing per column. Measured on the chest CT's 30
    faces (clicked points): median 6.6 -> 4.1 deg, beyond 5 deg 19 -> 14, worst 28.7 -> 13.9."""
    cols = _central(foot, a, b)
    c0 = cols.mean(axis=0)
    u, w = (cols - c0) @ a, (cols - c0) @ b
    h = np.arange(-12.0, 12.01, 0.5)
    values = ct(cols[:, None, :] + h[None, :, None] * d).astype(float)
    ta0, tb0 = -(normal @ a) / (normal @ d), -(normal @ b) / (normal @ d)
    rel = h[None, :] - (ta0 * u[:, None] + tb0 * w[:, None])
    lo, hi = (near_point - c0) @ d + PROFILE_FROM_EDGE_MM, (band_point - c0) @ d + PROFILE_PAST_CENTRE_MM
    keep = (rel >= lo) & (rel <= hi)
    col = np.broadcast_to(np.arange(len(cols))[:, None], values.shape)[keep]
    hs, v = np.broadcast_to(h[None, :], values.shape)[keep], values[keep]
    v = v - (np.bincount(col, v, len(cols)) / np.maximum(np.bincount(col, minlength=len(cols)), 1))[col]
    uu, ww = u[col], w[col]

    def spread(ta, tb):
        # Least squares of one piecewise-linear profile (knots every 0.5 mm) in the distance to the plane: linear
        # weights keep the spread continuous in the tilt (plain bins aligned with the samples give plateaus).
        x = (hs - ta * uu - tb * ww) / KNOT_MM
        x -= np.floor(x.min())
        k = np.floor(x).astype(int)
        t = x - k
        m = k.max() + 2
        diag = np.bincount(k, (1 - t) ** 2, m) + np.bincount(k + 1, t * t, m)
        off = np.bincount(k, (1 - t) * t, m)[:-1]
        rhs = np.bincount(k, (1 - t) * v, m) + np.bincount(k + 1, t * v, m)
        normal_eq = np.diag(diag + 1e-6) + np.diag(off, 1) + np.diag(off, -1)
        return float(v @ v - rhs @ np.linalg.solve(normal_eq, rhs))

    best = (spread(ta0, tb0), ta0, tb0, 0.0, 0.0)
    at_edge = False
    for span, step in ((PROFILE_SEARCH_DEG, 1.0), (1.5, 0.25)):  # coarse, then fine around the best
        ga, gb = np.degrees(np.arctan(best[1])), np.degrees(np.arctan(best[2]))
        for da in np.arange(-span, span + 1e-9, step):
            for db in np.arange(-span, span + 1e-9, step):
                ta, tb = np.tan(np.radians(ga + da)), np.tan(np.radians(gb + db))
                best = min(best, (spread(ta, tb), ta, tb, da, db))
        if span == PROFILE_SEARCH_DEG:
            at_edge = bool(max(abs(best[3]), abs(best[4])) >= span - 1e-9)
    return unit(d - best[1] * a - best[2] * b), at_edge


def _doubts(steps, band_moves_mm, near_vs_centre_deg) -> list:
    """Why a face fitted on thick slices may be tilted wrongly (empty: none seen). Measured on the chest CT's 30
    faces (T2-T12, clicked points, with the profile fit): these signs showed on 10 of the 14 faces more than 5 deg off
    their labelled face (5.8-13.9 deg; the other four 5.9-6.3) and on 6 of the 16 within it."""
    found = []
    if steps[-1] > UNSETTLED_STEP_DEG:
        found.append(f"the fit of the face still tilted {steps[-1]:.0f} deg in its last step")
    if near_vs_centre_deg > EDGE_VS_CENTRE_DEG:
        found.append(f"the disc band's near edge and centre differ by {near_vs_centre_deg:.0f} deg")
    if band_moves_mm > BAND_MOVES_MM:
        found.append(f"the docking face's disc band moved {band_moves_mm:.0f} mm from one refit to the next")
    return found


def _prism(grid: VoxelGrid, foot, d, lo_c, hi_c, u_w):
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


def _thick_levels(ct_array, mask, grid: VoxelGrid, p_prox, p_dist, proximal_name, distal_name, slices):
    """Both docking vertebrae from the CT on thick slices (``slices``: thick_slice_axis's answer): (prox, dist,
    docking, bodies between, {"proximal" / "distal": why that face's tilt is doubtful}) or None to fall back."""
    centre = 0.5 * (p_prox + p_dist)
    radius = 0.5 * np.linalg.norm(p_prox - p_dist) + 70.0
    box, lo = _crop_box(grid.shape, grid.to_kji(centre)[0], radius / grid.spacing_kji)
    sub = np.asarray(mask[box], dtype=bool)
    ct = _Sampler(ct_array, grid, box, lo)
    thin = not slices[2] and slices[1] <= PAIR_SLICE_MM  # slices, not a blurred reconstruction
    ends = (("proximal", proximal_name, "inferior"), ("distal", distal_name, "superior"))
    # The segment first. On thin slices whose dark discs keep the vertebrae apart it may hold the docking bodies
    # alone (seeds in them only, the CLI's default): no bone beyond either disc, so no band pair along the profile.
    # Then all bone of the CT is measured instead (RIDER chest CT, 1.25 mm slices smoothed in plane, T5 -> T8:
    # faces found inside T5 and T8, "10.2 and 13.9 mm tall", now within 2 mm of the discs read on its reformat).
    for bone_crop in (sub, None):
        if bone_crop is None:
            bone_crop = sub | (np.asarray(ct_array[box]) >= ALL_BONE_HU)
        bone = _Sampler(filled_in_slices(bone_crop, slices[0]), grid, (slice(None),) * 3, lo)
        found = [_ct_body(ct, bone, grid, point, other - point, name, side, thin)
                 for point, other, (_, name, side) in ((p_prox, p_dist, ends[0]), (p_dist, p_prox, ends[1]))]
        if all(f is not None for f in found) or bone_crop is not sub:
            break
    if any(f is None for f in found):
        return None
    out, reasons = [], []
    for body in found:
        out.append(body[:4])
        band = body[4]
        if band:  # the figure was measured for these signs only, so it goes with them
            band = band[:-1] + [f"{band[-1]} (on a 2.5 mm chest CT, 10 of 16 faces with such signs were 6-14 deg off)"]
        reasons.append(band + [r for r in (unresolved_tilt(grid, slices),) if r])
    measured = []
    for (face, back, d, _), is_prox in zip(out, (True, False)):
        axis = d if is_prox else -d  # caudal
        sup, inf = (back, face) if is_prox else (face, back)
        centre_b = 0.5 * (sup.centre + inf.centre)
        measured.append(VertebraMeasurement(level=face.level, body_centre=centre_b, body_mask_voxels=0,
                                            superior_endplate=sup, inferior_endplate=inf, axis_direction=axis,
                                            body_height=float(np.dot(inf.centre - sup.centre, axis))))
    (prox, dist) = measured
    span = float(np.linalg.norm(p_prox - p_dist)) / max(0.5 * (prox.body_height + dist.body_height), 1.0)
    if span > LONG_SPAN_BODIES:
        for r in reasons:
            r.append(f"the clicked points lie {span:.1f} body heights apart, too far for the fit to turn from the line "
                     "between them to the column at each end (on a 2.5 mm chest CT the 16 faces of struts 7-10 levels "
                     "long were 7.7 deg off at the median, up to 90)")
    thickness = slices[1]
    doubts = {which: doubt_message(which, name, side, thickness, r) for (which, name, side), r in zip(ends, reasons)
              if r}
    docking = {"proximal": out[0][3], "distal": out[1][3]}
    for m, (crop, _) in zip(measured, docking.values()):
        m.body_mask_voxels = int(crop.sum())
    walked = _walk_bands(ct, bone, prox, dist)
    return prox, dist, docking, walked, doubts


def doubt_message(which: str, name: str, side: str, thickness: float, reasons, labelled: bool = False) -> str:
    """Why the ``which`` docking face's tilt may be wrong on these slices, and what the user can do."""
    labels = "" if labelled else (", or give vertebra labels (--levels, e.g. TotalSegmentator's) to fit it from "
                                  "them")
    return (f"The {which} endplate ({name or which} {side}) may be tilted wrongly: on these {thickness:.1f} mm slices "
            f"{'; '.join(reasons)}. Check it "
            f"in the sagittal and coronal views and turn its plane ('{which.capitalize()} endplate', or "
            f"{which}_endplate in the plan) to the bone{labels}.")


def unresolved_tilt(grid: VoxelGrid, slices, labelled: bool = False) -> Optional[str]:
    """The reason to doubt every docking face on slices this thick (None: thin enough)."""
    if slices is None or grid.spacing_kji[slices[0]] < UNRESOLVED_TILT_SLICE_MM:
        return None
    if labelled:
        return ("the labelled vertebrae are stair-stepped by the slices, too coarse to fix a face's tilt (on a 5 mm "
                "copy of a chest CT a face fitted to its labels came out 11.5 deg off the same labels on 2.5 mm "
                "slices)")
    return ("the disc band lies in one or two slices, too few to fix a face's tilt (on a 5 mm chest CT faces came "
            "out up to 28 deg off their band with no other sign)")


def unresolved_faces(grid: VoxelGrid, slices, proximal_name: str, distal_name: str, labelled: bool = False) -> dict:
    """Both docking faces as doubtful ({end: message}) on slices too thick to fix a tilt; empty otherwise."""
    why = unresolved_tilt(grid, slices, labelled)
    if not why:
        return {}
    thickness = float(grid.spacing_kji[slices[0]])
    return {end: doubt_message(end, name, side, thickness, [why], labelled)
            for end, name, side in (("proximal", proximal_name, "inferior"), ("distal", distal_name, "superior"))}


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
    # The docking faces' own bands count: on this path their peaks may lie beyond the near edges found per column
    # (the 1.5 mm CT angiogram's T6 -> T8: 1.2-1.4 mm, T7 lost without that band); a peak further inside a docking
    # body is at most one more band too close to its neighbour to bound a body.
    peaks = np.sort(peaks[(peaks > s_p - FACE_BEYOND_EDGE_MM["inferior"] - WALK_BEYOND_EDGE_MM)
                          & (peaks < s_d + FACE_BEYOND_EDGE_MM["superior"] + WALK_BEYOND_EDGE_MM)])
    found = []
    in_bone = bone(path) > 0.5
    peaks = _without_inner_bands(peaks, s, prof)
    for a, b in zip(peaks[:-1], peaks[1:]):
        span = (s > a) & (s < b)
        # A body between two bands (closer bands are one band's endplates); under 15 mm also bone: on thin slices a
        # lumbar disc (9-12 mm) lies between its two endplates' bands too, but outside the bone segment (osteopenic
        # thoracic bodies 17-20 mm tall may have no bone at their centre in it: the 1.5 mm CT angiogram).
        if b - a >= 15.0 or (b - a >= 10.0 and in_bone[span].mean() >= 0.5):
            found.append((path[int(np.argmin(np.abs(s - 0.5 * (a + b))))], None))
    return found


def _without_inner_bands(peaks, s, prof, piece_mm: float = 10.0):
    """The bands walked, less those inside a body: a band with a piece shorter than a body (``piece_mm``) on each
    side, neither dipping as low as a disc (more than two band prominences below the band). RIDER chest CT (1.25 mm
    slices smoothed in plane, T5 -> T8): a band across T6's middle, 226 HU, left pieces of 7 and 8 mm dipping to 177
    and 169 HU, so T6 was not found between its endplates' bands; its discs dip to 122-132 HU between endplates'
    bands of 235-258 HU."""
    keep = np.ones(len(peaks), dtype=bool)
    for i in range(1, len(peaks) - 1):
        floor = prof[np.argmin(np.abs(s - peaks[i]))] - 2.0 * BAND_PROMINENCE_HU
        sides = ((peaks[i - 1], peaks[i]), (peaks[i], peaks[i + 1]))
        keep[i] = not all(b - a < piece_mm and prof[(s > a) & (s < b)].min() >= floor for a, b in sides)
    return peaks[keep]


# Signs that a face's tilt is unsettled (see _doubts): the last refit still turned the face, the band's near edge
# and centre disagree, or the docking face's own band moved between refits. (Not the body's height between its two
# bands: the far band jumping between two peaks changed it by 5 mm on T9 of a copy of the chest CT with the patient
# rolled 15 deg, whose face stayed within 0.8 deg of the original's; on the chest CT's 26 faces of T2-T12 that was
# the only sign on one face, 4.8 deg off, and every face it doubted more than 5 deg off is still doubted. Few
# columns showing the band is no sign either: a sound face on a 25 deg kyphotic phantom shows it in 64 % of the
# body, a chest CT's T12 in 31 %.)
UNSETTLED_STEP_DEG = 2.5
EDGE_VS_CENTRE_DEG = 6.0
BAND_MOVES_MM = 2.0


# The profile fit of the face's tilt (_profile_fit_normal): its samples from this far on the body side of the near
# edge to this far past the band's centre, i.e. the whole band (on the chest CT's 30 faces: 0.5 mm past the centre
# gave 5.1 deg at the median, 4 mm 5.4, 7 mm 4.1), tilts searched this far around the edge-and-centre fit.
PROFILE_FROM_EDGE_MM = -6.0
PROFILE_PAST_CENTRE_MM = 7.0
PROFILE_SEARCH_DEG = 12.0
KNOT_MM = 0.5


# A CT blurred across its slices like thick slices, whatever its spacing (blurred_slice_axis): effective resolution
# at least this and this many times the in-plane one (chest CT resampled to 0.7-1.25 mm slices: 2.8-3.8 mm, 1.6-2.1
# times; true thin slices are near their in-plane resolution).
BLURRED_SLICE_MM = 2.5
BLUR_RATIO = 1.4


# Slices this thick: every docking face is doubted, with labels or without. The disc band is one or two slices: on a
# 5 mm chest CT (pyradiomics lung1, T3-T9) the upper faces came out 18-28 deg off the band, which lies in one slice;
# on a 5 mm copy of the 2.5 mm chest CT a face fitted to its labels lies 11.5 deg off the thin labels' face.
UNRESOLVED_TILT_SLICE_MM = 4.0


# Clicked points this many docking-body heights apart (more than about four bodies between): both faces doubted.
# Each face's fit starts from the line between the points, which on a long strut runs 20-38 deg off the kyphotic
# column at each end (chest CT; 17-24 at pairs five levels apart, which the fit still recovers): on 8 struts of 7-10
# levels (T2 -> T9 ... T2 -> T12; 6.0-7.3 body heights) the faces came out 7.7 deg off their labels at the median,
# up to 90, and two were not otherwise doubted (13.0 and 6.3 deg); pairs five levels apart lie 4.4-5.3 body heights
# apart. Tried and not kept (2026-12-03): starting from the column's own axis at each body and refitting to the face
# took the long struts to 4.4 deg, but moved faces on the 1 mm copy, the CT angiogram, RIDER and lung1 CTs beyond
# their tests (the CTA's T9 to 14 deg).
LONG_SPAN_BODIES = 5.7


WALK_BEYOND_EDGE_MM = 2.5  # the bands walked between the docking faces: from this far beyond their near edges

THICK_SLICE_MM = 1.5  # slices above this (and much thicker than the pixels): labelled docking faces refitted


WALL_STRIP_MM = 4.0  # the posterior wall is found within this of the footprint's midline ...
WALL_BEHIND_MM = 0.5  # ... and the footprint cut this far behind it
BODY_HOLE_MM2 = 40.0  # low-density spots inside the body up to this area are filled (the canal is ~200 mm2)


def slices_along_spine(grid, p_prox, p_dist) -> tuple:
    """The ``slices`` argument of _thick_levels for thin slices: the array axis nearest the spine's, its spacing."""
    along = int(np.argmax(np.abs(grid.m[:3, :3].T[::-1] @ unit(p_prox - p_dist))))
    return along, float(grid.spacing_kji[along]), False


def disc_band_check(ct_array, mask, grid, p_prox, p_dist, names, prox, dist) -> tuple:
    """(the CT's disc-band measurement, the larger docking-face angle) when the faces of the bodies isolated from the
    bone segment (``prox``, ``dist``) lie more than DISC_BAND_CHECK_DEG from the faces the CT's disc bands give,
    else (None, that angle). The disc bands are taken then: on the 3 mm lumbar sample, whose segment is mostly the
    bodies' shells, the segment's bodies gave faces 6-19 deg off their labels where the disc bands gave 0.4-2."""
    alt = _thick_levels(np.asarray(ct_array), mask, grid, p_prox, p_dist, names[0], names[1],
                        slices_along_spine(grid, p_prox, p_dist))
    if alt is None:
        return None, 0.0
    off = max(angle_deg(prox.inferior_endplate.normal, alt[0].inferior_endplate.normal),
              angle_deg(dist.superior_endplate.normal, alt[1].superior_endplate.normal))
    return (alt, off) if off > DISC_BAND_CHECK_DEG else (None, off)


DISC_BAND_CHECK_DEG = 8.0  # the segment's docking faces further than this from the disc bands' are replaced
