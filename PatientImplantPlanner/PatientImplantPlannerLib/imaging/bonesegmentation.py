"""Bone segmentation of a CT: threshold, seeds, competitive growing against exclude seeds, interior filling.

Steps (all on uint8/bool crops of the CT, never on float copies of the whole volume):

1. Threshold (default 226..3071 HU, the "Bone" preset of InVesalius/Mimics) inside the ROI box.
2. With seeds: keep the 26-connected components that contain the seeds. "Keep the largest island" would keep
   the CT table or a contrast-filled aorta, so seeds decide what is bone. A seed off the threshold moves to the
   nearest bone voxel within ``seed_snap_mm``, never further; a seed in cancellous bone enclosed by cortex (the
   middle of a vertebral body) stays where it is and selects the bone around it.
3. With exclude seeds: contrast vessels and the heart (300-500 HU, some veins far brighter) touch the vertebral
   bodies and, through ribs and shoulders, the whole skeleton: one component at 226 HU that no threshold or erosion
   separates. The blood pools are grown from the exclude seeds, the vertebral column is followed slice by slice
   from the keep seeds (bone further than 15 mm from it never counts), and Slicer's GrowCut
   (``vtkImageGrowCutSegment``, competitive shortest-path growing) decides only where bone and blood touch.
4. Fill the interior: osteopenic cancellous bone (100-200 HU) is below 226 HU, so the threshold gives mostly the
   cortical shell, and on thick slices even the shell has gaps. Voxels above a lower cancellous threshold that are
   connected to the shell and near it are added (never voxels of other thresholded structures), then enclosed
   cavities (3D, and per axial slice) are filled unless they look like fluid or fat (the spinal canal).
5. Drop islands smaller than ``min_island_mm3`` (pieces containing a seed are kept), optional Gaussian smoothing.

The result goes into a "Bone" segment of a segmentation node on the CT's grid.
"""

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Optional

import numpy as np

from ..core.errors import SegmentationError
from ..core.grid import VoxelGrid
from ..core.progress import Progress
from .boneseparation import _POOL_RADIUS_MM, _separate_excluded
from .ctimport import require_axial_storage
from .voxelops import (
    CONNECTIVITY_26,
    ball_kernel,
    bbox_slices,
    disk_kernel,
    drop_islands,
    enclosed_by,
    enclosed_holes,
    holes_by_median,
    near_mask,
    nearest_on,
)

BONE_SEGMENT_NAME = "Bone"
BONE_COLOR = (0.945, 0.839, 0.569)
# Slicer terminology entry: category "Anatomical Structure" (SCT 123037004), type "Bone" (SCT 272673000).
BONE_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^123037004^Anatomical Structure~SCT^272673000^Bone~^^~Anatomic codes - DICOM master list~^^~^^"
)
_PEEL_MAX_VOXEL_MM = 1.5
_CANAL_RIM_MM = 1.5  # sub-threshold voxels this close (in-plane) to an enclosed fluid hole are not bone
_ENCLOSED_REACH_MM = 30.0  # a seed inside a vertebral body (radius ~20 mm) is within this of its cortex


@dataclass
class BoneSegmentationParameters:
    """Parameters of ``segment_bone``. HU values, mm, RAS points; defaults a surgeon would accept."""

    threshold_min: float = 226.0  # HU (Bone preset 226..3071 of InVesalius/Mimics); typical range 150-400
    threshold_max: float = 3071.0
    seeds_ras: list = field(default_factory=list)  # [(R, A, S)]: keep bone connected to these
    exclude_seeds_ras: list = field(default_factory=list)  # [(R, A, S)] in structures to reject (vessels, heart)
    roi_center_ras: Optional[tuple] = None  # axis-aligned RAS box
    roi_size_mm: Optional[tuple] = None
    fill_interior: bool = True  # fill cancellous interior where the threshold only gives the cortical shell
    min_island_mm3: float = 1000.0  # drop bone pieces smaller than this (pieces with a seed are kept)
    smoothing_mm: float = 0.0  # Gaussian sigma of optional mask smoothing (0 = off)
    # Interior filling (used when fill_interior is on).
    cancellous_min_hu: float = 100.0  # voxels above this, connected to and near the shell, are cancellous bone
    cancellous_max_depth_mm: float = 15.0  # ... up to this far from the thresholded shell (stops leaks)
    cavity_min_hu: float = 60.0  # enclosed cavities are filled unless their median is below (canal: CSF, fat)
    closing_mm: float = 3.0  # in-plane closing of shell gaps before looking for enclosed voxels (not added itself)
    # A seed off the threshold is moved to the nearest bone voxel, never further than this (mm); a seed in cancellous
    # bone enclosed by cortex (the middle of a vertebral body) is not moved. Exclude seeds likewise. Range 0-10.
    seed_snap_mm: float = 3.0
    # Remove sub-threshold voxels outside the cortex; None = when voxels resolve the cortex (<= 1.5 mm). On thicker
    # slices the cortex is smeared below the threshold and those voxels are mostly bone.
    peel_rim: Optional[bool] = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["seeds_ras"] = [list(map(float, p)) for p in self.seeds_ras]
        d["exclude_seeds_ras"] = [list(map(float, p)) for p in self.exclude_seeds_ras]
        for key in ("roi_center_ras", "roi_size_mm"):
            d[key] = None if d[key] is None else [float(v) for v in d[key]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BoneSegmentationParameters":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SegmentationError(
                f"Unknown bone segmentation parameter(s): {', '.join(unknown)}.",
                f"Use only: {', '.join(sorted(names))}.",
            )
        kw = dict(d)
        for key in ("seeds_ras", "exclude_seeds_ras"):
            if key in kw:
                kw[key] = [tuple(float(v) for v in p) for p in (kw[key] or [])]
        for key in ("roi_center_ras", "roi_size_mm"):
            if kw.get(key) is not None:
                kw[key] = tuple(float(v) for v in kw[key])
        return cls(**kw)


def threshold_preview_mask(ct_array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Bool mask of voxels within [lo, hi] (live preview of the threshold)."""
    return (ct_array >= lo) & (ct_array <= hi)


# ----------------------------------------------------------------------------------------------- geometry


def _fmt(p) -> str:
    return "(" + ", ".join(f"{float(v):.1f}" for v in p) + ")"


def _roi_box(grid: VoxelGrid, params: BoneSegmentationParameters) -> tuple:
    """Crop slices [k, j, i] of the ROI's bounding box on the CT grid (the whole volume without ROI)."""
    shape = grid.shape
    if params.roi_center_ras is None and params.roi_size_mm is None:
        return tuple(slice(0, n) for n in shape)
    if params.roi_center_ras is None or params.roi_size_mm is None:
        raise SegmentationError(
            "The ROI needs both a center and a size.", "Give roi_center_ras and roi_size_mm, or neither."
        )
    center = np.asarray(params.roi_center_ras, float)
    size = np.asarray(params.roi_size_mm, float)
    if center.shape != (3,) or size.shape != (3,) or np.any(size <= 0):
        raise SegmentationError(
            f"Invalid ROI: center {params.roi_center_ras}, size {params.roi_size_mm} mm.",
            "Give a 3D center and three positive sizes in mm.",
        )
    corners = center + (np.array(list(np.ndindex(2, 2, 2))) - 0.5) * size
    kji = np.array([grid.to_kji(c)[0] for c in corners])
    lo = np.ceil(kji.min(axis=0) - 0.5).astype(int)
    hi = np.floor(kji.max(axis=0) + 0.5).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape)
    if np.any(hi <= lo):
        vol_lo = grid.to_ras(np.zeros(3))[0]
        vol_hi = grid.to_ras(np.array(shape) - 1)[0]
        raise SegmentationError(
            f"The ROI (center {_fmt(center)}, size {_fmt(size)} mm) lies entirely outside the CT volume "
            f"(which spans {_fmt(np.minimum(vol_lo, vol_hi))} to {_fmt(np.maximum(vol_lo, vol_hi))} RAS).",
            "Move the ROI onto the spine or segment without an ROI.",
        )
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _oblique_roi_mask(grid: VoxelGrid, box, params) -> np.ndarray:
    """For CTs not aligned with RAS axes: which voxels of the crop box lie inside the RAS box."""
    k, j, i = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box], indexing="ij")
    center = np.asarray(params.roi_center_ras, float)
    half = np.asarray(params.roi_size_mm, float) / 2
    inside = np.ones(k.shape, bool)
    for a in range(3):
        ras = grid.m[a, 0] * i + grid.m[a, 1] * j + grid.m[a, 2] * k + grid.m[a, 3]
        inside &= np.abs(ras - center[a]) <= half[a] + 1e-3
    return inside


# ------------------------------------------------------------------------------------------------- seeds


def _seed_voxels(grid: VoxelGrid, points, box, kind: str) -> list:
    """Integer (k, j, i) crop indices of RAS points; errors for points outside the volume or the ROI."""
    out = []
    for p in points:
        p = np.asarray(p, float)
        if p.shape != (3,) or not np.all(np.isfinite(p)):
            raise SegmentationError(f"Invalid {kind} point {p!r}.", "Give each point as three numbers (R, A, S) in mm.")
        kji = grid.to_kji(p)[0]
        if np.any(kji < -0.5) or np.any(kji > np.array(grid.shape) - 0.5):
            raise SegmentationError(
                f"The {kind} at {_fmt(p)} RAS is outside the CT volume.",
                f"Place the {kind} on the CT (check that it was placed on this CT, not another volume).",
            )
        v = np.clip(np.round(kji).astype(int), 0, np.array(grid.shape) - 1)
        local = v - np.array([s.start for s in box])
        if np.any(local < 0) or np.any(local >= np.array([s.stop - s.start for s in box])):
            raise SegmentationError(
                f"The {kind} at {_fmt(p)} RAS is outside the ROI box.",
                f"Move the {kind} into the ROI or enlarge the ROI.",
            )
        out.append(local)
    return out


def _snap_seeds(labels, sizes, min_island_vox, seeds, points, grid, sub, params, warnings, enclosed_ok, kind) -> list:
    """Move seeds off the threshold onto the nearest bone voxel; None for exclude seeds that cannot be placed.

    Off-threshold seeds go to the nearest voxel of a piece above the minimum island size (on thick slices the
    nearest thresholded voxel is often a speck inside the body), or of any piece if there is none.
    """
    big = sizes >= min_island_vox
    big[0] = False
    anything = sizes > 0
    anything[0] = False
    snapped = []
    for v, p in zip(seeds, points):
        if labels[tuple(v)]:
            snapped.append(v)
            continue
        hit = None
        how = "nearest"
        enclosed = None
        # Large pieces first, near then enclosing; a few-voxel speck (noise in cancellous bone) only as a last
        # resort, otherwise a click in the middle of a body keeps the speck and loses the vertebra.
        for ok in (big, anything):
            hit = nearest_on(labels, ok, v, params.seed_snap_mm, grid.spacing_kji)
            if hit is not None:
                break
            if enclosed is None and enclosed_ok:
                # A click in the middle of a vertebral body lands on cancellous bone below the threshold: if bone
                # encloses it, take the nearest thresholded voxel of a large piece (its own cortex).
                r = np.ceil(_ENCLOSED_REACH_MM / grid.spacing_kji).astype(int)
                lo = np.maximum(v - r, 0)
                win = tuple(slice(a, b) for a, b in zip(lo, np.minimum(v + r + 1, sub.shape)))
                bone_like = sub[win] >= min(params.cancellous_min_hu, params.threshold_min)
                enclosed = enclosed_by(bone_like, v - lo, _ENCLOSED_REACH_MM, grid.spacing_kji)
            if enclosed:
                hit = nearest_on(labels, ok, v, _ENCLOSED_REACH_MM, grid.spacing_kji)
                if hit is not None:
                    how = "surrounding"
                    break
        if hit is None:
            value = float(sub[tuple(v)])
            if enclosed_ok:
                raise SegmentationError(
                    f"The {kind} at {_fmt(p)} RAS is not on bone: the CT there is {value:.0f} HU, outside "
                    f"{params.threshold_min:.0f}..{params.threshold_max:.0f} HU, with no bone voxel within "
                    f"{params.seed_snap_mm:g} mm and no bone around it.",
                    f"Place the {kind} on the bone (cortex or inside a vertebral body), or lower the minimum "
                    "threshold.",
                )
            warnings.append(
                f"The {kind} at {_fmt(p)} RAS is not on a thresholded voxel ({value:.0f} HU); it was ignored."
            )
            snapped.append(None)
            continue
        w, dist = hit
        if how == "nearest":
            warnings.append(f"The {kind} at {_fmt(p)} RAS was moved {dist:.1f} mm to the nearest bone voxel.")
        # An enclosed seed stays where it is: it selects the cortex around it (``w`` only names that piece) and
        # the interior filling puts the seed point itself inside the segment.
        snapped.append(np.asarray(w))
    return snapped


# ------------------------------------------------------------------------------------------------ growcut


# -------------------------------------------------------------------------------------------- filling


def _fill_interior(shell, blocked, ct, params, spacing_kji, progress: Progress) -> np.ndarray:
    """Shell + cancellous voxels near and connected to it + enclosed cavities that are not fluid or fat.

    Only in-plane (axial) closing is used to find enclosed voxels, so discs between vertebrae are never bridged,
    and closing voxels are not added themselves, so joint spaces stay open.
    """
    import scipy.ndimage as ndi

    progress.report(0.0, "Adding cancellous bone next to the shell")
    filled = shell.copy()
    if params.cancellous_max_depth_mm > 0:
        near = near_mask(shell, params.cancellous_max_depth_mm, spacing_kji)
        near &= (ct >= params.cancellous_min_hu) & (ct <= params.threshold_max)
        near &= ~blocked
        near |= shell
        # Face-connected only: noisy disc voxels above the cancellous threshold touch diagonally often enough to
        # form 26-connected chains from the endplate into the disc (measured: surface 0.59 -> 0.17 mm from truth).
        lab, n = ndi.label(near)
        keep = np.zeros(n + 1, bool)
        keep[lab[shell]] = True  # (a boolean scatter: no sort of the labels)
        keep[0] = False
        filled = keep[lab]
        del lab, near
    progress.report(0.4, "Filling enclosed cavities")
    filled |= holes_by_median(filled, ct, params.cavity_min_hu) & ~blocked
    progress.report(0.6, "Filling enclosed cavities per slice")
    disk = disk_kernel(params.closing_mm, spacing_kji[1:]) if params.closing_mm > 0 else None
    candidates = np.zeros_like(filled)
    fluid = np.zeros_like(filled)  # enclosed holes that look like fluid or fat: the spinal canal
    rows_any = filled.any(axis=2)  # [k, j]
    cols_any = filled.any(axis=1)  # [k, i]
    for k in range(filled.shape[0]):
        rows = np.flatnonzero(rows_any[k])
        if len(rows) == 0:
            continue
        cols = np.flatnonzero(cols_any[k])
        # Work on the slice's bone bounding box plus one background pixel: closing stays inside the bounding box and
        # the background ring keeps the outside connected to the border, so the result is the whole slice's.
        win = (k, slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
        sl = filled[win]
        ct_k = ct[win]
        cand = candidates[win]
        if disk is not None:
            # Bone-like voxels enclosed once small shell gaps are closed (thick slices leave the shell porous).
            pad = max(disk.shape) // 2 + 1
            closed = ndi.binary_closing(np.pad(sl, pad), structure=disk)[pad:-pad, pad:-pad] | sl
            holes = enclosed_holes(closed)
            if holes.any():
                # Marrow-like holes whole, bone-like voxels of the others; gap voxels are taken (if bone-like)
                # with the holes they close, gaps that close no hole (joint spaces) are not.
                bone_like = ct_k >= params.cavity_min_hu
                gaps = closed & ~sl
                lab, n = ndi.label(holes | gaps)
                with_hole = np.zeros(n + 1, bool)
                with_hole[lab[holes]] = True
                with_hole[0] = False
                marrow = holes_by_median(closed, ct_k, params.cavity_min_hu, holes)
                cand |= marrow
                cand |= (holes | (gaps & with_hole[lab])) & bone_like
                fluid[win] = holes & ~marrow
        cand |= holes_by_median(sl | cand, ct_k, params.cavity_min_hu)
        cand &= ~blocked[win]
    # A slice's hole is inside the bone only if bone or hole continues above and below it; the disc slice next
    # to an endplate is ringed by the endplate's rim but has disc, not bone, on its far side.
    inside = filled | candidates
    two_sided = np.zeros_like(inside)
    two_sided[1:-1] = inside[:-2] & inside[2:]
    filled |= candidates & two_sided
    if fluid.any() and float(spacing_kji[1:].max()) <= _PEEL_MAX_VOXEL_MM:
        # Where pixels resolve the canal's cortical wall, sub-threshold voxels facing an enclosed fluid hole are CSF
        # and cord partial volume, not bone (0.7 mm pixels, chest CT: 3 % of the cord otherwise; on 3 mm pixels
        # they are mostly bone).
        near = ndi.binary_dilation(fluid, disk_kernel(_CANAL_RIM_MM, spacing_kji[1:])[None])
        filled &= ~(near & ~shell)
    peel = params.peel_rim if params.peel_rim is not None else float(spacing_kji.max()) <= _PEEL_MAX_VOXEL_MM
    if peel:
        # Where voxels resolve the cortex, the threshold marks the bone surface: peel the partial-volume rim the
        # lower cancellous threshold picked up outside it (sub-threshold surface voxels against the cortex).
        six = ndi.generate_binary_structure(3, 1)
        rim = ndi.binary_dilation(~(filled | enclosed_holes(filled)), six)
        rim &= filled & ~shell
        rim &= ndi.binary_dilation(shell, six)
        filled &= ~rim
    return filled


# --------------------------------------------------------------------------------------------- main entry


def _threshold(ct: np.ndarray, lo: float, hi: float, slab: int = 8) -> np.ndarray:
    """``(ct >= lo) & (ct <= hi)``. For int16 CTs in slabs of slices with one wrapped subtraction and one comparison
    (lo <= x <= hi  <=>  (x - lo) mod 2**16 <= hi - lo for integers): two passes over cache-sized pieces instead of
    three passes and two temporaries of the whole volume."""
    if ct.dtype != np.int16:
        return (ct >= lo) & (ct <= hi)
    lo_i = max(int(np.ceil(lo)), -32768)
    hi_i = min(int(np.floor(hi)), 32767)
    out = np.zeros(ct.shape, dtype=bool)
    if lo_i > hi_i:
        return out
    span = np.uint16(hi_i - lo_i)
    shift = np.int16(lo_i)
    for k in range(0, ct.shape[0], slab):
        diff = np.subtract(ct[k : k + slab], shift, dtype=np.int16)  # wraps around, as intended
        np.less_equal(diff.view(np.uint16), span, out=out[k : k + slab])
    return out


def _validate(params: BoneSegmentationParameters) -> None:
    if not (np.isfinite(params.threshold_min) and np.isfinite(params.threshold_max)):
        raise SegmentationError("The threshold must be finite numbers.", "Set the minimum and maximum in HU.")
    if params.threshold_min > params.threshold_max:
        raise SegmentationError(
            f"The minimum threshold {params.threshold_min:g} HU is above the maximum {params.threshold_max:g} HU.",
            "Swap them or set the minimum below the maximum (bone preset: 226..3071 HU).",
        )
    for name in ("min_island_mm3", "smoothing_mm", "cancellous_max_depth_mm", "closing_mm", "seed_snap_mm"):
        value = getattr(params, name)
        if not np.isfinite(value) or value < 0:
            raise SegmentationError(f"{name} is {value}, it must be >= 0.", f"Set {name} to 0 or a positive value.")


def _seed_groups(points, other_points, grid, seeds, others, kind_a, kind_b) -> None:
    """Error when an exclude seed sits on or next to a bone seed (they would fight over the same voxel)."""
    for p, v in zip(points, seeds):
        for q, w in zip(other_points, others):
            close_vox = v is not None and w is not None and np.max(np.abs(np.asarray(v) - np.asarray(w))) <= 1
            if close_vox or np.linalg.norm(np.subtract(p, q)) < max(2.0, float(grid.spacing_kji.max())):
                raise SegmentationError(
                    f"The {kind_b} at {_fmt(q)} RAS is at or next to the {kind_a} at {_fmt(p)} RAS.",
                    f"Put the {kind_b} inside the structure to reject (vessel, heart), away from the bone.",
                )


@dataclass
class BoneMask:
    """The bone found by :func:`segment_bone_array`: ``crop`` is the mask inside ``box`` (slices of the CT array)."""

    crop: np.ndarray
    box: tuple
    voxel_mm3: float
    warnings: list
    timings_s: dict

    def full(self, shape) -> np.ndarray:
        mask = np.zeros(shape, bool)
        mask[self.box] = self.crop
        return mask


def segment_bone_array(ct: np.ndarray, grid: VoxelGrid, params=None, progress=None, not_bone=None) -> BoneMask:
    """Segment bone of a CT array [k, j, i] on ``grid``: threshold, seeded components, GrowCut against exclude
    seeds, interior filling, islands and smoothing. ``not_bone`` (bool [k, j, i], optional): voxels known not to be
    bone (labelled vessels, heart, cord), left out of the threshold so the bone never grows through them.
    Raises SegmentationError for bad inputs."""
    import time

    import scipy.ndimage as ndi

    params = replace(params) if params is not None else BoneSegmentationParameters()
    progress = progress if isinstance(progress, Progress) else Progress(progress)
    _validate(params)
    require_axial_storage(grid.m, error=SegmentationError)  # the fill and the separation work slice by slice
    timings = {}
    t0 = time.perf_counter()
    warnings: list = []
    sp = grid.spacing_kji

    # 1. Threshold inside the ROI.
    progress.report(0.02, "Thresholding")
    box = _roi_box(grid, params)
    sub = ct[box]
    thr = _threshold(sub, params.threshold_min, params.threshold_max)
    if not_bone is not None:
        thr &= ~np.asarray(not_bone, dtype=bool)[box]
    if params.roi_center_ras is not None and not grid.axis_aligned():
        thr &= _oblique_roi_mask(grid, box, params)
    if not thr.any():
        where = "inside the ROI" if params.roi_center_ras is not None else "in the CT"
        raise SegmentationError(
            f"No voxel {where} lies within the threshold {params.threshold_min:g}..{params.threshold_max:g} HU "
            f"(values {where} range {float(sub.min()):.0f}..{float(sub.max()):.0f} HU).",
            "Set the threshold within the CT's range (bone preset 226..3071 HU for a CT in Hounsfield units), "
            "or move the ROI onto bone.",
        )
    seeds = _seed_voxels(grid, params.seeds_ras, box, "seed")
    excludes = _seed_voxels(grid, params.exclude_seeds_ras, box, "exclude seed")
    if excludes and not seeds:
        raise SegmentationError(
            "Exclude seeds were given without any bone seed.",
            "Add at least one seed on the bone to keep; exclude seeds only separate structures touching it.",
        )
    _seed_groups(params.seeds_ras, params.exclude_seeds_ras, grid, seeds, excludes, "seed", "exclude seed")
    # Work on the thresholded voxels' bounding box, with room for filling and seed snapping: a CT is mostly air
    # and soft tissue, and labelling the whole volume dominated the time and memory (measured: 1.25 s -> 0.07 s).
    room_mm = max(params.cancellous_max_depth_mm, _ENCLOSED_REACH_MM, params.seed_snap_mm) + params.closing_mm
    room = np.ceil((room_mm + 3 * params.smoothing_mm) / sp).astype(int) + 2
    tb = bbox_slices(thr, room, thr.shape)
    t_off = np.array([s.start for s in tb])
    t_size = np.array([s.stop - s.start for s in tb])
    for v, p in zip(seeds, params.seeds_ras):
        if np.any(v < t_off) or np.any(v >= t_off + t_size):
            raise SegmentationError(
                f"The seed at {_fmt(p)} RAS is not on bone: there is no voxel within "
                f"{params.threshold_min:g}..{params.threshold_max:g} HU anywhere near it.",
                "Place the seed on the bone (cortex or inside a vertebral body), or lower the minimum threshold.",
            )
    far = [p for v, p in zip(excludes, params.exclude_seeds_ras) if np.any(v < t_off) or np.any(v >= t_off + t_size)]
    for p in far:
        warnings.append(f"The exclude seed at {_fmt(p)} RAS is far from any thresholded voxel; it was ignored.")
    excludes = [v - t_off for v in excludes if not (np.any(v < t_off) or np.any(v >= t_off + t_size))]
    seeds = [v - t_off for v in seeds]
    origins = list(seeds)  # as given: snapping may move a seed by up to seed_snap_mm
    thr, sub = thr[tb], sub[tb]
    box = tuple(slice(b.start + t.start, b.start + t.stop) for b, t in zip(box, tb))
    timings["threshold"] = time.perf_counter() - t0

    # 2. Connected components.
    progress.report(0.1, "Finding connected bone")
    t = time.perf_counter()
    labels, n_labels = ndi.label(thr, structure=CONNECTIVITY_26)
    sizes = np.bincount(labels[thr], minlength=n_labels + 1)  # over thr only: a full-volume bincount takes seconds
    sizes[0] = 0
    min_island_vox = params.min_island_mm3 / grid.voxel_mm3
    seeds = _snap_seeds(labels, sizes, min_island_vox, seeds, params.seeds_ras, grid, sub, params, warnings, True,
                        "seed")
    near_points = [p for p in params.exclude_seeds_ras if p not in far]
    excludes = _snap_seeds(labels, sizes, min_island_vox, excludes, near_points, grid, sub, params,
                           warnings, False, "exclude seed")
    _seed_groups(params.seeds_ras, near_points, grid, seeds, excludes, "seed", "exclude seed")
    if seeds:
        keep = np.zeros(n_labels + 1, bool)  # a lookup table: much faster than np.isin on a label volume
        keep[sorted({int(labels[tuple(v)]) for v in seeds})] = True
        kept = keep[labels]
    else:
        ok = sizes >= min_island_vox
        ok[0] = False
        if not ok.any():
            raise SegmentationError(
                f"No thresholded piece is larger than {params.min_island_mm3:g} mm3 "
                f"(largest {sizes[1:].max() * grid.voxel_mm3:.0f} mm3).",
                "Lower min_island_mm3 or the minimum threshold, or check the ROI.",
            )
        kept = ok[labels]
        warnings.append(
            "No seed points: every thresholded piece above the minimum island size was kept; this includes the CT "
            "table and contrast-filled vessels if present. Add a seed on the spine to keep only connected bone."
        )
    timings["components"] = time.perf_counter() - t

    # 3. Competitive growing against exclude seeds, on the bounding box of the kept component(s).
    t = time.perf_counter()
    live = [(w, p) for w, p in zip(excludes, near_points) if w is not None and kept[tuple(w)]]
    live_excludes = [w for w, _ in live]
    if len(live_excludes) < len([w for w in excludes if w is not None]):
        warnings.append("Exclude seeds on structures not connected to the seeded bone were not needed.")
    if live_excludes:
        progress.report(0.2, "Separating bone from touching structures (GrowCut)")
        thin: list = []
        bb = bbox_slices(kept, (2, 2, 2), kept.shape)
        off = np.array([s.start for s in bb])
        grown = _separate_excluded(
            sub[bb], kept[bb], [v - off for v in seeds], [np.clip(v - off, 0, np.array(kept[bb].shape) - 1)
                                                         for v in origins],
            [w - off for w in live_excludes], sp, min_island_vox, params.seed_snap_mm,
            min(params.cancellous_min_hu, params.threshold_min), timings, thin,
        )
        for index in thin:
            warnings.append(
                f"The exclude seed at {_fmt(live[index][1])} RAS lies in a structure thinner than "
                f"{2 * _POOL_RADIUS_MM:g} mm or of uneven density; only the bone next to it could be separated. "
                "Put exclude seeds in the aorta and the heart."
            )
        if grown is None:
            raise SegmentationError(
                "No vertebra outline was found around the seed(s) "
                + ", ".join(_fmt(p) for p in params.seeds_ras) + " RAS to separate from the exclude-seed structures.",
                f"Put the seed inside a vertebral body (or within seed_snap_mm = {params.seed_snap_mm:g} mm of one).",
            )
        kept = np.zeros_like(kept)
        kept[bb] = grown
        if not kept.any():
            raise SegmentationError(
                "Nothing was left as bone after separating the exclude-seed structures.",
                "Check that the seeds are on bone and the exclude seeds are in the vessel or organ to reject.",
            )
    timings["growcut"] = time.perf_counter() - t

    # 4. Fill the interior on the bounding box of the kept bone (plus the filling depth).
    t = time.perf_counter()
    depth = params.cancellous_max_depth_mm if params.fill_interior else 0.0
    pad = np.ceil((depth + params.closing_mm + 3 * params.smoothing_mm) / sp).astype(int) + 2
    bb = bbox_slices(kept, pad, kept.shape)
    shell = kept[bb]
    result = shell
    if params.fill_interior:
        # Other thresholded structures (vessel, table, other bones not asked for) are never filled into; specks
        # of dense trabeculae inside the body are not structures.
        big = sizes >= min_island_vox
        big[0] = False
        blocked = big[labels[bb]] & ~shell
        if blocked.any():
            blocked = ndi.binary_dilation(blocked, structure=ball_kernel(max(1.0, float(sp.min())), sp))
            blocked &= ~shell
        result = _fill_interior(shell, blocked, sub[bb], params, sp, progress.sub(0.35, 0.8))
    timings["fill"] = time.perf_counter() - t

    # 5. Islands and smoothing.
    t = time.perf_counter()
    progress.report(0.82, "Removing small islands")
    off = np.array([s.start for s in bb])
    seed_local = [np.asarray(v) - off for v in seeds]
    result = drop_islands(result, min_island_vox, seed_local)
    if params.smoothing_mm > 0:
        progress.report(0.86, "Smoothing")
        sigma = params.smoothing_mm / sp
        result = ndi.gaussian_filter(result.astype(np.float32), sigma) >= 0.5
    timings["islands_smoothing"] = time.perf_counter() - t
    full_bb = tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(bb, box))
    if not_bone is not None:  # filling and smoothing close over a vessel lying against the bone: not bone either
        result &= ~np.asarray(not_bone, dtype=bool)[full_bb]
    if not result.any():
        raise SegmentationError(
            "The bone segmentation is empty after removing small islands and smoothing.",
            "Lower min_island_mm3 or smoothing_mm, or check the seeds and the threshold.",
        )
    for v, p in zip(origins, params.seeds_ras):
        if nearest_on(result.view(np.uint8), np.array([False, True]), v - off, params.seed_snap_mm, sp) is None:
            warnings.append(
                f"The seed at {_fmt(p)} RAS is more than {params.seed_snap_mm:g} mm from the segmented bone; "
                "check that it lies on the bone to keep."
            )
    timings["total"] = time.perf_counter() - t0
    return BoneMask(result, full_bb, grid.voxel_mm3, warnings, timings)


