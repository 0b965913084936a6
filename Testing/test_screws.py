"""Screw planning measured against ground truth: default trajectories on the footplates of a synthetic spine,
screw lengths against the exact exit of each ray from the vertebral body (elliptic cylinder with flat endplates),
breaches, CT grading, holes cut in the implant, markups round trip, and every bad input refused."""

import json

import numpy as np
import pytest

from PatientImplantPlannerLib.core.anatomy import Endplate, unit
from PatientImplantPlannerLib.core.errors import PlanError
from PatientImplantPlannerLib.design.screws import (
    SCREW_CATALOGUE,
    ScrewParameters,
    Trajectory,
    default_trajectories,
    hole_specs,
    plan_screw,
    plan_screws,
    screw_misses_implant,
)
from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
from PatientImplantPlannerLib.scene.markups import END_ATTRIBUTE, set_screw_line, trajectory_from_line

SPACING = 0.7
THICKNESS = 3.0
STEP_35 = SCREW_CATALOGUE["3.5 cancellous"].step_mm


@pytest.fixture(scope="module", params=[0.0, 14.0], ids=["straight", "kyphotic"])
def spine(request):
    """L1-L3 phantom, implant between the L1 inferior and L3 superior endplates (L2 is the defect)."""
    ph = make_spine_phantom(SPACING, ("L1", "L2", "L3"), kyphosis_deg=request.param, noise_hu=15.0, seed=3)
    prox, dist = ph.vertebra("L1").inferior_endplate, ph.vertebra("L3").superior_endplate
    params = ScrewParameters()
    trajectories = default_trajectories(prox, dist, THICKNESS, params)
    plans = plan_screws(trajectories, ph.array, ph.bone_mask, ph.ijk_to_ras, params)
    return ph, prox, dist, params, trajectories, plans


def own_vertebra(ph, end):
    return ph.vertebra("L1") if end == "proximal" else ph.vertebra("L3")


def body_interval(vt, p, d):
    """Exact [s_in, s_out] of the ray p + s d inside the vertebral body: an elliptic cylinder (radii of the
    endplates) around the local axis, cut by the two flat endplates."""
    w = vt.axis_direction
    ant = vt.superior_endplate.anterior
    lat = unit(np.cross(w, ant))
    a, b, h2 = vt.superior_endplate.radius_lr, vt.superior_endplate.radius_ap, vt.body_height / 2
    q = p - vt.body_centre
    qu, qv, qw = q @ lat, q @ ant, q @ w
    du, dv, dw = d @ lat, d @ ant, d @ w
    # Slab |w| <= h2.
    t1, t2 = (-h2 - qw) / dw, (h2 - qw) / dw
    lo, hi = min(t1, t2), max(t1, t2)
    # Ellipse (u/a)^2 + (v/b)^2 <= 1: quadratic in s.
    A = (du / a) ** 2 + (dv / b) ** 2
    B = 2 * (qu * du / a**2 + qv * dv / b**2)
    C = (qu / a) ** 2 + (qv / b) ** 2 - 1
    if A > 1e-12:
        disc = B * B - 4 * A * C
        assert disc > 0, "ray misses the body"
        r1, r2 = (-B - np.sqrt(disc)) / (2 * A), (-B + np.sqrt(disc)) / (2 * A)
        lo, hi = max(lo, r1), min(hi, r2)
    assert hi > lo
    return lo, hi


def ideal_length(truth_far, margin, st):
    lengths = st.lengths()
    return float(lengths[lengths <= truth_far - margin].max())


# ---- default trajectories ----------------------------------------------------------------------------------------


def test_default_trajectories_start_on_free_face_and_point_into_own_vertebra(spine):
    ph, prox, dist, params, trajectories, _ = spine
    assert sorted(t.name for t in trajectories) == ["distal left", "distal right", "proximal left", "proximal right"]
    st = SCREW_CATALOGUE[params.screw_type]
    for t in trajectories:
        plate = prox if t.end == "proximal" else dist
        assert abs((t.entry - plate.centre) @ plate.normal - THICKNESS) < 0.01
        assert np.linalg.norm(t.target - t.entry) == pytest.approx(30.0)
        # Into the body, tilted by the convergence angle towards the body's centre line.
        d = t.direction
        tilt = np.degrees(np.arccos(np.clip(d @ -plate.normal, -1, 1)))
        assert tilt == pytest.approx(params.convergence_deg, abs=1e-6)
        radial = t.entry - plate.centre - THICKNESS * plate.normal
        assert d @ radial < 0
        # Patient right is +x in RAS.
        assert ("right" in t.name) == (t.entry[0] > 0)
        # The head seats beside the strut (12 mm circle) and the hole stays inside the footplate (1 mm wall).
        r_in_plane = np.linalg.norm(radial)
        assert r_in_plane >= 6.0 + st.head_mm / 2 + 0.5 - 1e-9
        assert r_in_plane + (st.diameter_mm + params.hole_clearance_mm) / 2 <= 0.7 * plate.radius_lr - 1.0 + 1e-9
        # Deep along the line: inside its own vertebra (label and exact body), not the other one.
        vt = own_vertebra(ph, t.end)
        lo, hi = body_interval(vt, t.entry, d)
        assert lo == pytest.approx(THICKNESS / np.cos(np.radians(params.convergence_deg)), abs=1e-6)
        ijk = np.rint(ph.ras_to_ijk(t.entry + 15.0 * d)[0]).astype(int)
        assert ph.vertebra_labels[ijk[2], ijk[1], ijk[0]] == vt.label


def test_left_and_right_screws_are_mirror_images(spine):
    _, prox, _, _, trajectories, _ = spine
    pr = [t for t in trajectories if t.end == "proximal"]
    c = prox.centre + THICKNESS * prox.normal
    assert np.linalg.norm((pr[0].entry - c) + (pr[1].entry - c)) < 1e-9
    assert pr[0].direction @ pr[1].direction == pytest.approx(np.cos(np.radians(20.0)))


def test_layouts_for_other_screw_counts_and_a_strut_beside_the_footplate():
    prox = Endplate([0, 0, 20.0], [0, 0, -1.0], [0, 1.0, 0], 21.0, 16.0)
    dist = Endplate([0, 0, -20.0], [0, 0, 1.0], [0, 1.0, 0], 21.0, 16.0)
    fa, fl = 0.7 * 16.0, 0.7 * 21.0
    # Anterior placement: the strut stands in front of the footplate, the screws centre on the endplate.
    trs = default_trajectories(prox, dist, THICKNESS, ScrewParameters(), strut_offset_anterior_mm=20.0)
    for t in trs:
        assert t.entry[1] == pytest.approx(0.0) and abs(t.entry[0]) == pytest.approx(0.45 * fl)
    # Four screws around a slim strut: distinct names, heads apart, holes inside the footplate, converging.
    trs = default_trajectories(prox, dist, THICKNESS, ScrewParameters(per_end=4), strut_radius_mm=2.5)
    assert len(trs) == 8 and len({t.name for t in trs}) == 8
    st = SCREW_CATALOGUE["3.5 cancellous"]
    for end, plate in (("proximal", prox), ("distal", dist)):
        entries = np.array([t.entry for t in trs if t.end == end])
        rel = entries - plate.centre
        gaps = [np.linalg.norm(a - b) for i, a in enumerate(entries) for b in entries[i + 1:]]
        assert min(gaps) >= st.head_mm
        a, lat = rel @ plate.anterior, rel @ plate.lateral
        hole_r = 3.75 / 2
        assert np.all(((np.abs(a) + hole_r) / (fa - 1.0)) ** 2 + ((np.abs(lat) + hole_r) / (fl - 1.0)) ** 2 <= 1.0)
        for t in trs:
            if t.end == end:
                assert t.direction @ (t.entry - plate.centre - THICKNESS * plate.normal) < 0


# ---- lengths, breach, grade ----------------------------------------------------------------------------------------


def test_planned_lengths_match_analytic_exit_and_never_exceed_it(spine):
    ph, _, _, params, _, plans = spine
    st = SCREW_CATALOGUE[params.screw_type]
    assert len(plans) == 4
    for p in plans:
        t = p.trajectory
        lo, hi = body_interval(own_vertebra(ph, t.end), t.entry, t.direction)
        # Measured boundaries within half a voxel along the ray of the exact ones (far cortex pessimistic by that).
        tol = 0.5 * SPACING / max(abs(t.direction).max(), 0.5) + 0.05
        assert abs(p.bone_entry_mm - lo) <= tol
        assert -2 * tol <= p.far_cortex_mm - hi <= 0.05
        assert p.raw_length_mm == pytest.approx(p.far_cortex_mm - params.safety_margin_mm)
        # Never longer than the truth allows; at most one catalogue step shorter than the ideal choice.
        ideal = ideal_length(hi, params.safety_margin_mm, st)
        assert p.length_mm <= hi - params.safety_margin_mm
        assert p.length_mm in (ideal, ideal - STEP_35)
        assert p.length_mm in st.lengths()
        assert not p.breach and p.breach_at_mm is None
        assert p.safe_length_mm == p.length_mm  # the longest screw the breach test passes: the chosen one
        assert p.hole_diameter_mm == pytest.approx(3.75)


def test_grade_fractions_sum_to_one_and_reflect_cancellous_core(spine):
    _, _, _, _, _, plans = spine
    for p in plans:
        g = p.grade
        assert set(g) == {"lt130", "130to250", "gt250"}
        assert sum(g.values()) == pytest.approx(1.0, abs=1e-9)
        # Osteopenic core (~160 HU) over most of the screw; the 1.2 mm near endplate cortex is a few percent.
        assert g["lt130"] + g["130to250"] >= 0.8
        assert 0.01 <= g["gt250"] <= 0.2
        assert 130 <= p.mean_hu <= 260


def test_trajectory_tilted_out_of_the_body_is_a_breach(spine):
    ph, prox, _, params, trajectories, _ = spine
    t = next(t for t in trajectories if t.end == "proximal")
    outward = unit(t.entry - prox.centre - THICKNESS * prox.normal)
    for tilt, expect_breach in ((70.0, True), (0.0, False)):
        c = np.radians(tilt)
        d = np.cos(c) * -prox.normal + np.sin(c) * outward
        tilted = Trajectory("proximal tilted", "proximal", t.entry, t.entry + 30 * d)
        p = plan_screw(tilted, ph.array, ph.bone_mask, ph.ijk_to_ras, "3.5 cancellous", params)
        assert p.breach is expect_breach
        if expect_breach:
            lo, hi = body_interval(own_vertebra(ph, "proximal"), t.entry, d)
            assert hi - lo < 6.0  # the line really leaves through the lateral wall within a few mm
            assert p.breach_at_mm is not None and p.breach_at_mm < p.length_mm
            assert any("breach" in w for w in p.warnings)


def test_plan_is_json_serialisable_and_holes_follow_screws(spine):
    _, _, _, params, _, plans = spine
    d = json.loads(json.dumps([p.as_dict() for p in plans]))
    assert d[0]["length_mm"] == plans[0].length_mm and d[0]["screw_type"]["diameter_mm"] == 3.5
    holes = hole_specs(plans)
    for h, p in zip(holes, plans):
        assert h.end == p.trajectory.end
        assert np.allclose(h.entry, p.trajectory.entry) and np.allclose(h.direction, p.trajectory.direction)
        assert h.diameter_mm == pytest.approx(3.5 + params.hole_clearance_mm)
        assert h.length_mm == pytest.approx(p.length_mm + 5.0)


def test_holes_cut_the_footplates_and_a_displaced_screw_misses(spine):
    from PatientImplantPlannerLib.design.implant import build_implant
    from PatientImplantPlannerLib.design.strut import ImplantParameters

    ph, prox, dist, params, _, plans = spine
    geom = build_implant(ph.axis_points, prox, dist, ImplantParameters(), holes=hole_specs(plans))
    plug = np.pi * (3.75 / 2) ** 2 * THICKNESS
    # Each hole removes about a footplate-thick plug (the convergence tilt lengthens it by 1/cos 10 deg).
    assert np.allclose(geom.hole_volumes_mm3, plug / np.cos(np.radians(10)), rtol=0.08)
    for p in plans:
        fp = geom.proximal_footplate if p.trajectory.end == "proximal" else geom.distal_footplate
        assert not screw_misses_implant(p.trajectory, fp, p.hole_diameter_mm)
    t = plans[0].trajectory
    away = Trajectory("proximal off", "proximal", t.entry + [40.0, 0, 0], t.target + [40.0, 0, 0])
    assert screw_misses_implant(away, geom.proximal_footplate, 3.75)


# ---- exact behaviour on a synthetic block ------------------------------------------------------------------------


def block(length_mm, spacing=0.5, core_hu=180.0, cortex_hu=900.0):
    """Bone block from z = 10 mm to z = 10 + length_mm (x, y within +-10 mm), 1 mm cortex at both ends."""
    nz = int((length_mm + 30) / spacing)
    z = np.arange(nz) * spacing
    xy = (np.arange(int(40 / spacing)) - (int(40 / spacing) - 1) / 2) * spacing
    inside_z = (z >= 10) & (z < 10 + length_mm)
    inside_xy = np.abs(xy) <= 10
    mask = inside_z[:, None, None] & inside_xy[None, :, None] & inside_xy[None, None, :]
    ct = np.where(mask, core_hu, 20.0).astype(np.int16)
    cortex = ((z < 11) | (z >= 9 + length_mm))[:, None, None] & mask
    ct[cortex] = cortex_hu
    m = np.diag([spacing, spacing, spacing, 1.0])
    m[:3, 3] = [xy[0], xy[0], 0.0]
    return ct, mask, m


def test_block_lengths_rounding_and_clamping():
    params = ScrewParameters()
    st = SCREW_CATALOGUE["3.5 cancellous"]
    for length, expect, clamped, breach in ((31.0, 38.0, False, False), (200.0, 60.0, True, False),
                                            (1.0, 10.0, True, True)):
        ct, mask, m = block(length)
        t = Trajectory("distal right", "distal", [0, 0, 0.0], [0, 0, 30.0])
        p = plan_screw(t, ct, mask, m, st, params)
        assert p.bone_entry_mm == pytest.approx(9.75, abs=0.01)  # halfway between the voxel centres 9.5 and 10.0
        if length < 100:
            exit_ = 10 + length - 0.25
            assert p.far_cortex_mm == pytest.approx(exit_ - 0.25, abs=0.01)
        assert p.length_mm == expect
        assert p.breach is breach
        assert bool(p.warnings) is clamped


def test_grade_of_dense_and_soft_blocks():
    params = ScrewParameters()
    for core, key in ((400.0, "gt250"), (60.0, "lt130"), (180.0, "130to250")):
        ct, mask, m = block(50.0, core_hu=core, cortex_hu=core)
        p = plan_screw(Trajectory("p", "proximal", [0, 0, 0.0], [0, 0, 1.0]), ct, mask, m, "3.5 cancellous", params)
        assert p.grade[key] == pytest.approx(1.0, abs=0.01)  # the first 0.1 mm blends with the soft tissue
        assert p.length_mm == 56.0  # far cortex 59.5 (pessimistic), minus 2 mm, rounded down to 56
    ct, mask, m = block(50.0, core_hu=60.0)
    p = plan_screw(Trajectory("p", "proximal", [0, 0, 0.0], [0, 0, 1.0]), ct, mask, m, "3.5 cancellous", params)
    assert any("osteoporotic" in w for w in p.warnings)


def test_screw_grazing_the_side_of_the_block_is_a_breach():
    ct, mask, m = block(40.0)
    params = ScrewParameters()
    # Axis 0.8 mm inside the side wall: the axis stays in bone, the 3.5 mm thread does not.
    t = Trajectory("p", "proximal", [9.2, 0, 0.0], [9.2, 0, 1.0])
    p = plan_screw(t, ct, mask, m, "3.5 cancellous", params)
    assert p.breach and p.breach_at_mm == pytest.approx(p.bone_entry_mm)
    t = Trajectory("p", "proximal", [7.0, 0, 0.0], [7.0, 0, 1.0])
    assert not plan_screw(t, ct, mask, m, "3.5 cancellous", params).breach


def test_a_thread_leaving_a_side_wall_near_the_tip_gets_the_longest_screw_that_stays_in_bone():
    """10 deg off the block's axis from 2 mm below it: the axis leaves through the far end at 52.8 mm (a 50 mm
    screw), but the thread's outer edge leaves through the side wall at (10 - 1.75 cos 10) / sin 10 = 47.7 mm. The
    screw is 46 mm: sized on its axis it was a breach the user could not fix (no setting sets a screw's length)."""
    ct, mask, m = block(44.0)
    theta = np.radians(10.0)
    d = np.array([np.sin(theta), 0.0, np.cos(theta)])
    entry = np.array([0.0, 0.0, 2.0])
    p = plan_screw(Trajectory("p", "proximal", entry, entry + 30.0 * d), ct, mask, m, "3.5 cancellous",
                   ScrewParameters())
    rim_exit = (10.0 - 1.75 * np.cos(theta)) / np.sin(theta)
    assert p.raw_length_mm > 50.0  # the axis alone allows 50 mm
    assert p.length_mm == 46.0 and p.length_mm <= rim_exit
    assert not p.breach and p.breach_at_mm is None
    note = next(w for w in p.warnings if "shortened from 50 to 46 mm" in w)
    assert rim_exit - 0.5 <= float(note.split("bone ")[1].split(" mm")[0]) <= rim_exit + 1.0


# ---- markups -------------------------------------------------------------------------------------------------------


def lines_of(ctx, trajectories) -> list:
    nodes = []
    for t in trajectories:
        nodes.append(ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", t.name))
        set_screw_line(nodes[-1], t)
    return nodes


def trajectories_from_markups(nodes) -> list:
    return [trajectory_from_line(n) for n in nodes]


def test_markups_round_trip_with_user_edit(ctx, spine):
    ph, _, _, params, trajectories, plans = spine
    nodes = lines_of(ctx, trajectories)
    assert len(nodes) == 4
    for node, t in zip(nodes, trajectories):
        assert node.GetNumberOfControlPoints() == 2 and node.GetAttribute(END_ATTRIBUTE) == t.end
    back = trajectories_from_markups(nodes)
    for a, b in zip(back, trajectories):
        assert a.name == b.name and a.end == b.end
        assert np.allclose(a.entry, b.entry, atol=1e-5) and np.allclose(a.target, b.target, atol=1e-5)
    # The user drags the second point of the first screw to aim straight along the endplate normal.
    t0 = trajectories[0]
    new_target = t0.entry + 30.0 * -ph.vertebra("L1").inferior_endplate.normal
    nodes[0].SetNthControlPointPositionWorld(1, *new_target)
    edited = trajectories_from_markups(nodes)
    assert np.allclose(edited[0].target, new_target, atol=1e-5)
    assert np.allclose(edited[1].target, trajectories[1].target, atol=1e-5)
    p = plan_screws(edited[:1], ph.array, ph.bone_mask, ph.ijk_to_ras, params)[0]
    lo, hi = body_interval(ph.vertebra("L1"), edited[0].entry, edited[0].direction)
    assert hi == pytest.approx(THICKNESS + ph.vertebra("L1").body_height)
    assert p.length_mm <= hi - params.safety_margin_mm and p.length_mm >= hi - params.safety_margin_mm - 2 * STEP_35


# ---- bad input -----------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(ctx):
    ct, mask, m = block(30.0)
    params = ScrewParameters()
    good = Trajectory("proximal left", "proximal", [0, 0, 0.0], [0, 0, 30.0])
    assert plan_screw(good, ct, mask, m, "3.5 cancellous", params).length_mm > 0

    cases = [
        (Trajectory("proximal left", "proximal", [0, 0, -50.0], [0, 0, 30.0]), "3.5 cancellous", "outside the CT"),
        (Trajectory("proximal left", "proximal", [0, 0, 0.0], [0, 0, 0.0]), "3.5 cancellous", "zero length"),
        (Trajectory("proximal left", "proximal", [0, 0, 5.0], [0, 0, -30.0]), "3.5 cancellous", "never enters bone"),
        (Trajectory("proximal left", "proximal", [0, 0, 0.0], [30, 0, 0.0]), "3.5 cancellous", "never enters bone"),
        (good, "4.5 cortical", "3.5 cancellous"),
    ]
    for traj, st, text in cases:
        with pytest.raises(PlanError, match=text) as err:
            plan_screw(traj, ct, mask, m, st, params)
        msg = str(err.value)
        assert err.value.fix
        if st == "3.5 cancellous":
            assert "proximal left" in msg
        else:
            assert "6.5 cancellous" in msg  # the whole catalogue is listed
    with pytest.raises(PlanError, match="do not match"):
        plan_screw(good, ct, mask[:-1], m, "3.5 cancellous", params)
    with pytest.raises(PlanError, match="Unknown screw type"):
        plan_screws([good], ct, mask, m, ScrewParameters(screw_type="2.7 cortical"))

    for bad in (dict(per_end=0), dict(per_end=2.5), dict(safety_margin_mm=-1.0), dict(convergence_deg=80.0),
                dict(lateral_fraction=1.5), dict(hole_clearance_mm=float("nan"))):
        with pytest.raises(PlanError):
            ScrewParameters(**bad).validate()
    with pytest.raises(PlanError, match="Unknown screw parameter"):
        ScrewParameters.from_dict({"screw_type": "3.5 cancellous", "pitch": 1.0})
    assert ScrewParameters.from_dict(ScrewParameters(per_end=1).as_dict()) == ScrewParameters(per_end=1)

    # No room on a small footplate: the error says how to make room.
    small = Endplate([0, 0, 10.0], [0, 0, -1.0], [0, 1.0, 0], 12.0, 10.0)
    other = Endplate([0, 0, -30.0], [0, 0, 1.0], [0, 1.0, 0], 12.0, 10.0)
    with pytest.raises(PlanError, match="No room") as err:
        default_trajectories(small, other, THICKNESS, ScrewParameters(screw_type="6.5 cancellous"))
    assert "slimmer strut" in str(err.value) and "footplate_fraction" in err.value.fix
    # A footplate already covering the endplate cannot grow: that fix is not offered.
    with pytest.raises(PlanError, match="No room") as err:
        default_trajectories(small, other, THICKNESS, ScrewParameters(screw_type="6.5 cancellous"),
                             footplate_fraction=1.0, strut_radius_mm=9.0)
    assert "footplate_fraction" not in err.value.fix and "trajectories" in err.value.fix

    # A markups line with a missing point or no end cannot be read back.
    line = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "stray line")
    with pytest.raises(PlanError, match="exactly two points"):
        trajectories_from_markups([line])
    line.AddControlPointWorld(1.0, 2.0, 3.0)
    line.AddControlPointWorld(1.0, 2.0, 9.0)
    with pytest.raises(PlanError, match="which end"):
        trajectories_from_markups([line])
    nodes = lines_of(ctx, [Trajectory("distal left", "distal", [0, 0, 0.0], [0, 0, 5.0])])
    nodes[0].SetNthControlPointPositionWorld(1, 0.0, 0.0, 0.0)
    with pytest.raises(PlanError, match="zero length"):
        trajectories_from_markups(nodes)


@pytest.mark.parametrize("gap_mm, far_beyond_gap", [(1.0, True), (5.0, False)])
def test_segmentation_holes_are_not_the_far_cortex_but_real_gaps_are(gap_mm, far_beyond_gap):
    """A one-voxel hole in the bone mask is bridged; a 5 mm gap (a disc, a joint) ends the bone."""
    ct, mask, m = block(40.0)
    z = np.arange(mask.shape[0]) * 0.5
    hole = (z >= 20.0) & (z < 20.0 + gap_mm)
    mask[hole] = False
    ct[hole] = 20
    t = Trajectory("proximal left", "proximal", [0, 0, 0.0], [0, 0, 30.0])
    p = plan_screw(t, ct, mask, m, "3.5 cancellous", ScrewParameters())
    if far_beyond_gap:
        assert p.far_cortex_mm == pytest.approx(50.0 - 0.5, abs=0.01)  # the block's real end
    else:
        assert p.far_cortex_mm == pytest.approx(19.75 - 0.25, abs=0.01)  # stops before the gap


def test_one_screw_goes_beside_a_wide_strut_when_it_does_not_fit_in_front():
    """Strut on the axis of a wide, shallow footplate (14 x 8.4 mm semi-axes): a single screw does not fit in front
    of it (the footplate is too shallow there) but does beside it, where the two-screw layout would put one."""
    prox = Endplate([0, 0, 10.0], [0, 0, -1.0], [0, 1.0, 0], 20.0, 12.0)
    dist = Endplate([0, 0, -30.0], [0, 0, 1.0], [0, 1.0, 0], 20.0, 12.0)
    trs = default_trajectories(prox, dist, THICKNESS, ScrewParameters(per_end=1), strut_radius_mm=6.4)
    assert [t.end for t in trs] == ["proximal", "distal"]
    for t, plate in zip(trs, (prox, dist)):
        offset = t.entry - plate.centre - THICKNESS * plate.normal
        assert abs(offset @ plate.lateral) > 6.4 + 3.0 and abs(offset @ plate.anterior) < 1e-6
        assert "left" in t.name or "right" in t.name


def test_a_screw_stops_its_margin_short_of_a_keep_out_structure_inside_its_docking_body():
    """The docking body found from the CT on thick slices is a prism that can reach into the canal behind a
    misplaced face (2.9 % of one on the chest CT's 1 mm copy was the labelled cord): the keep-out structures are taken
    out of it, so a screw aimed at the canal stops the safety margin short of it. 1 mm grid, bone everywhere, docking
    body x 10-50 mm, a canal slab from x = 35 mm; the screw enters at x = 12 along +x."""
    from PatientImplantPlannerLib.design.plan import _docking_masks
    from PatientImplantPlannerLib.imaging.keepout import KeepOut, Structure

    shape, m = (30, 30, 60), np.eye(4)  # [k, j, i]; RAS = (i, j, k) mm
    ct = np.full(shape, 400.0)
    crop = np.ones((20, 20, 41), dtype=bool)  # k 5-24, j 5-24, i 10-50
    levels = type("Levels", (), {"docking": {"proximal": (crop, np.array([5, 5, 10]))}})()
    canal = Structure("spinal_canal", "bony ring", np.ones((30, 30, 10), dtype=bool), np.array([0, 0, 35]))
    params = ScrewParameters()
    line = [Trajectory("proximal", "proximal", [12.0, 15.0, 15.0], [40.0, 15.0, 15.0])]
    tips = {}
    for name, keep_out in (("without", None), ("with", KeepOut(m, shape, [canal]))):
        masks = _docking_masks(levels, shape, keep_out)
        (p,) = plan_screws(line, ct, np.ones(shape, dtype=bool), m, params, docking_masks=masks)
        tips[name] = p.tip[0]
        print(f"{name} the canal kept out: tip at x = {p.tip[0]:.1f} mm, {p.length_mm:g} mm")
    # The canal's first voxel centre is x = 35 (its face at 34.5): the tip the 2 mm margin short of it, and 10 mm and
    # more short of the prism's far end without it.
    assert tips["with"] <= 34.5 - params.safety_margin_mm + 1e-6
    assert tips["without"] >= tips["with"] + 10.0
