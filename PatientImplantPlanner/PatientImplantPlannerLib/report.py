"""The design record (technical-file report) of an implant export, as self-contained HTML and as PDF.

``write_report(record, images, out_dir)`` turns the export's record (record.DesignRecord, or its plain-dict shape) into
one document model (sections of paragraphs, key-value tables, tables and pictures) rendered twice, so the HTML and
the PDF always say the same thing. Every value comes from the record; a missing one is written "n/a". Statuses in
the risk checklist are derived from the record by explicit rules (see ``risk_checklist``), never assumed.
The PDF uses fpdf2 (pure Python) with its built-in Helvetica, so text is reduced to Latin-1.
"""

import base64
import datetime
import html
import os
from typing import Optional

from .errors import OutputExistsError
from .mesh import atomic_write_bytes
from .record import DesignRecord

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

NA = "n/a"
OK, ATTENTION, TODO = "OK", "ATTENTION", "TO DO"

# Reference values (DESIGN.md, published reference cases) and the limits the checklist applies.
REFERENCE_ROD_DIAMETER_MM = 5.5
REFERENCE_STIFFNESS_FACTOR = 10.0  # the reference case argued about ten times stiffer and stronger than the rod
FE_LOAD_N = 500.0
TI6AL4V_ELI_MIN_YIELD_MPA = 795.0  # ASTM F136 minimum yield strength
REFERENCE_PORE_UM = (500.0, 600.0)
REFERENCE_POROSITY = 0.70
MAX_SLICE_THICKNESS_MM = 1.25  # the reference cases used 1 mm slices
MAX_INTERFERENCE_MM3 = 1.0  # implant volume allowed inside bone (numerical noise of the booleans)
PORE_TOLERANCE = 0.10  # measured pore within 10 % of the target (or inside the target range)
POROSITY_TOLERANCE = 0.05  # measured porosity at most 5 percentage points below the target
POOR_BONE_FRACTION = 0.5  # more than half of a screw path below 130 HU: poor purchase
GUIDE_CLEARANCE_RANGE_MM = (0.05, 0.4)  # typical printer-dependent fit clearance
MIN_GUIDE_WALL_MM = 1.5  # thinner polyamide walls break when handled

TITLE = "Design record: patient-specific spinal implant"


# ---- value formatting ----------------------------------------------------------------------------------------


def _get(d, *keys, default=None):
    """Nested lookup that never raises: _get(record, "implant", "measurements", "mass_g")."""
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, (list, tuple)) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return default
    return d


def _missing(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (list, tuple, dict)) and not v)


def _num(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN -> None


def fmt(v, nd: int = 1, unit: str = "") -> str:
    """Format a record value for the report; missing values become 'n/a'."""
    if _missing(v):
        return NA
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        s = str(v)
    elif isinstance(v, float) or type(v).__name__.startswith("float"):
        s = f"{float(v):.{nd}f}"
    elif isinstance(v, (list, tuple)):
        if all(_num(x) is not None and not isinstance(x, bool) for x in v):
            s = "(" + ", ".join(fmt(float(x), nd) for x in v) + ")"
        else:
            return "; ".join(fmt(x, nd) for x in v)
    elif isinstance(v, dict):
        return "; ".join(f"{k}: {fmt(x, nd)}" for k, x in v.items())
    else:
        s = str(v)
    return f"{s} {unit}".strip() if unit else s


def _fraction(v) -> Optional[float]:
    """A fraction from a value given either as a fraction (0.7) or as a percentage (70)."""
    f = _num(v)
    if f is None:
        return None
    return f / 100.0 if f > 1.0 else f


def _pct(v, nd: int = 0) -> str:
    f = _fraction(v)
    return NA if f is None else f"{100 * f:.{nd}f} %"


def _pore_target(v) -> Optional[tuple]:
    """(low, high) µm from a single target or a [low, high] range."""
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(x) is not None for x in v):
        return float(v[0]), float(v[1])
    f = _num(v)
    return (f, f) if f is not None else None


def _pore_text(v) -> str:
    t = _pore_target(v)
    if t is None:
        return NA
    return f"{t[0]:.0f}" if t[0] == t[1] else f"{t[0]:.0f}-{t[1]:.0f}"


def _grade_fractions(grade) -> dict:
    """HU grade of a screw path as fractions (accepts fractions or percentages)."""
    if not isinstance(grade, dict):
        return {}
    vals = {k: _num(grade.get(k)) for k in ("lt130", "130to250", "gt250")}
    present = [x for x in vals.values() if x is not None]
    scale = 100.0 if present and sum(present) > 1.5 else 1.0
    return {k: (x / scale if x is not None else None) for k, x in vals.items()}


def _grade_text(grade) -> str:
    g = _grade_fractions(grade)
    if not g or all(x is None for x in g.values()):
        return NA
    return " / ".join(NA if g[k] is None else f"{100 * g[k]:.0f}" for k in ("lt130", "130to250", "gt250")) + " %"


def _dims(v) -> str:
    if isinstance(v, (list, tuple)) and v:
        return " x ".join(fmt(x, 2) if isinstance(x, float) else str(x) for x in v)
    return fmt(v)


def _plate_text(plate) -> str:
    if not isinstance(plate, dict) or not plate:
        return NA
    return (
        f"centre {fmt(plate.get('centre'))} mm; normal {fmt(plate.get('normal'), 2)}; "
        f"radii L-R {fmt(plate.get('radius_lr'))} / A-P {fmt(plate.get('radius_ap'))} mm"
    )


def axial_stress_estimate_mpa(area_mm2) -> Optional[float]:
    """Mean axial compressive stress F/A under the reference 500 N load (a beam estimate, not an FE result)."""
    a = _num(area_mm2)
    return FE_LOAD_N / a if a and a > 0 else None


# ---- document model ------------------------------------------------------------------------------------------


class _Doc:
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


# ---- content -------------------------------------------------------------------------------------------------


def risk_checklist(record: dict) -> list:
    """[(item, status, basis)] with status OK / ATTENTION / TO DO derived from the record's values."""
    rows = []
    m = _get(record, "implant", "measurements", default={}) or {}

    st = _num(_get(record, "ct", "slice_thickness"))
    if st is None:
        rows.append(("CT resolution", TODO, "Slice thickness not recorded."))
    else:
        ok = st <= MAX_SLICE_THICKNESS_MM
        rows.append(
            (
                "CT resolution",
                OK if ok else ATTENTION,
                f"Slice thickness {st:.2f} mm ({'within' if ok else 'above'} {MAX_SLICE_THICKNESS_MM} mm; "
                "reference cases used 1 mm).",
            )
        )

    vol = _num(_get(record, "segmentation", "volume_ml"))
    rows.append(
        (
            "Bone segmentation",
            OK if vol and vol > 0 else TODO,
            f"Bone volume {vol:.1f} ml from the recorded parameters." if vol else "No bone volume recorded.",
        )
    )

    rows.append(_keep_out_row(m.get("safety")))

    inter = _num(m.get("interference_mm3"))
    if inter is None:
        rows.append(("Implant-bone interference", TODO, "Interference volume not measured."))
    else:
        rows.append(
            (
                "Implant-bone interference",
                OK if inter <= MAX_INTERFERENCE_MM3 else ATTENTION,
                f"Implant volume inside bone {inter:.2f} mm³ (limit {MAX_INTERFERENCE_MM3:.1f} mm³).",
            )
        )

    ax, be = _num(m.get("axial_stiffness_ratio")), _num(m.get("bending_stiffness_ratio"))
    if ax is None or be is None:
        rows.append(("Stiffness vs 5.5 mm rod", TODO, "Stiffness ratios not computed."))
    else:
        weak = min(ax, be) < 1.0
        rows.append(
            (
                "Stiffness vs 5.5 mm rod",
                ATTENTION if weak else OK,
                f"Axial x{ax:.1f}, bending x{be:.1f} relative to a 5.5 mm titanium rod "
                f"(reference case argued about x{REFERENCE_STIFFNESS_FACTOR:.0f})"
                + ("; weaker than the rod in at least one mode." if weak else "."),
            )
        )

    fe = _get(record, "fe_check")
    if isinstance(fe, dict) and fe.get("done"):
        sf = _num(fe.get("min_safety_factor_yield"))
        rows.append((f"FE check at {fmt(fe.get('load_N'))} N axial load", OK if sf is not None and sf > 1.0
                     else ATTENTION, fmt(fe.get("summary", "Done (see the FE section)."))))
    else:
        rows.append(
            (
                "FE check at 500 N axial load",
                TODO,
                "Finite-element analysis of the final geometry (as done in the reference case) is still required.",
            )
        )

    screws = record.get("screws") or []
    if not screws:
        rows.append(("Screw breach", TODO, "No screws recorded."))
    else:
        breached = [s.get("name", "?") for s in screws if s.get("breach") is True]
        unknown = [s.get("name", "?") for s in screws if not isinstance(s.get("breach"), bool)]
        if breached:
            rows.append(("Screw breach", ATTENTION, "Cortical breach planned for: " + ", ".join(map(str, breached))))
        elif unknown:
            rows.append(("Screw breach", TODO, "Breach not evaluated for: " + ", ".join(map(str, unknown))))
        else:
            rows.append(("Screw breach", OK, f"No breach on any of the {len(screws)} planned trajectories."))
        poor, ungraded = [], []
        for s in screws:
            g = _grade_fractions(s.get("grade"))
            if g.get("lt130") is None:
                ungraded.append(str(s.get("name", "?")))
            elif g["lt130"] > POOR_BONE_FRACTION:
                poor.append(f"{s.get('name', '?')} ({100 * g['lt130']:.0f} % < 130 HU)")
        if poor:
            rows.append(("Screw bone quality", ATTENTION, "Poor purchase expected: " + ", ".join(poor)))
        elif ungraded:
            rows.append(("Screw bone quality", TODO, "HU grade missing for: " + ", ".join(ungraded)))
        else:
            rows.append(
                (
                    "Screw bone quality",
                    OK,
                    f"Every screw has at most {100 * POOR_BONE_FRACTION:.0f} % of its path below 130 HU.",
                )
            )
        warned = [f"{s.get('name', '?')}: {'; '.join(map(str, s['warnings']))}" for s in screws if s.get("warnings")]
        rows.append(("Screw planning warnings", ATTENTION if warned else OK, "; ".join(warned) or "None."))

    lattice = record.get("lattice") or []
    if not lattice:
        rows.append(("Porous layer vs target", TODO, "No lattice measurements recorded."))
    else:
        bad, unmeasured = [], []
        for lat in lattice:
            name = f"{lat.get('end', '?')} {lat.get('kind', '')}".strip()
            target, pore = _pore_target(lat.get("target_pore_um")), _num(lat.get("measured_pore_um"))
            tp, mp = _fraction(lat.get("target_porosity")), _fraction(lat.get("measured_porosity"))
            if None in (target, pore, tp, mp):
                unmeasured.append(name)
                continue
            lo, hi = target[0] * (1 - PORE_TOLERANCE), target[1] * (1 + PORE_TOLERANCE)
            if not lo <= pore <= hi:
                bad.append(f"{name}: pore {pore:.0f} µm outside {lo:.0f}-{hi:.0f} µm")
            if mp < tp - POROSITY_TOLERANCE:
                bad.append(f"{name}: porosity {100 * mp:.0f} % below target {100 * tp:.0f} %")
        if bad:
            rows.append(("Porous layer vs target", ATTENTION, "; ".join(bad)))
        elif unmeasured:
            rows.append(("Porous layer vs target", TODO, "Not measured: " + ", ".join(unmeasured)))
        else:
            rows.append(("Porous layer vs target", OK, "Measured pore size and porosity meet the targets."))

    guides = record.get("guides") or []
    if not guides:
        rows.append(("Guide fit", TODO, "No guides recorded."))
    else:
        lo, hi = GUIDE_CLEARANCE_RANGE_MM
        issues, missing = [], []
        for g in guides:
            name = str(g.get("name", "?"))
            wall, fit = _num(g.get("min_wall_mm")), _num(g.get("fit_clearance_mm"))
            docking = str(g.get("role", "")).startswith("docking")  # a copy of the implant end: no fit gap
            if wall is None or (fit is None and not docking):
                missing.append(name)
                continue
            if wall < MIN_GUIDE_WALL_MM:
                issues.append(f"{name}: wall {wall:.2f} mm < {MIN_GUIDE_WALL_MM} mm")
            if fit is not None and not lo <= fit <= hi:
                issues.append(f"{name}: fit clearance {fit:.2f} mm outside {lo}-{hi} mm")
            sleeve = _num(g.get("sleeve_clearance_mm"))
            if sleeve is not None and not 0.0 <= sleeve <= 0.5:
                issues.append(f"{name}: sleeve clearance {sleeve:.2f} mm outside 0-0.5 mm")
        if issues:
            rows.append(("Guide fit", ATTENTION, "; ".join(issues)))
        elif missing:
            rows.append(("Guide fit", TODO, "Wall or clearance not recorded for: " + ", ".join(missing)))
        else:
            rows.append(
                (
                    "Guide fit",
                    OK,
                    f"Clearances within {lo}-{hi} mm, walls >= {MIN_GUIDE_WALL_MM} mm; trial-fit "
                    "on the printed model still recommended.",
                )
            )

    variants = record.get("variants") or []
    rows.append(
        (
            "Oversized variants",
            OK if variants else ATTENTION,
            ("Exported: " + ", ".join(str(v.get("label", "?")) for v in variants))
            if variants
            else "No oversized variants: no margin for size differences or posture changes during surgery.",
        )
    )

    files = record.get("files") or []
    if not files:
        rows.append(("Exported files verified", TODO, "No files recorded."))
    else:
        failed = [str(f.get("file", "?")) for f in files if _get(f, "checks", "ok") is not True]
        nosum = [str(f.get("file", "?")) for f in files if not f.get("sha256")]
        if failed or nosum:
            detail = []
            if failed:
                detail.append("not verified as closed solids: " + ", ".join(failed))
            if nosum:
                detail.append("no checksum: " + ", ".join(nosum))
            rows.append(("Exported files verified", ATTENTION, "; ".join(detail)))
        else:
            rows.append(("Exported files verified", OK, f"{len(files)} files watertight, manifold, with SHA-256."))

    phys = record.get("physical_check")
    rows.append(
        (
            "Physical check on a printed model",
            OK if phys else TODO,
            fmt(phys) if phys else "Print spine + implant in plastic and check fit before approval (reference case).",
        )
    )

    warnings = record.get("warnings") or []
    rows.append(
        (
            "Open warnings",
            ATTENTION if warnings else OK,
            f"{len(warnings)} warning(s), see Warnings." if warnings else "None.",
        )
    )
    return rows


def _section_case(doc: _Doc, r: dict) -> None:
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


def _section_segmentation(doc: _Doc, r: dict) -> None:
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


def _section_implant(doc: _Doc, r: dict) -> None:
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
            ("Offset anterior / lateral", f"{fmt(p.get('offset_anterior_mm'))} / {fmt(p.get('offset_lateral_mm'))} mm"),
            ("Footplate fraction of endplate", fmt(p.get("footplate_fraction"), 2)),
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
            ("Volume", fmt(m.get("volume_mm3"), 0, "mm³")),
            ("Mass", fmt(m.get("mass_g"), 1, "g")),
            ("Axial stiffness ratio vs 5.5 mm rod", fmt(m.get("axial_stiffness_ratio"), 1)),
            ("Bending stiffness ratio vs 5.5 mm rod", fmt(m.get("bending_stiffness_ratio"), 1)),
            ("Implant volume inside bone", fmt(m.get("interference_mm3"), 2, "mm³")),
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


def _section_screws(doc: _Doc, r: dict) -> None:
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


def _keep_out_row(safety) -> tuple:
    """Checklist row from the measured clearances: OK when every checked structure keeps the required clearance,
    ATTENTION for an accepted finding or a structure not checked, TO DO when nothing was measured."""
    if not safety:
        return ("Clearance to keep-out anatomy", TODO, "No keep-out structures measured.")
    req = _num(safety.get("required_clearance_mm"))
    measured = {k: v for k, v in (safety.get("clearance_mm") or {}).items() if v is not None}
    findings = safety.get("findings") or []
    not_checked = (safety.get("keep_out") or {}).get("not_checked") or {}
    worst = min(measured.items(), key=lambda kv: kv[1]) if measured else None
    basis = (f"Closest: {worst[0].replace('_', ' ')} {worst[1]:.1f} mm (required {req:g} mm), measured on the "
             "nominal implant and the largest variant." if worst else "No structure within 15 mm of the implant.")
    if findings:
        basis += " Accepted by the user: " + "; ".join(f["message"] for f in findings if f.get("accepted")) + "."
    if not_checked:
        basis += " Not checked: " + ", ".join(k.replace("_", " ") for k in not_checked) + " (confirm on the CT)."
    status = ATTENTION if findings or not_checked else OK
    return ("Clearance to keep-out anatomy", status, basis)


def _section_keep_out(doc: _Doc, r: dict) -> None:
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


def _section_variants(doc: _Doc, r: dict) -> None:
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


def _section_lattice(doc: _Doc, r: dict) -> None:
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


def _section_guides(doc: _Doc, r: dict) -> None:
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


def design_considerations(r: dict) -> list:
    """[(requirement, variables, justification)] filled from the record."""
    lv = r.get("levels") or {}
    imp = r.get("implant") or {}
    p = imp.get("parameters") or {}
    m = imp.get("measurements") or {}
    screws = r.get("screws") or []
    guides = r.get("guides") or []
    lattice = r.get("lattice") or []
    variants = r.get("variants") or []
    prox, dist = fmt(lv.get("proximal")), fmt(lv.get("distal"))
    roles = {}
    for g in guides:
        roles[str(g.get("role", "guide"))] = roles.get(str(g.get("role", "guide")), 0) + 1
    guide_text = ", ".join(f"{n} {k}" for k, n in roles.items()) or NA
    profile = fmt(p.get("profile"))
    if p.get("profile") == "circle":
        section_text = f"circular, diameter {fmt(p.get('diameter_mm'))} mm"
    elif p:
        section_text = f"{profile}, {fmt(p.get('width_mm'))} x {fmt(p.get('depth_mm'))} mm"
    else:
        section_text = NA
    stress = axial_stress_estimate_mpa(m.get("cross_section_area_mm2"))
    types = sorted({f"{fmt(s.get('screw_type'))} {fmt(s.get('diameter_mm'))} mm" for s in screws})
    lengths = [fmt(s.get("length_mm"), 1) for s in screws]
    breach = [s for s in screws if s.get("breach") is True]
    pores = (
        "; ".join(
            f"{fmt(lat.get('end'))}: {fmt(lat.get('measured_pore_um'), 0)} µm / {_pct(lat.get('measured_porosity'))}"
            for lat in lattice
        )
        or NA
    )
    var_text = ", ".join(fmt(v.get("label")) for v in variants) or "none"
    clin = _get(r, "clinical", "justification")
    return [
        (
            "Surgical approach",
            f"Approach: {fmt(r.get('surgical_approach'))}; levels {prox} to {dist}; guides: {guide_text}",
            f"The strut bridges from {prox} to {dist}. Docking trial guides let the surgeon test both seats before the "
            "titanium part is opened; drill guides transfer the planned screw trajectories.",
        ),
        (
            "Anatomical positioning",
            f"Proximal endplate: {_plate_text(lv.get('proximal_endplate'))}. Distal endplate: "
            f"{_plate_text(lv.get('distal_endplate'))}. Offset anterior {fmt(p.get('offset_anterior_mm'))} mm, lateral "
            f"{fmt(p.get('offset_lateral_mm'))} mm; footplate fraction {fmt(p.get('footplate_fraction'), 2)}; length "
            f"{fmt(m.get('length_mm'))} mm",
            "Footplates lie on the endplate planes measured on this CT; the footprint is a fraction of the measured "
            "endplate size so it rests on the endplate without overhanging; the strut follows the axis between the "
            "endplate centres.",
        ),
        (
            "Free space",
            f"Implant volume inside bone {fmt(m.get('interference_mm3'), 2)} mm³; strut {section_text}; footplate "
            f"thickness {fmt(p.get('footplate_thickness_mm'))} mm",
            f"The implant must not occupy bone beyond its planned contact surfaces (limit {MAX_INTERFERENCE_MM3} "
            "mm³, measured by exact mesh booleans). Clearance to vessels, airway, oesophagus and the spinal cord is "
            "measured per structure (section Keep-out anatomy); structures not checked are listed there.",
        ),
        (
            "Material",
            f"Implant {fmt(imp.get('material'))}, mass {fmt(m.get('mass_g'))} g; guides "
            f"{', '.join(sorted({fmt(g.get('material')) for g in guides})) or NA}",
            (
                "Titanium alloy Ti6Al4V ELI is biocompatible, printable and was used in the reference cases"
                if "ti6al4v" in str(imp.get("material", "")).lower()
                else "Differs from the reference cases' Ti6Al4V ELI: biocompatibility and printability to be justified"
            )
            + "; polyamide guides are for short intra-operative use.",
        ),
        (
            "Strength",
            f"Area {fmt(m.get('cross_section_area_mm2'))} mm²; I min {fmt(_get(m, 'second_moment_mm4', 'min'), 0)} "
            f"mm^4; axial x{fmt(m.get('axial_stiffness_ratio'))}, bending x{fmt(m.get('bending_stiffness_ratio'))} vs "
            f"5.5 mm rod; estimated axial stress at 500 N {fmt(stress)} MPa",
            "Argued against a conventional 5.5 mm titanium rod as in the reference case (about 10x); an FE check at "
            "500 N axial load is still required.",
        ),
        (
            "Bone-implant interface",
            f"Porous layer {fmt(p.get('porous_layer_mm'))} mm; measured pore / porosity: {pores}",
            f"Pores {REFERENCE_PORE_UM[0]:.0f}-{REFERENCE_PORE_UM[1]:.0f} µm and {100 * REFERENCE_POROSITY:.0f} % "
            "porosity at the bone contact, as in the reference case, for bone ingrowth and long-term fixation.",
        ),
        (
            "Screws",
            f"{len(screws)} screws: {', '.join(types) or NA}; lengths {', '.join(lengths) or NA} mm; "
            f"breach: {'yes (' + str(len(breach)) + ')' if breach else ('none' if screws else NA)}",
            "Cancellous screws (3.5 mm small fragment, 6.5 mm fully threaded in the reference case) fix each "
            "footplate; lengths follow the planned trajectories inside bone; the HU grade along each path shows "
            "expected purchase.",
        ),
        (
            "Alternatives",
            f"Oversized variants: {var_text}; conventional rod: 5.5 mm titanium",
            (fmt(clin) + ". " if not _missing(clin) else "")
            + (
                f"A conventional 5.5 mm rod is {fmt(m.get('axial_stiffness_ratio'))}x less stiff axially and "
                f"{fmt(m.get('bending_stiffness_ratio'))}x less stiff in bending than this strut. "
                if not _missing(m.get("axial_stiffness_ratio"))
                else ""
            )
            + "Oversized variants absorb size differences and posture changes during surgery.",
        ),
    ]


def _section_considerations(doc: _Doc, r: dict) -> None:
    doc.section("Design considerations")
    doc.table(["Requirement", "Variables (this plan)", "Justification"], design_considerations(r), [17, 43, 40])


def _section_risks(doc: _Doc, r: dict) -> None:
    doc.section("Risk checklist")
    doc.table(["Item", "Status", "Basis"], risk_checklist(r), [24, 13, 63], status_col=1)


IMAGE_CAPTIONS = {
    "render_3d": "3D view as Slicer shows the plan: spine (translucent), implant, spinal axis, endplate planes and "
    "screw trajectories, from the patient's front-left (anterior-oblique), superior up.",
    "ct_sagittal": "Sagittal CT slice through the implant centre (bone window: level 400, width 1500 HU); implant "
    "outline cyan, bone surface yellow; anterior on the left, superior up.",
    "ct_coronal": "Coronal CT slice through the implant centre (bone window: level 400, width 1500 HU); implant "
    "outline cyan, bone surface yellow; patient's right on the left (radiological convention), superior up.",
}


def _section_pictures(doc: _Doc, images: dict) -> None:
    doc.section("Pictures")
    if not images:
        doc.para("No pictures supplied: n/a.")
    for key, value in (images or {}).items():
        path, caption = (value[0], value[1]) if isinstance(value, (tuple, list)) else (value, None)
        caption = caption or IMAGE_CAPTIONS.get(key, str(key).replace("_", " "))
        doc.image(path if path and os.path.isfile(path) else None, caption)


def _section_manufacturing(doc: _Doc, r: dict) -> None:
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


def _section_files(doc: _Doc, r: dict) -> None:
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
    for s in r.get("screws") or []:
        out += [f"Screw {s.get('name', '?')}: {w}" for w in s.get("warnings") or []]
    for f in r.get("files") or []:
        if _get(f, "checks", "ok") is False:
            out.append(f"File {f.get('file', '?')}: " + "; ".join(map(str, _get(f, "checks", "problems") or [])))
    return out


def build_document(record: dict, images: dict) -> _Doc:
    r = record or {}
    doc = _Doc()
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


# ---- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; color: #222; max-width: 60em; margin: 2em auto; padding: 0 1em;
       font-size: 14px; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #345; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #bbb; padding-bottom: .2em; color: #234; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; color: #345; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
td.mono { font-family: monospace; word-break: break-all; }
.status { font-weight: bold; padding: 1px 6px; border-radius: 3px; white-space: nowrap; }
.s-ok { background: #dff0d8; color: #2b5a2b; } .s-attention { background: #fcf0cf; color: #7a5a00; }
.s-todo { background: #f8d7da; color: #7a1f27; }
figure { margin: 1em 0 1.5em; } figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption { font-style: italic; color: #555; font-size: .9em; }
.meta td:first-child { width: 30%; }
@media print { body { max-width: none; margin: 0; } h2, h3 { page-break-after: avoid; }
               tr, figure { page-break-inside: avoid; } }
"""

_STATUS_CLASS = {OK: "s-ok", ATTENTION: "s-attention", TODO: "s-todo"}


def _html(doc: _Doc, record: dict) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(TITLE)} - {e(fmt(record.get('case_id')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(TITLE)}</h1>",
        '<table class="meta">'
        + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td></tr>" for a, b in _meta_rows(record))
        + "</table>",
    ]
    for block in doc.blocks:
        kind = block[0]
        if kind == "section":
            out.append(f'<h2 id="s{block[1]}">{block[1]}. {e(block[2])}</h2>')
        elif kind == "sub":
            out.append(f"<h3>{e(block[1])}</h3>")
        elif kind == "para":
            out.append(f"<p>{e(block[1])}</p>")
        elif kind == "bullets":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in block[1]) + "</ul>")
        elif kind == "table":
            _, headers, rows, widths, status_col, mono = block
            total = float(sum(widths))
            cols = "".join(f'<col style="width:{100 * w / total:.1f}%">' for w in widths)
            head = "".join(f"<th>{e(h)}</th>" for h in headers)
            body = []
            for row in rows:
                cells = []
                for i, c in enumerate(row):
                    if i == status_col:
                        cells.append(f'<td><span class="status {_STATUS_CLASS.get(c, "")}">{e(c)}</span></td>')
                    else:
                        cells.append(f'<td class="mono">{e(c)}</td>' if i in mono else f"<td>{e(c)}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            out.append(
                f"<table><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>"
                + "".join(body)
                + "</tbody></table>"
            )
        elif kind == "image":
            _, path, caption = block
            if path:
                with open(path, "rb") as f:
                    data = base64.b64encode(f.read()).decode("ascii")
                mime = "image/png" if path.lower().endswith(".png") else "image/jpeg"
                out.append(
                    f'<figure><img src="data:{mime};base64,{data}" alt="{e(caption)}">'
                    f"<figcaption>{e(caption)}</figcaption></figure>"
                )
            else:
                out.append(f"<p><em>{e(caption)}: n/a (image missing).</em></p>")
    out.append("</body></html>")
    return "\n".join(out)


# ---- PDF -----------------------------------------------------------------------------------------------------

_LATIN1 = {
    "\u2013": "-",
    "\u2014": "-",
    "\u2265": ">=",
    "\u2264": "<=",
    "\u2192": "->",
    "\u2248": "~",
    "\u2026": "...",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2212": "-",
}


def _latin1(text: str) -> str:
    """Helvetica in PDF covers Latin-1 only: map common symbols, replace the rest with '?'."""
    s = str(text)
    for a, b in _LATIN1.items():
        s = s.replace(a, b)
    return s.encode("latin-1", "replace").decode("latin-1")


_PDF_STATUS_FILL = {OK: (223, 240, 216), ATTENTION: (252, 240, 207), TODO: (248, 215, 218)}


def _pdf(doc: _Doc, record: dict) -> bytes:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    case = _latin1(fmt(record.get("case_id")))

    class _Report(FPDF):
        def header(self):
            self.set_font("Helvetica", "", 8)
            self.set_text_color(110)
            self.cell(0, 5, _latin1(f"{TITLE} - case {case}"), align="L")
            self.ln(7)
            self.set_text_color(0)

        def footer(self):
            self.set_y(-12)
            self.set_font("Helvetica", "", 8)
            self.set_text_color(110)
            self.cell(0, 5, f"Page {self.page_no()}/{{nb}}", align="R")
            self.set_text_color(0)

    pdf = _Report(orientation="P", unit="mm", format="A4")
    pdf.set_title(_latin1(f"{TITLE} - {case}"))
    pdf.set_creator("PatientImplantPlanner")
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(18, 14, 18)
    pdf.add_page()
    width = pdf.epw
    heading = FontFace(emphasis="BOLD", fill_color=(238, 241, 244))

    def table(headers, rows, widths, status_col=None, mono=(), size=8.0):
        pdf.set_font("Helvetica", "", size)
        with pdf.table(
            col_widths=tuple(widths),
            headings_style=heading,
            line_height=1.25 * size * 0.3528 + 1.0,
            text_align="LEFT",
            borders_layout="ALL",
            padding=1.2,
            first_row_as_headings=bool(headers),
        ) as t:
            if headers:
                hr = t.row()
                for h in headers:
                    hr.cell(_latin1(h))
            for row in rows:
                tr = t.row()
                for i, c in enumerate(row):
                    if i == status_col:
                        tr.cell(_latin1(c), style=FontFace(emphasis="BOLD", fill_color=_PDF_STATUS_FILL.get(c)))
                    elif i in mono:
                        tr.cell(_latin1(c), style=FontFace(family="Courier", size_pt=size - 1))
                    else:
                        tr.cell(_latin1(c))
        pdf.ln(2)

    pdf.set_font("Helvetica", "B", 16)
    pdf.multi_cell(0, 8, _latin1(TITLE), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    table([], [list(r) for r in _meta_rows(record)], [30, 70], size=9)

    def image_size(path):
        from PIL import Image

        with Image.open(path) as im:
            w_px, h_px = im.size
        w = min(width, 150.0)
        h = w * h_px / w_px
        if h > 120.0:  # tall slices: limit the height, keep the aspect
            h, w = 120.0, 120.0 * w_px / h_px
        return w, h

    def first_part_height(i):
        """Height (mm) of what must stay on the page with a heading: the start of the next block."""
        if i >= len(doc.blocks):
            return 0.0
        nxt = doc.blocks[i]
        if nxt[0] == "image" and nxt[1]:
            return image_size(nxt[1])[1] + 12
        if nxt[0] == "sub":
            return 10 + first_part_height(i + 1)
        return 25.0 if nxt[0] == "table" else 15.0

    for index, block in enumerate(doc.blocks):
        kind = block[0]
        if kind == "section":
            if pdf.get_y() + 14 + first_part_height(index + 1) > pdf.h - pdf.b_margin:  # no orphan headings
                pdf.add_page()
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 13)
            pdf.set_text_color(34, 51, 68)
            pdf.multi_cell(0, 7, _latin1(f"{block[1]}. {block[2]}"), new_x="LMARGIN", new_y="NEXT")
            pdf.set_draw_color(180)
            pdf.line(pdf.l_margin, pdf.get_y(), pdf.l_margin + width, pdf.get_y())
            pdf.set_draw_color(0)
            pdf.set_text_color(0)
            pdf.ln(2)
        elif kind == "sub":
            if pdf.get_y() + 8 + first_part_height(index + 1) > pdf.h - pdf.b_margin:
                pdf.add_page()
            pdf.set_font("Helvetica", "B", 10.5)
            pdf.multi_cell(0, 6, _latin1(block[1]), new_x="LMARGIN", new_y="NEXT")
        elif kind == "para":
            pdf.set_font("Helvetica", "", 9.5)
            pdf.multi_cell(0, 4.8, _latin1(block[1]), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1.5)
        elif kind == "bullets":
            pdf.set_font("Helvetica", "", 9.5)
            for item in block[1]:
                pdf.multi_cell(0, 4.8, _latin1("- " + item), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1.5)
        elif kind == "table":
            _, headers, rows, widths, status_col, mono = block
            table(headers, rows, widths, status_col, mono)
        elif kind == "image":
            _, path, caption = block
            if not path:
                pdf.set_font("Helvetica", "I", 9)
                pdf.multi_cell(0, 5, _latin1(f"{caption}: n/a (image missing)."), new_x="LMARGIN", new_y="NEXT")
                continue
            w, h = image_size(path)
            if pdf.get_y() + h + 12 > pdf.h - pdf.b_margin:
                pdf.add_page()
            pdf.image(path, x=pdf.l_margin + (width - w) / 2, w=w, h=h)
            pdf.set_font("Helvetica", "I", 8.5)
            pdf.multi_cell(0, 4.5, _latin1(caption), new_x="LMARGIN", new_y="NEXT", align="C")
            pdf.ln(3)
    return bytes(pdf.output())


# ---- entry point ---------------------------------------------------------------------------------------------


def write_report(
    record, images: dict, out_dir: str, basename: str = "design_record", overwrite: bool = False
) -> tuple:
    """Write ``<basename>.html`` (self-contained, pictures embedded) and ``<basename>.pdf`` into ``out_dir``.

    ``record``: a record.DesignRecord, or its ``as_dict()`` shape (parts of it may be missing: shown "n/a").

    ``images``: {key: path or (path, caption)}; known keys "render_3d", "ct_sagittal", "ct_coronal" get standard
    captions. Refuses (OutputExistsError, nothing written) if either file exists unless ``overwrite``. Both files
    are written atomically. Returns (html_path, pdf_path).
    """
    record = record.as_dict() if isinstance(record, DesignRecord) else dict(record or {})
    html_path = os.path.join(os.fspath(out_dir), basename + ".html")
    pdf_path = os.path.join(os.fspath(out_dir), basename + ".pdf")
    if not overwrite:
        for p in (html_path, pdf_path):
            if os.path.exists(p):
                raise OutputExistsError(
                    f"The design record {p} already exists.", "Choose another folder or name, or allow overwriting."
                )
    record.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if record.get("kind") == "mirror_defect":  # issue 12: that kind's own sections (defectrecord.py)
        from .defectrecord import build_defect_document

        doc = build_defect_document(record, images or {})
    else:
        doc = build_document(record, images or {})
    html_bytes = _html(doc, record).encode("utf-8")
    pdf_bytes = _pdf(doc, record)  # built fully before anything is written
    atomic_write_bytes(pdf_path, pdf_bytes, overwrite=overwrite)
    atomic_write_bytes(html_path, html_bytes, overwrite=overwrite)
    return html_path, pdf_path
