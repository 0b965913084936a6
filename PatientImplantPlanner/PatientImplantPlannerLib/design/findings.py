"""Safety findings of a designed plan: what blocks export until the surgeon accepts it (clearances, screw breaches,
doubtful endplates, unseen anatomy, drill lines into the implant), each saying where and what to change."""

import re

import numpy as np

from ..core.errors import PlanError
from .access import DRIVER_REACH_MM


def safety_findings(plan, measured: dict, screw_plans, keep_out, blocked_lines=(), doubtful=None,
                    side_unseen: bool = False, faces=None, unseen_beside=()) -> tuple:
    """(safety dict for the measurements / manifest, [(id, message)] findings that block export unless accepted).
    ``blocked_lines`` [(screw name, part, margin)]: screws the drill and driver cannot reach with the implant in
    place (user-edited trajectories; the default layout never makes them). ``doubtful`` {"proximal" / "distal":
    message}: docking faces whose tilt detection could not settle; a face far off (T5 -> T10 on the chest CT: 27 deg
    before the profile fit, 14 after) puts the footplate into the next vertebra and the screws partly out of their
    own, so the surgeon checks it. ``side_unseen``: the strut's side was chosen automatically with the aorta and
    heart unknown (no exclude seed, no labels); on a CT without contrast (RIDER lung CT, T5 -> T7 and T4 -> T9) the
    automatic angle put the strut 10-13 mm deep into the aorta."""
    required = float(plan.keep_out_clearance_mm)
    clearance = {k: v["clearance_mm"] for k, v in measured.items()}
    closest = {k: v.get("closest_ras") for k, v in measured.items() if v.get("clearance_mm") is not None}
    overlap = {k: v["overlap_mm3"] for k, v in measured.items()}
    findings = []
    for name, c in clearance.items():
        if c is not None and c < required:
            inside = f", {overlap[name]:.0f} mm3 inside it" if overlap[name] > 0 else ""
            findings.append((f"clearance:{name}", f"the implant comes within {c:.1f} mm of the "
                             f"{name.replace('_', ' ')} (required {required:g} mm{inside})"
                             f"{_where_near(plan, closest.get(name), faces)}"))
    for sp in screw_plans:
        if sp.breach:
            findings.append((f"screw:{sp.trajectory.name}", f"screw '{sp.trajectory.name}' leaves its docking "
                             f"vertebra (breach at {sp.breach_at_mm:.1f} mm)"))
        elif sp.raw_length_mm < sp.screw_type.min_length_mm:
            findings.append((f"screw:{sp.trajectory.name}", f"no catalogue screw fits '{sp.trajectory.name}' "
                             f"({sp.raw_length_mm:.1f} mm of bone)"))
    for end in sorted(doubtful or {}):
        # The reason itself, not "the warnings say why": a refused CLI run prints only the error.
        why = doubtful[end]
        found = re.search(r" may be (tilted wrongly|misplaced): (.*?)\.? Check it", why)
        what = "position" if found and found.group(1) == "misplaced" else "tilt"
        why = found.group(2) if found else "it was detected so and has not been moved since"
        face = (faces or {}).get(end)  # where it was found: a CLI user checks it on the CT without the scene
        at = (f"; found at {_ras(face.centre)}, normal "
              f"({', '.join(f'{x:.2f}' for x in face.normal)})" if face is not None else "")
        findings.append((f"endplate:{end}", f"the {end} endplate's {what} is uncertain: {why}{at} (check it in the "
                         f"sagittal and coronal views and turn its plane to the bone, or set {end}_endplate)"))
    if side_unseen:
        findings.append(("unchecked:aorta", "the strut's side was chosen automatically without knowing where the aorta "
                         "and the heart are (no exclude seed in them, no keep-out labels; a CT without contrast does "
                         "not show them): give keep-out labels (--keep-out; e.g. TotalSegmentator's), exclude seeds in "
                         "contrast-filled vessels, or choose the side yourself after looking at the CT (placement, "
                         "e.g. anterolateral_right, or placement_angle_deg)"))
    findings.extend(unseen_beside)  # [(id, message)]: a strut beside the cervical bodies (placement.py)
    for name, part, margin in blocked_lines:
        findings.append((f"access:{name}", f"the drill and driver line of screw '{name}' ({DRIVER_REACH_MM:g} mm "
                         f"outward along its axis) runs into the implant's {part} ({-margin:.1f} mm too close): the "
                         "screw cannot be drilled or driven with the implant in place"))
    accepted = [f for f in findings if f[0] in plan.accepted_risks]
    safety = {
        "required_clearance_mm": required,
        "clearance_mm": clearance,
        "overlap_mm3": overlap,
        "closest_ras": closest,  # where on the implant each structure comes closest
        "keep_out": keep_out.describe() if keep_out is not None else {"source": "none", "structures": {},
                                                                      "not_checked": {"all": "no keep-out anatomy"}},
        "findings": [{"id": i, "message": m, "accepted": (i, m) in accepted} for i, m in findings],
        "accepted": [i for i, _ in accepted],
    }
    return safety, [f for f in findings if f not in accepted]


def _ras(point) -> str:
    return f"RAS ({', '.join(f'{x:.1f}' for x in point)})"


def _where_near(plan, point, faces) -> str:
    """Which part of the implant comes closest at ``point`` (RAS) and what moves it: a footplate (within its
    thickness of an endplate, the largest variant's sitting deeper, and over it) or the strut. A CLI user gets only
    the finding: on the chest CT's C7 -> T3 it was the T3 footplate, 0.7 mm from the cord, which the strut's side
    cannot change."""
    if point is None:
        return ""
    p = np.asarray(point, float)
    at = f"; at {_ras(p)}"
    deeper = max([float(v) for v in plan.variants_mm] or [0.0])
    for end, face in (faces or {}).items():
        h = float((p - face.centre) @ face.normal)
        off = p - face.centre - h * face.normal
        if (-deeper - 0.5 <= h <= plan.implant.footplate_thickness_mm + 1.0
                and float(np.linalg.norm(off)) <= max(face.radius_ap, face.radius_lr) + 1.0):
            level = f" ({face.level})" if face.level else ""
            return f"{at}, on the {end} footplate{level}: make the footplates smaller (implant.footplate_fraction)"
    if plan.placement == "auto" and plan.placement_angle_deg is None:
        turn = "move it round the bodies (placement, placement_angle_deg)"
    else:  # a fixed side (the chest CT's T4 -> T9 set anterior: 849 mm3 in the aorta; automatic keeps 6 mm)
        turn = ('let the planner choose its side ("placement": "auto" with placement_angle_deg null; GUI: Placement '
                "automatic), which keeps the clearance where any angle does, or set another angle")
    return (f"{at}, on the strut: {turn}, bring it nearer the bone (anterior_clearance_mm) or make it slimmer "
            "(implant.width_mm / diameter_mm)")


def require_accepted(result) -> None:
    """Refuse to export a plan with safety findings the user has not accepted (plan.accepted_risks)."""
    open_findings = getattr(result, "blocking", None) or []
    if open_findings:
        listing = "; ".join(m for _, m in open_findings)
        ids = ", ".join(f'"{i}"' for i, _ in open_findings)
        raise PlanError(
            f"The plan is not safe to export: {listing}.",
            "Change the plan (placement angle, clearance, screws, endplates) or, if you accept it as the surgeon, add "
            f"{ids} to the plan's accepted_risks (CLI: --accept-risk ID; GUI: Accept); the record states it.",
        )
