"""What an export writes: the parts, file formats and coordinate system (the plan's ``outputs`` block). Kept apart from
the bundle writer so the plan schema reads it without importing the export machinery."""

from dataclasses import dataclass
from typing import Optional

from ..core.errors import PlannerError

ALL_PARTS = ("implant", "variants", "lattice", "docking_guides", "drill_guides", "check_model", "bone_model", "report")


@dataclass
class ExportParameters:
    coordinate_system: str = "LPS"  # STL/3MF coordinates; the scene is RAS
    formats: tuple = ("stl",)  # "stl" and/or "3mf"
    parts: tuple = ALL_PARTS
    check_model_triangles: int = 300_000  # decimation target for the bone part of the check model
    bone_model_triangles: Optional[int] = None
    spine_margin_mm: float = 40.0  # how much spine beyond the implant ends goes into the check model

    def validate(self) -> None:
        if self.coordinate_system.upper() not in ("LPS", "RAS"):
            raise PlannerError(f"Unknown coordinate system {self.coordinate_system!r}.", "Use LPS or RAS.")
        bad = [f for f in self.formats if f not in ("stl", "3mf")]
        if bad or not self.formats:
            raise PlannerError(f"Unknown export formats {bad or self.formats}.", "Use 'stl' and/or '3mf'.")
        unknown = [p for p in self.parts if p not in ALL_PARTS]
        if unknown:
            raise PlannerError(f"Unknown parts {unknown}.", f"Choose from {', '.join(ALL_PARTS)}.")

    def as_dict(self) -> dict:
        return {
            "coordinate_system": self.coordinate_system,
            "formats": list(self.formats),
            "parts": list(self.parts),
            "check_model_triangles": self.check_model_triangles,
            "bone_model_triangles": self.bone_model_triangles,
            "spine_margin_mm": self.spine_margin_mm,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ExportParameters":
        d = dict(d or {})
        for key in ("formats", "parts"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)
