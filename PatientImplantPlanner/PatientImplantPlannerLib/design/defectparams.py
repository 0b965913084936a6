"""The mirror-defect implant's parameters (plan JSON ``mirror_defect`` block), checked key by key, and the limits
of the rod connector and the resection."""

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy as np

from ..core.errors import PlanError
from ..parts.defectguides import DefectGuideParameters
from ..parts.guides import GuideParameters
from ..parts.lattice import LatticeParameters
from .screws import ScrewParameters, screw_type

MIN_REMAINING_FRACTION = 0.05  # a resection leaving less than this of the bone "removes everything"


ROD_SEAT_TOLERANCE_MM = 1.0  # the rod seat's base point may lie this far outside the envelope


ROD_SEAT_MAX_DEPTH_MM = 3.0  # ... or this far inside it (a point clicked on the surface model lies on it)


ROD_CLEARANCE_MM = 0.1  # rod channel diameter = rod + 2 x this


SET_SCREW_DIAMETER_MM = 8.0


CONNECTOR_WALL_MM = 3.0


CONNECTOR_LENGTH_MM = 14.0


REMOVE_SIDES = ("positive", "negative")


POROUS_MODES = ("auto", "lattice", "zone")


def _vec(value, what: str) -> list:
    a = np.asarray(value, dtype=float).reshape(-1) if value is not None else np.zeros(0)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise PlanError(f"{what} must be three finite RAS numbers, got {value!r}.", "Give [R, A, S] in mm.")
    return [float(x) for x in a]


def _unknown(d: dict, known, what: str) -> None:
    extra = sorted(set(d or {}) - set(known))
    if extra:
        raise PlanError(f"Unknown {what} key(s): {', '.join(extra)}.", f"Use only: {', '.join(known)}.")


@dataclass
class MirrorDefectParameters:
    """Everything that defines a mirror-defect implant besides the CT, the bone mask and a painted resection."""

    symmetry_plane: Optional[dict] = None  # {"origin_ras", "normal_ras"}; None: found from the bone
    resection_planes: list = field(default_factory=list)  # [{"origin_ras", "normal_ras", "remove"}], intersected
    resection_roi: Optional[dict] = None  # {"center_ras", "size_mm"}: an RAS-aligned box, full edge lengths
    fit_clearance_mm: float = 0.2  # gap left to the remaining bone so the implant seats (printer dependent)
    margin_mm: float = 0.0  # grows (+) or trims (-) the mirrored shape
    # Next to the remaining bone the mirrored shape is grown by up to this to meet the cut face (the two sides of a
    # real pelvis differ by a CT voxel or more there); 0: the pure mirror image.
    cut_face_fill_mm: float = 3.0
    grid_mm: float = 0.5  # working grid of the envelope
    max_voxels: int = 30_000_000  # working-grid budget; the lattice grid has its own (lattice.max_voxels)
    skin_mm: float = 1.0  # dense skin where the implant faces soft tissue; 0: none
    contact_band_mm: float = 1.0  # surface within clearance + this of the remaining bone faces bone (porous)
    struts: list = field(default_factory=list)  # paths, each a list of RAS points
    strut_diameter_mm: float = 6.0
    rod: Optional[dict] = None  # {"point_ras", "direction_ras"}: rod seat on the implant, rod direction
    rod_diameter_mm: float = 5.5
    screws: list = field(default_factory=list)  # [{"name", "entry", "target", "end"}]
    screw_parameters: dict = field(default_factory=dict)  # screws.ScrewParameters
    lattice: dict = field(default_factory=dict)  # lattice.LatticeParameters
    porous: str = "auto"  # "lattice": gyroid mesh; "zone": porous zone for build preparation; "auto": by budget
    drill_guides: bool = True  # a PA12 drill guide seated on the implant per screw (defectguides.py)
    guides: dict = field(default_factory=dict)  # guides.GuideParameters (clearances, walls, sleeves, drills)
    guide_pad_radius_mm: float = 12.0  # extent of each drill guide's pad around the drill axis

    def validate(self) -> None:
        """PlanError naming the bad value and what to use instead."""

        def rng(name, lo, hi):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or not lo <= v <= hi:
                raise PlanError(f"Mirror-defect parameter {name} = {v!r} is invalid.", f"Use {lo} to {hi}.")

        rng("fit_clearance_mm", 0.0, 2.0)
        rng("margin_mm", -3.0, 3.0)
        rng("cut_face_fill_mm", 0.0, 10.0)
        rng("grid_mm", 0.1, 2.0)
        rng("max_voxels", 1e5, 5e8)
        rng("skin_mm", 0.0, 5.0)
        rng("contact_band_mm", 0.2, 5.0)
        rng("strut_diameter_mm", 2.0, 20.0)
        rng("rod_diameter_mm", 3.0, 8.0)
        if self.porous not in POROUS_MODES:
            raise PlanError(f"Porous mode {self.porous!r} is unknown.", f"Use one of {', '.join(POROUS_MODES)}.")
        if self.symmetry_plane is not None:
            _unknown(self.symmetry_plane, ("origin_ras", "normal_ras"), "symmetry plane")
            _vec(self.symmetry_plane.get("origin_ras"), "Symmetry plane origin")
            _nonzero(self.symmetry_plane.get("normal_ras"), "Symmetry plane normal")
        for n, p in enumerate(self.resection_planes):
            _unknown(p, ("origin_ras", "normal_ras", "remove"), f"resection plane {n + 1}")
            _vec(p.get("origin_ras"), f"Resection plane {n + 1} origin")
            _nonzero(p.get("normal_ras"), f"Resection plane {n + 1} normal")
            if p.get("remove", "positive") not in REMOVE_SIDES:
                raise PlanError(f"Resection plane {n + 1} removes {p.get('remove')!r}.",
                                "Use 'positive' (the side the normal points to) or 'negative'.")
        if self.resection_roi is not None:
            _unknown(self.resection_roi, ("center_ras", "size_mm"), "resection ROI")
            _vec(self.resection_roi.get("center_ras"), "Resection ROI centre")
            if min(_vec(self.resection_roi.get("size_mm"), "Resection ROI size")) <= 0:
                raise PlanError("The resection ROI has a zero or negative size.", "Give three positive lengths (mm).")
        for n, path in enumerate(self.struts):
            pts = np.asarray(path, dtype=float)
            if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2 or not np.all(np.isfinite(pts)):
                raise PlanError(f"Strut path {n + 1} is not a list of at least two RAS points.",
                                "Give each strut as [[R, A, S], [R, A, S], ...].")
        if self.rod is not None:
            _unknown(self.rod, ("point_ras", "direction_ras"), "rod")
            _vec(self.rod.get("point_ras"), "Rod seat point")
            _nonzero(self.rod.get("direction_ras"), "Rod direction")
        for s in self.screws:
            _unknown(s, ("name", "entry", "target", "end"), "screw")
            _vec(s.get("entry"), f"Screw {s.get('name')!r} entry")
            _vec(s.get("target"), f"Screw {s.get('name')!r} target")
        sp = ScrewParameters.from_dict(self.screw_parameters)
        sp.validate()
        self.lattice_parameters().validate()
        if not isinstance(self.drill_guides, bool):
            raise PlanError(f"drill_guides = {self.drill_guides!r} is invalid.", "Use true or false.")
        gp = self.guide_parameters()  # unknown keys and ranges
        if self.drill_guides and self.screws:
            gp.drill_for(screw_type(sp.screw_type).diameter_mm)  # a drill is set for the screws
            DefectGuideParameters(pad_radius_mm=self.guide_pad_radius_mm).validate(gp)

    def guide_parameters(self):
        return GuideParameters.from_dict(dict(self.guides or {}))

    def lattice_parameters(self) -> LatticeParameters:
        _unknown(self.lattice, [f.name for f in fields(LatticeParameters)], "lattice")
        return LatticeParameters.from_dict(self.lattice)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "MirrorDefectParameters":
        _unknown(d, [f.name for f in fields(cls)], "mirror-defect parameter")
        out = cls(**(d or {}))
        out.validate()
        return out


def _nonzero(v, what: str) -> np.ndarray:
    a = np.asarray(_vec(v, what))
    if np.linalg.norm(a) < 1e-9:
        raise PlanError(f"{what} is a zero vector.", "Give a direction, e.g. [1, 0, 0].")
    return a / np.linalg.norm(a)
