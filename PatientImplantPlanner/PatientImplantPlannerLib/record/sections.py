"""The sections of the design record, in order, built into one document model (headings, paragraphs, tables with a
status column, pictures) from the record; report.py draws that model as HTML, pdfreport.py as PDF."""

import math
import os
from typing import Optional

from .checklist import design_considerations, risk_checklist
from .values import (
    ATTENTION,
    FE_LOAD_N,
    GUIDE_CLEARANCE_RANGE_MM,
    NA,
    OK,
    REFERENCE_PORE_UM,
    REFERENCE_POROSITY,
    REFERENCE_ROD_DIAMETER_MM,
    REFERENCE_STIFFNESS_FACTOR,
    TI6AL4V_ELI_MIN_YIELD_MPA,
    _dims,
    _get,
    _grade_text,
    _missing,
    _num,
    _pct,
    _plate_text,
    _pore_text,
    axial_stress_estimate_mpa,
    fmt,
)

REPORT_SECTIONS = [
    "Case and input CT",
    "Bone segmentation",
    "Implant design",
    "Screws",
    "Keep-out anatomy",
    "Oversized variants",
    "Porous bone-contact interface",
    "Surgical guides",
    "Design considerations",
    "Risk checklist",
    "Pictures",
    "Manufacturing and labelling",
    "Files and checksums",
    "Warnings",
    "Review and approval",
]


TITLE = "Design record: patient-specific spinal implant"


class Document:
    """Ordered blocks shared by the HTML and PDF writers."""

    def __init__(self):
        self.blocks = []

    def section(self, title: str):
        self.blocks.append(("section", REPORT_SECTIONS.index(title) + 1, title))

    def sub(self, title: str):
        self.blocks.append(("sub", title))

    def para(self, text: str):
        self.blocks.append(("para", text))

    def bullets(self, items: list):
        self.blocks.append(("bullets", [str(x) for x in items]))

    def kv(self, rows: list):
        self.blocks.append(("table", ["Item", "Value"], [[str(a), str(b)] for a, b in rows], [38, 62], None, ()))

    def table(self, headers: list, rows: list, widths: list, status_col: Optional[int] = None, mono: tuple = ()):
        self.blocks.append(("table", headers, [[str(c) for c in r] for r in rows], widths, status_col, mono))

    def image(self, path: Optional[str], caption: str):
        self.blocks.append(("image", path, caption))


def _section_case(doc: Document, r: dict) -> None:
    ct = r.get("ct") or {}
    doc.section("Case and input CT")
    doc.kv(
        [
            ("Case ID", fmt(r.get("case_id"))),
            ("Clinical indication", fmt(_get(r, "clinical", "indication"))),
            (
                "Clinical justification",
                fmt(_get(r, "clinical", "justification"), unit="")
                if not _missing(_get(r, "clinical", "justification"))
                else "n/a (to be completed by the responsible surgeon: why off-the-shelf hardware is not suitable)",
            ),
            ("Levels", f"{fmt(_get(r, 'levels', 'proximal'))} to {fmt(_get(r, 'levels', 'distal'))}"),
            ("CT file", fmt(ct.get("path"))),
            ("Dimensions (voxels)", _dims(ct.get("dimensions"))),
            ("Voxel spacing", _dims(ct.get("spacing")) + (" mm" if not _missing(ct.get("spacing")) else "")),
            ("Slice thickness", fmt(ct.get("slice_thickness"), 2, "mm")),
            ("Origin (RAS)", fmt(ct.get("origin_ras"), 1, "mm")),
            (
                "HU range",
                f"{fmt(_get(ct, 'hu_range', 0), 0)} to {fmt(_get(ct, 'hu_range', 1), 0)} HU"
                if not _missing(ct.get("hu_range"))
                else NA,
            ),
            ("Series", fmt(ct.get("series_note"))),
        ]
    )


def _section_segmentation(doc: Document, r: dict) -> None:
    p = _get(r, "segmentation", "parameters", default={}) or {}
    doc.section("Bone segmentation")
    seeds = p.get("seeds_ras") or []
    excl = p.get("exclude_seeds_ras") or []
    doc.kv(
        [
            ("Threshold", f"{fmt(p.get('threshold_min'), 0)} to {fmt(p.get('threshold_max'), 0)} HU"),
            ("Bone seeds (RAS, mm)", f"{len(seeds)}: " + "; ".join(fmt(s) for s in seeds) if seeds else NA),
            ("Exclude seeds (RAS, mm)", f"{len(excl)}: " + "; ".join(fmt(s) for s in excl) if excl else "none"),
            ("Fill interior", fmt(p.get("fill_interior"))),
            ("Minimum island", fmt(p.get("min_island_mm3"), 0, "mm³")),
            ("Surface smoothing", fmt(p.get("smoothing_mm"), 2, "mm")),
            ("Segmented bone volume", fmt(_get(r, "segmentation", "volume_ml"), 1, "ml")),
        ]
        # Where a segment not made by this planner came from (its parameters are then unknown).
        + ([("Source", fmt(_get(r, "segmentation", "source")))] if _get(r, "segmentation", "source") else [])
    )
    doc.para(
        "The reference cases segmented bone with an initial threshold of 226 HU (the common 'Bone' preset); "
        "seeds isolate the spine from the CT table and contrast-filled vessels, which a threshold alone cannot."
    )


def _contour_text(p: dict) -> str:
    """The strut's distance from the axis over the gap when placement made it follow the bodies."""
    contour = p.get("offset_contour_mm") or []
    base = math.hypot(p.get("offset_anterior_mm") or 0.0, p.get("offset_lateral_mm") or 0.0)
    if not contour:
        return f"{base:.1f} mm all along"
    d = [float(c[1]) for c in contour]
    return (f"{base + min(d):.1f} to {base + max(d):.1f} mm (proximal footplate {base + d[0]:.1f}, distal "
            f"{base + d[-1]:.1f})")


def _section_implant(doc: Document, r: dict) -> None:
    imp = r.get("implant") or {}
    p = imp.get("parameters") or {}
    m = imp.get("measurements") or {}
    doc.section("Implant design")
    doc.sub("Docking levels")
    lv = r.get("levels") or {}
    doc.table(
        ["End", "Level", "Endplate (RAS)"],
        [
            ["Proximal", fmt(lv.get("proximal")), _plate_text(lv.get("proximal_endplate"))],
            ["Distal", fmt(lv.get("distal")), _plate_text(lv.get("distal_endplate"))],
        ],
        [14, 10, 76],
    )
    doc.sub("Parameters")
    doc.kv(
        [
            ("Material", fmt(imp.get("material"))),
            ("Strut profile", fmt(p.get("profile"))),
            ("Diameter (circle)", fmt(p.get("diameter_mm"), 1, "mm")),
            ("Width x depth", f"{fmt(p.get('width_mm'))} x {fmt(p.get('depth_mm'))} mm"),
            ("Corner radius", fmt(p.get("corner_radius_mm"), 1, "mm")),
            ("Plate curvature radius", fmt(p.get("plate_curvature_radius_mm"), 1, "mm")),
            ("Strut offset from the axis, anterior / lateral (as placed)",
             f"{fmt(m.get('strut_offset_anterior_mm', p.get('offset_anterior_mm')))} / "
             f"{fmt(m.get('strut_offset_lateral_mm', p.get('offset_lateral_mm')))} mm"),
            ("Strut distance from the axis along the gap (follows the bodies)", _contour_text(p)),
            ("Footplate fraction of endplate", fmt(p.get("footplate_fraction"), 2)),
            ("Footplate width fraction (0: as the fraction)", fmt(p.get("footplate_lateral_fraction"), 2)),
            ("Footplate thickness", fmt(p.get("footplate_thickness_mm"), 1, "mm")),
            ("Porous layer depth", fmt(p.get("porous_layer_mm"), 1, "mm")),
        ]
    )
    doc.sub("Measurements")
    i2 = m.get("second_moment_mm4") or {}
    doc.kv(
        [
            ("Length (endplate to endplate)", fmt(m.get("length_mm"), 1, "mm")),
            ("Strut cross-section area", fmt(m.get("cross_section_area_mm2"), 1, "mm²")),
            ("Second moment of area min / max", f"{fmt(i2.get('min'), 0)} / {fmt(i2.get('max'), 0)} mm^4"),
            ("Volume, solid (before the porous layer)", fmt(m.get("volume_mm3"), 0, "mm³")),
            ("Mass, solid", fmt(m.get("mass_g"), 1, "g")),
            ("Volume / mass as printed (nominal file)", _as_printed(r, m)),
            ("Axial stiffness ratio vs 5.5 mm rod", fmt(m.get("axial_stiffness_ratio"), 1)),
            ("Bending stiffness ratio vs 5.5 mm rod", fmt(m.get("bending_stiffness_ratio"), 1)),
            ("Implant volume inside bone", fmt(m.get("interference_mm3"), 2, "mm³")),
            ("Bone crossed by the drill lines (most)",
             fmt(max((m.get("drill_line_bone_mm") or {}).values(), default=None), 0, "mm")),
        ]
    )
    doc.sub("Strength")
    ax, be = _num(m.get("axial_stiffness_ratio")), _num(m.get("bending_stiffness_ratio"))
    if ax is not None and be is not None:
        doc.para(
            f"Compared with a conventional {REFERENCE_ROD_DIAMETER_MM} mm titanium rod of the same material, the "
            f"strut's cross-section is {ax:.1f} times as stiff axially (area ratio) and {be:.1f} times as stiff in "
            f"bending (ratio of the minimum second moments of area). The reference case argued its strut about "
            f"{REFERENCE_STIFFNESS_FACTOR:.0f} times stiffer and stronger than such a rod."
        )
    else:
        doc.para("Stiffness ratios against a 5.5 mm titanium rod: n/a (not computed).")
    stress = axial_stress_estimate_mpa(m.get("cross_section_area_mm2"))
    if stress is not None:
        doc.para(
            f"Estimate (not an FE result): mean axial compressive stress in the strut under {FE_LOAD_N:.0f} N is "
            f"F/A = {FE_LOAD_N:.0f} N / {float(m['cross_section_area_mm2']):.1f} mm² = {stress:.1f} MPa, against a "
            f"minimum yield strength of {TI6AL4V_ELI_MIN_YIELD_MPA:.0f} MPa for Ti6Al4V ELI (ASTM F136). This simple "
            "beam estimate ignores bending from eccentric loading, stress concentrations at screw holes and the "
            "porous layer, and fatigue."
        )
    fe = r.get("fe_check")
    if isinstance(fe, dict) and fe.get("done"):
        if ax is not None:
            doc.para("The ratios above compare cross-sections. The FE below loads the whole implant along the spinal "
                     "axis, against a straight rod loaded along its own: a strut off the axis also bends, so its "
                     "'vs rod' figure can be far lower; it is the figure the checklist uses.")
        doc.para(f"FE check (linear elastic, Ti6Al4V ELI; distal contact face held, load along the spinal axis on "
                 f"the proximal contact face): {fmt(fe.get('summary'))}")
        doc.table(
            ["Size", "Stiffness (N/mm)", "vs rod", "Peak / p99 von Mises (MPa)", "Safety factor (yield)",
             "Strength vs rod", "Tetrahedra"],
            [[label, fmt(v.get("axial_stiffness_N_per_mm"), 0), fmt(v.get("stiffness_ratio_vs_rod"), 3),
              f"{fmt(v.get('max_von_mises_MPa'), 0)} / {fmt(v.get('p99_von_mises_MPa'), 0)}",
              fmt(v.get("safety_factor_yield"), 2), fmt(v.get("strength_ratio_vs_rod"), 2), fmt(v.get("tetrahedra"))]
             for label, v in (fe.get("sizes") or {}).items()],
            [12, 14, 9, 20, 15, 14, 16],
        )
    else:
        doc.para(
            f"An FE check of the final geometry at {FE_LOAD_N:.0f} N axial load, as done in the reference case, is "
            "still required; no FE result is part of this record."
        )


def _section_screws(doc: Document, r: dict) -> None:
    doc.section("Screws")
    screws = r.get("screws") or []
    if not screws:
        doc.para("No screws planned: n/a.")
        return
    rows = [
        [
            fmt(s.get("name")),
            fmt(s.get("end")),
            fmt(s.get("level")),
            fmt(s.get("screw_type")),
            fmt(s.get("diameter_mm"), 1),
            fmt(s.get("length_mm"), 1),
            fmt(s.get("raw_length_mm"), 1),
            _grade_text(s.get("grade")),
            fmt(s.get("breach")),
            fmt(s.get("warnings")) if s.get("warnings") else "none",
        ]
        for s in screws
    ]
    doc.table(
        [
            "Screw",
            "End",
            "Level",
            "Type",
            "Diam. (mm)",
            "Length (mm)",
            "In bone (mm)",
            "HU <130 / 130-250 / >250",
            "Breach",
            "Warnings",
        ],
        rows,
        [9, 8, 6, 13, 7, 7, 7, 15, 7, 21],
    )
    doc.para(
        "Length is the chosen stock length; 'in bone' is the planned trajectory length before rounding to stock. "
        "The HU grade is the share of the screw path in bone below 130 HU, 130-250 HU and above 250 HU."
    )
    tilted = [(s.get("name"), s.get("layout")) for s in screws if s.get("layout")]
    if tilted:  # the drill and the driver come in along the screw axis: say how the layout aimed them
        doc.para("Screw directions chosen so the drill and the driver, coming in along each screw's axis, clear the "
                 "strut and the other footplate: " + "; ".join(
                     f"{fmt(name)}: convergence {fmt(lay.get('convergence_deg'), 1)} deg, skew "
                     f"{fmt(lay.get('skew_deg'), 1)} deg, {fmt(lay.get('outward_mm'), 1)} mm towards the rim"
                     for name, lay in tilted) + ".")


def _section_keep_out(doc: Document, r: dict) -> None:
    doc.section("Keep-out anatomy")
    m = _get(r, "implant", "measurements", default={}) or {}
    safety = m.get("safety") or {}
    placement = m.get("placement_detail") or {}
    if placement.get("angle_deg") is not None:
        doc.para(f"Strut at {fmt(placement.get('angle_deg'))} degrees around the spinal axis (0 anterior, +90 the "
                 f"patient's right; angle {fmt(placement.get('how'))}), lying against the vertebral bodies.")
    if not safety:
        doc.para("No keep-out structures were measured: n/a.")
        return
    ko = safety.get("keep_out") or {}
    rows = []
    for name, c in (safety.get("clearance_mm") or {}).items():
        overlap = (safety.get("overlap_mm3") or {}).get(name) or 0.0
        ok = c is None or c >= (safety.get("required_clearance_mm") or 0.0)
        rows.append([name.replace("_", " "), fmt((ko.get("structures") or {}).get(name)),
                     "> 15" if c is None else fmt(c, 1), fmt(overlap, 0), OK if ok else ATTENTION])
    doc.table(["Structure", "Source", "Clearance (mm)", "Inside implant (mm³)", "Status"], rows, [30, 18, 17, 20, 15],
              status_col=4)
    doc.para(f"Required clearance {fmt(safety.get('required_clearance_mm'))} mm from every structure, measured on "
             "the exported nominal implant and its largest variant (0.5 mm grid, labels by nearest neighbour).")
    not_checked = ko.get("not_checked") or {}
    if not_checked:
        doc.bullets([f"Not checked: {k.replace('_', ' ')} ({v}); confirm its clearance on the CT."
                     for k, v in not_checked.items()])
    findings = safety.get("findings") or []
    if findings:
        doc.bullets([f"{f['id']}: {f['message']} ({'accepted by the user' if f.get('accepted') else 'not accepted'})"
                     for f in findings])


def _section_variants(doc: Document, r: dict) -> None:
    doc.section("Oversized variants")
    m = _get(r, "implant", "measurements", default={}) or {}
    rows = [["nominal", "0.0", fmt(m.get("length_mm"), 1), fmt(m.get("volume_mm3"), 0)]]
    for v in r.get("variants") or []:
        rows.append(
            [fmt(v.get("label")), fmt(v.get("extra_mm"), 1), fmt(v.get("length_mm"), 1), fmt(v.get("volume_mm3"), 0)]
        )
    doc.table(["Variant", "Added length (mm)", "Length (mm)", "Volume (mm³)"], rows, [25, 25, 25, 25])
    doc.para(
        "Variants add length in the axial direction to absorb size differences and posture changes during surgery; "
        "screw holes keep their shape (reference cases: +2 and +4 mm, or +3 mm)."
    )


def _section_lattice(doc: Document, r: dict) -> None:
    doc.section("Porous bone-contact interface")
    doc.kv([("Porous layer depth", fmt(_get(r, "implant", "parameters", "porous_layer_mm"), 1, "mm"))])
    lattice = r.get("lattice") or []
    if lattice:
        doc.table(
            [
                "End",
                "Lattice",
                "Pore target (µm)",
                "Pore measured (µm)",
                "Porosity target",
                "Porosity measured",
                "Cell (mm)",
                "Layer (mm)",
            ],
            [
                [
                    fmt(lat.get("end")),
                    fmt(lat.get("kind")),
                    _pore_text(lat.get("target_pore_um")),
                    fmt(lat.get("measured_pore_um"), 0),
                    _pct(lat.get("target_porosity")),
                    _pct(lat.get("measured_porosity"), 1),
                    fmt(lat.get("cell_size_mm"), 2),
                    fmt(lat.get("layer_mm"), 2),
                ]
                for lat in lattice
            ],
            [11, 15, 12, 13, 12, 13, 12, 12],
        )
    else:
        doc.para("No lattice measurements recorded: n/a.")
    doc.para(
        f"Reference: pores {REFERENCE_PORE_UM[0]:.0f}-{REFERENCE_PORE_UM[1]:.0f} µm and overall porosity "
        f"{100 * REFERENCE_POROSITY:.0f} % at the bone interface, for bone ingrowth."
    )


def _section_guides(doc: Document, r: dict) -> None:
    doc.section("Surgical guides")
    guides = r.get("guides") or []
    if guides:
        doc.table(
            [
                "Guide",
                "Role",
                "End",
                "Size",
                "Material",
                "Volume (mm³)",
                "Min wall (mm)",
                "Fit clear. (mm)",
                "Sleeve clear. (mm)",
            ],
            [
                [
                    fmt(g.get("name")),
                    fmt(g.get("role")),
                    fmt(g.get("end")),
                    fmt(g.get("size_label")),
                    fmt(g.get("material")),
                    fmt(g.get("volume_mm3"), 0),
                    fmt(g.get("min_wall_mm"), 2),
                    fmt(g.get("fit_clearance_mm"), 2),
                    fmt(g.get("sleeve_clearance_mm"), 2),
                ]
                for g in guides
            ],
            [18, 9, 9, 10, 10, 10, 11, 11, 12],
        )
    else:
        doc.para("No guides recorded: n/a.")
    doc.para(
        "Docking trial guides reproduce the implant's ends in polyamide to trial the docking sites; drill guides sit "
        "on the implant and lead the drill along each planned screw trajectory. Fit clearance is printer dependent "
        f"(typically {GUIDE_CLEARANCE_RANGE_MM[0]}-{GUIDE_CLEARANCE_RANGE_MM[1]} mm)."
    )


def _section_considerations(doc: Document, r: dict) -> None:
    doc.section("Design considerations")
    doc.table(["Requirement", "Variables (this plan)", "Justification"], design_considerations(r), [17, 43, 40])


def _section_risks(doc: Document, r: dict) -> None:
    doc.section("Risk checklist")
    doc.table(["Item", "Status", "Basis"], risk_checklist(r), [24, 13, 63], status_col=1)


IMAGE_CAPTIONS = {
    "render_3d": "3D view as Slicer shows the plan: spine (translucent), implant, spinal axis, endplate planes and "
    "screw trajectories, from the patient's front-left (anterior-oblique), superior up.",
    "ct_sagittal": "Sagittal CT slice through the middle of the strut (bone window: level 400, width 1500 HU); implant "
    "outline cyan, bone surface yellow; anterior on the left, superior up.",
    "ct_coronal": "Coronal CT slice through the middle of the strut (bone window: level 400, width 1500 HU); implant "
    "outline cyan, bone surface yellow; patient's right on the left (radiological convention), superior up.",
}


def _section_pictures(doc: Document, images: dict) -> None:
    doc.section("Pictures")
    if not images:
        doc.para("No pictures supplied: n/a.")
    for key, value in (images or {}).items():
        path, caption = (value[0], value[1]) if isinstance(value, (tuple, list)) else (value, None)
        caption = caption or IMAGE_CAPTIONS.get(key, str(key).replace("_", " "))
        doc.image(path if path and os.path.isfile(path) else None, caption)


def _as_printed(r: dict, m: dict) -> str:
    """The nominal implant file's own volume and its mass (the pores taken out), n/a without the file."""
    nominal = [f for f in r.get("files") or [] if f.get("role") == "implant"
               and f.get("size_variant") in ("nominal", "") and not _missing(f.get("volume_mm3"))]
    density = _num(m.get("density_g_cm3"))
    if not nominal or density is None:
        return NA
    v = float(nominal[0]["volume_mm3"])
    return f"{v:.0f} mm³ / {v / 1000.0 * density:.1f} g"


def _section_manufacturing(doc: Document, r: dict) -> None:
    doc.section("Manufacturing and labelling")
    files = r.get("files") or []
    cs = fmt(r.get("coordinate_system"))
    doc.para(
        f"Titanium parts are additively manufactured in {fmt(_get(r, 'implant', 'material'))} from the STL files "
        f"below; guides in polyamide. All files are in millimetres, coordinate system {cs}. Process parameters, "
        "post-processing, cleaning and sterilisation: n/a (to be completed by the manufacturer)."
    )
    if files:
        doc.table(
            ["Label (per part)"],
            [
                [
                    f"Patient-specific, case {fmt(r.get('case_id'))} | {fmt(f.get('role'))}"
                    f"{' | size ' + str(f.get('size_variant')) if not _missing(f.get('size_variant')) else ''} | "
                    f"{fmt(f.get('material'))} | file {fmt(f.get('file'))} | sha256 {str(f.get('sha256') or NA)[:12]}"
                ]
                for f in files
            ],
            [100],
        )


def _section_files(doc: Document, r: dict) -> None:
    doc.section("Files and checksums")
    files = r.get("files") or []
    if not files:
        doc.para("No files recorded: n/a.")
        return
    rows = []
    for f in files:
        checks = f.get("checks") or {}
        ok = checks.get("ok")
        status = (
            "verified"
            if ok is True
            else ("FAILED: " + "; ".join(map(str, checks.get("problems") or [])) if ok is False else NA)
        )
        rows.append(
            [
                fmt(f.get("file")),
                fmt(f.get("role")),
                fmt(f.get("material")),
                fmt(f.get("size_variant")),
                f"{fmt(f.get('coordinate_system'))}, {fmt(f.get('units'))}",
                fmt(f.get("triangles")),
                fmt(f.get("volume_mm3"), 0),
                status,
            ]
        )
    doc.table(
        ["File", "Role", "Material", "Size", "Coords", "Triangles", "Volume (mm³)", "Checks"],
        rows,
        [24, 14, 13, 8, 9, 9, 10, 13],
    )
    doc.table(["File", "SHA-256"], [[fmt(f.get("file")), fmt(f.get("sha256"))] for f in files], [28, 72], mono=(1,))


def _all_warnings(r: dict) -> list:
    out = [str(w) for w in r.get("warnings") or []]
    for s in r.get("screws") or []:  # the plan's warnings already carry its screws' ("<name>: <warning>")
        name = str(s.get("name", "?"))
        for w in map(str, s.get("warnings") or []):
            # Already there as "<name>: <warning>", or summed up over the screws by name (the low-density one).
            if not any(f"{name}: {w}" in o or (name in o and w.split(":")[-1].strip() in o) for o in out):
                out.append(f"Screw {name}: {w}")
    for f in r.get("files") or []:
        if _get(f, "checks", "ok") is False:
            out.append(f"File {f.get('file', '?')}: " + "; ".join(map(str, _get(f, "checks", "problems") or [])))
    return out


def build_document(record: dict, images: dict) -> Document:
    r = record or {}
    doc = Document()
    _section_case(doc, r)
    _section_segmentation(doc, r)
    _section_implant(doc, r)
    _section_screws(doc, r)
    _section_keep_out(doc, r)
    _section_variants(doc, r)
    _section_lattice(doc, r)
    _section_guides(doc, r)
    _section_considerations(doc, r)
    _section_risks(doc, r)
    _section_pictures(doc, images)
    _section_manufacturing(doc, r)
    _section_files(doc, r)
    doc.section("Warnings")
    warnings = _all_warnings(r)
    if warnings:
        doc.bullets(warnings)
    else:
        doc.para("None recorded.")
    doc.section("Review and approval")
    doc.para(
        "This record was generated by software from the plan's values. The design must be reviewed by the "
        "responsible engineer and surgeon, and open items in the risk checklist resolved, before manufacturing."
    )
    doc.table(
        ["Role", "Name", "Date", "Signature"],
        [["Prepared by (engineer)", "", "", ""], ["Reviewed by (surgeon)", "", "", ""], ["Approved by", "", "", ""]],
        [28, 28, 18, 26],
    )
    return doc


def _meta_rows(r: dict) -> list:
    sw = r.get("software") or {}
    sw_text = f"{fmt(sw.get('name'))} {fmt(sw.get('version'))}"
    extra = {k: v for k, v in sw.items() if k not in ("name", "version")}
    if extra:
        sw_text += " (" + ", ".join(f"{k} {v}" for k, v in extra.items()) + ")"
    return [
        ("Case ID", fmt(r.get("case_id"))),
        ("Created", fmt(r.get("created"))),
        ("Software", sw_text),
        ("File coordinate system", fmt(r.get("coordinate_system"))),
    ]
