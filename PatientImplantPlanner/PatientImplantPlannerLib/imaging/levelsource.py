"""Vertebra labels as the level source: a segmentation with one segment per vertebra (e.g. TotalSegmentator's
``vertebrae_L1`` names) or a labelmap with TotalSegmentator's or VerSe's numbering, instead of clicked points.

The labels then define each vertebra for level detection, and the plan's level names (e.g. "L1", "L3") pick the
proximal and distal vertebrae.
"""

import re
from typing import Optional

import numpy as np

from ..core.errors import PlanError
from .voxelops import label_counts

# TotalSegmentator (v2, task "total") label values of the vertebrae: 26 = S1 ... 50 = C1.
_ORDER = ["S1", "L5", "L4", "L3", "L2", "L1"] + [f"T{n}" for n in range(12, 0, -1)] + [f"C{n}" for n in range(7, 0, -1)]
TOTALSEGMENTATOR_VERTEBRAE = {26 + i: name for i, name in enumerate(_ORDER)}
# VerSe (the vertebra segmentation challenge's labelmaps, also used by other spine datasets): 1 = C1 ... 7 = C7,
# 8 = T1 ... 19 = T12, 20 = L1 ... 24 = L5; 25 (L6), 26 (sacrum), 28 (T13) are not planned on. Nothing else is
# labelled, so a VerSe labelmap never holds a value above 28; TotalSegmentator's always does (L3 and above, organs).
VERSE_VERTEBRAE = {1 + i: name for i, name in enumerate(reversed(_ORDER[1:]))}
VERSE_MAX_LABEL = 28

_NAME = re.compile(r"^(?:vertebra[e]?[\s_-]*)?([CTL])\s*(\d{1,2})$|^(?:vertebra[e]?[\s_-]*)?(S1|sacrum)$", re.I)


def vertebra_name(text: str) -> Optional[str]:
    """"vertebrae_L1", "Vertebra L1", "L1" -> "L1"; "vertebrae_S1"/"sacrum" -> "S1"; anything else -> None."""
    m = _NAME.match(text.strip())
    if not m:
        return None
    if m.group(3):
        return "S1"
    return f"{m.group(1).upper()}{int(m.group(2))}"


def labels_from_labelmap(label_array: np.ndarray) -> tuple:
    """(label map, {level name: value}) from a labelmap with TotalSegmentator's or VerSe's vertebra numbering
    (labelmap_numbering tells which)."""
    present = set(_present_values(label_array).tolist())
    table = VERSE_VERTEBRAE if _numbering(present) == "verse" else TOTALSEGMENTATOR_VERTEBRAE
    present &= set(table)
    if not present:
        raise PlanError(
            "The labelmap has no vertebra labels in TotalSegmentator's numbering (version 2: 26 = S1 ... 50 = C1) "
            "or VerSe's (1 = C1 ... 24 = L5).",
            "Give a TotalSegmentator 2 'total' labelmap, its output folder of named mask files, a VerSe labelmap, or "
            "a segmentation with named vertebra segments (a version-1 labelmap numbers the vertebrae 18 = L5 ... "
            "41 = C1).",
        )
    return np.asarray(label_array), {table[v]: v for v in sorted(present)}


def labelmap_numbering(label_array: np.ndarray) -> str:
    """'verse' for a labelmap numbered like VerSe's (no value above 28, some vertebra 1..24), else
    'totalsegmentator'. A VerSe labelmap names no soft tissue: its low values are vertebrae, not organs."""
    return _numbering(set(_present_values(label_array).tolist()))


def _numbering(present: set) -> str:
    if max(present, default=0) <= VERSE_MAX_LABEL and present & set(VERSE_VERTEBRAE):
        return "verse"
    return "totalsegmentator"


def _present_values(label_array: np.ndarray) -> np.ndarray:
    """The values in a labelmap: counted for small non-negative integers (a 500-slice CT's labels sorted whole, as
    np.unique does, take seconds and a copy of the volume)."""
    a = np.asarray(label_array)
    if a.size == 0:
        return np.zeros(0, int)
    if np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and a.max() < 65536:
        return np.flatnonzero(label_counts(a, int(a.max()) + 1))
    return np.unique(a)


ORDER_TOLERANCE_MM = 5.0  # a vertebra's centre may lie this much below the next caudal one's before it is an error


def check_vertebra_order(label_map: np.ndarray, ijk_to_ras: np.ndarray, values: dict) -> None:
    """PlanError when the labelled vertebrae are not stacked in anatomical order (each above the next caudal one,
    along the patient's superior axis): labels read with the wrong numbering (a TotalSegmentator version-1 labelmap
    read as version 2 puts 'T2' on the oesophagus and 'C7' on the heart) or misnamed segments would otherwise put a
    plan's levels on the wrong structures, with no other sign."""
    names = sorted(values, key=_ORDER.index)  # caudal first
    if len(names) < 2:
        return
    centres = _label_centres(label_map, [values[n] for n in names])
    height = {n: float(ijk_to_ras[2, :3] @ np.asarray(c, float)[::-1] + ijk_to_ras[2, 3])
              for n, c in zip(names, centres)}
    for lower, upper in zip(names[:-1], names[1:]):
        if height[upper] < height[lower] - ORDER_TOLERANCE_MM:
            raise PlanError(
                f"The vertebra labels are not in anatomical order: {upper} (label {values[upper]}) lies "
                f"{height[lower] - height[upper]:.0f} mm below {lower} (label {values[lower]}), so the labels were "
                "probably read with the wrong numbering or names.",
                "Give a TotalSegmentator 2 'total' labelmap (26 = S1 ... 50 = C1; version 1 numbers them 18 = L5 ... "
                "41 = C1), its output folder of named mask files, a VerSe labelmap (1 = C1 ... 24 = L5), or a "
                "segmentation whose vertebra segments are named correctly.",
            )


def _label_centres(label_map: np.ndarray, wanted) -> list:
    """Centroid (k, j, i) of each wanted label value, counted slice by slice (ndimage.center_of_mass made float
    copies of the volume: 2.1 GB and 7 s for a 0.7 mm chest CT's labels)."""
    a = np.asarray(label_map)
    size = int(max(wanted)) + 1
    nj, ni = a.shape[1:]
    jj, ii = np.meshgrid(np.arange(nj, dtype=float), np.arange(ni, dtype=float), indexing="ij")
    sums = np.zeros((4, size))  # voxels, k, j, i
    for k in range(a.shape[0]):
        flat = a[k].ravel()
        keep = (flat >= 0) & (flat < size)
        if not keep.any():
            continue
        f = flat[keep].astype(np.intp)
        n = np.bincount(f, minlength=size)
        sums[0] += n
        sums[1] += k * n
        sums[2] += np.bincount(f, weights=jj.ravel()[keep], minlength=size)
        sums[3] += np.bincount(f, weights=ii.ravel()[keep], minlength=size)
    return [tuple(sums[1:, v] / max(sums[0, v], 1.0)) for v in wanted]


def level_point(label_map: np.ndarray, ijk_to_ras: np.ndarray, value: int) -> np.ndarray:
    """A RAS point inside the labelled vertebra: the labelled voxel nearest to the label's centroid."""
    idx = np.argwhere(label_map == value)
    if len(idx) == 0:
        raise PlanError(f"Label {value} is empty.", "Check the vertebra labels.")
    c = idx.mean(axis=0)
    k, j, i = idx[np.argmin(np.linalg.norm(idx - c, axis=1))]
    return ijk_to_ras[:3, :3] @ np.array([i, j, k], dtype=float) + ijk_to_ras[:3, 3]


def fill_plan_points(plan, label_map: np.ndarray, values: dict, ijk_to_ras: np.ndarray) -> None:
    """Give the plan a point in each named end vertebra when it has none (labels are the level source)."""
    for attr, level in (("proximal_point_ras", plan.proximal_level), ("distal_point_ras", plan.distal_level)):
        if getattr(plan, attr) is not None:
            continue
        if not level:
            raise PlanError(
                "With vertebra labels as the level source the plan must name the proximal and distal levels.",
                "Set proximal_level and distal_level (e.g. 'L1' and 'L3').",
            )
        if level not in values:
            raise PlanError(
                f"Level {level} is not among the labelled vertebrae ({', '.join(values)}).",
                "Choose labelled levels, or place points instead.",
            )
        setattr(plan, attr, [float(x) for x in level_point(label_map, ijk_to_ras, values[level])])
