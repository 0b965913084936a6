"""The clinical checks of a design record: the risk checklist (each item OK, ATTENTION or TO DO with its basis) and the
design considerations a surgeon and an engineer review before approval."""

from .values import (
    ATTENTION,
    DRILL_BONE_MM,
    GUIDE_CLEARANCE_RANGE_MM,
    MAX_INTERFERENCE_MM3,
    MAX_SLICE_THICKNESS_MM,
    MIN_GUIDE_WALL_MM,
    NA,
    OK,
    POOR_BONE_FRACTION,
    PORE_TOLERANCE,
    POROSITY_TOLERANCE,
    REFERENCE_PORE_UM,
    REFERENCE_POROSITY,
    REFERENCE_STIFFNESS_FACTOR,
    TODO,
    _fraction,
    _get,
    _grade_fractions,
    _missing,
    _num,
    _pct,
    _plate_text,
    _pore_target,
    axial_stress_estimate_mpa,
    fmt,
)


def fe_stiffness_ratio(fe):
    """The FE's axial stiffness against the rod, the lowest over the sizes checked (None: no FE result)."""
    if not isinstance(fe, dict) or not fe.get("done"):
        return None
    ratios = [_num(v.get("stiffness_ratio_vs_rod")) for v in (fe.get("sizes") or {}).values() if isinstance(v, dict)]
    ratios = [r for r in ratios if r is not None]
    return min(ratios) if ratios else None


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

    drill = m.get("drill_line_bone_mm")
    if isinstance(drill, dict) and drill:
        crossing = {k: v for k, v in drill.items() if (_num(v) or 0.0) > DRILL_BONE_MM}
        rows.append(
            (
                "Drill lines clear of bone",
                ATTENTION if crossing else OK,
                (f"{len(crossing)} of {len(drill)} drill lines cross bone as the CT shows it (up to "
                 f"{max(crossing.values()):.0f} mm): resect it in the approach or place those screws by hand."
                 if crossing else f"All {len(drill)} drill lines clear of bone (at most {DRILL_BONE_MM:g} mm)."),
            )
        )

    ax, be = _num(m.get("axial_stiffness_ratio")), _num(m.get("bending_stiffness_ratio"))
    fe_ratio = fe_stiffness_ratio(_get(record, "fe_check"))
    if fe_ratio is not None:
        # The FE loads the whole implant along the spinal axis: an off-axis strut bends, which the section
        # ratios (area, second moment) do not see. It is the figure that counts when it exists.
        rows.append(
            (
                "Stiffness vs 5.5 mm rod",
                ATTENTION if fe_ratio < 1.0 else OK,
                f"FE, loaded along the spinal axis: x{fe_ratio:.3g} the axial stiffness of a 5.5 mm titanium rod "
                f"(the lowest over the sizes checked; cross-section alone: axial x{fmt(ax)}, bending x{fmt(be)})"
                + ("; less stiff than the rod: the strut lies off the axis and bends." if fe_ratio < 1.0 else "."),
            )
        )
    elif ax is None or be is None:
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
    fe_ratio = fe_stiffness_ratio(_get(r, "fe_check"))
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
            (f"Approach: {r['surgical_approach']}; " if r.get("surgical_approach") else "")
            + f"levels {prox} to {dist}; guides: {guide_text}",
            f"The strut bridges from {prox} to {dist}. Docking trial guides let the surgeon test both seats before the "
            "titanium part is opened; drill guides transfer the planned screw trajectories.",
        ),
        (
            "Anatomical positioning",
            f"Proximal endplate: {_plate_text(lv.get('proximal_endplate'))}. Distal endplate: "
            f"{_plate_text(lv.get('distal_endplate'))}. Strut offset (as placed) anterior "
            f"{fmt(m.get('strut_offset_anterior_mm', p.get('offset_anterior_mm')))} mm, lateral "
            f"{fmt(m.get('strut_offset_lateral_mm', p.get('offset_lateral_mm')))} mm; footplate fraction "
            f"{fmt(p.get('footplate_fraction'), 2)}; length "
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
            "Argued against a conventional 5.5 mm titanium rod as in the reference case (about 10x); "
            + (f"FE check at {fmt(_get(r, 'fe_check', 'load_N'))} N axial load: lowest safety factor against yield "
               f"{fmt(_get(r, 'fe_check', 'min_safety_factor_yield'), 2)} (FE section)."
               if _get(r, "fe_check", "done") else "an FE check at 500 N axial load is still required."),
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
                f"The strut's cross-section is {fmt(m.get('axial_stiffness_ratio'))}x a conventional 5.5 mm rod's "
                f"in area and {fmt(m.get('bending_stiffness_ratio'))}x in bending"
                + (f"; loaded along the spinal axis (FE) the implant is x{fe_ratio:.3g} as stiff as the rod. "
                   if fe_ratio is not None else ". ")
                if not _missing(m.get("axial_stiffness_ratio"))
                else ""
            )
            + "Oversized variants absorb size differences and posture changes during surgery.",
        ),
    ]
