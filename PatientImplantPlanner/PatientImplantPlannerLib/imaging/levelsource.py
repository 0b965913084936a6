"""Vertebra labels as the level source: a segmentation with one segment per vertebra (e.g. TotalSegmentator's
``vertebrae_L1`` names) or a labelmap with TotalSegmentator's numbering, instead of clicked points.

The labels then define each vertebra for level detection, and the plan's level names (e.g. "L1", "L3") pick the
proximal and distal vertebrae.
"""

import re
from typing import Optional

import numpy as np
from scipy import ndimage

from ..core.errors import PlanError

# TotalSegmentator (v2, task "total") label values of the vertebrae: 26 = S1 ... 50 = C1.
_ORDER = ["S1", "L5", "L4", "L3", "L2", "L1"] + [f"T{n}" for n in range(12, 0, -1)] + [f"C{n}" for n in range(7, 0, -1)]
TOTALSEGMENTATOR_VERTEBRAE = {26 + i: name for i, name in enumerate(_ORDER)}

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
    """(label map, {level name: value}) from a labelmap with TotalSegmentator's vertebra numbering."""
    present = {int(v) for v in np.unique(label_array)} & set(TOTALSEGMENTATOR_VERTEBRAE)
    if not present:
        raise PlanError(
            "The labelmap has no vertebra labels in TotalSegmentator's numbering (version 2: 26 = S1 ... 50 = C1).",
            "Give a TotalSegmentator 2 'total' labelmap, its output folder of named mask files, or a segmentation "
            "with named vertebra segments (a version-1 labelmap numbers the vertebrae 18 = L5 ... 41 = C1).",
        )
    return np.asarray(label_array), {TOTALSEGMENTATOR_VERTEBRAE[v]: v for v in sorted(present)}


ORDER_TOLERANCE_MM = 5.0  # a vertebra's centre may lie this much below the next caudal one's before it is an error


def check_vertebra_order(label_map: np.ndarray, ijk_to_ras: np.ndarray, values: dict) -> None:
    """PlanError when the labelled vertebrae are not stacked in anatomical order (each above the next caudal one,
    along the patient's superior axis): labels read with the wrong numbering (a TotalSegmentator version-1 labelmap
    read as version 2 puts 'T2' on the oesophagus and 'C7' on the heart) or misnamed segments would otherwise put a
    plan's levels on the wrong structures, with no other sign."""
    names = sorted(values, key=_ORDER.index)  # caudal first
    if len(names) < 2:
        return
    centres = ndimage.center_of_mass(label_map > 0, label_map, [values[n] for n in names])
    height = {n: float(ijk_to_ras[2, :3] @ np.asarray(c, float)[::-1] + ijk_to_ras[2, 3])
              for n, c in zip(names, centres)}
    for lower, upper in zip(names[:-1], names[1:]):
        if height[upper] < height[lower] - ORDER_TOLERANCE_MM:
            raise PlanError(
                f"The vertebra labels are not in anatomical order: {upper} (label {values[upper]}) lies "
                f"{height[lower] - height[upper]:.0f} mm below {lower} (label {values[lower]}), so the labels were "
                "probably read with the wrong numbering or names.",
                "Give a TotalSegmentator 2 'total' labelmap (26 = S1 ... 50 = C1; version 1 numbers them 18 = L5 ... "
                "41 = C1), its output folder of named mask files, or a segmentation whose vertebra segments are "
                "named correctly.",
            )


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
