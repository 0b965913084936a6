"""The export bundle: every printable part of a plan, verified, with a manifest and the design record.

One new folder per export (``<case>_<date-time>``). Parts: the titanium implant (nominal and each oversized variant)
with its porous bone-contact layers, PA12 docking trial guides (each end, each size), PA12 drill guides, a plastic
check model (spine segment + nominal implant) and the bone model. Each file is written atomically, read back and
verified (watertight, manifold, outward normals, positive volume); the manifest records role, material, size,
coordinate system, units, measurements, check results and sha256 of every file.
"""

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..analysis.fe import render_von_mises
from ..core import mesh as meshlib
from ..core.anatomy import distance_to_polyline
from ..core.errors import GeometryError, OutputExistsError, PlannerError
from ..core.progress import Progress
from ..design.findings import require_accepted
from ..design.implant import STRUT_OVERLAP_MM
from ..parts.guides import GuideParameters, check_docking_room, check_drill_room, guides_for_plan
from ..parts.lattice import LatticeParameters, apply_porous_layers
from ..record.designrecord import DesignRecord, build_design_record
from ..record.designrecord import jsonable as _jsonable
from ..record.render import OUTLINE_IMPLANT_RGB, render_ct_slice_with_outline
from ..record.report import write_report
from ..scene.views import render_plan_view
from .boneexport import bone_model_surface
from .manifest import build_manifest, mesh_file_entry, sha256_of, write_manifest
from .parameters import ExportParameters
from .staging import moved, staged_folder
from .threemf import read_3mf, write_3mf

IMPLANT_MATERIAL = "Ti6Al4V ELI"
GUIDE_MATERIAL = "PA12"
CHECK_MODEL_MATERIAL = "plastic (check model, not implantable)"


@dataclass
class ExportedPart:
    name: str
    role: str
    material: str
    size_label: str
    end: str
    mesh: meshlib.TriMesh  # RAS
    extra: dict = field(default_factory=dict)


@dataclass
class BundleResult:
    folder: str
    manifest_path: str
    files: list  # manifest entries
    parts: list  # [ExportedPart]
    report_html: Optional[str] = None
    report_pdf: Optional[str] = None
    lattice: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


def new_bundle_folder(out_parent: str, case_id: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(out_parent, f"{_safe(case_id)}_{stamp}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)).strip("-") or "case"


def _size_tag(size_label: str) -> str:
    """File-name tag of a size: "nominal", "plus2mm", or e.g. "all-sizes" for a guide shared by every size."""
    if size_label.startswith("+"):
        return "plus" + size_label[1:].replace(" ", "")
    return _safe(size_label.replace(" ", "-"))


def _check_folder(folder: str, overwrite: bool) -> None:
    if os.path.isfile(folder):
        raise OutputExistsError(f"Export folder {folder} is a file.", "Choose a folder path.")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise OutputExistsError(
            f"Export folder {folder} already exists and is not empty.",
            "Export into a new folder (the default makes one per export), or allow overwriting.",
        )


def _spine_segment_mask(bone_mask, ijk_to_ras, result, margin_mm):
    """Bone voxels within ``margin_mm`` beyond the implant ends along the axis (the spine segment to print)."""
    prox, dist = result.proximal_endplate, result.distal_endplate
    k, j, i = np.nonzero(bone_mask)
    pts = np.stack([i, j, k], axis=1) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    keep = (pts - prox.centre) @ (-prox.normal) <= margin_mm  # not further than margin above the proximal end
    keep &= (pts - dist.centre) @ (-dist.normal) <= margin_mm
    out = np.zeros_like(bone_mask, dtype=bool)
    out[k[keep], j[keep], i[keep]] = True
    return out


def _near_axis(mask, ijk_to_ras, result, beyond_implant_mm: float = 20.0):
    """The voxels of ``mask`` within the implant's reach of the spinal axis plus ``beyond_implant_mm``: the spine and
    the implant in the record's 3D picture, not the ribs, sternum and shoulders of a chest CT in front of them."""
    axis = np.asarray(result.axis_points, float)
    if not mask.any() or len(axis) < 2:
        return mask
    axis = axis[np.unique(np.linspace(0, len(axis) - 1, 16).round().astype(int))]  # a few segments: cheap, close

    def distance(points):  # in chunks: points x segments x 3 would take GBs for a chest slab
        return np.concatenate([distance_to_polyline(points[n:n + 100_000], axis)
                               for n in range(0, len(points), 100_000)])

    reach = float(distance(result.nominal.mesh.vertices).max()) + beyond_implant_mm
    k, j, i = np.nonzero(mask)
    pts = np.stack([i, j, k], axis=1) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    far = distance(pts) > reach
    out = mask.copy()
    out[k[far], j[far], i[far]] = False
    return out


def _porous_cut_mm(implant_params, lattice_params, regions) -> Optional[float]:
    """Depth below the contact planes at which every size is the same footplate slab: midway between the porous
    layer (with its overlap into the core) and the top of the strut, which reaches into the footplate from below.
    None when they leave no room (the lattice is then fused to each whole size)."""
    t = float(implant_params.footplate_thickness_mm)
    strut_top = t - min(STRUT_OVERLAP_MM, t / 2.0)
    layer = max(float(r.thickness_mm) for r in regions) + float(lattice_params.overlap_mm)
    return (layer + strut_top) / 2.0 if strut_top - layer >= 0.2 else None


def build_parts(result, bone_mask, ijk_to_ras, lattice_params=None, guide_params=None, params=None, progress=None):
    """All printable parts of a plan as meshes (RAS), verified; no files written. Returns (parts, lattice rows,
    seconds per step). The export takes them one at a time from :func:`iter_parts` instead."""
    lattice_rows, seconds = [], {}
    parts = []
    for part in iter_parts(result, bone_mask, ijk_to_ras, lattice_params, guide_params, params, progress,
                           lattice_rows, seconds):
        meshlib.require_valid(part.mesh, part.name)
        parts.append(part)
    return parts, lattice_rows, seconds


class _Clock:
    """Seconds per step of a generator, without the time its consumer spends between the parts it yields."""

    def __init__(self, seconds: dict):
        self.seconds, self.key, self.t0 = seconds, None, 0.0

    def start(self, key: str) -> None:
        self.stop()
        self.key, self.t0 = key, time.perf_counter()
        self.seconds.setdefault(key, 0.0)

    def stop(self) -> None:
        if self.key is not None:
            self.seconds[self.key] += time.perf_counter() - self.t0
            self.key = None

    def paused(self, part):
        """Yield ``part`` with the clock stopped, then go on with the same step."""
        key = self.key
        self.stop()
        yield part
        self.start(key)


def iter_parts(result, bone_mask, ijk_to_ras, lattice_params=None, guide_params=None, params=None, progress=None,
               lattice_rows=None, seconds=None):
    """The printable parts of a plan one at a time (RAS meshes, made file-safe), so a caller can write and drop each
    before the next is built; ``lattice_rows`` and ``seconds`` (lists / dicts given by the caller) are filled in."""
    params = params or ExportParameters()
    lattice_params = lattice_params or LatticeParameters()
    guide_params = guide_params or GuideParameters()
    prog = Progress(progress)
    lattice_rows = [] if lattice_rows is None else lattice_rows
    clock = _Clock({} if seconds is None else seconds)

    def ready(part):  # file-safe (survives float32 rounding and welding in the file), then handed over
        part.mesh = meshlib.file_safe(part.mesh)
        yield from clock.paused(part)

    sizes = [("nominal", 0.0, result.nominal)]
    if "variants" in params.parts:
        sizes += [(f"+{extra:g} mm", extra, geom) for extra, geom in sorted(result.variants.items())]
    if "implant" in params.parts:
        clock.start("implants_and_lattice")
        # Both ends at once per size; the variants' footplates are the nominal's, moved, so the lattice module
        # makes each end (footplate slab above the cut, fused with its lattice) once and glues it to every size.
        cut = _porous_cut_mm(result.plan.implant, lattice_params, result.nominal.porous_regions)
        for n, (label, extra, geom) in enumerate(sizes):
            solid = geom.mesh
            if "lattice" in params.parts:
                sub = prog.sub(0.45 * n / len(sizes), 0.45 * (n + 1) / len(sizes))
                sub.report(0.0, f"Implant {label}: porous layers")
                solid, rows = apply_porous_layers(geom.mesh, geom.porous_regions, lattice_params, measure=extra == 0,
                                                  progress=sub.report, cut_mm=cut)
                if extra == 0:
                    lattice_rows.extend(_lattice_row(region, lat, lattice_params)
                                        for region, lat in zip(geom.porous_regions, rows))
            yield from ready(ExportedPart(
                f"implant_{_size_tag(label)}", "implant" if extra == 0 else "implant oversized variant",
                IMPLANT_MATERIAL, label, "", solid,
                {"length_mm": round(geom.length_mm, 3), "extra_length_mm": extra},
            ))
    if "docking_guides" in params.parts or "drill_guides" in params.parts:
        clock.start("guides")
        prog.report(0.5, "Guides")
        variants = {k: v for k, v in result.variants.items()} if "variants" in params.parts else {}
        guides = guides_for_plan(
            result.nominal,
            variants,
            result.plan.implant,
            result.trajectories,
            [sp.screw_type.diameter_mm for sp in result.screws],
            result.proximal_endplate.level or "proximal",
            result.distal_endplate.level or "distal",
            guide_params,
        )
        for g in guides:
            wanted = "docking_guides" if g.role.startswith("docking") else "drill_guides"
            if wanted not in params.parts:
                continue
            yield from ready(ExportedPart(
                f"{g.role.replace(' ', '-')}_{g.end}_{_size_tag(g.size_label)}",
                g.role,
                g.material,
                g.size_label,
                g.end,
                g.mesh,
                {
                    "label_text": g.label_text,
                    "min_wall_mm": round(float(g.min_wall_mm), 3),
                    **(
                        {"fit_clearance_mm": guide_params.fit_clearance_mm,
                         "sleeve_clearance_mm": guide_params.sleeve_clearance_mm,
                         "sleeve_lengths_mm": [round(x, 2) for x in g.sleeve_lengths_mm]}
                        if g.role.startswith("drill")
                        else {}
                    ),
                },
            ))
    if "check_model" in params.parts or "bone_model" in params.parts:
        clock.start("check_and_bone_models")
        prog.report(0.7, "Check model")
        # Smoothed like Slicer's default closed surface, pieces below the segmentation's island size left out;
        # decimated before smoothing, in Slicer's order (decimating the smoothed surface left a non-manifold edge).
        island = float(result.plan.segmentation.min_island_mm3)
        if "bone_model" in params.parts:
            bone = bone_model_surface(bone_mask, ijk_to_ras, island, target_triangles=params.bone_model_triangles)
            yield from ready(ExportedPart("bone-model", "bone model", "", "", "", bone))
        if "check_model" in params.parts:
            segment = _spine_segment_mask(bone_mask, ijk_to_ras, result, params.spine_margin_mm)
            spine = bone_model_surface(segment, ijk_to_ras, island, target_triangles=params.check_model_triangles)
            combined = meshlib.to_manifold(spine) + meshlib.to_manifold(result.nominal.mesh)
            yield from ready(ExportedPart("check-model_spine-and-implant", "check model", CHECK_MODEL_MATERIAL,
                                          "nominal", "", meshlib.from_manifold(combined)))
    clock.stop()


def _lattice_row(region, lat, lattice_params) -> dict:
    return {
        "size": "all sizes",
        "end": region.end,
        "kind": lattice_params.kind,
        "target_pore_um": lattice_params.pore_size_um,
        "measured_pore_um": lat.measured_pore_size_um,
        "target_porosity": lattice_params.porosity,
        "measured_porosity": lat.measured_porosity,
        "cell_size_mm": lat.cell_size_mm,
        "layer_mm": region.thickness_mm,
        "layer_volume_mm3": lat.layer_volume_mm3,
        "seconds": lat.seconds,
        "warnings": list(lat.warnings),
    }


def export_bundle(
    result,
    bone_mask,
    ijk_to_ras,
    out_parent: Optional[str] = None,
    folder: Optional[str] = None,
    params: Optional[ExportParameters] = None,
    lattice_params=None,
    guide_params=None,
    ct_array=None,
    ct_description: Optional[dict] = None,
    segmentation_record: Optional[dict] = None,
    overwrite: bool = False,
    progress=None,
    extra_writer=None,
) -> BundleResult:
    """Build, write, verify and describe every part of the plan ``result`` (a plan.PlanResult).

    ``extra_writer(folder) -> [(path, role)]`` writes further files (plan JSON, markups) into the new folder before
    the manifest, so they are listed with their checksums too.
    """
    params = params or ExportParameters()
    params.validate()
    require_accepted(result)  # unaccepted safety findings refuse the export before anything is built
    if "docking_guides" in params.parts:
        check_docking_room([result.nominal, *result.variants.values()])
    if "drill_guides" in params.parts:  # issue 7: drill-guide room refused at design time, not after the lattice

        check_drill_room(result, guide_params)
    if folder is None:
        if out_parent is None:
            raise PlannerError("No export location given.", "Pass out_parent (a new folder is made in it) or folder.")
        folder = new_bundle_folder(out_parent, result.plan.case_id)
    _check_folder(folder, overwrite)
    prog = Progress(progress)
    t_start = time.perf_counter()
    # Built in a temporary folder renamed into place when complete: a failed export leaves nothing half-written.
    final = os.path.abspath(folder)
    lattice_rows, seconds, parts, entries = [], {"write_and_verify": 0.0}, [], []
    with staged_folder(final) as work:
        cs = params.coordinate_system.upper()
        case = _safe(result.plan.case_id)
        # One part at a time: built, written, read back and verified; an oversized implant's mesh (millions of
        # triangles with its lattice) is then released, so at most one of them is held at once.
        for p in iter_parts(result, bone_mask, ijk_to_ras, lattice_params, guide_params, params,
                            prog.sub(0.0, 0.75).report, lattice_rows, seconds):
            t0 = time.perf_counter()
            material_tag = _safe(p.material.split(" ")[0]) if p.material else ""
            stem = "_".join(x for x in (case, p.name, material_tag) if x)
            for fmt in params.formats:
                path = os.path.join(work, f"{stem}.{fmt}")
                entries.append(_write_and_verify(p, path, fmt, cs, overwrite))
            if p.role == "implant oversized variant":
                p.mesh = None  # in its file now; the record needs only the nominal implant and the guides
            parts.append(p)
            seconds["write_and_verify"] += time.perf_counter() - t0
        manifest_path = os.path.join(work, "manifest.json")
        bundle = BundleResult(work, manifest_path, entries, parts, lattice=lattice_rows, seconds=seconds)
        if "report" in params.parts:
            prog.report(0.9, "Design record")
            t0 = time.perf_counter()
            record = design_record(result, entries, lattice_rows, parts, ct_description, segmentation_record, cs)
            bundle.report_html, bundle.report_pdf = _write_report(
                record, result, parts, bone_mask, ijk_to_ras, ct_array, work, overwrite
            )
            for path, role in ((bundle.report_html, "design record (HTML)"),
                               (bundle.report_pdf, "design record (PDF)")):
                entries.append(_plain_entry(path, role))
            seconds["report"] = time.perf_counter() - t0
        if extra_writer is not None:
            for path, role in extra_writer(work):
                entries.append(_plain_entry(path, role))
        manifest = build_manifest(
            entries,
            result.plan.to_dict(),
            kind="implant export bundle",
            extra={
                "case_id": result.plan.case_id,
                "coordinate_system": cs,
                "units": "mm",
                # Points in the measurements and the safety block (screw entries, targets, tips, closest points)
                # are RAS, as Slicer shows them and the plan gives them, whatever the meshes' coordinate_system.
                "measurements_coordinate_system": "RAS",
                "measurements": _jsonable(result.measurements),
                "lattice": lattice_rows,
                "export": params.as_dict(),
                "ct": _jsonable(ct_description or {}),  # which CT (DICOM series and why), grid, slice thickness
                "warnings": list(result.warnings),
                # Clearance and overlap per keep-out structure, findings and what the user accepted.
                "safety": _jsonable(result.measurements.get("safety", {})),
                # Finite-element check per size (fe.py), when it ran.
                **({"fe": _jsonable(result.fe)} if getattr(result, "fe", None) else {}),
            },
        )
        write_manifest(manifest_path, manifest, overwrite=overwrite)
    bundle.folder, bundle.manifest_path = final, os.path.join(final, "manifest.json")
    bundle.report_html = moved(bundle.report_html, work, final)
    bundle.report_pdf = moved(bundle.report_pdf, work, final)
    seconds["total"] = time.perf_counter() - t_start
    prog.report(1.0, f"Exported {len(entries)} files to {final}")
    return bundle


def _write_and_verify(part: ExportedPart, path: str, fmt: str, cs: str, overwrite: bool) -> dict:
    if fmt == "stl":
        meshlib.write_stl(part.mesh, path, cs, overwrite=overwrite)
        back = meshlib.read_stl(path, cs)
    else:
        write_3mf(part.mesh, path, part.name, cs, overwrite=overwrite)
        back = read_3mf(path, cs)
    check = meshlib.check_mesh(back)
    problems = list(check.problems)
    if check.n_degenerate:
        problems.append(f"{check.n_degenerate} degenerate (zero-area) triangles")
    if check.n_components != 1 and ("implant" in part.role or "guide" in part.role):
        problems.append(f"{check.n_components} separate shells (a printed part must be one body)")
    if problems:
        raise GeometryError(f"{os.path.basename(path)} failed verification after writing: {problems}.",
                            "This is a bug: please report it with the plan file.")
    if abs(check.volume_mm3 - part.mesh.volume()) > 1e-3 * max(part.mesh.volume(), 1.0):
        raise GeometryError(f"{os.path.basename(path)}: volume changed on writing.", "Report this bug.")
    extra = {"name": part.name, "end": part.end, **part.extra}
    return mesh_file_entry(path, check, part.role, cs, part.material, part.size_label, extra)


def _plain_entry(path: str, role: str) -> dict:
    return {"file": os.path.basename(path), "role": role, "sha256": sha256_of(path), "bytes": os.path.getsize(path)}


def design_record(result, entries, lattice_rows, parts, ct_description, segmentation, cs) -> DesignRecord:
    """Everything the design record shows, from this plan's values (``segmentation``: a record.SegmentationInfo)."""
    return build_design_record(result, segmentation, ct_description, entries, lattice_rows, parts, cs,
                               IMPLANT_MATERIAL)


KEEP_OUT_COLOURS = [("red", (0.95, 0.2, 0.2)), ("blue", (0.2, 0.45, 1.0)), ("green", (0.2, 0.85, 0.3)),
                    ("orange", (1.0, 0.6, 0.1)), ("purple", (0.8, 0.3, 0.9)), ("teal", (0.1, 0.85, 0.85))]


def _into_mesh(mesh, point, depth_mm: float = 1.0):
    """``point`` on the mesh's surface moved up to ``depth_mm`` along superior-inferior towards the mesh's middle:
    the closest point is often a footplate's rim on its face, and an axial slice through it only grazed the implant
    (the chest CT's T6 -> T8 record showed the canal at the narrowest clearance with no implant outline)."""
    p = np.array(point, dtype=float)
    p[2] += float(np.clip(mesh.bounds().mean(axis=0)[2] - p[2], -depth_mm, depth_mm))
    return p


def _keep_out_slices(result, ct_array, ijk_to_ras, tmp) -> dict:
    """Axial CT slices at each footplate and where the implant comes closest to a keep-out structure, the
    structures tinted (each its own colour, named in the caption) and the implant outlined."""
    ko = getattr(result, "keep_out", None)
    safety = result.measurements.get("safety") or {}
    if ko is None or not ko.structures:
        return {}
    near = [s for s in ko.structures if (safety.get("clearance_mm") or {}).get(s.name) is not None]
    colours = {s.name: KEEP_OUT_COLOURS[i % len(KEEP_OUT_COLOURS)] for i, s in enumerate(near)}
    legend = ", ".join(f"{s.name.replace('_', ' ')} {colours[s.name][0]}" for s in near) or "none near"
    overlays = [(s.mask, s.offset, colours[s.name][1]) for s in near]
    clearance = {k: v for k, v in (safety.get("clearance_mm") or {}).items() if v is not None}
    spots = [("proximal footplate", result.nominal.porous_regions[0].centre),
             ("distal footplate", result.nominal.porous_regions[-1].centre)]
    if clearance:
        name = min(clearance, key=clearance.get)
        spots.append((f"narrowest clearance ({name.replace('_', ' ')} {clearance[name]:.1f} mm)",
                      _into_mesh(result.nominal.mesh, safety["closest_ras"][name])))
    images = {}
    for n, (what, centre) in enumerate(spots):
        path = render_ct_slice_with_outline(ct_array, ijk_to_ras, [(result.nominal.mesh, OUTLINE_IMPLANT_RGB, 1.0)],
                                            os.path.join(tmp, f"ct_axial_{n}.png"), plane="axial",
                                            center_ras=centre, overlays=overlays, margin_mm=30.0)
        images[f"ct_axial_{n}"] = (path, f"Axial CT slice at the {what}: implant outline cyan; keep-out structures "
                                         f"tinted ({legend}); patient's right on the left, anterior up.")
    return images


def _write_report(record, result, parts, bone_mask, ijk_to_ras, ct_array, folder, overwrite):
    import tempfile

    implant = result.nominal.mesh
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        segment = _near_axis(_spine_segment_mask(bone_mask, ijk_to_ras, result, 30.0), ijk_to_ras, result)
        # The bone as the Slicer user sees it (smoothed closed surface), not the voxel staircase of coarse CT.
        island = float(result.plan.segmentation.min_island_mm3)
        spine = bone_model_surface(segment, ijk_to_ras, island, target_triangles=150_000) if segment.any() else None
        images["render_3d"] = render_plan_view(result, spine, os.path.join(tmp, "render_3d.png"))
        if ct_array is not None:
            # Through the strut's middle: a strut placed beside the bodies is missed by planes through the
            # implant's mean point, which the footplates on the endplates pull towards the axis.
            path = np.asarray(result.nominal.strut_path)
            centre = path[len(path) // 2] if len(path) else implant.vertices.mean(axis=0)
            for plane in ("sagittal", "coronal"):
                images[f"ct_{plane}"] = render_ct_slice_with_outline(
                    ct_array, ijk_to_ras, [(implant, OUTLINE_IMPLANT_RGB, 1.0)], os.path.join(tmp, f"ct_{plane}.png"),
                    plane=plane, center_ras=centre,
                )
            images.update(_keep_out_slices(result, ct_array, ijk_to_ras, tmp))
        fe = getattr(result, "fe_analysis", None)
        if fe is not None and "nominal" in fe.sizes:
            nominal = fe.sizes["nominal"]
            images["fe_von_mises"] = (
                render_von_mises(nominal, os.path.join(tmp, "fe_von_mises.png")),
                f"Von Mises stress (MPa) on the nominal implant under {nominal.load_N:g} N axial load (finite-element "
                "check; porous layer left out), from the patient's front-left; blue low, red high.")
        return write_report(record, images, folder, basename="design_record", overwrite=overwrite)
