"""Implant plans end to end on phantoms with known anatomy: design, variants, scene nodes, save/load, bad input."""

import json

import numpy as np
import pytest

from PatientImplantPlannerLib.core.anatomy import distance_to_polyline
from PatientImplantPlannerLib.core.errors import PlanError, PlannerError
from PatientImplantPlannerLib.core.mesh import check_mesh
from PatientImplantPlannerLib.design.plan import Plan, design_implant
from PatientImplantPlannerLib.design.strut import ImplantParameters
from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
from PatientImplantPlannerLib.scene.planfolder import apply_to_scene, find_plan_folder, plan_from_scene


@pytest.fixture(scope="module")
def phantom():
    return make_spine_phantom(spacing=0.7, levels=("L1", "L2", "L3"))


def make_plan(ph, **kw):
    kw.setdefault("implant", ImplantParameters())
    return Plan(
        case_id=kw.pop("case_id", "TEST-1"),
        proximal_level="L1",
        distal_level="L3",
        proximal_point_ras=list(ph.body_point("L1")),
        distal_point_ras=list(ph.body_point("L3")),
        **kw,
    )


@pytest.fixture(scope="module")
def anterior_result(phantom):
    plan = make_plan(phantom, implant=ImplantParameters(profile="curved_plate", width_mm=10.0, depth_mm=5.0),
                     placement="anterior")
    return design_implant(plan, phantom.array, phantom.ijk_to_ras, phantom.bone_mask)


def signed_distance(points, endplate):
    return (np.asarray(points) - endplate.centre) @ endplate.normal


def test_design_matches_phantom_truth(phantom, anterior_result):
    r = anterior_result
    prox_true, dist_true = phantom.vertebra("L1").inferior_endplate, phantom.vertebra("L3").superior_endplate
    for found, true in ((r.proximal_endplate, prox_true), (r.distal_endplate, dist_true)):
        assert np.linalg.norm(found.centre - true.centre) < 1.0
        assert np.degrees(np.arccos(np.clip(found.normal @ true.normal, -1, 1))) < 3.0
    # Implant ends lie on the true endplates (the contact faces are the implant's extremes along each normal).
    v = r.nominal.mesh.vertices
    assert abs(signed_distance(v, prox_true).min()) < 0.5
    assert abs(signed_distance(v, dist_true).min()) < 0.5
    # Axis within 1 mm of the true axis between the body centres.
    c1, c3 = phantom.vertebra("L1").body_centre, phantom.vertebra("L3").body_centre
    true_axis = phantom.axis_points
    s = (true_axis - c1) @ (c3 - c1) / np.linalg.norm(c3 - c1) ** 2
    assert distance_to_polyline(r.axis_points, true_axis[(s >= 0) & (s <= 1)]).max() < 1.0
    assert check_mesh(r.nominal.mesh).ok
    assert r.measurements["interference_mm3"] < 1.0  # the plate lies in front of the intact L2 body
    assert not any(sp.breach for sp in r.screws)
    # The two warnings: no vessel was checked (the phantom has none, and the plan no exclude seed), and the drill
    # lines, kept clear of the implant, cross the intact L2 body the plate lies in front of (the screws go through
    # the footplates in the discs). Measured here against the phantom's own L2 label.
    assert len(r.warnings) == 2 and r.warnings[0].startswith("The aorta and the heart were not kept out")
    assert "drill and driver line of 4 screw(s) crosses bone" in r.warnings[1]
    l2 = phantom.anatomy_labels() == phantom.vertebra_label_values()["L2"]
    inv = np.linalg.inv(phantom.ijk_to_ras)
    s = np.arange(1.0, 40.0 + 1e-9, 0.5)
    for tr in r.trajectories:
        ijk = np.rint((tr.entry - s[:, None] * tr.direction) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        ok = np.all((ijk >= 0) & (ijk < np.array(l2.shape[::-1])), axis=1)
        through_l2 = 0.5 * float(l2[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]].sum())
        assert through_l2 > 10.0
        assert r.measurements["drill_line_bone_mm"][tr.name] == pytest.approx(through_l2, abs=3.0)


def test_axis_strut_through_intact_vertebra_is_reported(phantom):
    r = design_implant(make_plan(phantom, placement="axis"), phantom.array, phantom.ijk_to_ras, phantom.bone_mask)
    assert r.measurements["interference_mm3"] > 1000.0  # the L2 body is in the way of a strut on the axis
    assert any("intersects" in w for w in r.warnings)
    assert not any("does not reach the spinal axis" in w for w in r.warnings)  # L2 is in the segment


def test_interference_counts_bone_the_segmentation_missed(phantom):
    """Seeded in the two docking vertebrae only (the CLI's default), the segment may lack the intact L2 between
    them: the interference is still measured against all bone of the CT there, and the missing body is named."""
    from scipy import ndimage

    labels, _ = ndimage.label(phantom.bone_mask)
    ends = {labels[tuple(np.rint(phantom.ras_to_ijk([phantom.body_point(n)])[0][::-1]).astype(int))]
            for n in ("L1", "L3")}
    seeded = np.isin(labels, list(ends - {0}))
    l2 = phantom.vertebra_labels == phantom.vertebra("L2").label
    seeded &= ~l2  # as if the seeds never reached L2
    assert seeded.any() and not (seeded & l2).any()
    r = design_implant(make_plan(phantom, placement="axis"), phantom.array, phantom.ijk_to_ras, seeded)
    assert r.measurements["interference_mm3"] > 1000.0
    assert any("intersects" in w for w in r.warnings)
    # ... and the bone and check models, made from the segment, would lack L2: said, with the fix.
    (missing,) = [w for w in r.warnings if "does not reach the spinal axis" in w]
    assert "segmentation.seeds_ras" in missing
    run = float(missing.split(" along ")[1].split(" mm")[0])
    ends = [np.array([float(v) for v in part.split(")")[0].split(",")]) for part in missing.split("RAS (")[1:3]]
    truth = phantom.vertebra("L2")
    print(run, ends, truth.body_height)
    assert truth.body_height - 6.0 <= run <= truth.body_height + 12.0  # L2 less the reach, at most a disc more
    along = [float((e - truth.body_centre) @ truth.axis_direction) for e in ends]
    assert along[0] < 0 < along[1]  # the stretch spans L2's centre


@pytest.mark.parametrize("extra", [2.0, 3.0, 4.0])
def test_variants_are_longer_with_holes_fixed_to_their_footplate(anterior_result, extra):
    r = anterior_result
    nominal, variant = r.nominal, r.variants[extra]
    assert variant.length_mm - nominal.length_mm == pytest.approx(extra, abs=0.05)
    assert check_mesh(variant.mesh).ok
    # Distal contact plane moved out by exactly `extra`; the proximal end did not move.
    d = r.distal_endplate
    assert -signed_distance(variant.mesh.vertices, d).min() == pytest.approx(extra, abs=0.05)
    assert signed_distance(variant.mesh.vertices, r.proximal_endplate).min() == pytest.approx(
        signed_distance(nominal.mesh.vertices, r.proximal_endplate).min(), abs=1e-6)
    for h0, h1 in zip(nominal.holes, variant.holes):
        shift = variant.distal_shift if h0.end == "distal" else np.zeros(3)
        np.testing.assert_allclose(h1.entry, h0.entry + shift, atol=1e-9)
        np.testing.assert_allclose(h1.direction, h0.direction, atol=1e-12)
        assert h1.diameter_mm == h0.diameter_mm
    # Same footplates, moved rigidly: identical volumes.
    assert variant.distal_footplate.volume() == pytest.approx(nominal.distal_footplate.volume(), rel=1e-6)


def test_kyphotic_spine_profile_does_not_twist():
    ph = make_spine_phantom(spacing=0.8, levels=("T12", "L1", "L2", "L3"), kyphosis_deg=25.0)
    plan = Plan(case_id="KYPH", proximal_level="T12", distal_level="L3",
                proximal_point_ras=list(ph.body_point("T12")), distal_point_ras=list(ph.body_point("L3")),
                implant=ImplantParameters(profile="rounded_rectangle", width_mm=10.0, depth_mm=6.0),
                placement="anterior")
    r = design_implant(plan, ph.array, ph.ijk_to_ras, ph.bone_mask)
    frames = r.nominal.frames
    tangents = frames[:, 2]
    # The sagittal anterior direction at each point: patient anterior (+A) made perpendicular to the tangent.
    a_ref = np.array([0.0, 1.0, 0.0])
    ref = a_ref - (tangents @ a_ref)[:, None] * tangents
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    deviation = np.degrees(np.arccos(np.clip(np.sum(frames[:, 0] * ref, axis=1), -1, 1)))
    assert deviation.max() < 5.0
    bend = np.degrees(np.arccos(np.clip(tangents[0] @ tangents[-1], -1, 1)))
    assert bend > 8.0  # the path really is curved (two discs and one body of a 25 degree kyphosis)
    assert check_mesh(r.nominal.mesh).ok


def test_plan_json_round_trip_regenerates_identical_meshes(phantom, anterior_result, tmp_path):
    path = tmp_path / "plan.json"
    anterior_result.plan.save(str(path))
    loaded = Plan.load(str(path))
    assert loaded.to_dict() == anterior_result.plan.to_dict()
    again = design_implant(loaded, phantom.array, phantom.ijk_to_ras, phantom.bone_mask)
    assert np.array_equal(again.nominal.mesh.vertices, anterior_result.nominal.mesh.vertices)
    assert np.array_equal(again.nominal.mesh.faces, anterior_result.nominal.mesh.faces)
    for extra in anterior_result.variants:
        assert np.array_equal(again.variants[extra].mesh.vertices, anterior_result.variants[extra].mesh.vertices)
    with pytest.raises(PlannerError, match="already exists"):
        anterior_result.plan.save(str(path))


def test_scene_nodes_edits_and_scene_reload(ctx, phantom, anterior_result, tmp_path):
    ct = phantom.add_to_scene(ctx, "Phantom")
    nodes = apply_to_scene(ctx, anterior_result, ct)
    n_nodes = ctx.scene.GetNumberOfNodes()
    assert nodes.axis.GetNumberOfControlPoints() >= 2
    assert len(nodes.screws) == 4 and set(nodes.models) == {"nominal", "+2 mm", "+3 mm", "+4 mm"}
    assert nodes.models["nominal"].GetPolyData().GetNumberOfCells() == anterior_result.nominal.mesh.n_triangles
    # Each screw line is as long as its screw (the views' length readout), pointing the planned way.
    read_back = plan_from_scene(ctx, "TEST-1").trajectories
    for line, sp, t in zip(nodes.screws, anterior_result.screws, read_back):
        assert line.GetLineLengthWorld() == pytest.approx(sp.length_mm, abs=1e-3)
        d = np.subtract(t["target"], t["entry"])
        np.testing.assert_allclose(d / np.linalg.norm(d), sp.trajectory.direction, atol=1e-6)
    # Regenerating updates the same nodes: no duplicates.
    apply_to_scene(ctx, anterior_result, ct)
    assert ctx.scene.GetNumberOfNodes() == n_nodes
    # The user drags the distal endplate 1.5 mm caudally: the regenerated implant follows.
    plane = nodes.distal_endplate
    c = np.zeros(3)
    plane.GetCenterWorld(c)
    n = anterior_result.distal_endplate.normal
    plane.SetCenterWorld(*(c - 1.5 * n))
    edited = plan_from_scene(ctx, "TEST-1")
    assert edited.distal_endplate is not None and edited.axis_control_points is not None
    r2 = design_implant(edited, phantom.array, phantom.ijk_to_ras, phantom.bone_mask)
    assert r2.nominal.length_mm - anterior_result.nominal.length_mm == pytest.approx(1.5, abs=0.1)
    # Scene save -> reload keeps the plan.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert ctx.app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None)
    mrml = bundle / "bundle.mrml"
    assert mrml.exists()
    ctx.scene.Clear(False)
    assert find_plan_folder(ctx, "TEST-1") == 0
    ctx.scene.SetURL(str(mrml))
    assert ctx.scene.Import()
    reloaded = plan_from_scene(ctx, "TEST-1")
    assert reloaded.implant.as_dict() == anterior_result.plan.implant.as_dict()
    np.testing.assert_allclose(reloaded.distal_endplate["centre"], edited.distal_endplate["centre"], atol=1e-4)
    models = [ctx.scene.GetNthNodeByClass(i, "vtkMRMLModelNode") for i in range(4)]
    assert all(m is not None and m.GetPolyData().GetNumberOfCells() > 0 for m in models)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, ph: setattr(p, "distal_level", "L1"), "both L1"),
        (lambda p, ph: setattr(p, "distal_point_ras", list(p.proximal_point_ras)), "same point"),
        (lambda p, ph: setattr(p, "variants_mm", [2.0, -1.0]), "-1"),
        (lambda p, ph: setattr(p, "variants_mm", [80.0]), "80"),
        (lambda p, ph: setattr(p, "axis_control_points", [[0.0, 0.0, 0.0]]), "at least two"),
        (lambda p, ph: (setattr(p, "implant", ImplantParameters(diameter_mm=40.0)), setattr(p, "placement", "axis")),
         "footplate"),
        (lambda p, ph: setattr(p, "proximal_point_ras", [500.0, 500.0, 500.0]), ""),
        (lambda p, ph: setattr(p, "placement", "sideways"), "placement"),
    ],
)
def test_bad_plans_are_refused_with_a_message(phantom, change, message):
    plan = make_plan(phantom)
    change(plan, phantom)
    with pytest.raises(PlannerError) as err:
        design_implant(plan, phantom.array, phantom.ijk_to_ras, phantom.bone_mask)
    assert message in str(err.value)
    assert err.value.fix


def test_endplate_parallel_to_axis_and_missing_screw_are_refused(phantom, anterior_result):
    plan = Plan.from_dict(json.loads(json.dumps(anterior_result.plan.to_dict())))
    d = anterior_result.distal_endplate.as_dict()
    d["normal"] = list(anterior_result.distal_endplate.anterior)  # plane now contains the axis direction
    d["anterior"] = list(-np.asarray(anterior_result.distal_endplate.normal))
    plan.distal_endplate = d
    plan.proximal_endplate = anterior_result.proximal_endplate.as_dict()
    plan.axis_control_points = anterior_result.axis_control_points.tolist()
    # Named with where it is, before any placement (it was "the axis does not cross ... or the endplates are swapped").
    with pytest.raises(PlanError, match=r"distal endplate plane \(L3 superior\) at RAS \(.*\) lies (8\d|9\d) deg "
                                        r"from the spinal axis") as refused:
        design_implant(plan, phantom.array, phantom.ijk_to_ras, phantom.bone_mask)
    assert "distal_endplate in the plan" in refused.value.fix
    plan = Plan.from_dict(json.loads(json.dumps(anterior_result.plan.to_dict())))
    traj = [t.as_dict() for t in anterior_result.trajectories]
    traj[0]["entry"] = list(np.asarray(traj[0]["entry"]) + [40.0, 0.0, 0.0])
    traj[0]["target"] = list(np.asarray(traj[0]["target"]) + [40.0, 0.0, 0.0])
    plan.trajectories = traj
    with pytest.raises(PlannerError, match="(?i)miss|bone|outside"):
        design_implant(plan, phantom.array, phantom.ijk_to_ras, phantom.bone_mask)


def test_low_density_warning_is_given_once_for_all_the_screws_it_concerns():
    """Four screws in osteopenic bone give one warning naming each screw and its share, not four; other screw
    warnings stay per screw."""
    from types import SimpleNamespace

    from PatientImplantPlannerLib.design.plan import _screw_warnings

    def sp(name, *warnings):
        return SimpleNamespace(trajectory=SimpleNamespace(name=name), warnings=list(warnings))

    low = "{} % of the screw is in bone below 130 HU (osteoporotic range): expect weak purchase"
    out = _screw_warnings([sp("proximal right", low.format(64)), sp("proximal left", low.format(62)),
                           sp("distal right", low.format(77), "the screw leaves the bone 30.0 mm from its entry"),
                           sp("distal left")])
    assert len(out) == 2
    assert out[0] == "distal right: the screw leaves the bone 30.0 mm from its entry"
    assert "3 screw(s)" in out[1] and "proximal right 64 %" in out[1] and "distal right 77 %" in out[1]
    assert "distal left" not in out[1]


@pytest.mark.parametrize("contour", ["abc", 5, [[1.0, "x"]], [[2.0, -1.0], [1.0, -2.0]], [[0.0, 80.0]]])
def test_a_hand_edited_offset_contour_is_refused_naming_the_field(contour):
    """offset_contour_mm from a plan file that is not increasing [arc, change] pairs within +-50 mm: a PlanError
    naming the field and the form it takes, from validation (before any design work)."""
    from PatientImplantPlannerLib.core.errors import PlanError
    from PatientImplantPlannerLib.design.strut import ImplantParameters

    with pytest.raises(PlanError) as err:
        ImplantParameters.from_dict({"offset_contour_mm": contour}).validate()
    assert "offset_contour_mm" in err.value.problem and "[[arc mm, offset change mm], ...]" in err.value.fix
    ok = ImplantParameters.from_dict({"offset_contour_mm": [[0.0, -1.0], [5.0, 0.0]]})
    ok.validate()
    assert ok.offset_contour_mm == ((0.0, -1.0), (5.0, 0.0)) and ok.as_dict()["offset_contour_mm"] == [[0, -1], [5, 0]]


def test_level_names_are_read_as_the_vertebra_they_name():
    """'t6' and 'vertebrae_T8' are T6 and T8 (a new-user trial's 't6' was refused as not among the labelled
    vertebrae); a name that is no vertebra stays as written, for the checks to name it."""
    plan = Plan.from_dict({"proximal_level": "t6", "distal_level": "vertebrae_T8"})
    assert (plan.proximal_level, plan.distal_level) == ("T6", "T8")
    assert Plan.from_dict({"proximal_level": "upper"}).proximal_level == "upper"
