"""The design record of a mirror-defect implant (issue 12): its sections, checklist and pictures.

``defect_record(manifest, ...)`` turns a mirror-defect manifest (mirrordefect.run_mirror_defect) into the record
dict the report renders, with ``"kind": "mirror_defect"``; report.write_report sees that kind and builds the
document with ``build_defect_document`` (the sections below) instead of the strut's, reusing the report's shared
sections (CT, segmentation, screws, pictures, manufacturing, files, warnings) and its HTML/PDF writers. Every value
comes from the manifest; a missing one is written "n/a"; checklist statuses follow explicit rules
(``defect_checklist``). Oversized variants do not apply to this kind and the record says so.
"""

import os
from typing import Optional

import numpy as np

from ..export.manifest import sha256_of, software_info
from . import sections as sec
from . import values as val
from .designrecord import jsonable
from .render import (
    BONE_RGB,
    GUIDE_RGB,
    OUTLINE_BONE_RGB,
    OUTLINE_IMPLANT_RGB,
    TITANIUM_RGB,
    render_ct_slice_with_outline,
    render_scene,
)
from .report import write_report

DEFECT_SECTIONS = [
    "Case and input CT",
    "Bone segmentation",
    "Symmetry plane",
    "Resection and defect",
    "Implant design",
    "Porous structure",
    "Screws",
    "Surgical guides",
    "Oversized variants",
    "Risk checklist",
    "Pictures",
    "Manufacturing and labelling",
    "Files and checksums",
    "Warnings",
    "Review and approval",
]
MIN_CUT_FACE_COVERAGE = 0.8  # share of the cut face within clearance + 0.5 mm of the implant (issue 12 acceptance)
MAX_SYMMETRY_RESIDUAL_VOXELS = 1.0  # residual above a CT voxel: the two sides differ more than the scan resolves
MIN_MATCHED = 0.7  # share of mirrored surface points within 2 mm of the surface below which the sides differ widely


class _DefectDoc(sec.Document):
    """The report's document model, numbered by this kind's sections."""

    def section(self, title: str):
        self.blocks.append(("section", DEFECT_SECTIONS.index(title) + 1, title))


def _screw_rows(manifest: dict) -> list:
    out = []
    for s in manifest.get("screws") or []:
        t = s.get("trajectory") or {}
        st = s.get("screw_type") or {}
        out.append({**s, "name": t.get("name"), "end": t.get("end"), "level": "remaining bone",
                    "screw_type": st.get("name"), "diameter_mm": st.get("diameter_mm")})
    return out


def defect_record(manifest: dict, ct_description: Optional[dict] = None, segmentation: Optional[dict] = None,
                  created: Optional[str] = None) -> dict:
    """The record dict (report's shape where the sections are shared) of a mirror-defect manifest."""
    import datetime

    files = [{**f, "checks": f.get("check"), "size_variant": None} for f in manifest.get("files") or []]
    return jsonable({
        "kind": "mirror_defect",
        "case_id": manifest.get("case_id") or "",
        "created": created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": software_info(),
        "ct": dict(ct_description or {}),
        "segmentation": dict(segmentation or {}),
        "parameters": manifest.get("parameters") or {},
        "defect": manifest.get("defect") or {},
        "screws": _screw_rows(manifest),
        "guides": [{**g, "size_label": g.get("size"), "min_wall_mm": g.get("min_wall_mm")}
                   for g in manifest.get("drill_guides") or []],
        "variants": [],
        "oversized_variants": manifest.get("oversized_variants"),
        "files": files,
        "warnings": list(manifest.get("warnings") or []),
        "coordinate_system": (files[0].get("coordinate_system") if files else None),
        "implant": {"material": "Ti6Al4V ELI"},
    })


def defect_checklist(r: dict) -> list:
    """[(item, status, basis)] from the record's values."""
    d = r.get("defect") or {}
    s = d.get("structure") or {}
    rows = []
    st = val._num(val._get(r, "ct", "slice_thickness"))
    if st is None:
        rows.append(("CT resolution", val.TODO, "Slice thickness not recorded."))
    else:
        ok = st <= val.MAX_SLICE_THICKNESS_MM
        rows.append(("CT resolution", val.OK if ok else val.ATTENTION,
                     f"Slice thickness {st:.2f} mm ({'within' if ok else 'above'} {val.MAX_SLICE_THICKNESS_MM} mm)."))
    res = val._num(val._get(d, "symmetry_plane", "residual_mm"))
    spacing = val._get(r, "ct", "spacing")
    voxel = float(np.mean(spacing)) if spacing else None
    if res is None:
        rows.append(("Symmetry of the two sides", val.TODO, "Symmetry residual not recorded."))
    else:
        matched = val._num(val._get(d, "symmetry_plane", "matched_fraction"))
        ok = voxel is not None and res <= MAX_SYMMETRY_RESIDUAL_VOXELS * voxel and (matched or 0.0) >= MIN_MATCHED
        rows.append(("Symmetry of the two sides", val.OK if ok else val.ATTENTION,
                     f"Mirror residual {res:.2f} mm (CT voxel {val.fmt(voxel, 2, 'mm')}); matched share "
                     f"{val._pct(matched)} (at least {100 * MIN_MATCHED:.0f} % expected): check the healthy side is "
                     "normal where it is mirrored."))
    for key, what in (("bone_overlap_mm3", "envelope"), ("implant_bone_overlap_mm3", "finished implant")):
        v = val._num(d.get(key) if key in d else s.get(key))
        if v is None:
            rows.append((f"No interference ({what})", val.TODO, "Overlap with the remaining bone not recorded."))
        else:
            rows.append((f"No interference ({what})", val.OK if v <= val.MAX_INTERFERENCE_MM3 else val.ATTENTION,
                         f"{v:.2f} mm³ inside the remaining bone (limit {val.MAX_INTERFERENCE_MM3:g} mm³)."))
    cov = val._num(d.get("resection_surface_within_tolerance"))
    if cov is None:
        rows.append(("Fit on the cut face", val.TODO, "Cut-face coverage not recorded."))
    else:
        rows.append(("Fit on the cut face", val.OK if cov >= MIN_CUT_FACE_COVERAGE else val.ATTENTION,
                     f"{100 * cov:.0f} % of the cut face within clearance + 0.5 mm of the implant (target "
                     f">= {100 * MIN_CUT_FACE_COVERAGE:.0f} %); largest gap {val.fmt(d.get('max_gap_mm'), 1, 'mm')}."))
    screws = r.get("screws") or []
    if not screws:
        rows.append(("Screw fixation", val.ATTENTION, "No screws planned into the remaining bone."))
    else:
        breach = [x.get("name") for x in screws if x.get("breach")]
        poor = [x.get("name") for x in screws
                if (val._grade_fractions(x.get("grade")).get("lt130") or 0.0) > val.POOR_BONE_FRACTION]
        rows.append(("Screws in bone", val.OK if not breach and not poor else val.ATTENTION,
                     f"{len(screws)} screws; breach: {', '.join(map(str, breach)) or 'none'}; poor bone (> half "
                     f"below 130 HU): {', '.join(map(str, poor)) or 'none'}."))
    guides = r.get("guides") or []
    if screws and len(guides) < len(screws):
        rows.append(("Drill guides", val.ATTENTION, f"{len(guides)} drill guides for {len(screws)} screws."))
    elif guides:
        worst = min(val._num(g.get("contact_area_mm2")) or 0.0 for g in guides)
        rows.append(("Drill guides", val.OK, f"{len(guides)} drill guides, each seated on the implant (smallest seat "
                                            f"{worst:.0f} mm²) and lifted off along its drill axis."))
    mode = s.get("mode")
    lat = s.get("lattice") or {}
    if mode == "lattice":
        por = val._num(s.get("measured_porosity"))
        target = val._num(lat.get("porosity"))
        ok = por is not None and target is not None and por >= target - val.POROSITY_TOLERANCE
        rows.append(("Porous structure", val.OK if ok else val.ATTENTION,
                     f"Measured porosity {val._pct(por)} for {val._pct(target)}."))
    elif mode == "zone":
        rows.append(("Porous structure", val.TODO,
                     f"Porous zone to be filled by the build preparation with the {val.fmt(lat.get('kind'))} lattice "
                     f"({val.fmt(lat.get('pore_size_um'), 0, 'um')} pores, {val._pct(lat.get('porosity'))} porosity); "
                     "check the printer's report."))
    files = r.get("files") or []
    bad = [f.get("file") for f in files if val._get(f, "checks", "ok") is False]
    rows.append(("Files verified", val.OK if files and not bad else val.ATTENTION,
                 f"{len(files)} files read back and checked; failed: {', '.join(map(str, bad)) or 'none'}."))
    rows.append(("Strength", val.TODO, "No finite-element check is run for this kind: argue the strength of the "
                                      "dense struts and connector against the rod system, or test."))
    rows.append(("Oversized variants", "N/A", "Not applicable: the implant is shaped to the defect."))
    return rows


def _section_case(doc, r):
    ct = r.get("ct") or {}
    doc.section("Case and input CT")
    doc.kv([("Case ID", val.fmt(r.get("case_id"))), ("Implant kind", "mirror-defect (healthy side mirrored)"),
            ("Clinical justification", "n/a (to be completed by the responsible surgeon)"),
            ("CT file", val.fmt(ct.get("path"))), ("Dimensions (voxels)", val._dims(ct.get("dimensions"))),
            ("Voxel spacing", val._dims(ct.get("spacing")) + (" mm" if ct.get("spacing") else "")),
            ("Slice thickness", val.fmt(ct.get("slice_thickness"), 2, "mm"))])


def _section_plane(doc, r):
    d = r.get("defect") or {}
    sp = d.get("symmetry_plane") or {}
    doc.section("Symmetry plane")
    doc.kv([("Origin (RAS)", val.fmt(sp.get("origin_ras"), 1, "mm")),
            ("Normal (RAS)", val.fmt(sp.get("normal_ras"), 4)),
            ("Found automatically", val.fmt(sp.get("found_automatically"))),
            ("Symmetry residual", val.fmt(sp.get("residual_mm"), 2, "mm")),
            ("Matched surface share (within 2 mm)", val._pct(sp.get("matched_fraction")))])
    doc.para("The plane is found by registering the bone's surface to its own mirror image (reflection ICP, the "
             "worst-matched 20 % trimmed so the defect does not pull it); the residual is the RMS distance of the "
             "matched 80 %. A user-set plane is measured the same way.")


def _section_defect(doc, r):
    d = r.get("defect") or {}
    p = r.get("parameters") or {}
    doc.section("Resection and defect")
    planes = p.get("resection_planes") or []
    doc.kv([("Resection planes", f"{len(planes)}: " + "; ".join(
                f"{val.fmt(x.get('origin_ras'), 1)} n {val.fmt(x.get('normal_ras'), 3)} removes {x.get('remove')}"
                for x in planes) if planes else "none"),
            ("Resection box", val.fmt(p.get("resection_roi")) if p.get("resection_roi") else "none"),
            ("Defect volume (resected bone)", val.fmt(d.get("defect_volume_mm3"), 0, "mm³")),
            ("Cut face area", val.fmt(d.get("resection_surface_mm2"), 0, "mm²")),
            ("Cut face within clearance + 0.5 mm", val._pct(d.get("resection_surface_within_tolerance"))),
            ("Largest gap to the cut face", val.fmt(d.get("max_gap_mm"), 2, "mm"))])


def _section_implant(doc, r):
    d = r.get("defect") or {}
    s = d.get("structure") or {}
    p = r.get("parameters") or {}
    doc.section("Implant design")
    doc.kv([("Implant volume (pores' envelope)", val.fmt(d.get("implant_volume_mm3"), 0, "mm³")),
            ("Finished implant volume", val.fmt(s.get("implant_volume_mm3"), 0, "mm³")),
            ("Implant / defect volume", val._pct(val._num(d.get("implant_volume_mm3")) / val._num(d.get(
                "defect_volume_mm3")) if val._num(d.get("defect_volume_mm3")) and val._num(d.get(
                    "implant_volume_mm3")) is not None else None)),
            ("Contact area with the remaining bone", val.fmt(d.get("contact_area_mm2"), 0, "mm²")),
            ("Overlap with the remaining bone", val.fmt(d.get("bone_overlap_mm3"), 3, "mm³")),
            ("Fit clearance", val.fmt(p.get("fit_clearance_mm"), 2, "mm")),
            ("Margin (grows + / trims -)", val.fmt(p.get("margin_mm"), 2, "mm")),
            ("Cut-face fill (up to) / volume added", f"{val.fmt(p.get('cut_face_fill_mm'), 1, 'mm')} / "
                                                     f"{val.fmt(d.get('cut_face_fill_mm3'), 0, 'mm³')}"),
            ("Dense skin facing soft tissue", val.fmt(p.get("skin_mm"), 1, "mm")),
            ("Struts", f"{len(p.get('struts') or [])} of {val.fmt(p.get('strut_diameter_mm'), 1, 'mm')}"),
            ("Rod connector", f"{val.fmt(p.get('rod_diameter_mm'), 1, 'mm')} rod seat at "
                              f"{val.fmt(val._get(p, 'rod', 'point_ras'), 1)}" if p.get("rod") else "none"),
            ("Dense volume (skin, struts, connector)", val.fmt(s.get("dense_volume_mm3"), 0, "mm³"))])
    doc.para("The envelope is the healthy side mirrored across the symmetry plane, restricted to the resection, kept "
             "the fit clearance off the remaining bone and grown next to it by up to the cut-face fill so it meets "
             "the cut face where the two sides differ.")


def _section_porous(doc, r):
    s = val._get(r, "defect", "structure", default={}) or {}
    lat = s.get("lattice") or {}
    doc.section("Porous structure")
    doc.kv([("Mode", val.fmt(s.get("mode"))), ("Lattice", val.fmt(lat.get("kind"))),
            ("Pore size (target)", val.fmt(lat.get("pore_size_um"), 0, "um")),
            ("Porosity (target)", val._pct(lat.get("porosity"))),
            ("Porosity (measured)", val._pct(s.get("measured_porosity")) if s.get("mode") == "lattice" else
             "n/a (porous zone: measured on the printer's build file)"),
            ("Cell size", val.fmt(s.get("cell_size_mm"), 3, "mm"))])
    doc.para(f"Reference: pores {val.REFERENCE_PORE_UM[0]:.0f}-{val.REFERENCE_PORE_UM[1]:.0f} um, overall porosity "
             f"{100 * val.REFERENCE_POROSITY:.0f} %.")


def _section_screws(doc, r):
    doc.section("Screws")
    screws = r.get("screws") or []
    if not screws:
        doc.para("No screws planned: n/a.")
        return
    rows = []
    for x in screws:
        length, through = val._num(x.get("length_mm")), val._num(x.get("bone_entry_mm"))
        rows.append([val.fmt(x.get("name")), val.fmt(x.get("screw_type")), val.fmt(length, 1), val.fmt(through, 1),
                     val.fmt(length - through if length is not None and through is not None else None, 1),
                     val._grade_text(x.get("grade")), val.fmt(x.get("breach")),
                     val.fmt(x.get("warnings")) if x.get("warnings") else "none"])
    doc.table(["Screw", "Type", "Length (mm)", "Entry to bone (mm)", "In remaining bone (mm)",
               "HU <130 / 130-250 / >250", "Breach", "Warnings"], rows, [9, 20, 9, 11, 11, 15, 7, 18])
    doc.para("Each screw goes in through the implant (its hole runs back through the whole implant) and is held by the "
             "remaining bone; its length is limited to that bone (far cortex less the safety margin) and a breach "
             "before the tip is refused. The HU grade is over the screw's length in bone.")


def _section_guides(doc, r):
    doc.section("Surgical guides")
    guides = r.get("guides") or []
    if not guides:
        doc.para("No drill guides (no screws planned, or drill guides switched off): n/a.")
        return
    doc.table(["Guide", "Screw", "Material", "Volume (mm³)", "Seat contact (mm²)", "Bore (mm)", "Sleeve top (mm)",
               "Closest bone (mm)", "Fit clear. (mm)"],
              [[val.fmt(g.get("name")), val.fmt(g.get("screw")), val.fmt(g.get("material")),
                val.fmt(g.get("volume_mm3"), 0), val.fmt(g.get("contact_area_mm2"), 0),
                val.fmt(g.get("bore_diameter_mm"), 2), val.fmt(g.get("sleeve_top_above_implant_mm"), 1),
                val.fmt(g.get("closest_bone_mm"), 2), val.fmt(g.get("fit_clearance_mm"), 2)] for g in guides],
              [18, 10, 9, 10, 11, 9, 11, 11, 11])
    doc.para("Each drill guide is a polyamide pad shaped to the implant's surface around the screw hole, with a drill "
             "sleeve on the planned trajectory; nothing of it lies under the implant or the bone along the drill axis, "
             "so it is lifted off along the drill. No docking trial guides: the implant has no footplates.")


def _section_variants(doc, r):
    doc.section("Oversized variants")
    doc.para("Not applicable to this kind: the implant is shaped to the patient's defect (no axial size to absorb); "
             f"manifest: {val.fmt(r.get('oversized_variants'))}.")


def _section_risks(doc, r):
    doc.section("Risk checklist")
    doc.table(["Item", "Status", "Basis"], [list(x) for x in defect_checklist(r)], [22, 12, 66], status_col=1)


def build_defect_document(record: dict, images: dict):
    """The document model of a mirror-defect record (report.write_report renders it)."""
    r = record or {}
    doc = _DefectDoc()
    _section_case(doc, r)
    doc.section("Bone segmentation")
    seg = val._get(r, "segmentation", "parameters", default={}) or {}
    doc.kv([("Threshold", f"{val.fmt(seg.get('threshold_min'), 0)} to {val.fmt(seg.get('threshold_max'), 0)} HU"),
            ("Bone seeds (RAS, mm)", "; ".join(val.fmt(s) for s in seg.get("seeds_ras") or []) or val.NA),
            ("Source", val.fmt(val._get(r, "segmentation", "source")))])
    _section_plane(doc, r)
    _section_defect(doc, r)
    _section_implant(doc, r)
    _section_porous(doc, r)
    _section_screws(doc, r)
    _section_guides(doc, r)
    _section_variants(doc, r)
    _section_risks(doc, r)
    sec._section_pictures(doc, images)
    sec._section_manufacturing(doc, r)
    sec._section_files(doc, r)
    doc.section("Warnings")
    warnings = sec._all_warnings(r)
    doc.bullets(warnings) if warnings else doc.para("None recorded.")
    doc.section("Review and approval")
    doc.para("This record was generated by software from the plan's values. The design must be reviewed by the "
             "responsible engineer and surgeon, and open items in the risk checklist resolved, before manufacturing.")
    doc.table(["Role", "Name", "Date", "Signature"],
              [["Prepared by (engineer)", "", "", ""], ["Reviewed by (surgeon)", "", "", ""],
               ["Approved by", "", "", ""]],
              [28, 28, 18, 26])
    return doc


def defect_pictures(result, structure, guides, ct_array, ijk_to_ras, folder: str) -> dict:
    """{key: (png path, caption)}: 3D views of the remaining bone, implant and guides; CT slices through the defect
    with the implant and the remaining bone outlined."""
    implant = structure.implant
    meshes = [(result.remaining_bone, BONE_RGB, 0.5), (implant, TITANIUM_RGB, 1.0)] + \
        [(g.mesh, GUIDE_RGB, 1.0) for g, _ in guides]
    images = {}
    for view, what in (("posterior-oblique", "the patient's back-left"), ("anterior", "the front")):
        key = f"defect_3d_{view}"
        images[key] = (render_scene(meshes, os.path.join(folder, key + ".png"), view=view),
                       f"Remaining bone (translucent), implant (grey) and drill guides (blue) from {what}, superior "
                       "up.")
    if ct_array is not None:
        centre = implant.vertices.mean(axis=0)
        for plane in ("axial", "coronal"):
            key = f"defect_ct_{plane}"
            images[key] = (render_ct_slice_with_outline(
                ct_array, ijk_to_ras, [(implant, OUTLINE_IMPLANT_RGB, 1.0), (result.remaining_bone, OUTLINE_BONE_RGB,
                                                                              1.0)],
                os.path.join(folder, key + ".png"), plane=plane, center_ras=centre),
                f"{plane.capitalize()} CT slice through the implant centre (bone window): implant outline cyan, "
                "remaining bone yellow; patient's right on the left.")
    return images


def write_defect_record(manifest: dict, result, structure, guides, folder: str, ct_array=None, ijk_to_ras=None,
                        ct_description: Optional[dict] = None, segmentation: Optional[dict] = None) -> list:
    """Render the pictures and write design_record.html/.pdf into ``folder``; returns their manifest entries."""
    import tempfile

    record = defect_record(manifest, ct_description, segmentation)
    with tempfile.TemporaryDirectory() as tmp:
        images = defect_pictures(result, structure, guides, ct_array, ijk_to_ras, tmp)
        paths = write_report(record, images, folder, basename="design_record", build=build_defect_document)
    return [{"file": os.path.basename(p), "role": "design record", "format": p.rsplit(".", 1)[1],
             "sha256": sha256_of(p), "bytes": os.path.getsize(p)} for p in paths]
