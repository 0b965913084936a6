"""The design record of an export: one typed record, built in one place, that the report renders.

``SegmentationInfo`` says how the bone segment was made. The Slicer module stores it as JSON in its parameter node
when it segments; the CLI makes it from its own segmentation (or the file it loaded). ``workflow.export_in_scene``,
the path of both, completes it with the bone volume measured on the exported mask. ``build_design_record`` turns a
plan result, that info, the CT description and the export's files into a ``DesignRecord``; ``as_dict()`` is the
one shape report.py reads.
"""

import datetime
import json
from dataclasses import dataclass, field, fields, replace
from typing import Optional

import numpy as np

from ..export.manifest import software_info

# Keys of the CT description in the record (see ctimport.CTInfo).
CT_KEYS = ("path", "dimensions", "spacing", "origin_ras", "hu_range", "slice_thickness", "series_note")


def jsonable(obj):
    """Plain Python values (lists, floats, ints) for JSON and for the report's formatting."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def ct_fields(ct_info) -> dict:
    """The record's CT description from a ctimport.CTInfo."""
    return {k: getattr(ct_info, k) for k in CT_KEYS}


@dataclass
class SegmentationInfo:
    """How the bone segment of a plan was made."""

    parameters: Optional[dict] = None  # BoneSegmentationParameters.as_dict() that made it; None: not known
    volume_ml: Optional[float] = None  # bone volume; export_in_scene measures it on the exported mask
    source: str = ""  # where it came from when not segmented here (a file, a scene node)
    ct_name: str = ""
    warnings: list = field(default_factory=list)

    @classmethod
    def from_segmentation(cls, seg, ct_name: str = "") -> "SegmentationInfo":
        """From a scene.bonesegment.BoneSegmentationResult."""
        return cls(parameters=seg.parameters.as_dict(), volume_ml=seg.volume_mm3 / 1000.0, ct_name=ct_name,
                   warnings=list(seg.warnings))

    def with_volume(self, volume_ml: float) -> "SegmentationInfo":
        return replace(self, volume_ml=float(volume_ml))

    def as_dict(self) -> dict:
        return jsonable({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, d: dict) -> "SegmentationInfo":
        d = dict(d or {})
        # Scenes saved before this type stored {"ct": name, "bone_segmentation": parameters}.
        if "bone_segmentation" in d:
            d.setdefault("parameters", d.pop("bone_segmentation"))
        if "ct" in d:
            d.setdefault("ct_name", d.pop("ct"))
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_json(cls, text: str) -> "SegmentationInfo":
        return cls.from_dict(json.loads(text or "{}"))


@dataclass
class DesignRecord:
    """Everything the design record shows, from one plan's values (see report.REPORT_SECTIONS)."""

    case_id: str
    created: str
    software: dict
    ct: dict  # CT_KEYS
    segmentation: SegmentationInfo
    levels: dict
    implant: dict  # parameters, measurements, material
    screws: list
    variants: list
    lattice: list
    guides: list
    files: list  # manifest entries
    warnings: list
    coordinate_system: str
    fe_check: dict = field(default_factory=dict)  # {"done", "sizes": {label: fe figures}, "summary"} when it ran

    def as_dict(self) -> dict:
        """Plain values (numpy converted), the shape report.py reads."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["segmentation"] = self.segmentation.as_dict()
        return jsonable(d)


def build_design_record(result, segmentation: Optional[SegmentationInfo], ct: Optional[dict], files: list,
                        lattice_rows: list, parts: list, coordinate_system: str, implant_material: str
                        ) -> DesignRecord:
    """The record of an export of plan ``result`` (plan.PlanResult) with its written ``parts`` and file entries.

    Without ``segmentation`` the plan's own segmentation parameters are recorded.
    """
    plan = result.plan
    screws = [
        {
            **sp.as_dict(),
            # The screw table's columns, flat (as_dict nests them under trajectory and screw_type).
            "name": sp.trajectory.name,
            "end": sp.trajectory.end,
            "level": (result.proximal_endplate if sp.trajectory.end == "proximal" else result.distal_endplate).level,
            "screw_type": sp.screw_type.name,
            "diameter_mm": sp.screw_type.diameter_mm,
        }
        for sp in result.screws
    ]
    guides = [
        {
            "name": p.name,
            "role": p.role,
            "end": p.end,
            "size_label": p.size_label,
            "material": p.material,
            "volume_mm3": p.mesh.volume(),
            "min_wall_mm": p.extra.get("min_wall_mm"),
            "fit_clearance_mm": p.extra.get("fit_clearance_mm"),
            "sleeve_clearance_mm": p.extra.get("sleeve_clearance_mm"),
        }
        for p in parts
        if "guide" in p.role
    ]
    return DesignRecord(
        case_id=plan.case_id,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        software=software_info(),
        ct=dict(ct or {}),
        segmentation=segmentation or SegmentationInfo(parameters=plan.segmentation.as_dict()),
        levels={
            "proximal": result.proximal_endplate.level,
            "distal": result.distal_endplate.level,
            "proximal_endplate": result.proximal_endplate.as_dict(),
            "distal_endplate": result.distal_endplate.as_dict(),
        },
        # The parameters the implant was built with: the plan's, with the placement and footplate fitting applied.
        implant={"parameters": (getattr(result, "implant_parameters", None) or plan.implant).as_dict(),
                 "measurements": result.measurements,
                 "material": implant_material},
        screws=screws,
        variants=[
            {"label": f"+{k:g} mm", "extra_mm": k, "length_mm": g.length_mm, "volume_mm3": g.mesh.volume()}
            for k, g in sorted(result.variants.items())
        ],
        lattice=list(lattice_rows),
        guides=guides,
        files=list(files),
        warnings=list(result.warnings),
        coordinate_system=coordinate_system,
        fe_check=fe_check(getattr(result, "fe", None)),
    )


def fe_check(sizes: Optional[dict]) -> dict:
    """The record's finite-element entry from the manifest's per-size figures (fe.PlanFE.manifest())."""
    if not sizes:
        return {}
    worst = min(sizes.items(), key=lambda kv: kv[1]["safety_factor_yield"])
    load = next(iter(sizes.values()))["load_N"]
    return {
        "done": True,
        "sizes": sizes,
        "load_N": load,
        "min_safety_factor_yield": worst[1]["safety_factor_yield"],
        "summary": f"{len(sizes)} sizes at {load:g} N axial load: lowest safety factor against yield "
                   f"{worst[1]['safety_factor_yield']:.2f} ({worst[0]}), peak von Mises "
                   f"{worst[1]['max_von_mises_MPa']:.0f} MPa; porous layer {worst[1]['porous_layer']}.",
    }
