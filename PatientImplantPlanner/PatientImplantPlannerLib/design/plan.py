"""An implant plan: its parameters (saved as JSON, schema in docs/plan-schema.md) and the design step.

A plan is fully described by its parameters plus the CT (and optionally a bone segmentation): ``design_implant``
turns them into the axis, endplates, nominal implant, screws, variants and measurements, deterministically.
User edits made in the scene (axis control points, endplate planes, screw lines) are stored back into the plan
as overrides, so regenerating from the plan reproduces exactly what the user sees.
"""

import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import __version__
from ..core.anatomy import Endplate, smooth_axis
from ..core.errors import InputFileError, PlanError
from ..core.mesh import atomic_write_bytes, to_manifold
from ..core.progress import Progress
from ..export.boneexport import mask_surface
from ..imaging.bonesegmentation import BoneSegmentationParameters
from ..imaging.ctimport import require_axial_storage
from ..imaging.ctnoise import noisy_ct_note
from ..imaging.keepout import from_ct
from ..imaging.levels import SPINE_ORDER, detect_levels
from ..imaging.levelsource import vertebra_name
from ..imaging.voxelops import filled_in_slices
from ..record.values import DRILL_BONE_MM
from .access import DRIVER_REACH_MM, access_radius_mm, drill_access
from .defectparams import MirrorDefectParameters
from .findings import safety_findings
from .implant import build_implant, measurements
from .placement import NAMED_ANGLES, beside_cervical_bodies, fit_footplates, place_strut, screw_layout_kwargs
from .planschema import validate_plan_dict
from .screws import (
    LOW_DENSITY_HU,
    ScrewParameters,
    Trajectory,
    default_trajectories,
    hole_specs,
    plan_screws,
    screw_type,
)
from .strut import ImplantParameters, check_faces_across_axis

SCHEMA_VERSION = 1
MAX_VARIANT_MM = 30.0
# "auto": around the bodies at the angle that keeps the keep-out clearance; "axis": on the spinal axis (the
# defect resected); or a named angle around the bodies (placement.NAMED_ANGLES).
PLACEMENTS = ("auto", "axis", *NAMED_ANGLES)
TITANIUM_DENSITY_G_CM3 = 4.43  # Ti6Al4V ELI
KINDS = ("strut", "mirror_defect")


def _floats(p):
    return None if p is None else [float(x) for x in p]


@dataclass
class Plan:
    case_id: str = "CASE-001"
    proximal_level: str = ""  # e.g. "L1": last healthy vertebra above the defect
    distal_level: str = ""  # e.g. "L3": first healthy vertebra below
    proximal_point_ras: Optional[list] = None  # a point in the proximal vertebral body
    distal_point_ras: Optional[list] = None
    segmentation: BoneSegmentationParameters = field(default_factory=BoneSegmentationParameters)
    implant: ImplantParameters = field(default_factory=ImplantParameters)
    screws: ScrewParameters = field(default_factory=ScrewParameters)
    variants_mm: list = field(default_factory=lambda: [2.0, 3.0, 4.0])
    # "auto" (default): the strut lies against the vertebral bodies (a bone gap outside them) at the angle around
    # the axis that keeps keep_out_clearance_mm from the keep-out anatomy, footplates reaching back onto the
    # endplates, as the curved plate of published case 2; "axis": along the spinal axis (the defect is resected,
    # e.g. a corpectomy); "anterior", "anterolateral_right", ...: against the bodies at that angle.
    placement: str = "auto"
    placement_angle_deg: Optional[float] = None  # fixes the angle (0 anterior, +90 patient's right, -90 left)
    anterior_clearance_mm: float = 1.0  # gap between the vertebral bodies and a strut placed against them
    keep_out_clearance_mm: float = 2.0  # required distance from every keep-out structure
    keep_out_structures: Optional[list] = None  # names to keep out from the labels (None: all known ones)
    # Safety findings the user accepts explicitly (ids as listed by the planner, e.g. "clearance:aorta",
    # "screw:proximal left", "slice_thickness"); each is written into the design record.
    accepted_risks: list = field(default_factory=list)
    # Docking faces ("proximal" / "distal") detected with a doubtful tilt and not moved by the user since (set by
    # the planner; the module drops an end once its plane is moved): each stays a safety finding until then.
    unchecked_endplates: list = field(default_factory=list)
    # "strut" (default): a strut along the spine between two vertebrae; "mirror_defect": a one-sided defect
    # filled with the healthy side mirrored (mirrordefect.py; its parameters in ``mirror_defect``).
    kind: str = "strut"
    mirror_defect: dict = field(default_factory=dict)
    # Overrides from user edits in the scene; None = use what the planner detects.
    axis_control_points: Optional[list] = None
    proximal_endplate: Optional[dict] = None
    distal_endplate: Optional[dict] = None
    trajectories: Optional[list] = None  # [{"name", "end", "entry", "target"}]
    # Printable-output settings (lattice, guides, export), filled by the export step's own parameter classes.
    outputs: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise PlanError(f"Unknown plan kind {self.kind!r}.", f"Set kind to one of {', '.join(KINDS)}.")
        if self.kind == "mirror_defect":
            MirrorDefectParameters.from_dict(self.mirror_defect).validate()
            return  # the strut's levels, points, variants and screws do not apply
        if self.proximal_endplate is None and self.proximal_point_ras is None:
            raise PlanError(
                "The plan has no proximal vertebra.",
                "Place a point in the last healthy vertebra above the defect (the module's proximal point, or "
                "proximal_point_ras in the plan), give vertebra labels (--levels, or the module's level labels) with "
                "proximal_level, or set proximal_endplate.",
            )
        if self.distal_endplate is None and self.distal_point_ras is None:
            raise PlanError(
                "The plan has no distal vertebra.",
                "Place a point in the first healthy vertebra below the defect (the module's distal point, or "
                "distal_point_ras in the plan), give vertebra labels (--levels, or the module's level labels) with "
                "distal_level, or set distal_endplate.",
            )
        if (
            self.proximal_point_ras is not None
            and self.distal_point_ras is not None
            and np.linalg.norm(np.subtract(self.proximal_point_ras, self.distal_point_ras)) < 1.0
        ):
            raise PlanError(
                "The proximal and distal points are the same point.", "Place them in two different vertebrae."
            )
        if self.proximal_level and self.proximal_level == self.distal_level:
            raise PlanError(
                f"Proximal and distal vertebra are both {self.proximal_level}.",
                "Choose the last healthy vertebra above and the first healthy one below the defect.",
            )
        for v in self.variants_mm:
            if not np.isfinite(v) or v <= 0 or v > MAX_VARIANT_MM:
                raise PlanError(
                    f"Oversized variant of {v} mm is not possible.",
                    f"Variants add a positive length of at most {MAX_VARIANT_MM:g} mm (typical: 2, 3, 4 mm).",
                )
        if self.placement not in PLACEMENTS:
            raise PlanError(f"Unknown placement {self.placement!r}.", f"Choose one of {', '.join(PLACEMENTS)}.")
        if self.placement_angle_deg is not None and not (
            isinstance(self.placement_angle_deg, (int, float)) and -180.0 <= self.placement_angle_deg <= 180.0
        ):
            raise PlanError(f"placement_angle_deg = {self.placement_angle_deg!r} is invalid.",
                            "Set placement_angle_deg between -180 and 180 degrees (0 anterior, +90 the patient's "
                            "right), or null for the automatic angle.")
        self.validate_safety_options()
        if not 0.0 <= float(self.anterior_clearance_mm) <= 20.0:
            raise PlanError(f"anterior_clearance_mm = {self.anterior_clearance_mm!r} is invalid.",
                            "Set anterior_clearance_mm (the gap between bone and strut) between 0 and 20 mm.")
        if len(set(self.variants_mm)) != len(self.variants_mm):
            raise PlanError(f"Variant lengths repeat: {self.variants_mm}.", "List each extra length once.")
        if self.axis_control_points is not None and len(self.axis_control_points) < 2:
            raise PlanError("The spinal axis needs at least two points.", "Add control points to the axis curve.")
        self.implant.validate()
        self.screws.validate()

    def validate_safety_options(self) -> None:
        """The keep-out options alone (the CLI checks them before reading the CT)."""
        if not 0.0 <= float(self.keep_out_clearance_mm) <= 20.0:
            raise PlanError(f"keep_out_clearance_mm = {self.keep_out_clearance_mm!r} is invalid.",
                            "Set keep_out_clearance_mm (or --clearance) between 0 and 20 mm (default 2).")
        if not set(self.unchecked_endplates) <= {"proximal", "distal"}:
            raise PlanError(f"unchecked_endplates = {self.unchecked_endplates!r} is invalid.",
                            "Leave unchecked_endplates as the planner wrote it, a list of 'proximal' / 'distal'.")
        bad = [r for r in self.accepted_risks if not isinstance(r, str) or ":" not in r and r != "slice_thickness"]
        if bad:
            raise PlanError(f"Accepted risks {bad} are not finding ids.",
                            "Use the ids the planner lists, e.g. 'clearance:aorta' or 'screw:proximal left'.")

    def to_dict(self) -> dict:
        return {
            "schema": "PatientImplantPlanner.plan",
            "schema_version": SCHEMA_VERSION,
            "software_version": __version__,
            "case_id": self.case_id,
            "proximal_level": self.proximal_level,
            "distal_level": self.distal_level,
            "proximal_point_ras": _floats(self.proximal_point_ras),
            "distal_point_ras": _floats(self.distal_point_ras),
            "segmentation": self.segmentation.as_dict(),
            "implant": self.implant.as_dict(),
            "screws": self.screws.as_dict(),
            "variants_mm": [float(v) for v in self.variants_mm],
            "placement": self.placement,
            "placement_angle_deg": None if self.placement_angle_deg is None else float(self.placement_angle_deg),
            "anterior_clearance_mm": float(self.anterior_clearance_mm),
            "keep_out_clearance_mm": float(self.keep_out_clearance_mm),
            "keep_out_structures": None if self.keep_out_structures is None else list(self.keep_out_structures),
            "accepted_risks": list(self.accepted_risks),
            "unchecked_endplates": list(self.unchecked_endplates),
            "kind": self.kind,
            "mirror_defect": dict(self.mirror_defect),
            "axis_control_points": None
            if self.axis_control_points is None
            else [_floats(p) for p in self.axis_control_points],
            "proximal_endplate": self.proximal_endplate,
            "distal_endplate": self.distal_endplate,
            "trajectories": self.trajectories,
            "outputs": self.outputs,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        validate_plan_dict(d, cls)  # every key and type, at every level (planschema.py)
        if d.get("schema") not in (None, "PatientImplantPlanner.plan"):
            raise PlanError(f"Not a plan file (schema {d.get('schema')!r}).", "Give a PatientImplantPlanner plan JSON.")
        if int(d.get("schema_version", SCHEMA_VERSION)) > SCHEMA_VERSION:
            raise PlanError(
                f"The plan uses schema version {d['schema_version']}, newer than this software supports "
                f"({SCHEMA_VERSION}).",
                "Update PatientImplantPlanner.",
            )
        known = {
            "case_id", "proximal_level", "distal_level", "proximal_point_ras", "distal_point_ras", "variants_mm",
            "axis_control_points", "proximal_endplate", "distal_endplate", "trajectories", "outputs",
            "placement", "anterior_clearance_mm", "placement_angle_deg", "keep_out_clearance_mm",
            "keep_out_structures", "accepted_risks", "unchecked_endplates", "kind", "mirror_defect",
        }
        kwargs = {k: d[k] for k in known if k in d and d[k] is not None}
        for key in ("proximal_level", "distal_level"):  # "t6", "vertebrae_T6" -> "T6" (a trial's "t6" was refused)
            if isinstance(kwargs.get(key), str) and vertebra_name(kwargs[key]):
                kwargs[key] = vertebra_name(kwargs[key])
        if "segmentation" in d:
            kwargs["segmentation"] = BoneSegmentationParameters.from_dict(d["segmentation"])
        if "implant" in d:
            kwargs["implant"] = ImplantParameters.from_dict(d["implant"])
        if "screws" in d:
            kwargs["screws"] = ScrewParameters.from_dict(d["screws"])
        return cls(**kwargs)

    def save(self, path: str, overwrite: bool = False) -> None:
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"), overwrite=overwrite)

    @classmethod
    def load(cls, path: str) -> "Plan":
        if not os.path.isfile(path):
            raise InputFileError(f"Plan file not found: {path}.", "Check the path.")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"Plan file {path} is not valid JSON ({exc}).", "Fix or re-save the plan.") from exc
        return cls.from_dict(data)


@dataclass
class PlanResult:
    plan: Plan
    axis_points: np.ndarray
    axis_control_points: np.ndarray
    proximal_endplate: Endplate
    distal_endplate: Endplate
    nominal: object  # implant.ImplantGeometry
    variants: dict  # {extra_mm: ImplantGeometry}
    trajectories: list  # [screws.Trajectory]
    screws: list  # [screws.ScrewPlan]
    measurements: dict
    warnings: list
    levels: object = None  # levels.LevelsResult when detected
    seconds: dict = field(default_factory=dict)
    implant_parameters: object = None  # the ImplantParameters built (placement applied)
    blocking: list = field(default_factory=list)  # [(id, message)] safety findings not accepted: export refuses
    keep_out: object = None  # keepout.KeepOut the plan was checked against (for the record's pictures)
    fe: Optional[dict] = None  # {size label: fe figures} when the finite-element check ran (fe.PlanFE.manifest())
    fe_analysis: object = None  # the fe.PlanFE behind them (its stress fields make the record's picture)


def _strut_interference_mm3(implant_mesh, proximal: Endplate, distal: Endplate, bone_mask, ijk_to_ras, keep_mm):
    """Volume of bone inside the implant, outside the footplate zones (contact + ``keep_mm`` from each endplate)."""
    # Only the part of the implant between the two footplate zones counts.
    core = to_manifold(implant_mesh)
    for ep in (proximal, distal):
        n = ep.normal  # points into the gap: keep the side beyond keep_mm from the endplate
        core = core.trim_by_plane(list(map(float, n)), float(np.dot(n, ep.centre) + keep_mm))
    if core.is_empty():
        return 0.0
    # Bone surface of the region around the implant only (building the bone solid is the expensive part).
    lo, hi = np.array(core.bounding_box()[:3]) - 3.0, np.array(core.bounding_box()[3:]) + 3.0
    inv = np.linalg.inv(ijk_to_ras)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = corners @ inv[:3, :3].T + inv[:3, 3]
    i0 = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, None)
    i1 = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(np.shape(bone_mask)[::-1]))
    box = (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))
    sub = bone_mask[box] if not callable(bone_mask) else bone_mask(box)
    if not sub.any():
        return 0.0
    shift = np.eye(4)
    shift[:3, 3] = i0
    bone = to_manifold(mask_surface(sub, ijk_to_ras @ shift, oversample=1))
    return float((core ^ bone).volume())


class _AllBone:
    """Every bone voxel of the CT in a box, for the interference check: the segment plus the voxels at or above the
    bone threshold with their enclosed cancellous interior (filled slice by slice), so an intact vertebra the seeds
    never reached counts too; less the keep-out structures (contrast blood is as bright as bone)."""

    shape = property(lambda self: self.mask.shape)

    def __init__(self, ct_array, bone_mask, threshold_hu: float, keep_out=None):
        self.ct, self.mask, self.threshold, self.keep_out = ct_array, bone_mask, threshold_hu, keep_out

    def __call__(self, box, pad: int = 40):
        from scipy import ndimage

        # Fill in a wider box: the cortical ring around the implant's box must be whole to enclose its interior.
        wide = tuple(slice(max(b.start - pad, 0), min(b.stop + pad, n)) for b, n in zip(box, self.mask.shape))
        bone = np.asarray(self.mask[wide], dtype=bool) | (np.asarray(self.ct[wide]) >= self.threshold)
        in_slice = np.zeros((3, 3, 3), dtype=bool)
        in_slice[1] = ndimage.generate_binary_structure(2, 1)
        bone = ndimage.binary_fill_holes(bone, structure=in_slice)
        bone = bone[tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))]
        return _less_keep_out(bone, np.array([b.start for b in box]), self.keep_out)


def _less_keep_out(mask, lo, keep_out):
    """``mask`` (a crop at origin ``lo`` (k, j, i) of the CT grid) without the keep-out structures' voxels."""
    for s in (keep_out.structures if keep_out is not None else ()):
        a = np.maximum(s.offset, lo)
        b = np.minimum(s.offset + np.array(s.mask.shape), np.asarray(lo) + np.array(mask.shape))
        if np.any(b <= a):
            continue
        mask[tuple(slice(x - y, z - y) for x, y, z in zip(a, lo, b))] &= ~s.mask[
            tuple(slice(x - o, z - o) for x, o, z in zip(a, s.offset, b))]
    return mask


def _docking_masks(levels, shape, keep_out=None) -> dict:
    """{end: full-size bool mask of the docking vertebra} from the level detection, or {} without it; less the
    keep-out structures, so a screw stops its safety margin short of them too. Found from the CT on thick slices a
    docking body is a prism along the face's axis, which reaches into the canal behind a tilted or misplaced face: 2.9 %
    of T12's on the chest CT's 1 mm copy (T10 -> T12, a doubted face) was the labelled cord."""
    out = {}
    for end, (crop, lo) in (getattr(levels, "docking", None) or {}).items():
        full = np.zeros(shape, dtype=bool)
        box = tuple(slice(int(a), int(a) + n) for a, n in zip(lo, crop.shape))
        full[box] = _less_keep_out(np.array(crop, dtype=bool), np.asarray(lo, dtype=int), keep_out)
        out[end] = full
    return out


def _blocked_drill_lines(trajectories, access, screw_params: ScrewParameters) -> list:
    """[(screw name, the implant part in its way, margin mm)] of user-given trajectories whose drill and driver line
    (access.DRIVER_REACH_MM outward along the screw axis) runs into the implant."""
    if access is None:
        return []
    radius = access_radius_mm(screw_type(screw_params.screw_type))
    out = []
    for tr in trajectories:
        margin, part = access.margin(tr.end, tr.entry, tr.direction, radius)
        if margin < 0:
            out.append((tr.name, part, margin))
    return out


def _drill_lines_through_bone(trajectories, all_bone, ijk_to_ras, start_mm: float = 1.0) -> dict:
    """{screw name: mm of bone (all bone of the CT, as the interference check sees it) along the line the drill and
    driver come in along: DRIVER_REACH_MM outward from ``start_mm`` past the screw head}. The layout only keeps that
    line clear of the implant; an intact body beside the gap (a strut placed against the bodies) can lie across it."""
    if not trajectories:
        return {}
    step = 0.5
    s = np.arange(start_mm, DRIVER_REACH_MM + 1e-9, step)
    lines = np.stack([tr.entry[None, :] - s[:, None] * tr.direction[None, :] for tr in trajectories])
    inv = np.linalg.inv(ijk_to_ras)
    ijk = np.rint(lines.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    shape = np.array(all_bone.shape[::-1])
    inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
    if not inside.any():
        return {tr.name: 0.0 for tr in trajectories}
    lo, hi = ijk[inside].min(axis=0), ijk[inside].max(axis=0) + 1
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    bone = all_bone(box)
    hit = np.zeros(len(ijk), dtype=bool)
    k = ijk[inside] - lo
    hit[inside] = bone[k[:, 2], k[:, 1], k[:, 0]]
    hit = hit.reshape(len(trajectories), len(s))
    return {tr.name: float(h.sum() * step) for tr, h in zip(trajectories, hit)}


def _cervical(plan: Plan) -> bool:
    """Both docking levels cervical: the plan lies above the aortic arch and the heart."""
    return all(str(n).upper().startswith("C") for n in (plan.proximal_level, plan.distal_level))


def _screw_warnings(screw_plans) -> list:
    """Each screw's warnings, named; the low-density one (usually every screw of an osteoporotic spine) once for
    all the screws it concerns, so it does not bury the others."""
    out, weak = [], []
    for sp in screw_plans:
        for w in sp.warnings:
            if "osteoporotic range" in w:
                weak.append(f"{sp.trajectory.name} {w.split(' %', 1)[0]} %")
            else:
                out.append(f"{sp.trajectory.name}: {w}")
    if weak:
        out.append(f"{len(weak)} screw(s) lie mostly in bone below {LOW_DENSITY_HU:g} HU (osteoporotic range; share "
                   f"of each screw's length in bone: {', '.join(weak)}): expect weak purchase.")
    return out


def design_implant(plan: Plan, ct_array, ijk_to_ras, bone_mask, progress=None, label_map=None, label_values=None,
                   keep_out=None):
    """Levels -> axis -> endplates -> placement -> screws -> nominal implant -> variants -> measurements and
    safety (no scene access). ``keep_out`` (keepout.KeepOut) is the anatomy to stay clear of."""
    require_axial_storage(ijk_to_ras)
    try:
        return _design_implant(plan, ct_array, ijk_to_ras, bone_mask, progress, label_map, label_values, keep_out)
    except PlanError as exc:
        # Adjacent docking levels leave only the disc: whatever refused the plan (no drill access, no room for a
        # screw, a gap too short), the fix that makes it a strut plan is docking one level further.
        names = (plan.proximal_level, plan.distal_level)
        adjacent = all(n in SPINE_ORDER for n in names) and abs(
            SPINE_ORDER.index(names[0]) - SPINE_ORDER.index(names[1])) == 1
        fix = exc.fix
        if adjacent and "dock one level further" not in fix:
            fix += (f" {names[0]} and {names[1]} are adjacent (only their disc between them): dock one level further "
                    "(proximal_level / distal_level); a strut replaces at least one vertebral body.")
        noisy = noisy_ct_note(ct_array)  # a noisy CT is often the real cause (RIDER lung CT: every plan refused)
        fix += f" {noisy}" if noisy and noisy not in fix else ""
        if fix == exc.fix:
            raise
        raise PlanError(exc.problem, fix) from exc


def _axis_outside_segment(levels, bone_mask, ijk_to_ras, reach_mm: float = 3.0, run_mm: float = 12.0) -> str:
    """A warning when the spinal axis between the docking faces runs outside the bone segment for more than
    ``run_mm`` ("" otherwise; a disc, at most 12 mm tall, less ``reach_mm`` on either side, stays under it): the bone
    model and the plastic check model are made from the segment. Seeds in the two docking bodies alone (the CLI's
    default) keep only the bone connected to them: on thin slices with dark discs the bodies between are left out
    (RIDER chest CT smoothed in plane, T5 -> T8: T6 and T7, 45 mm of the axis)."""
    if bone_mask is None or levels is None or len(levels.axis_points) < 2:
        return ""
    pts = np.asarray(levels.axis_points, float)
    prox, dist = levels.proximal_endplate, levels.distal_endplate
    between = ((pts - prox.centre) @ prox.normal > reach_mm) & ((pts - dist.centre) @ dist.normal > reach_mm)
    if between.sum() < 2:
        return ""
    grid_m = np.asarray(ijk_to_ras, float)
    inv = np.linalg.inv(grid_m)
    kji = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int)[:, ::-1]
    reach = np.ceil(reach_mm / np.linalg.norm(grid_m[:3, :3], axis=0)[::-1]).astype(int)
    shape = np.array(np.shape(bone_mask))
    pad = np.ceil(30.0 / np.linalg.norm(grid_m[:3, :3], axis=0)[::-1]).astype(int)  # a body's radius and more
    lo = np.clip(kji[between].min(axis=0) - pad, 0, shape)
    hi = np.clip(kji[between].max(axis=0) + pad + 1, 0, shape)
    # Filled slice by slice: an osteopenic body's segment may be its shell, with the axis in its hollow.
    crop = filled_in_slices(bone_mask[tuple(slice(a, b) for a, b in zip(lo, hi))])
    held = np.ones(len(pts), dtype=bool)
    for i in np.flatnonzero(between):
        c = kji[i] - lo
        held[i] = bool(crop[tuple(slice(max(x - r, 0), x + r + 1) for x, r in zip(c, reach))].any())
    step = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    run, longest, first, span = 0.0, 0.0, 0, (0, 0)
    for i in range(1, len(pts)):
        if between[i] and not held[i]:
            first = i if run == 0.0 else first
            run += step[i - 1]
            if run > longest:
                longest, span = run, (first, i)
        else:
            run = 0.0
    if longest <= run_mm:
        return ""
    a, b = (", ".join(f"{v:.1f}" for v in pts[k]) for k in span)
    return (f"The bone segment does not reach the spinal axis between the docking levels along {longest:.0f} mm (from "
            f"RAS ({a}) to RAS ({b})): the bone model and the plastic check model will show no vertebra there. If "
            "vertebral bodies lie there, add a seed in each (Seeds under Segmentation, or segmentation.seeds_ras in "
            "the plan) and segment again.")


def _labelled_cord(keep_out):
    """(crop, origin) of the spinal cord when the keep-out set has it from labels (not the CT's bony-ring estimate)."""
    for s in keep_out.structures if keep_out is not None else ():
        if s.name == "spinal_cord" and s.source == "labels":
            return s.mask, s.offset
    return None


def _design_implant(plan: Plan, ct_array, ijk_to_ras, bone_mask, progress, label_map, label_values, keep_out):
    plan.validate()
    prog = Progress(progress)
    seconds = {}
    warnings = []
    t0 = time.perf_counter()
    levels = None
    need_detection = (
        plan.axis_control_points is None or plan.proximal_endplate is None or plan.distal_endplate is None
    )
    if need_detection:
        prog.report(0.0, "Detecting vertebrae, axis and endplates")
        if plan.proximal_point_ras is None or plan.distal_point_ras is None:
            raise PlanError(
                "Detection needs a point in each healthy vertebra.", "Place the proximal and distal points."
            )
        levels = detect_levels(
            bone_mask,
            ijk_to_ras,
            plan.proximal_point_ras,
            plan.distal_point_ras,
            proximal_name=plan.proximal_level,
            distal_name=plan.distal_level,
            label_map=label_map,
            label_values=label_values,
            ct_array=ct_array,
            cord=_labelled_cord(keep_out),
        )
        warnings.extend(levels.warnings)
        warnings.extend(n for n in (noisy_ct_note(ct_array),) if n)
        warnings.extend(n for n in (_axis_outside_segment(levels, bone_mask, ijk_to_ras),) if n)
    # A docking face detected with a doubtful tilt, unless the plan gives that endplate itself (the user's); one
    # detected so before and not moved since (the module's redesign passes it as given) stays doubtful.
    doubtful = {end: msg for end, msg in (levels.doubtful_endplates if levels else {}).items()
                if not getattr(plan, f"{end}_endplate")}
    for end in plan.unchecked_endplates:
        doubtful.setdefault(end, f"The {end} endplate was detected with a doubtful tilt and has not been moved "
                                 "since: check it in the sagittal and coronal views and turn its plane to the bone.")
    plan.unchecked_endplates = sorted(doubtful)
    warnings.extend(doubtful.values())
    control = (
        np.asarray(plan.axis_control_points, dtype=float)
        if plan.axis_control_points is not None
        else np.asarray(levels.axis_control_points, dtype=float)
    )
    axis = smooth_axis(control) if plan.axis_control_points is not None else np.asarray(levels.axis_points)
    proximal = Endplate.from_dict(plan.proximal_endplate) if plan.proximal_endplate else levels.proximal_endplate
    distal = Endplate.from_dict(plan.distal_endplate) if plan.distal_endplate else levels.distal_endplate
    proximal.level = proximal.level or plan.proximal_level
    distal.level = distal.level or plan.distal_level
    check_faces_across_axis(axis, proximal, distal, doubtful)
    seconds["levels"] = time.perf_counter() - t0

    if keep_out is None:
        # No labels: what the CT shows (vessels from the exclude seeds, the airway, the canal) is kept out.

        keep_out = from_ct(np.asarray(ct_array), ijk_to_ras, np.asarray(bone_mask, dtype=bool),
                           plan.segmentation.exclude_seeds_ras, axis_points=axis)
        if "aorta / heart" in keep_out.not_checked and not _cervical(plan):
            # Said where it is seen, not only in the record's table: a plan on the chest CT with vertebra labels
            # alone (no soft tissue in them) touched the aorta (-0.8 mm) with no warning. A cervical plan lies above
            # the aortic arch and the heart.
            warnings.append(
                "The aorta and the heart were not kept out: the plan has no exclude seed in them and no keep-out "
                "labels, so the strut may lie against them. Place exclude points in the aorta and the heart "
                "('Exclude points' under Segmentation, or segmentation.exclude_seeds_ras in the plan) or give "
                "keep-out labels (the keep-out segmentation, or --keep-out: e.g. TotalSegmentator's), and check the "
                "placement on the CT.")
    prog.report(0.2, "Placing the strut clear of the keep-out anatomy")
    t1 = time.perf_counter()
    placement = None
    pattern = {}
    if plan.placement == "axis" and plan.placement_angle_deg is None:
        implant_params = plan.implant
    else:
        placement = place_strut(
            plan.implant, axis, proximal, distal, bone_mask, ijk_to_ras, keep_out=keep_out,
            placement=plan.placement if plan.placement != "axis" else "anterior",
            angle_deg=plan.placement_angle_deg, required_clearance_mm=plan.keep_out_clearance_mm,
            bone_gap_mm=plan.anterior_clearance_mm, largest_variant_mm=max(plan.variants_mm, default=0.0),
            levels=(plan.proximal_level, plan.distal_level))
        implant_params, pattern = placement.parameters, placement.screw_pattern
        warnings.extend(n for n in (placement.note,) if n)
    # Footplates thinned for a disc-only gap, grown (clear of the keep-out anatomy) until the screws fit.
    implant_params, notes = fit_footplates(implant_params, axis, proximal, distal, plan.screws, pattern,
                                           keep_out=keep_out, required_clearance_mm=plan.keep_out_clearance_mm,
                                           largest_variant_mm=max(plan.variants_mm, default=0.0),
                                           screws_by_hand=plan.trajectories is not None)
    warnings.extend(notes)
    seconds["placement"] = time.perf_counter() - t1

    prog.report(0.3, "Planning screws")
    t1 = time.perf_counter()
    # The drill and driver must reach every screw with the implant in place (design/access.py).
    access = drill_access(axis, proximal, distal, implant_params, max(plan.variants_mm, default=0.0))
    blocked_lines = []
    if plan.trajectories is not None:
        trajectories = [
            Trajectory(t["name"], t["end"], np.asarray(t["entry"], float), np.asarray(t["target"], float))
            for t in plan.trajectories
        ]
        blocked_lines = _blocked_drill_lines(trajectories, access, plan.screws)
    else:
        trajectories = default_trajectories(proximal, distal, implant_params.footplate_thickness_mm, plan.screws,
                                            access=access, **screw_layout_kwargs(implant_params, pattern))
    docking = _docking_masks(levels, np.shape(bone_mask), keep_out)
    if not docking:
        warnings.append("Screw lengths are limited by the bone along each screw only (no detected docking "
                        "vertebrae for user-given endplates): check in the CT that no screw reaches the next disc.")
    screw_plans = plan_screws(trajectories, ct_array, bone_mask, ijk_to_ras, plan.screws, docking_masks=docking)
    warnings.extend(_screw_warnings(screw_plans))
    holes = hole_specs(screw_plans)
    seconds["screws"] = time.perf_counter() - t1

    prog.report(0.5, "Building implant")
    t2 = time.perf_counter()
    nominal = build_implant(axis, proximal, distal, implant_params, holes=holes, doubts=doubtful)
    variants = {}
    for i, extra in enumerate(sorted(plan.variants_mm)):
        prog.report(0.6 + 0.2 * i / max(len(plan.variants_mm), 1), f"Building +{extra:g} mm variant")
        variants[float(extra)] = build_implant(
            axis, proximal, distal, implant_params, holes=holes, extra_length_mm=extra
        )
    seconds["implant_and_variants"] = time.perf_counter() - t2

    prog.report(0.8, "Measuring clearances and interference")
    t3 = time.perf_counter()
    m = measurements(nominal, implant_params, density_g_cm3=TITANIUM_DENSITY_G_CM3)
    all_bone = _AllBone(ct_array, bone_mask, plan.segmentation.threshold_min, keep_out)
    m["interference_mm3"] = _strut_interference_mm3(
        nominal.mesh, proximal, distal, all_bone, ijk_to_ras, keep_mm=implant_params.footplate_thickness_mm + 1.0
    )
    m["drill_line_bone_mm"] = _drill_lines_through_bone(trajectories, all_bone, ijk_to_ras)
    crossing = {k: v for k, v in m["drill_line_bone_mm"].items() if v > DRILL_BONE_MM}
    if crossing:
        worst = max(crossing, key=crossing.get)
        warnings.append(
            f"The drill and driver line of {len(crossing)} screw(s) crosses bone as the CT shows it ({worst}: "
            f"{crossing[worst]:.0f} mm within {DRIVER_REACH_MM:.0f} mm of the screw head): unless that bone is "
            "resected (the vertebral body between the docking levels, in a corpectomy), the drill cannot come in as "
            "planned. Check the approach, or place the screws by hand (edit the screw lines) so the drill comes in "
            "past it."
        )
    m["placement"] = plan.placement
    m["placement_detail"] = placement.as_dict() if placement is not None else {"angle_deg": None, "how": "axis"}
    m["strut_offset_anterior_mm"] = implant_params.offset_anterior_mm
    m["strut_offset_lateral_mm"] = implant_params.offset_lateral_mm
    m["footplate_offset_anterior_mm"] = implant_params.footplate_offset_anterior_mm
    if m["interference_mm3"] > 1.0:
        warnings.append(
            f"The implant intersects {m['interference_mm3']:.0f} mm3 of bone outside the footplates (all bone of "
            "the CT between the docking levels): move the axis, change the placement or increase the strut offset."
        )
    # Clearance of the nominal implant and the largest variant (its distal footplate sits deeper).
    measured = {}
    if keep_out is not None and keep_out.structures:
        shapes = [nominal] + ([variants[max(variants)]] if variants else [])
        for geom in shapes:
            for name, v in keep_out.measure(geom.mesh).items():
                old = measured.get(name)
                c = v["clearance_mm"]
                if old is None or (c is not None and (old["clearance_mm"] is None or c < old["clearance_mm"])):
                    measured[name] = v
    # Thoracic levels: the descending aorta lies against the bodies (lumbar plans keep the warning above).
    side_unseen = (placement is not None and placement.how == "automatic" and keep_out is not None
                   and "aorta / heart" in keep_out.not_checked
                   and any(str(n).upper().startswith("T") for n in (plan.proximal_level, plan.distal_level)))
    m["safety"], blocking = safety_findings(plan, measured, screw_plans, keep_out, blocked_lines, doubtful,
                                            side_unseen, {"proximal": proximal, "distal": distal},
                                            beside_cervical_bodies(placement, (plan.proximal_level, plan.distal_level)))
    m["screws"] = [sp.as_dict() for sp in screw_plans]
    m["variants"] = {
        f"+{k:g} mm": {"length_mm": v.length_mm, "volume_mm3": v.mesh.volume()} for k, v in variants.items()
    }
    seconds["measurements"] = time.perf_counter() - t3
    prog.report(1.0, "Implant designed")
    result = PlanResult(
        plan=plan,
        axis_points=np.asarray(axis),
        axis_control_points=control,
        proximal_endplate=proximal,
        distal_endplate=distal,
        nominal=nominal,
        variants=variants,
        trajectories=trajectories,
        screws=screw_plans,
        measurements=m,
        warnings=warnings,
        levels=levels,
        seconds=seconds,
        implant_parameters=implant_params,
        blocking=blocking,
        keep_out=keep_out,
    )
    return result
