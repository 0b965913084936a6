"""Randomised plausible phantom plans for the robustness figure (issue 7 point 8), shared by
Testing/test_robustness.py and bench/bench_robustness.py.

Each case is drawn from its own seed (``random_case(seed)``), so a case can be re-run alone. A case varies what a
user varies: voxel size 0.5-1.5 mm, kyphosis or lordosis, thoracic / thoracolumbar / lumbar levels (adjacent or
2-4 apart), strut profile and size, screws per end and type, placement (automatic, axis, named, a fixed angle),
with or without the mediastinum (keep-out from its labels or from the CT's own exclude seeds), level points or a
vertebra label map. The bone mask is the phantom's truth: segmentation is not what is measured here.

Adjacent levels (``Case.disc_only``, a fifth of the draws) are drawn too, but a strut replaces at least one
vertebral body: those requests must be refused with the fix "dock one level further", and the success figure of
issue 7 point 8 is taken over the strut plans (two to four levels apart).

``run_case`` designs the plan and classifies the outcome: a plan, a refusal (PlannerError) whose fix must name a
setting that exists (``fix_names_settings``), or a crash.
"""

import re
import time
from dataclasses import dataclass, field, fields

import numpy as np

THORACIC = [f"T{n}" for n in range(2, 13)]
LUMBAR = [f"L{n}" for n in range(1, 6)]
SPINE = THORACIC + LUMBAR
# The reference cases' other region (C4 -> T2, C6 -> T11): cervical and upper thoracic docking levels.
CERVICOTHORACIC = [f"C{n}" for n in range(3, 8)] + [f"T{n}" for n in range(1, 5)]
NAMED = ("anterior", "anterolateral_right", "lateral_right", "anterolateral_left", "lateral_left")


@dataclass
class Case:
    seed: int
    spacing: float
    levels: tuple  # phantom levels, proximal first
    proximal: str
    distal: str
    kyphosis_deg: float
    mediastinum: bool
    keep_out: str  # "labels" | "ct" (exclude seeds in the aorta and heart when there is a mediastinum)
    level_source: str  # "points" | "labels"
    implant: dict
    screws: dict
    placement: str
    placement_angle_deg: float = None
    jitter: list = field(default_factory=list)  # mm added to each level point (a user's click is off-centre)

    @property
    def disc_only(self) -> bool:
        """Adjacent docking levels: the gap is one disc, no vertebral body is replaced. Not a strut plan: footplate
        screws there can only be drilled through the other footplate and the next vertebra (design/access.py
        refuses them, naming the fix: dock one level further), so the robustness figure counts these apart."""
        return len(self.levels) == 2

    def describe(self) -> str:
        size = {k: v for k, v in self.implant.items() if k != "profile"}
        angle = "" if self.placement_angle_deg is None else f" {self.placement_angle_deg:+.0f} deg"
        return (f"seed {self.seed}: {self.proximal}->{self.distal} of {'/'.join(self.levels)} @{self.spacing:.2f} mm "
                f"kyph {self.kyphosis_deg:+.0f} {'mediastinum/' + self.keep_out if self.mediastinum else 'plain'} "
                f"levels:{self.level_source} {self.implant['profile']} {size} screws {self.screws} "
                f"{self.placement}{angle}")


def random_case(seed: int, max_spacing: float = 1.5, min_spacing: float = 0.5, spine=None) -> Case:
    """A plausible plan on a small phantom, deterministic for ``seed``, its levels drawn from ``spine`` (SPINE:
    T2-L5; CERVICOTHORACIC: C3-T4)."""
    from PatientImplantPlannerLib.phantoms.spine import level_size

    spine = spine or SPINE
    rng = np.random.default_rng(seed)
    gap = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.4, 0.25, 0.15]))  # 1 = adjacent (a disc only)
    first = int(rng.integers(0, len(spine) - gap))
    proximal, distal = spine[first], spine[first + gap]
    levels = spine[first:first + gap + 1]
    thoracic = distal.startswith("T")  # cervical: lordotic, no mediastinum drawn
    # Kyphosis per disc as in patients: thoracic kyphotic, lumbar lordotic, both with some spread.
    per_disc = rng.uniform(-2.0, 8.0) if thoracic else rng.uniform(-5.0, 2.0)
    mediastinum = bool(thoracic and rng.random() < 0.6)
    profile = str(rng.choice(["circle", "rounded_rectangle", "curved_plate"]))
    small = level_size(proximal)[0] < 0.8  # upper/mid thoracic bodies are 25-30 mm wide
    if profile == "circle":
        implant = {"profile": profile, "diameter_mm": round(float(rng.uniform(8.0, 12.0 if small else 16.0)), 1)}
    else:
        implant = {"profile": profile, "width_mm": round(float(rng.uniform(8.0, 12.0 if small else 16.0)), 1),
                   "depth_mm": round(float(rng.uniform(4.0, 6.0 if small else 8.0)), 1)}
        if profile == "curved_plate":
            implant["plate_curvature_radius_mm"] = round(float(rng.uniform(15.0, 30.0)), 1)
    # 6.5 mm screws only where a surgeon would use them: lower thoracic and lumbar bodies.
    screw = "6.5 cancellous" if not small and rng.random() < 0.3 else "3.5 cancellous"
    screws = {"screw_type": screw, "per_end": int(rng.integers(1, 5))}
    r = rng.random()
    angle = None
    if r < 0.5:
        placement = "auto"
    elif r < 0.65:
        placement = "axis"
    elif r < 0.9:
        placement = str(rng.choice(NAMED))
    else:
        placement, angle = "auto", float(np.round(rng.uniform(-90.0, 90.0)))
    return Case(
        seed=seed,
        spacing=round(float(rng.uniform(min_spacing, max_spacing)), 2),
        levels=tuple(levels),
        proximal=proximal,
        distal=distal,
        kyphosis_deg=round(per_disc * gap, 1),
        mediastinum=mediastinum,
        keep_out=str(rng.choice(["labels", "ct"])) if mediastinum else "ct",
        level_source=str(rng.choice(["points", "labels"], p=[0.7, 0.3])),
        implant=implant,
        screws=screws,
        placement=placement,
        placement_angle_deg=angle,
        jitter=[rng.uniform(-3.0, 3.0, 3).round(2).tolist() for _ in range(2)],
    )


# ---- settings a fix may name --------------------------------------------------------------------------------------


def setting_names() -> dict:
    """{"plan": plan keys, "implant" / "screws" / "segmentation": their keys, "cli": long options of the plan
    command, "values": choice values a fix may quote (placements, profiles, screw types)}."""
    from PatientImplantPlannerLib.cli import build_parser
    from PatientImplantPlannerLib.design.plan import PLACEMENTS, Plan
    from PatientImplantPlannerLib.design.screws import SCREW_CATALOGUE, ScrewParameters
    from PatientImplantPlannerLib.design.strut import PROFILES, ImplantParameters
    from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    cli = {o for a in sub.choices["plan"]._actions for o in a.option_strings if o.startswith("--")}
    return {
        "plan": {f.name for f in fields(Plan)},
        "implant": {f.name for f in fields(ImplantParameters)},
        "screws": {f.name for f in fields(ScrewParameters)},
        "segmentation": {f.name for f in fields(BoneSegmentationParameters)},
        "cli": cli,
        "values": set(PLACEMENTS) | set(PROFILES) | set(SCREW_CATALOGUE),
    }


def fix_names_settings(fix: str, names: dict) -> tuple:
    """(ok, why): the fix names at least one existing setting, and every setting-like word in it exists
    (``block.key``, snake_case keys, ``--options``)."""
    known = names["plan"] | names["implant"] | names["screws"] | names["segmentation"] | names["values"]
    found, unknown = [], []
    for opt in re.findall(r"--[a-z][a-z-]+", fix):
        (found if opt in names["cli"] else unknown).append(opt)
    text = re.sub(r"--[a-z][a-z-]+", " ", fix)
    for block, key in re.findall(r"\b([a-z]+)\.([a-z_]+)\b", text):
        if block in ("implant", "screws", "segmentation"):
            (found if key in names[block] else unknown).append(f"{block}.{key}")
    for word in re.findall(r"\b[a-z]+(?:_[a-z0-9]+)+\b", text):
        (found if word in known else unknown).append(word)
    if unknown:
        return False, f"names settings that do not exist: {sorted(set(unknown))}"
    if not found:
        return False, "names no setting"
    return True, ""


# ---- running a case -------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    status: str  # "plan" | "refused" | "crash"
    reason: str = ""  # refusal category (first words of the problem) or exception type
    message: str = ""
    fix_ok: bool = True
    fix_why: str = ""
    blocking: list = field(default_factory=list)  # safety finding ids of a plan that export would refuse
    seconds: float = 0.0
    placement: dict = field(default_factory=dict)
    screws_placed: tuple = ()  # (proximal, distal) screws actually planned


def reason_of(problem: str) -> str:
    """A refusal's category: its problem sentence with the numbers taken out."""
    first = problem.split(":")[0].split(". ")[0]
    return re.sub(r"[-+]?\d+(\.\d+)?", "#", first).strip()


def make_phantom(case: Case):
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

    return make_spine_phantom(spacing=case.spacing, levels=case.levels, kyphosis_deg=case.kyphosis_deg,
                              with_mediastinum=case.mediastinum, seed=case.seed)


def make_plan(case: Case, ph):
    from PatientImplantPlannerLib.design.plan import Plan
    from PatientImplantPlannerLib.design.screws import ScrewParameters
    from PatientImplantPlannerLib.design.strut import ImplantParameters

    exclude = []
    if case.mediastinum and case.keep_out == "ct":
        from PatientImplantPlannerLib.phantoms.spine import KEEP_OUT_LABELS

        # One click deep inside the aorta and one in the heart where the phantom has them, as a user would.
        for name in ("aorta", "heart"):
            m = ph.keepout_labels == KEEP_OUT_LABELS[name]
            if m.any():
                from scipy import ndimage

                depth = ndimage.distance_transform_edt(m)
                k, j, i = np.unravel_index(int(np.argmax(depth)), m.shape)
                exclude.append(ph.ijk_to_ras_points([[i, j, k]])[0].tolist())
    plan = Plan(
        case_id=f"ROBUST-{case.seed}",
        proximal_level=case.proximal,
        distal_level=case.distal,
        proximal_point_ras=(ph.body_point(case.proximal) + case.jitter[0]).tolist(),
        distal_point_ras=(ph.body_point(case.distal) + case.jitter[1]).tolist(),
        implant=ImplantParameters(**case.implant),
        screws=ScrewParameters(**case.screws),
        placement=case.placement,
        placement_angle_deg=case.placement_angle_deg,
    )
    plan.segmentation.exclude_seeds_ras = exclude
    return plan


def run_case(case: Case, names: dict = None) -> Outcome:
    from PatientImplantPlannerLib.core.errors import PlannerError
    from PatientImplantPlannerLib.design.plan import design_implant
    from PatientImplantPlannerLib.imaging.keepout import from_labels

    names = names or setting_names()
    t0 = time.perf_counter()
    ph = make_phantom(case)
    plan = make_plan(case, ph)
    keep_out = from_labels(ph.keepout_labels, ph.ijk_to_ras) if case.mediastinum and case.keep_out == "labels" \
        else None
    label_kw = {}
    if case.level_source == "labels":
        label_kw = {"label_map": ph.anatomy_labels(), "label_values": ph.vertebra_label_values()}
    try:
        r = design_implant(plan, ph.array, ph.ijk_to_ras, ph.bone_mask, keep_out=keep_out, **label_kw)
    except PlannerError as exc:
        ok, why = fix_names_settings(exc.fix, names)
        return Outcome(case, "refused", reason_of(exc.problem), str(exc), ok, why,
                       seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a crash is an outcome to count, not to stop the run
        return Outcome(case, "crash", type(exc).__name__, f"{type(exc).__name__}: {exc}", False, "crash",
                       seconds=time.perf_counter() - t0)
    per_end = tuple(sum(sp.trajectory.end == e for sp in r.screws) for e in ("proximal", "distal"))
    return Outcome(case, "plan", blocking=[i for i, _ in r.blocking], seconds=time.perf_counter() - t0,
                   placement=r.measurements["placement_detail"], screws_placed=per_end)
