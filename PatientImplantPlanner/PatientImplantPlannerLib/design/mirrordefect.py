"""Mirror-defect implant: fill a one-sided bone resection (e.g. a hemisacrectomy) with the healthy side, mirrored.

Pipeline (numpy, VTK, manifold3d; no MRML; RAS mm; numpy volumes [k, j, i]):
1. Symmetry plane: the bone's surface voxels are registered to their own mirror image. Candidates through the
   centroid normal to each principal axis and to the patient left-right axis are refined by a reflection ICP
   (mirror the points, pair each with its nearest surface point, fit the best improper rigid transform, take its
   reflection plane), trimming the worst-matched 20 % so a tumour or a missing part does not pull the plane.
   The candidate with the smallest residual wins; its residual (RMS distance of the matched 80 %) is reported.
2. Resection: a mask on the CT grid, and/or planes (each removes the side given by ``remove``; several planes
   intersect), and/or an RAS box. Remaining bone = bone outside the resection.
3. Envelope: on a working grid (``grid_mm``) around the resection, fields positive inside are combined by min:
   the mirrored remaining bone (trilinear mask occupancy in mm, exact for planar cuts), the resection region
   (analytic for planes and boxes), and the distance to the remaining bone's surface less the fit clearance. That
   distance is exact (to the contoured remaining-bone mesh) near the bone, so the clearance holds to ~0.01 mm.
   One flying-edges contour gives the envelope; the same grid gives the remaining bone and the defect meshes.
4. Structure: dense skin where the envelope faces soft tissue, dense struts along paths, a porous gyroid body
   (lattice.py's field, wrapped in ``_gyroid_solid``); all one field contoured once. A lattice at 550 um pores
   needs ~10 samples a cell: a hemisacral body is ~10^8 samples, beyond any budget here, so over the budget the
   porous body is exported as a zone (the envelope less the dense parts) for the printer's build preparation to
   fill, with the lattice parameters in the manifest. Rod connector and screw holes are exact manifold booleans.
"""

import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from ..core.errors import GeometryError, OutputExistsError, PlanError
from ..core.mesh import (
    TriMesh,
    check_mesh,
    file_safe,
    from_manifold,
    merge_duplicate_vertices,
    read_stl,
    to_manifold,
    write_stl,
)
from ..export.threemf import read_3mf, write_3mf
from ..parts.defectguides import DefectGuideParameters, defect_drill_guide
from ..record.defectrecord import write_defect_record
from .defectenvelope import DefectResult, _Sampler, build_envelope
from .defectparams import MirrorDefectParameters
from .defectstructure import StructureResult, build_structure

# ---- parameters ----------------------------------------------------------------------------------------------


# ---- symmetry plane -------------------------------------------------------------------------------------------


# ---- resection -------------------------------------------------------------------------------------------------


# ---- the envelope -----------------------------------------------------------------------------------------------


# ---- structure: skin, struts, porous body, rod connector, screw holes -----------------------------------------------


EXAMPLE_BONE_SEED_RAS = (-0.5, 106.0, 221.0)  # in the S1 body of the bundled sample CT


def example_parameters() -> dict:
    """A left hemisacrectomy on the bundled sample CT (3 mm, L5 to the pelvis), as a plan would give it.

    The resected block: left of 5 mm beside the midline, medial of the sacroiliac joint (x = -48), behind the
    pubis (A < 145), above the lower sacrum (S > 140) and below the L5-S1 disc (a horizontal cap at S = 242 and a
    plane along the S1 endplate, tilted 30 degrees). The strut runs from the S1 endplate side down to the ilium,
    the rod seat sits on the implant's posterior face (towards L3), one 6.5 mm screw goes in through the implant's
    posterior face and converges 33 degrees medially into the remaining S1 body (33 mm of it in bone), one runs into
    the ilium; each has a drill guide seated on the implant (a screw drilled from the side would have to pass the
    ilium first, so no guide could reach it). Checked breach-free on this CT with the bone segmented by ``segment_bone``
    from the seed ``EXAMPLE_BONE_SEED_RAS`` in S1, which a plan's segmentation block should give."""
    remove = "positive"
    return {
        "resection_planes": [
            {"origin_ras": [-5.0, 0.0, 0.0], "normal_ras": [-1.0, 0.0, 0.0], "remove": remove},
            {"origin_ras": [-48.0, 0.0, 0.0], "normal_ras": [1.0, 0.0, 0.0], "remove": remove},
            {"origin_ras": [0.0, 145.0, 0.0], "normal_ras": [0.0, -1.0, 0.0], "remove": remove},
            {"origin_ras": [0.0, 0.0, 140.0], "normal_ras": [0.0, 0.0, 1.0], "remove": remove},
            {"origin_ras": [0.0, 0.0, 242.0], "normal_ras": [0.0, 0.0, -1.0], "remove": remove},
            {"origin_ras": [0.0, 120.0, 244.0], "normal_ras": [0.0, -0.5, -0.866], "remove": remove},
        ],
        "grid_mm": 1.0,  # a third of the CT's 3 mm voxel
        "struts": [[[-12.0, 118.0, 236.0], [-44.0, 90.0, 200.0]]],
        "rod": {"point_ras": [-24.0, 57.7, 202.0], "direction_ras": [0.0, 0.3, 1.0]},
        "screws": [{"name": "S1", "entry": [-25.0, 70.0, 215.0], "target": [8.0, 120.0, 220.0]},
                   {"name": "ilium", "end": "distal", "entry": [-42.0, 90.0, 220.0], "target": [-78.2, 120.4, 203.8]}],
        "screw_parameters": {"screw_type": "6.5 cancellous"},
    }


# ---- the whole run: files and a manifest-like summary -----------------------------------------------------------


def _two_bodies(a: TriMesh, b: TriMesh) -> TriMesh:
    """Two closed meshes as one file's bodies (the plastic check model: remaining bone + implant)."""
    return TriMesh(np.vstack([a.vertices, b.vertices]), np.vstack([a.faces, b.faces + len(a.vertices)]))


def _survives_float32(mesh: TriMesh) -> bool:
    """True when the mesh, stored as float32 triangles and welded by exact position as readers do, is still a
    closed manifold (measured: a porous zone on the sample CT left 2 edges shared by four triangles at 0.5 um)."""
    soup = mesh.vertices[mesh.faces].reshape(-1, 3).astype(np.float32).astype(np.float64)
    welded = merge_duplicate_vertices(TriMesh(soup, np.arange(len(soup)).reshape(-1, 3)), None)
    return check_mesh(welded).ok


def _separate_pinches(mesh: TriMesh, step_mm: float) -> TriMesh:
    """Vertices that share a float32 position moved ``step_mm`` towards the centre of their own triangle fan.

    file_safe moves them along their normals; where the surface touches itself along two edges with common ends
    (measured on a porous zone of the sample CT) both copies have nearly the same normal and stay together, while
    their fans lie on different sides, so this pulls them apart (microns: far below any printer's resolution)."""
    v = mesh.vertices.copy()
    _, inverse, counts = np.unique(v.astype(np.float32), axis=0, return_inverse=True, return_counts=True)
    dup = np.flatnonzero(counts[inverse.reshape(-1)] > 1)
    if len(dup) == 0:
        return mesh
    sums = np.zeros_like(v)
    n = np.zeros(len(v))
    np.add.at(sums, mesh.faces.ravel(), np.repeat(v[mesh.faces].mean(axis=1), 3, axis=0))
    np.add.at(n, mesh.faces.ravel(), 1.0)
    d = sums[dup] / np.maximum(n[dup], 1.0)[:, None] - v[dup]
    v[dup] += step_mm * d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return TriMesh(v, mesh.faces)


def _for_file(mesh: TriMesh, min_fraction: float = 0.0, dropped: Optional[list] = None) -> TriMesh:
    """mesh.file_safe, then without the zero-volume slivers its simplification can leave (measured: 2 pieces of
    -2e-6 mm3 on a lattice), which would count as bodies of their own. Implant parts also lose pieces below
    ``min_fraction`` of the largest: separating pinch vertices frees bits that hung on by one point (1.5 mm3 on
    the sample CT), which would print loose; their volume is appended to ``dropped``."""
    # Specks first (measured: a 4e-6 mm3 body sharing an edge with a porous zone, which no separation frees).
    pieces = to_manifold(mesh).decompose()
    if len(pieces) > 1 and min(p.volume() for p in pieces) <= 1e-3:
        kept = [p for p in pieces if p.volume() > 1e-3]
        mesh = from_manifold(kept[0])
        for piece in kept[1:]:
            mesh = _two_bodies(mesh, from_manifold(piece))
    safe = file_safe(mesh)
    for step in (2e-3, 1e-2):
        if _survives_float32(safe):
            break
        safe = _separate_pinches(safe, step)
    pieces = to_manifold(safe).decompose()
    vols = [p.volume() for p in pieces]
    kept = [p for p, v in zip(pieces, vols) if v > max(1e-3, min_fraction * max(vols))]
    if len(kept) == len(pieces):
        return safe
    if dropped is not None:
        dropped.append(sum(v for v in vols if v > 1e-3) - sum(p.volume() for p in kept))
    out = from_manifold(kept[0])
    for piece in kept[1:]:  # disjoint bodies side by side: a boolean union could weld the separated vertices again
        out = _two_bodies(out, from_manifold(piece))
    return out


def remaining_bone_distance(result: DefectResult, ijk_to_ras):
    """points -> mm-scaled signed field of the remaining bone (positive outside), anywhere on the CT: the same
    definition as the remaining bone's mesh (the bone mask's trilinear occupancy, cut analytically by the
    resection), so guides built and checked with it agree with that mesh. It saturates half a CT voxel from the
    surface (enough for clearances and for telling inside from outside)."""
    sampler = _Sampler(ijk_to_ras)
    bone_f = result.bone_mask.astype(np.float32)

    def distance(pts):
        pts = np.atleast_2d(np.asarray(pts, float))
        return -np.minimum(sampler(bone_f, pts), -result.resection.signed(pts))

    return distance


def drill_guides(result: DefectResult, structure: StructureResult, ijk_to_ras, params: MirrorDefectParameters) -> list:
    """[(guides.Guide, figures)] one drill guide per planned screw, seated on the implant (defectguides.py)."""
    if not (params.drill_guides and structure.screws):
        return []
    seat = from_manifold(to_manifold(structure.implant) + to_manifold(result.envelope))  # holes closed, connector on
    gp = params.guide_parameters()
    dp = DefectGuideParameters(pad_radius_mm=params.guide_pad_radius_mm)
    bone = remaining_bone_distance(result, ijk_to_ras)
    reach = float(np.linalg.norm(np.subtract(*result.envelope.bounds()))) + 5.0
    return [defect_drill_guide(seat, bone, p, gp, dp, reach, implant=structure.implant) for p in structure.screws]


PRINTED_ROLES = ("implant", "drill guide")  # one body each; also written as 3MF


def _verify_written(path: str, role: str, mesh: TriMesh, coordinate_system: str) -> object:
    back = read_3mf(path, coordinate_system) if path.endswith(".3mf") else read_stl(path, coordinate_system)
    check = check_mesh(back)
    problems = list(check.problems)
    if role in PRINTED_ROLES and check.n_components != 1:
        problems.append(f"{check.n_components} separate shells (a printed part must be one body)")
    if abs(check.volume_mm3 - mesh.volume()) > 1e-3 * max(abs(mesh.volume()), 1.0):
        problems.append(f"volume {check.volume_mm3:.2f} mm3 read back for {mesh.volume():.2f} written")
    if problems:
        raise GeometryError(f"The written {os.path.basename(path)} failed verification: {'; '.join(problems)}.",
                            "Report this with the plan; nothing was kept.")
    return check


def run_mirror_defect(ct_array, ijk_to_ras, bone_mask, params, out_folder: str, resection_mask=None,
                      coordinate_system: str = "LPS", formats=("stl", "3mf"), record: bool = True,
                      case_id: str = "", ct_description: Optional[dict] = None,
                      segmentation: Optional[dict] = None) -> dict:
    """Plan the mirror-defect implant and its drill guides, and write verified files, ``manifest.json`` and the
    design record (``design_record.html``/``.pdf``, defectrecord.py) to a new folder.

    ``params``: MirrorDefectParameters or its dict. Everything is computed and checked before anything is
    written; the files are written to a temporary sibling folder, each read back and verified, then the folder
    is renamed, so a failure leaves nothing behind and an existing folder with files in it is never touched.
    Every part is written as STL; the printed parts (implant, drill guides) also as 3MF when ``formats`` has
    "3mf". Returns the manifest dict (also written as manifest.json)."""
    import hashlib

    params = params if isinstance(params, MirrorDefectParameters) else MirrorDefectParameters.from_dict(params)
    params.validate()
    bad = [f for f in formats if f not in ("stl", "3mf")]
    if bad or "stl" not in formats:
        raise PlanError(f"Unknown or missing export formats {list(formats)}.", "Use ('stl',) or ('stl', '3mf').")
    out_folder = os.path.abspath(out_folder)
    if os.path.exists(out_folder) and (not os.path.isdir(out_folder) or os.listdir(out_folder)):
        raise OutputExistsError(f"Output folder {out_folder} already exists and is not empty.",
                                "Choose a new folder; nothing existing is overwritten.")
    result = build_envelope(bone_mask, ijk_to_ras, params, resection_mask)
    structure = build_structure(ct_array, ijk_to_ras, result, params)
    guides = drill_guides(result, structure, ijk_to_ras, params)
    # file_safe: float32 STL welding must not merge a lattice's pinch points into non-manifold edges.
    loose: list = []

    def part(mesh):
        return _for_file(mesh, 0.01, loose)

    implant, bone = part(structure.implant), _for_file(result.remaining_bone)
    parts = {"implant": implant, "implant_envelope": part(result.envelope), "defect": _for_file(result.defect),
             "remaining_bone_local": bone, "check_model": _two_bodies(bone, implant)}
    if structure.dense is not None:
        parts["implant_dense"] = part(structure.dense)
    if structure.porous_zone is not None:
        parts["implant_porous_zone"] = part(structure.porous_zone)
    roles = {k: k for k in parts}
    for g, _ in guides:
        parts[g.file_stem] = file_safe(g.mesh)
        roles[g.file_stem] = "drill guide"
    parent = os.path.dirname(out_folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-mirror-defect-", dir=parent)
    try:
        files = []
        for stem, mesh in parts.items():
            role = roles[stem]
            for fmt in ("stl", "3mf") if role in PRINTED_ROLES and "3mf" in formats else ("stl",):
                path = os.path.join(tmp, f"{stem}.{fmt}")
                if fmt == "stl":
                    write_stl(mesh, path, coordinate_system)
                else:
                    write_3mf(mesh, path, f"{case_id or 'mirror defect'} {stem}", coordinate_system)
                check = _verify_written(path, role, mesh, coordinate_system)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                files.append({"file": os.path.basename(path), "role": role, "format": fmt,
                              "material": "PA12" if role == "drill guide" else ("Ti6Al4V ELI" if role in (
                                  "implant", "implant_dense", "implant_porous_zone") else ""),
                              "coordinate_system": coordinate_system.upper(), "units": "mm",
                              "volume_mm3": round(check.volume_mm3, 2), "area_mm2": round(check.area_mm2, 2),
                              "triangles": check.n_triangles, "components": check.n_components, "sha256": digest,
                              "check": check.as_dict()})
        manifest = {
            "kind": "mirror_defect",
            "case_id": case_id,
            "parameters": params.as_dict(),
            "defect": {**result.measurements, "structure": structure.figures},
            "screws": [p.as_dict() for p in structure.screws],
            "drill_guides": [fig for _, fig in guides],
            "oversized_variants": "not applicable: the implant is shaped to the defect",
            "files": files,
            "warnings": result.warnings + structure.warnings + [w for p in structure.screws for w in p.warnings]
            + ([f"{sum(loose):.2f} mm3 of implant bits attached by a single point were left out of the files"]
               if sum(loose) >= 0.01 else []),
        }
        if record:
            manifest["files"] += write_defect_record(manifest, result, structure, guides, tmp, ct_array, ijk_to_ras,
                                                     ct_description=ct_description, segmentation=segmentation)
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
        if os.path.isdir(out_folder):
            os.rmdir(out_folder)  # empty (checked above)
        os.replace(tmp, out_folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
