"""Manifests describing written files: what each file is, how it was checked, and its checksum.

One manifest per output folder; the bone export, the plan export and the full bundle all use these entries,
so every file we write can be re-verified later from its manifest alone.
"""

import datetime
import hashlib
import json
import os
import platform
from typing import Optional

from .. import __version__
from ..core.mesh import MeshCheck, atomic_write_bytes


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def software_info() -> dict:
    info = {"name": "PatientImplantPlanner", "version": __version__, "python": platform.python_version()}
    try:
        import vtk

        info["vtk"] = vtk.vtkVersion.GetVTKVersion()
    except ImportError:  # pragma: no cover
        pass
    return info


def mesh_file_entry(
    path: str,
    check: MeshCheck,
    role: str,
    coordinate_system: str,
    material: str = "",
    size_variant: str = "",
    extra: Optional[dict] = None,
) -> dict:
    """Manifest entry for one mesh file, relative to the manifest's folder (filled in by write_manifest).
    ``check`` is of the mesh in RAS (as read back); its bounding box is given in the file's coordinate system."""
    lo, hi = (list(map(float, b)) for b in check.bounds)
    if coordinate_system.upper() == "LPS":  # x and y change sign: their min and max swap
        lo, hi = [-hi[0], -hi[1], lo[2]], [-lo[0], -lo[1], hi[2]]
    entry = {
        "file": os.path.basename(path),
        "role": role,
        "format": "STL (binary)" if path.lower().endswith(".stl") else os.path.splitext(path)[1].lstrip("."),
        "coordinate_system": coordinate_system,
        "units": "mm",
        "material": material,
        "size_variant": size_variant,
        "triangles": check.n_triangles,
        "volume_mm3": round(check.volume_mm3, 3),
        "surface_area_mm2": round(check.area_mm2, 3),
        "bounding_box_mm": [lo, hi],
        "checks": {**check.as_dict(), "bounds_mm": [lo, hi]},  # one coordinate system in the entry
        "sha256": sha256_of(path),
        "bytes": os.path.getsize(path),
    }
    if extra:
        entry.update(extra)
    return entry


def build_manifest(files: list, parameters: dict, kind: str, extra: Optional[dict] = None) -> dict:
    manifest = {
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": software_info(),
        "files": files,
        "parameters": parameters,
    }
    if extra:
        manifest.update(extra)
    return manifest


def write_manifest(path: str, manifest: dict, overwrite: bool = False) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=False, default=_json_default).encode("utf-8")
    atomic_write_bytes(path, data + b"\n", overwrite=overwrite)


def verify_manifest(manifest_path: str) -> list:
    """Re-check every file's checksum; returns a list of problems (empty when all match)."""
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    folder = os.path.dirname(os.path.abspath(manifest_path))
    problems = []
    for entry in manifest.get("files", []):
        p = os.path.join(folder, entry["file"])
        if not os.path.exists(p):
            problems.append(f"{entry['file']}: missing")
        elif sha256_of(p) != entry.get("sha256"):
            problems.append(f"{entry['file']}: checksum differs")
    return problems


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
