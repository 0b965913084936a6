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
from scipy import ndimage

from ..core.anatomy import Endplate, angle_deg, smooth_axis, unit
from ..core.errors import PlanError
from ..core.grid import VoxelGrid
from ..core.progress import Progress
from .thicklevels import _thick_levels, disc_band_check, slices_along_spine, thick_slice_axis, unresolved_faces
from .vertebra import (
    PATIENT_SUPERIOR,
    VertebraMeasurement,
    _Body,
    _body_at,
    _box_of,
    _column_face,
    _crop_box,
    _measured,
    _nearest_true,
    _no_body,
)

# Standard vertebral order, cranial to caudal; used to name intermediates between two labelled levels.
SPINE_ORDER = (
    [f"C{i}" for i in range(1, 8)] + [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    + ["L6", "S1", "S2", "S3", "S4", "S5", "sacrum"]
)

SEED_SEARCH_MM = 5.0  # a clicked point may miss the bone by this much
MAX_BODY_HEIGHT_MM = 40.0  # taller than any vertebral body (lumbar 25-35 mm): bodies merged through the discs


MAX_BODY_TILT_DEG = 60.0  # a body's axis this far from the line between the two points: not one body
# Two healthy docking bodies, each against its level's typical height, differ by less than this. On the 1.5 mm CT
# angiogram (osteopenic bodies) the bone segment split T10 and joined T9's top to T8: 11 and 25 mm (2.4 times; by
# eye 19 and 18 mm), the faces 10 and 4.5 mm off with no warning. Sound pairs: at most 1.15 (the lumbar CT and the
# phantoms of test_levels / test_plan_lumbar).
MAX_BODY_HEIGHT_RATIO = 1.4
# A docking vertebra is a healthy one: measured shorter than this fraction of its level's typical height, a band
# inside the body was taken for its disc. On a Gaussian-smoothed copy of the RIDER lung CT, T5 -> T8 from clicked
# points gave T5 8.8 mm and T8 14.0 mm tall (0.49 and 0.70; read by eye on a sagittal reformat 20-23 mm apart) with
# no doubt raised, and the implant then fell apart. Sound docking bodies in every test's detection (212, real CTs and
# phantoms, clicked points and labels): at least 0.86.
MIN_BODY_HEIGHT_FRACTION = 0.75


# A docking face is checked against two directions found without it: its own body's other face, and the line from
# its body's centre to the next body's between the docking levels. Sound faces in every detection of the test suite
# (350: the chest, lumbar, angiogram and noisy CTs, clicked points and labels, and phantoms) lay within 11.3 deg of
# the nearer of the two and 17.1 deg of the line (the lumbar CT's L3 superior, in lordosis). A face further off
# raised no doubt of its own until the implant fell apart (25 deg) or the spine ran along it (70 deg, strut.py).
MAX_FACE_OFF_BODY_DEG = 20.0
MAX_FACE_OFF_LINE_DEG = 30.0

MIN_LEVEL_SEPARATION_MM = 15.0  # points farther apart than this are never in the same vertebra (bodies 17-30 mm)
CONTROL_STEP_LEVELS = 0.55  # axis control points at most this many level spacings apart


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
    # {"proximal" / "distal": message} docking faces whose tilt could not be settled (thick slices, no labels): the
    # plan holds them as safety findings until the user checks them (design/plan.py).
    doubtful_endplates: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- axis


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


def _not_told_apart(p_prox, p_dist, grid, slices):
    """The error for two points far apart (rarely one vertebra) whose bodies the bone did not separate."""
    on = f" on these {grid.spacing_kji[slices[0]]:.1f} mm slices" if slices is not None else ""
    return PlanError(
        f"The proximal and distal points ({np.linalg.norm(p_dist - p_prox):.0f} mm apart) could not be told apart as "
        f"two vertebrae: the bone runs on from one point to the other and no disc space shows clearly between "
        f"them{on} (bridged or fused vertebrae, or thin osteoporotic endplates, look like this).",
        "If both points lie in one vertebra, move the distal point into the first healthy vertebra below the defect. "
        "Otherwise give vertebra labels (--levels, or the level segmentation in the module, e.g. from "
        "TotalSegmentator), or set both endplates and the axis yourself (proximal_endplate, distal_endplate and "
        "axis_control_points in the plan), or use a reconstruction with thinner slices.")


def _check_distinct(prox, dist, same_body, prox_name, dist_name, apart: Optional[PlanError] = None):
    """Refuse one vertebra taken for both ends; ``apart``: the error to raise instead (points far apart)."""
    if not same_body:
        sep = np.linalg.norm(prox.body_centre - dist.body_centre)
        same_body = sep < 0.5 * max(prox.body_height, dist.body_height, 1.0)
    if same_body and apart is not None:
        raise apart
    if same_body:
        names = f" ({prox_name})" if prox_name and prox_name == dist_name else ""
        raise PlanError(f"The proximal and distal points are in the same vertebra{names}.",
                        "Place the proximal point in the last healthy vertebra above the defect and the distal "
                        "point in the first healthy vertebra below it.")


def detect_levels(bone_mask, ijk_to_ras, proximal_point_ras, distal_point_ras, proximal_name: str = "",
                  distal_name: str = "", label_map=None, label_values: Optional[dict] = None,
                  progress=None, ct_array=None, cord=None) -> LevelsResult:
    """Measure the proximal and distal vertebrae, the bodies between them and the spinal axis.

    ``bone_mask`` is a bool array [k, j, i] of filled bone; with ``label_map``/``label_values`` ({name: value},
    e.g. TotalSegmentator) each vertebra is its label instead of being separated from the bone mask. ``cord``
    (bool crop, origin (k, j, i)): the labelled spinal cord, which places the bodies' posterior walls on thick slices.
    """
    prog = Progress(progress)
    mask = np.asarray(bone_mask, dtype=bool)
    if mask.ndim != 3:
        raise PlanError("The bone mask must be a 3D array.", "Pass the bone segmentation as a [k, j, i] array.")
    grid = VoxelGrid(ijk_to_ras, mask.shape)
    p_prox = np.asarray(proximal_point_ras, dtype=float).reshape(3)
    p_dist = np.asarray(distal_point_ras, dtype=float).reshape(3)
    warnings, doubtful = [], {}
    slices = thick_slice_axis(grid, ct_array)
    if slices is not None and slices[2]:
        warnings.append(
            f"The CT's slices are {grid.spacing_kji[slices[0]]:.2g} mm apart but it is blurred across them like "
            f"{slices[1]:.1f} mm slices (an overlapping reconstruction, or thick slices resampled): the vertebrae were "
            "measured as on thick slices. Check the endplates; thin-slice reconstructions give sharper ones.")
    cranial = unit(p_prox - p_dist) if np.linalg.norm(p_prox - p_dist) > 1e-6 else PATIENT_SUPERIOR
    # Proximal is the upper (cranial) healthy vertebra. Taken the other way round, the path runs caudal to cranial
    # and its lateral (tangent x anterior) is the patient's left: a strut asked for on the right would be placed on
    # the left, where the aorta is (found in a new-user trial on the chest CT).
    order = [SPINE_ORDER.index(n) if n in SPINE_ORDER else None for n in (proximal_name, distal_name)]
    if None not in order and order[0] > order[1]:
        raise PlanError(f"The proximal level {proximal_name} lies below the distal level {distal_name}.",
                        "The proximal level is the healthy vertebra above the defect: swap proximal_level and "
                        "distal_level (and their points).")
    far_apart = np.linalg.norm(p_prox - p_dist) > MIN_LEVEL_SEPARATION_MM  # nearer: the same-vertebra check speaks
    if far_apart and np.dot(cranial, PATIENT_SUPERIOR) < 0:
        raise PlanError("The proximal vertebra point lies caudal of (below) the distal vertebra point.",
                        "The proximal point goes in the healthy vertebra above the defect: swap the two points (and "
                        "proximal_level / distal_level if named).")
    use_labels = label_map is not None
    # Without labels, points this far apart are never one vertebra: merged bodies are the bone's fault, not the
    # user's (a 5 mm chest CT with bridged bodies was refused as "the same vertebra" for points 92 mm apart).
    apart = (_not_told_apart(p_prox, p_dist, grid, slices)
             if np.linalg.norm(p_prox - p_dist) >= MIN_LEVEL_SEPARATION_MM else None)
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
                                    proximal_name, _local_cranial(labels, boxes, grid, values, proximal_name, cranial))
        prog.report(0.3, "Measuring the distal vertebra")
        dist_body, dist = _measured(lambda t: _body_of_label(labels, v_dist, boxes, grid, s_dist, t), grid,
                                    distal_name, _local_cranial(labels, boxes, grid, values, distal_name, cranial))
        # With labels on thick (or thickly blurred) slices the docking faces are refitted from the labelled body's
        # own voxels (the smoothed surface blurs a face across a 2.5 mm slice; on sharp fine grids it is the better
        # fit: phantoms with exact labels 1.55 mm off with the refit, within 1 mm without).
        thick = slices is not None
        cord_pts = grid.to_ras(np.argwhere(cord[0]) + np.asarray(cord[1])) if cord is not None and thick else None
        for v, body, m, attr in ((v_prox, prox_body, prox, "inferior_endplate"),
                                 (v_dist, dist_body, dist, "superior_endplate")) if thick else ():
            box, lo = _label_box(labels, v, boxes)
            setattr(m, attr, _column_face(body, grid, getattr(m, attr), label=(labels[box] == v, lo), cord=cord_pts))
        # the labels' own faces are stair-stepped this coarsely: the surgeon checks them
        doubtful = unresolved_faces(grid, slices, proximal_name, distal_name, labelled=True)
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
                walked.append((_label_centre(labels, boxes, grid, values[name]), None))
                warnings.append(f"Vertebra {name} could not be measured; the centre of its label is used.")
        intermediate_levels = list(names)
        docking = {}
        for end, v in (("proximal", v_prox), ("distal", v_dist)):
            box, lo = _label_box(labels, v, boxes)
            docking[end] = (labels[box] == v, np.asarray(lo))
        _check_inside_scan({"proximal": (prox_body.body, prox_body.offset), "distal": (dist_body.body,
                                                                                       dist_body.offset)},
                           grid.shape, proximal_name, distal_name)
    else:
        s_prox = _require_seed(mask, grid, p_prox, "proximal")
        s_dist = _require_seed(mask, grid, p_dist, "distal")
        thick = None
        far = np.linalg.norm(p_prox - p_dist) >= MIN_LEVEL_SEPARATION_MM
        if ct_array is not None and slices is not None and far:
            prog.report(0.1, "Measuring the vertebrae from the CT (thick slices)")
            thick = _thick_levels(np.asarray(ct_array), mask, grid, p_prox, p_dist, proximal_name, distal_name,
                                  slices)
        if thick is None:
            cut_mask, bodies = _bone_bodies(mask, grid, (s_prox, s_dist), (p_prox, p_dist), far,
                                            (proximal_name, distal_name), cranial, ct_array, warnings, prog)
            why = _why_not_single_bodies(bodies, (s_prox, s_dist), cranial, (proximal_name, distal_name))
            if ct_array is not None and slices is None and far and not why:
                # The bodies' faces checked against the CT's disc bands (below): on the 3 mm lumbar sample, whose
                # segment is mostly the bodies' shells, a body isolated from it gave faces 6-19 deg off its label
                # where the disc bands gave 0.4-2.
                thick, off = disc_band_check(ct_array, mask, grid, p_prox, p_dist, (proximal_name, distal_name),
                                              bodies[1], bodies[3])
                if thick is not None:
                    warnings.append(f"The docking faces of the bodies isolated from the bone segment lay {off:.0f} deg "
                                    "from the CT's disc spaces: they were found from the CT's disc spaces instead. "
                                    "Check the levels and the endplates.")
            if ct_array is not None and slices is None and far and why:
                # Thin slices, but the bone runs on through the discs (discs as dense as osteopenic cancellous
                # bone, 100-180 HU, on a 1.5 mm contrast chest CT: "bodies" 50-140 mm tall) or splits a body: the
                # disc bands of the CT, as on thick slices, along the array axis nearest the spine's.
                prog.report(0.2, "Measuring the vertebrae from the CT (the bone segment does not separate them)")
                thick = _thick_levels(np.asarray(ct_array), mask, grid, p_prox, p_dist, proximal_name,
                                      distal_name, slices_along_spine(grid, p_prox, p_dist))
                if thick is not None:
                    warnings.append(f"The vertebral bodies could not be separated in the bone segment ({why}): they "
                                    "were found from the CT's disc spaces instead. Check the levels and the "
                                    "endplates.")
                elif why.startswith("docking bodies of unlikely heights"):
                    doubtful = {end: (f"The {end} endplate ({name or end} {side}) may be misplaced: the bone segment "
                                      f"gave {why}, and the CT's disc spaces could not be found instead. Check it in "
                                      "the sagittal and coronal views and move its plane to the bone.")
                                for end, name, side in (("proximal", proximal_name, "inferior"),
                                                        ("distal", distal_name, "superior"))}
            mask = cut_mask
    if not use_labels and thick is not None:
        prox, dist, docking, walked, doubtful = thick
        intermediate_levels = [""] * len(walked)
        _check_inside_scan(docking, grid.shape, proximal_name, distal_name)
    elif not use_labels:
        prox_body, prox, dist_body, dist = bodies
        if _contains(prox_body, s_dist) or _contains(dist_body, s_prox):
            _check_distinct(None, None, True, proximal_name, distal_name, apart)
        for body, seed, which in ((prox_body, s_prox, "proximal"), (dist_body, s_dist, "distal")):
            if not _contains(body, seed):
                warnings.append(f"The {which} point is not inside a vertebral body; the nearest body was used. "
                                "Check that it is the intended level.")
        _check_distinct(prox, dist, False, proximal_name, distal_name, apart)
        _check_inside_scan({"proximal": (prox_body.body, prox_body.offset),
                            "distal": (dist_body.body, dist_body.offset)}, grid.shape, proximal_name, distal_name)
        # the CT's own fit fell back to the bone: its faces as doubtful
        doubtful.update(unresolved_faces(grid, slices, proximal_name, distal_name))
        prog.report(0.5, "Looking for vertebrae between them")
        walked = _walk(mask, grid, prox, dist, warnings)
        intermediate_levels = [""] * len(walked)
        docking = {"proximal": (prox_body.body, np.asarray(prox_body.offset)),
                   "distal": (dist_body.body, np.asarray(dist_body.offset))}
    _check_distinct(prox, dist, False, proximal_name, distal_name, None if use_labels else apart)
    warnings += prox.warnings + dist.warnings
    centres = np.array([c for c, _ in walked]).reshape(-1, 3)
    # More reasons to doubt a face, each added to any the fit already gave.
    more = [] if use_labels else [_short_bodies(prox, dist, proximal_name, distal_name)]
    more.append(_faces_off_the_spine(prox, dist, centres, intermediate_levels, use_labels))
    for end, why in ((e, w) for reasons in more for e, w in reasons.items()):
        doubtful[end] = f"{doubtful[end]} {why}" if end in doubtful else why

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
                        intermediate_levels=intermediate_levels, docking=docking, doubtful_endplates=doubtful)


CUT_SECTION_FRACTION = 0.5  # a docking body showing this much of its widest section on the CT's edge is cut


def _bone_bodies(mask, grid, seeds, points, far, names, cranial, ct_array, warnings, prog):
    """(mask, (proximal body, its measurement, distal body, its measurement)) separated from the bone segment; the
    mask comes back cut at the disc spaces when the two bodies first came out as one and the points are ``far``
    apart (MIN_LEVEL_SEPARATION_MM)."""
    (s_prox, s_dist), (p_prox, p_dist) = seeds, points
    prog.report(0.1, "Measuring the proximal vertebra")
    prox_body, prox = _measured(lambda t: _body_at(mask, grid, s_prox, t), grid, names[0], cranial)
    prog.report(0.3, "Measuring the distal vertebra")
    dist_body, dist = _measured(lambda t: _body_at(mask, grid, s_dist, t), grid, names[1], cranial)
    if far and (_contains(prox_body, s_dist) or _contains(dist_body, s_prox)):
        # Points this far apart are in different vertebrae: the bodies merged through bridged discs (thick
        # slices, osteophytes, a contaminated segment). Cut the bone at the disc spaces between them, again.
        mask = _cut_at_discs(mask, grid, p_prox, p_dist, ct_array)
        prox_body, prox = _measured(lambda t: _body_at(mask, grid, s_prox, t), grid, names[0], cranial)
        dist_body, dist = _measured(lambda t: _body_at(mask, grid, s_dist, t), grid, names[1], cranial)
        warnings.append("The bone was continuous between the two vertebrae; it was separated at the disc "
                        "spaces (the narrowest bone across the spine). Check the endplates.")
    return mask, (prox_body, prox, dist_body, dist)


def _why_not_single_bodies(bodies, seeds, cranial, names) -> str:
    """Why the bone did not give one vertebral body at each point ("" if it did): a body holding both points or not
    its own, taller than any vertebral body, standing across the spine, or the two bodies' heights too unlike for
    their levels (one split, the other joined to a neighbour's half)."""
    prox_body, prox, dist_body, dist = bodies
    s_prox, s_dist = seeds
    if _contains(prox_body, s_dist) or _contains(dist_body, s_prox):
        return "one body holds both points"
    for body, m, seed in ((prox_body, prox, s_prox), (dist_body, dist, s_dist)):
        if not _contains(body, seed):
            return "a point lies outside its body"
        if m.body_height > MAX_BODY_HEIGHT_MM:
            return f"a body {m.body_height:.0f} mm tall"
        if angle_deg(m.axis_direction, -cranial) > MAX_BODY_TILT_DEG:
            return "a body standing across the spine"
    typical = [_typical_body_height_mm(n) for n in names]
    typical = typical if None not in typical else [1.0, 1.0]  # a level not named: the heights as they are
    if min(prox.body_height, dist.body_height) > 0:
        ratio = (prox.body_height / typical[0]) / (dist.body_height / typical[1])
        if max(ratio, 1.0 / ratio) > MAX_BODY_HEIGHT_RATIO:
            label = [n or w for n, w in zip(names, ("proximal", "distal"))]
            return (f"docking bodies of unlikely heights, {label[0]} {prox.body_height:.0f} mm and {label[1]} "
                    f"{dist.body_height:.0f} mm")
    return ""


def _short_bodies(prox, dist, proximal_name: str, distal_name: str) -> dict:
    """{end: why its face may be misplaced} for a docking body far shorter than its level's (the faces bound it)."""
    out = {}
    for end, m, name, side in (("proximal", prox, proximal_name, "inferior"),
                               ("distal", dist, distal_name, "superior")):
        typical = _typical_body_height_mm(name)
        if typical and 0.0 < m.body_height < MIN_BODY_HEIGHT_FRACTION * typical:
            out[end] = (
                f"The {end} endplate ({name} {side}) may be misplaced: {name}'s body measured {m.body_height:.1f} mm "
                f"tall between the faces found, where a {name} is about {typical:.0f} mm, so a band inside the body "
                "(noise, a vascular channel) was probably taken for a disc space. Check it in the sagittal view and "
                f"drag its plane ('{end.capitalize()} endplate', or {end}_endplate in the plan) onto the endplate, "
                "or give vertebra labels (--levels, e.g. TotalSegmentator's).")
    return out


def _faces_off_the_spine(prox, dist, centres, between_names, labelled: bool) -> dict:
    """{end: why its face may be tilted wrongly} for a docking face far from both its body's other face and the line
    to the next body's centre, or very far from that line (MAX_FACE_OFF_BODY_DEG, MAX_FACE_OFF_LINE_DEG)."""
    out = {}
    for end, m, face, other, k, side in (("proximal", prox, prox.inferior_endplate, prox.superior_endplate, 0,
                                          "inferior"),
                                         ("distal", dist, dist.superior_endplate, dist.inferior_endplate, -1,
                                          "superior")):
        beyond = dist if end == "proximal" else prox
        neighbour = centres[k] if len(centres) else beyond.body_centre
        next_name = (between_names[k] if len(centres) else beyond.level) or ""
        next_name = f" ({next_name})" if next_name else ""
        line = neighbour - m.body_centre
        if not np.linalg.norm(line) > 1.0:
            continue
        off_line = angle_deg(abs(float(face.normal @ unit(line))), 1.0)
        off_body = angle_deg(abs(float(face.normal @ other.normal)), 1.0)
        if min(off_line, off_body) <= MAX_FACE_OFF_BODY_DEG and off_line <= MAX_FACE_OFF_LINE_DEG:
            continue
        name = m.level or end
        labels = "" if labelled else ", or give vertebra labels (--levels, e.g. TotalSegmentator's)"
        out[end] = (
            f"The {end} endplate ({name} {side}) may be tilted wrongly: it lies {off_line:.0f} deg from the line "
            f"from {name}'s body to the next body's centre{next_name} and {off_body:.0f} deg from "
            f"{name}'s other endplate, where sound faces lie within {MAX_FACE_OFF_BODY_DEG:.0f} deg of one of them. "
            f"Check it in the sagittal and coronal views and turn its plane ('{end.capitalize()} endplate', or "
            f"{end}_endplate in the plan) to the bone{labels}.")
    return out


def _typical_body_height_mm(name: str) -> Optional[float]:
    """A level's typical adult vertebral body height (mm; only ratios between levels are used), None if unknown."""
    region, number = name[:1], name[1:]
    n = int(number) if number.isdigit() else 0
    if region == "C" and 3 <= n <= 7:
        return 14.0
    if region == "T" and 1 <= n <= 12:
        return 15.0 + 8.0 * (n - 1) / 11.0
    if region == "L" and 1 <= n <= 5:
        return 26.0
    return None


def _check_inside_scan(bodies: dict, shape, proximal_name: str, distal_name: str) -> None:
    """PlanError when a docking vertebral body reaches the edge of the CT: the scan cuts it (a vertebra at the top
    or bottom of the field of view), so its endplate, height and screw room would be measured on a fragment. On the
    chest CT, C6 (cut by the first slice, 6 of its slices in view) was refused only at screw planning, as 'no room
    for a screw on a 3.8 x 5.8 mm footplate' with fixes that could not help."""
    for end, name in (("proximal", proximal_name), ("distal", distal_name)):
        crop, lo = bodies[end]
        crop, lo = np.asarray(crop, bool), np.asarray(lo, int)
        for axis in range(3):
            # Cut, not touching: the edge plane holds half the body's widest section or more (a tilted endplate
            # grazes it: on the chest CT C7's body shows 304 voxels on the first slice against 792 at its widest and
            # is nearly whole; C6 shows its widest section there).
            widest = CUT_SECTION_FRACTION * crop.sum(axis=tuple(a for a in range(3) if a != axis)).max()
            first = lo[axis] == 0 and np.take(crop, 0, axis=axis).sum() >= widest
            last = lo[axis] + crop.shape[axis] >= shape[axis] and np.take(crop, -1, axis=axis).sum() >= widest
            if first or last:
                level = f"{name} " if name else ""
                raise PlanError(
                    f"The {end} vertebra ({level}body) is cut by the edge of the CT: it reaches the volume's "
                    f"{'first' if first else 'last'} {('slice', 'row', 'column')[axis]}, so its endplate, height "
                    "and room for screws cannot be measured.",
                    f"Dock on a vertebra that lies wholly inside the CT (move the {end} point, or set {end}_level), "
                    "or use a scan that covers it.")


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


def _label_centre(labels, boxes, grid, value):
    """RAS centre of a label's voxels, or None if it is absent."""
    found = _label_box(labels, value, boxes)
    return None if found is None else grid.to_ras(np.argwhere(labels[found[0]] == value).mean(axis=0) + found[1])[0]


def _local_cranial(labels, boxes, grid, values, name, chord):
    """The spine's cranial direction at a labelled vertebra: from the labelled level below it to the one above (itself
    where one is missing); else ``chord``, between the clicked points, which on a long strut runs far off the column
    at its ends (chest CT, T1 -> T11: 30 deg at T1, and T1's inferior face came out 75 deg off its labels)."""
    if name not in SPINE_ORDER:
        return chord
    i = SPINE_ORDER.index(name)

    def centre(k):  # of the k-th level in SPINE_ORDER, None when it is not labelled
        n = SPINE_ORDER[k] if 0 <= k < len(SPINE_ORDER) else ""
        return _label_centre(labels, boxes, grid, values[n]) if n in values else None

    above, below = centre(i - 1), centre(i + 1)
    if above is None and below is None:
        return chord
    here = _label_centre(labels, boxes, grid, values[name])
    up = (here if above is None else above) - (here if below is None else below)
    # neighbours out of order: the clicked points' direction is the safer start
    return unit(up) if np.linalg.norm(up) > 1e-6 and np.dot(up, chord) > 0 else chord


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
        c = _label_centre(labels, boxes, grid, v)
        s = np.dot(c - prox.body_centre, chord) / length**2
        if 0.1 < s < 0.9 and np.linalg.norm(c - prox.body_centre - s * chord) < 0.5 * length:
            keyed.append((s, names_by_value[v]))
    return [n for _, n in sorted(keyed)]
