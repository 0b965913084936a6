"""Drill and driver access at design time, on a short-gap phantom (a T6 -> T8 curved plate on the chest phantom,
footplates ~26 mm apart): every screw can be drilled and driven with the implant in place.

Measured here on the designed meshes (with their holes): the cylinder a 2.5 mm drill, and a 3.5 mm-wide driver,
sweep along each screw's axis from its entry 40 mm outward (the way they come in) shares no volume with the implant,
nominal or any oversized variant (whose distal end and holes move with it). The same plan with the old fixed
10-degree layout (access switched off) is measured the same way and does run the drill into the implant, so the
measurement can fail. Also: an end's screws do not cross in the body, a disc-only gap is refused at design time
with a fix naming real settings, and hand-placed screws without access are blocking findings until accepted.
"""

import numpy as np
import pytest
from measure import outward_overlap_mm3
from robustness import fix_names_settings, setting_names

from PatientImplantPlannerLib.core.errors import PlanError
from PatientImplantPlannerLib.core.mesh import to_manifold
from PatientImplantPlannerLib.design import placement as placement_module
from PatientImplantPlannerLib.design import plan as plan_module
from PatientImplantPlannerLib.design.plan import Plan, design_implant
from PatientImplantPlannerLib.imaging.keepout import from_labels
from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

REACH_MM = 40.0  # how far out along the axis the drill and the driver come from
DRILL_R, DRIVER_R = 1.25, 1.75  # 2.5 mm drill; a driver about as wide as the 3.5 mm screw


def overlaps(result, radius) -> dict:
    """{(size, screw name): mm3} over the nominal implant and every variant (distal screws moved with their end)."""
    out = {}
    sizes = [("nominal", result.nominal)] + [(f"+{k:g}", g) for k, g in sorted(result.variants.items())]
    for size, geom in sizes:
        solid = to_manifold(geom.mesh)
        for sp in result.screws:
            tr = sp.trajectory
            entry = tr.entry + (geom.distal_shift if tr.end == "distal" else 0.0)
            out[(size, tr.name)] = outward_overlap_mm3(solid, entry, tr.direction, radius, REACH_MM)
    return out


def _plan(ph, proximal="T6", distal="T8", **kw):
    plan = Plan(case_id="ACCESS", proximal_level=proximal, distal_level=distal,
                proximal_point_ras=list(ph.body_point(proximal)), distal_point_ras=list(ph.body_point(distal)), **kw)
    plan.implant.profile, plan.implant.width_mm, plan.implant.depth_mm = "curved_plate", 10.0, 5.0
    return plan


def _design(ph, plan):
    return design_implant(plan, ph.array, ph.ijk_to_ras, ph.bone_mask,
                          keep_out=from_labels(ph.keepout_labels, ph.ijk_to_ras))


@pytest.fixture(scope="module")
def phantom():
    return make_spine_phantom(spacing=1.0, levels=("T5", "T6", "T7", "T8", "T9"), with_mediastinum=True)


@pytest.fixture(scope="module")
def designed(phantom):
    return _design(phantom, _plan(phantom))


@pytest.fixture(scope="module")
def without_access(phantom):
    """The same plan laid out as before design-time access checks: fixed 10-degree convergence, strut only."""
    with pytest.MonkeyPatch.context() as mp:
        for module in (plan_module, placement_module):
            mp.setattr(module, "drill_access", lambda *a, **k: None)
        return _design(phantom, _plan(phantom))


def _angle_to_normal(result, sp) -> float:
    plate = result.proximal_endplate if sp.trajectory.end == "proximal" else result.distal_endplate
    return float(np.degrees(np.arccos(np.clip(-sp.trajectory.direction @ plate.normal, -1.0, 1.0))))


def test_the_fixed_layout_runs_the_drill_into_the_implant(without_access):
    # The case is a real short-gap failure: the old layout's drill lines hit the other footplate.
    r = without_access
    gap = np.linalg.norm(r.proximal_endplate.centre - r.distal_endplate.centre)
    assert gap < 35.0
    assert all(abs(_angle_to_normal(r, sp) - 10.0) < 0.1 for sp in r.screws)
    hit = {k: v for k, v in overlaps(r, DRILL_R).items() if v > 0.01}
    assert hit, "the fixed 10-degree layout should run a drill into the implant on this phantom"


def test_every_drill_and_driver_line_clears_the_implant(designed):
    r = designed
    ends = [sp.trajectory.end for sp in r.screws]
    assert ends.count("proximal") == 2 and ends.count("distal") == 2  # the default two per end still fit
    for radius in (DRILL_R, DRIVER_R):
        vol = overlaps(r, radius)
        assert len(vol) == 4 * (1 + len(r.variants))
        assert max(vol.values()) == 0.0, {k: round(v, 3) for k, v in vol.items() if v > 0}
    assert r.blocking == []


def test_screw_angles_stay_in_the_allowed_range_and_are_reported(designed):
    r = designed
    for sp in r.screws:
        angle = _angle_to_normal(r, sp)
        layout = sp.as_dict()["layout"]
        # The tilt from the endplate normal is the reported convergence (a skew turns it, not its size).
        assert angle == pytest.approx(layout["convergence_deg"], abs=0.05)
        assert 10.0 <= angle <= 30.0 + 1e-6
        assert abs(layout["skew_deg"]) <= 45.0 + 1e-6 and 0.0 <= layout["outward_mm"] <= 4.0
    assert any(_angle_to_normal(r, sp) > 10.5 for sp in r.screws)  # it had to adapt here


def _axis_distance(a, b, samples=400) -> float:
    """Smallest distance between two screws' axes over their planned lengths (dense sampling of both)."""
    s = np.linspace(0, a.length_mm, samples)[:, None]
    t = np.linspace(0, b.length_mm, samples)[:, None]
    pa = a.trajectory.entry + s * a.trajectory.direction
    pb = b.trajectory.entry + t * b.trajectory.direction
    return float(np.min(np.linalg.norm(pa[:, None] - pb[None], axis=2)))


def test_screws_of_an_end_do_not_cross(designed):
    for end in ("proximal", "distal"):
        mine = [sp for sp in designed.screws if sp.trajectory.end == end]
        for i in range(len(mine)):
            for j in range(i + 1, len(mine)):
                # Two 3.5 mm screws: their axes stay at least a thread diameter apart.
                assert _axis_distance(mine[i], mine[j]) >= 3.5


def test_a_disc_only_gap_is_refused_at_design_time_with_real_fixes(phantom):
    with pytest.raises(PlanError) as err:
        _design(phantom, _plan(phantom, proximal="T6", distal="T7"))
    e = err.value
    assert "No drill or driver access" in e.problem and "footplate" in e.problem
    ok, why = fix_names_settings(e.fix, setting_names())
    assert ok, why
    assert "trajectories" in e.fix and "screws.lateral_fraction" in e.fix


def test_hand_placed_screws_without_access_block_export_until_accepted(phantom, without_access):
    old = [sp.trajectory for sp in without_access.screws]
    hit = {name for (size, name), v in overlaps(without_access, DRILL_R).items() if size == "nominal" and v > 0.01}
    assert hit
    plan = _plan(phantom, trajectories=[t.as_dict() for t in old])
    r = _design(phantom, plan)
    flagged = {i.split(":", 1)[1] for i, _ in r.blocking if i.startswith("access:")}
    # Every screw whose 2.5 mm drill measurably hits the implant is flagged (the planner's line is wider).
    assert hit <= flagged
    accepted = _design(phantom, _plan(phantom, trajectories=[t.as_dict() for t in old],
                                      accepted_risks=[f"access:{n}" for n in flagged]))
    assert not any(i.startswith("access:") for i, _ in accepted.blocking)
    assert {f["id"] for f in accepted.measurements["safety"]["findings"] if f["accepted"]} >= {
        f"access:{n}" for n in flagged}


@pytest.mark.parametrize("mismatch_mm", [0.0, 1e-4, 1e-3])
def test_the_strut_alone_keeps_no_sheets_of_its_footplates(mismatch_mm):
    """The access check measures drill lines against the implant less its footplates. Footplate meshes that do not
    quite coincide with the implant's own (as on the CT angiogram's T7 -> T10, where sheets without volume were left
    on a footplate's free face and rims and every screw was refused for access) must leave nothing of the footplate
    behind: here a footplate and its tongue, moved by ``mismatch_mm`` against the implant's, and a 6 mm rod standing
    14 mm off the footplate's centre. Near the footplate only the rod is left, with the rod's volume."""
    import manifold3d as m3d

    from PatientImplantPlannerLib.core.anatomy import Endplate
    from PatientImplantPlannerLib.core.mesh import from_manifold
    from PatientImplantPlannerLib.design.access import strut_without_footplates

    def plate(z):  # a 3 mm disc with a tongue reaching the rod, its contact face at z (the gap beyond it)
        return (m3d.Manifold.cylinder(3.0, 8.0, 8.0, 64) + m3d.Manifold.cube([16.0, 6.0, 3.0]).translate([0, -3, 0])
                ).translate([0, 0, z])

    rod = m3d.Manifold.cylinder(34.0, 3.0, 3.0, 32).translate([14.0, 0, -37.0])
    proximal, distal = plate(-3.0), plate(-40.0)
    implant = m3d.Manifold.batch_boolean([rod, proximal, distal], m3d.OpType.Add)
    moved = proximal.translate([mismatch_mm, mismatch_mm, 0.0])
    geom = type("Geometry", (), {"mesh": from_manifold(implant), "proximal_footplate": from_manifold(moved),
                                 "distal_footplate": from_manifold(distal)})
    plates = {"proximal": to_manifold(geom.proximal_footplate), "distal": to_manifold(geom.distal_footplate)}
    ends = (Endplate([0, 0, 0.0], [0, 0, -1.0], [0, 1.0, 0], 10, 10), Endplate([0, 0, -40.0], [0, 0, 1.0],
                                                                                [0, 1.0, 0], 10, 10))
    strut = strut_without_footplates(geom, plates, *ends)
    v = from_manifold(strut).vertices
    assert len(strut.decompose()) == 1
    assert np.hypot(v[:, 0] - 14.0, v[:, 1]).max() <= 3.0 + 1e-3  # nothing but the rod, near the plates too
    assert strut.volume() == pytest.approx(rod.volume(), rel=0.01)


@pytest.mark.parametrize("part, named, not_named", [("strut", "implant.diameter_mm", "implant.footplate_fraction"),
                                                    ("distal footplate", "implant.footplate_fraction",
                                                     "implant.diameter_mm")])
def test_an_access_refusal_names_the_fix_for_the_part_in_the_way(part, named, not_named):
    """Where the strut blocks every drill line a smaller footplate does not help (on the CT angiogram the placement
    had already shrunk them for the canal): the fix offers a slimmer strut. Where the other footplate blocks, a
    smaller footplate opposite. Each fix names settings that exist."""
    from PatientImplantPlannerLib.core.anatomy import Endplate
    from PatientImplantPlannerLib.design.screws import ScrewParameters, default_trajectories

    class Blocked:  # every line runs 0.5 mm into ``part``
        def margin(self, end, entry, direction, radius):
            return -0.5, part

    ends = (Endplate([0, 0, 0.0], [0, 0, -1.0], [0, 1.0, 0], 25, 20),
            Endplate([0, 0, -40.0], [0, 0, 1.0], [0, 1.0, 0], 25, 20))
    with pytest.raises(PlanError) as err:
        default_trajectories(*ends, 3.0, ScrewParameters(), access=Blocked())
    e = err.value
    assert "No drill or driver access" in e.problem and f"implant's {part}" in e.problem
    assert named in e.fix and not_named not in e.fix
    ok, why = fix_names_settings(e.fix, setting_names())
    assert ok, why
