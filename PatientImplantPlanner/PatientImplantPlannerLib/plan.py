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

from . import __version__
from .anatomy import Endplate
from .bonesegmentation import BoneSegmentationParameters
from .errors import PlanError
from .implant import ImplantParameters
from .planschema import validate_plan_dict
from .progress import Progress
from .screws import ScrewParameters

SCHEMA_VERSION = 1
MAX_VARIANT_MM = 30.0
PLACEMENTS = ("axis", "anterior")
ANTERIOR_FOOTPLATE_BACK = 0.25  # anterior placement: footplates reach this x AP radius behind the endplate centre
ANTERIOR_SCREW_PATTERN = 0.15  # ... and their screws centre this x AP radius in front of it
TITANIUM_DENSITY_G_CM3 = 4.43  # Ti6Al4V ELI


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
    # "axis": strut along the spinal axis (the defect is resected, e.g. a corpectomy); "anterior": the strut lies
    # in front of the vertebral bodies (offset = body depth + clearance) and the footplates reach back onto the
    # endplates, as the curved plate of published case 2.
    placement: str = "axis"
    anterior_clearance_mm: float = 1.0
    # Overrides from user edits in the scene; None = use what the planner detects.
    axis_control_points: Optional[list] = None
    proximal_endplate: Optional[dict] = None
    distal_endplate: Optional[dict] = None
    trajectories: Optional[list] = None  # [{"name", "end", "entry", "target"}]
    # Printable-output settings (lattice, guides, export), filled by the export step's own parameter classes.
    outputs: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.proximal_endplate is None and self.proximal_point_ras is None:
            raise PlanError(
                "The plan has no proximal vertebra.",
                "Place a point in the last healthy vertebra above the defect (or give an endplate).",
            )
        if self.distal_endplate is None and self.distal_point_ras is None:
            raise PlanError(
                "The plan has no distal vertebra.",
                "Place a point in the first healthy vertebra below the defect (or give an endplate).",
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
        if len(set(self.variants_mm)) != len(self.variants_mm):
            raise PlanError(f"Variant lengths repeat: {self.variants_mm}.", "List each extra length once.")
        if self.axis_control_points is not None and len(self.axis_control_points) < 2:
            raise PlanError("The spinal axis needs at least two points.", "Add control points to the axis curve.")
        self.implant.validate()
        self.screws.validate()

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
            "anterior_clearance_mm": float(self.anterior_clearance_mm),
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
        validate_plan_dict(d)  # every key and type, at every level (planschema.py)
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
            "placement", "anterior_clearance_mm",
        }
        kwargs = {k: d[k] for k in known if k in d and d[k] is not None}
        if "segmentation" in d:
            kwargs["segmentation"] = BoneSegmentationParameters.from_dict(d["segmentation"])
        if "implant" in d:
            kwargs["implant"] = ImplantParameters.from_dict(d["implant"])
        if "screws" in d:
            kwargs["screws"] = ScrewParameters.from_dict(d["screws"])
        return cls(**kwargs)

    def save(self, path: str, overwrite: bool = False) -> None:
        from .mesh import atomic_write_bytes

        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8"), overwrite=overwrite)

    @classmethod
    def load(cls, path: str) -> "Plan":
        from .errors import InputFileError

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


def _strut_interference_mm3(implant_mesh, proximal: Endplate, distal: Endplate, bone_mask, ijk_to_ras, keep_mm):
    """Volume of bone inside the implant, outside the footplate zones (contact + ``keep_mm`` from each endplate)."""
    from .boneexport import mask_surface
    from .mesh import to_manifold

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
    i1 = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(bone_mask.shape[::-1]))
    sub = bone_mask[i0[2] : i1[2], i0[1] : i1[1], i0[0] : i1[0]]
    if not sub.any():
        return 0.0
    shift = np.eye(4)
    shift[:3, 3] = i0
    bone = to_manifold(mask_surface(sub, ijk_to_ras @ shift, oversample=1))
    return float((core ^ bone).volume())


def design_implant(plan: Plan, ct_array, ijk_to_ras, bone_mask, progress=None, label_map=None, label_values=None):
    """Levels -> axis -> endplates -> screws -> nominal implant -> variants -> measurements (no scene access)."""
    from .implant import build_implant, measurements, profile_polygon
    from .levels import detect_levels, smooth_axis
    from .screws import Trajectory, default_trajectories, hole_specs, plan_screws

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
        )
        warnings.extend(levels.warnings)
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
    seconds["levels"] = time.perf_counter() - t0

    implant_params = placed_implant_parameters(plan, proximal, distal, axis, bone_mask, ijk_to_ras)

    prog.report(0.3, "Planning screws")
    t1 = time.perf_counter()
    if plan.trajectories is not None:
        trajectories = [
            Trajectory(t["name"], t["end"], np.asarray(t["entry"], float), np.asarray(t["target"], float))
            for t in plan.trajectories
        ]
    else:
        trajectories = default_trajectories(
            proximal,
            distal,
            implant_params.footplate_thickness_mm,
            plan.screws,
            footplate_fraction=implant_params.footplate_fraction,
            strut_offset_anterior_mm=implant_params.offset_anterior_mm,
            strut_radius_mm=float(np.linalg.norm(profile_polygon(implant_params), axis=1).max()),
            strut_offset_lateral_mm=implant_params.offset_lateral_mm,
            footplate_offset_anterior_mm=implant_params.footplate_offset_anterior_mm,
            # Behind an anterior plate the screws go into the middle of the body, clear of the anterior cortex.
            pattern_offset_anterior_mm=ANTERIOR_SCREW_PATTERN * min(proximal.radius_ap, distal.radius_ap)
            if plan.placement == "anterior"
            else None,
        )
    screw_plans = plan_screws(trajectories, ct_array, bone_mask, ijk_to_ras, plan.screws)
    for sp in screw_plans:
        warnings.extend(f"{sp.trajectory.name}: {w}" for w in sp.warnings)
    holes = hole_specs(screw_plans)
    seconds["screws"] = time.perf_counter() - t1

    prog.report(0.5, "Building implant")
    t2 = time.perf_counter()
    nominal = build_implant(axis, proximal, distal, implant_params, holes=holes)
    variants = {}
    for i, extra in enumerate(sorted(plan.variants_mm)):
        prog.report(0.6 + 0.3 * i / max(len(plan.variants_mm), 1), f"Building +{extra:g} mm variant")
        variants[float(extra)] = build_implant(
            axis, proximal, distal, implant_params, holes=holes, extra_length_mm=extra
        )
    seconds["implant_and_variants"] = time.perf_counter() - t2

    prog.report(0.9, "Measuring")
    t3 = time.perf_counter()
    m = measurements(nominal, implant_params, density_g_cm3=TITANIUM_DENSITY_G_CM3)
    m["interference_mm3"] = _strut_interference_mm3(
        nominal.mesh, proximal, distal, bone_mask, ijk_to_ras, keep_mm=implant_params.footplate_thickness_mm + 1.0
    )
    m["placement"] = plan.placement
    m["strut_offset_anterior_mm"] = implant_params.offset_anterior_mm
    m["footplate_offset_anterior_mm"] = implant_params.footplate_offset_anterior_mm
    if m["interference_mm3"] > 1.0:
        warnings.append(
            f"The implant intersects {m['interference_mm3']:.0f} mm3 of bone outside the footplates: "
            "move the axis or increase the strut offset."
        )
    m["screws"] = [sp.as_dict() for sp in screw_plans]
    m["variants"] = {
        f"+{k:g} mm": {"length_mm": v.length_mm, "volume_mm3": v.mesh.volume()} for k, v in variants.items()
    }
    seconds["measurements"] = time.perf_counter() - t3
    prog.report(1.0, "Implant designed")
    return PlanResult(
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
    )


def placed_implant_parameters(plan: Plan, proximal: Endplate, distal: Endplate, axis=None, bone_mask=None,
                              ijk_to_ras=None) -> ImplantParameters:
    """The implant parameters actually built. For "anterior" placement: the strut lies ``anterior_clearance_mm``
    in front of the bone found in front of the gap (the bodies, discs and osteophytes in the strut's lateral band;
    the endplates' radii if no bone is given), and the footplates reach from the strut's front face back to
    ANTERIOR_FOOTPLATE_BACK x the endplate's AP radius behind the endplate centre."""
    from dataclasses import replace

    from .implant import profile_polygon

    if plan.placement != "anterior":
        return plan.implant
    poly = profile_polygon(plan.implant)
    front, back = float(poly[:, 0].max()), float(-poly[:, 0].min())
    half_width = float(np.abs(poly[:, 1]).max())
    bone_front = max(proximal.radius_ap, distal.radius_ap)
    if bone_mask is not None and axis is not None:
        measured = _bone_front_of_gap(axis, proximal, distal, bone_mask, ijk_to_ras, half_width + 2.0,
                                      plan.implant.footplate_thickness_mm + 1.0)
        if measured is not None:
            bone_front = measured
    offset = bone_front + back + plan.anterior_clearance_mm
    r_ap = min(proximal.radius_ap, distal.radius_ap)
    rear = -ANTERIOR_FOOTPLATE_BACK * r_ap
    semi = (offset + front - rear) / 2.0
    fraction = min(1.0, max(plan.implant.footplate_fraction, semi / r_ap))
    centre = offset + front - fraction * r_ap  # front edge flush with the strut's front face
    return replace(plan.implant, offset_anterior_mm=offset, footplate_offset_anterior_mm=centre,
                   footplate_fraction=fraction)


def _bone_front_of_gap(axis, proximal, distal, bone_mask, ijk_to_ras, half_band, keep_mm):
    """How far bone reaches anteriorly from the axis between the footplate zones, within +-half_band laterally."""
    from scipy.spatial import cKDTree

    from .implant import path_frames

    axis = np.asarray(axis, dtype=float)
    k, j, i = np.nonzero(bone_mask)
    pts = np.stack([i, j, k], axis=1) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    inside = ((pts - proximal.centre) @ proximal.normal > keep_mm) & ((pts - distal.centre) @ distal.normal > keep_mm)
    pts = pts[inside]
    if len(pts) == 0:
        return None
    frames = path_frames(axis, proximal, distal)
    _, nearest = cKDTree(axis).query(pts)
    rel = pts - axis[nearest]
    a = np.einsum("ij,ij->i", rel, frames[nearest, 0])
    lat = np.einsum("ij,ij->i", rel, frames[nearest, 1])
    band = np.abs(lat) <= half_band
    if not band.any():
        return None
    voxel = float(np.linalg.norm(ijk_to_ras[:3, :3], axis=0).max())
    return float(a[band].max()) + voxel / 2.0  # voxel centres: the bone surface is half a voxel further
