"""The Slicer module file imported with stand-ins for the GUI-only packages (slicer_stand_ins.py) and run on the
headless Slicer core: its metadata, logic, self-test (and that each self-test can fail), and the widget's handlers
with a mock ui, including the design record exported through them.
"""

import json
import os
import types

import pytest
from recordcheck import check_exported_record, segment_volume_ml
from slicer_module_checks import UI_FILE
from slicer_stand_ins import import_module_under_test, widget_under_test
from ui_checks import ui_combo_items

# Whole-export runs on phantoms (minutes together): the CI's second step, keeping the fast step near 5 min.
pytestmark = pytest.mark.slow


@pytest.fixture
def slicer_module(ctx, tmp_path, monkeypatch):
    """The module file imported against the headless core; the engine context is the test's fresh scene."""
    return import_module_under_test(ctx, tmp_path, monkeypatch)


def test_module_metadata_at_runtime(slicer_module):
    parent = types.SimpleNamespace()
    slicer_module.PatientImplantPlanner(parent)
    assert parent.title == "Patient Implant Planner"
    assert parent.categories == ["Planning"]
    assert "TotalSegmentator" in parent.acknowledgementText  # the sample data attribution
    import slicer

    assert slicer.app.connected == ("startupCompleted()", slicer_module.registerSampleData)


def test_ensure_dependencies_never_installs_in_testing_mode(slicer_module, monkeypatch):
    import slicer

    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a, **k: calls.append(a))
    assert slicer_module.ensureDependencies() is True  # manifold3d is installed here
    monkeypatch.setitem(slicer_module.REQUIRED_PACKAGES, "surely_not_installed_pkg", "surely_not_installed_pkg")
    assert slicer_module.ensureDependencies() is False
    assert calls == []


def test_sample_data_registration_loads_the_bundled_ct_without_network(slicer_module):
    """registerSampleData()'s file:// URI and checksum work with urllib, as Slicer's SampleData uses them."""
    slicer_module.PatientImplantPlannerTest().test_LoadSampleCT()


def test_self_test_runs_on_the_headless_core(slicer_module):
    """The module's own self-test, run here: phantom segmentation + export, and the sample CT via SampleData."""
    case = slicer_module.PatientImplantPlannerTest()
    case.runTest()




def test_planning_defaults_are_the_engine_defaults(slicer_module):
    """A fresh parameter node gives exactly the engine's default implant, screws, variants, placement and export
    settings, and the GUI's fixed lists (screw types, export parts, enums) match the engine's."""
    from PatientImplantPlannerLib.design.plan import PLACEMENTS, Plan
    from PatientImplantPlannerLib.design.screws import SCREW_CATALOGUE, ScrewParameters
    from PatientImplantPlannerLib.design.strut import PROFILES, ImplantParameters
    from PatientImplantPlannerLib.export.parameters import ALL_PARTS, ExportParameters
    from PatientImplantPlannerLib.parts.guides import GuideParameters
    from PatientImplantPlannerLib.parts.lattice import LatticeParameters

    logic = slicer_module.PatientImplantPlannerLogic()
    p = logic.getParameterNode()
    assert logic.implantParameters(p) == ImplantParameters()
    assert logic.screwParameters(p) == ScrewParameters()
    plan = Plan()
    assert logic.parseVariants(p.variantsMm) == plan.variants_mm
    assert (p.placement.value, p.caseId) == (plan.placement, plan.case_id)
    assert logic.bundleParameters(p) == (ExportParameters(), LatticeParameters(), GuideParameters())
    assert slicer_module.SCREW_TYPES == list(SCREW_CATALOGUE)
    assert set(slicer_module.EXPORT_PART_FIELDS) == set(ALL_PARTS)
    assert [m.value for m in slicer_module.Placement] == list(PLACEMENTS)
    assert [m.value for m in slicer_module.StrutProfile] == list(PROFILES)
    # The .ui previews what the parameter node connectors will list.
    assert ui_combo_items(UI_FILE, "placementComboBox") == [m.label() for m in slicer_module.Placement]
    assert ui_combo_items(UI_FILE, "profileComboBox") == [m.label() for m in slicer_module.StrutProfile]
    assert ui_combo_items(UI_FILE, "screwTypeComboBox") == slicer_module.SCREW_TYPES


def test_plan_and_export_settings_name_the_problem(slicer_module):
    """Missing points, bad variant text and an empty export selection are refused with problem + fix."""
    import slicer
    import vtk

    from PatientImplantPlannerLib.core.errors import PlanError, PlannerError

    logic = slicer_module.PatientImplantPlannerLogic()
    p = logic.getParameterNode()
    with pytest.raises(PlanError, match="No proximal vertebra point") as e:
        logic.planFromParameters(p)
    assert "Place a point" in e.value.fix
    for name, z in (("proximalPoint", 30.0), ("distalPoint", -30.0)):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        node.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, z))
        setattr(p, name, node)
    p.variantsMm = "2, three"
    with pytest.raises(PlanError, match="not numbers"):
        logic.planFromParameters(p)
    p.variantsMm = "2, 40"
    with pytest.raises(PlanError, match="40"):
        logic.planFromParameters(p)
    p.variantsMm = ""
    plan = logic.planFromParameters(p)
    assert plan.variants_mm == [] and plan.proximal_point_ras == [1.0, 2.0, 30.0]
    p.exportStl = False
    with pytest.raises(PlannerError, match="No file format"):
        logic.bundleParameters(p)
    p.exportStl, p.export3mf = True, True
    for field in slicer_module.EXPORT_PART_FIELDS.values():
        setattr(p, field, False)
    with pytest.raises(PlannerError, match="No part"):
        logic.bundleParameters(p)
    p.exportDrillGuides = True
    export, _lattice, _guides = logic.bundleParameters(p)
    assert export.parts == ("drill_guides",) and export.formats == ("stl", "3mf")






def test_widget_designs_follows_edits_and_exports(slicer_module, monkeypatch, tmp_path):
    """The widget's handlers on a phantom, with a mock ui and the update timer fired by hand: design, a dragged
    endplate and a moved screw regenerate (the screw stays where the user put it), a bad variant text fails once
    without a dialog and without retry loops, a good one applies, export writes the bundle, and after the plan is
    cleared edits no longer trigger updates."""

    import numpy as np
    import slicer
    import vtk

    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

    w, dialogs = widget_under_test(slicer_module, monkeypatch)
    timer = w._editor.timer
    assert timer.interval == slicer_module.AUTO_UPDATE_DELAY_MS

    phantom = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = phantom.add_to_scene(w.logic.context(), "PhantomCT")
    seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "BoneSeeds")
    for level in ("L1", "L2", "L3"):
        seeds.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))
    bone = w.logic.segmentBone(ct, w.logic.boneSegmentationParameters(seedNode=seeds))
    p = w._parameterNode = w.logic.getParameterNode()
    p.inputVolume, p.boneSegmentation, p.boneSegmentId = ct, bone.segmentation_node, bone.segment_id
    for name, level in (("proximal", "L1"), ("distal", "L3")):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        node.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))
        setattr(p, f"{name}Point", node)
    p.caseId, p.placement = "WIDGET-1", slicer_module.Placement.anterior
    p.implantProfile, p.widthMm, p.depthMm = slicer_module.StrutProfile.curved_plate, 10.0, 5.0
    p.bundleFolder = tmp_path / "exports"
    w._onParameterNodeModified()
    assert w.ui.designImplantButton.enabled is True

    w.onDesignImplantButton()
    assert dialogs == [] and w._editor.result is not None, w.ui.statusLabel.text
    assert w.ui.statusLabel.text.startswith("Implant designed.")
    nominal = w._editor.result.nominal.length_mm
    assert not timer.active

    # Drag the distal endplate 1.5 mm: the observer schedules an update, firing it lengthens the implant.
    # (The test holds no PlanNodes of its own: headless, a removed model that Python still references keeps its
    # subject hierarchy item, and the engine would then find it.)
    plane = w._editor.nodes.distal_endplate
    centre = np.zeros(3)
    plane.GetCenterWorld(centre)
    plane.SetCenterWorld(*(centre - 1.5 * w._editor.result.distal_endplate.normal))
    assert timer.active and not w._editor.screws_edited
    timer.fire()
    assert w._editor.result.nominal.length_mm - nominal == pytest.approx(1.5, abs=0.1)
    assert w.ui.statusLabel.text.startswith("Implant updated.")

    # Move a screw's entry: it is kept on the redesign.
    line = w._editor.nodes.screws[0]
    entry = np.zeros(3)
    line.GetNthControlPointPositionWorld(0, entry)
    moved = entry + np.array([0.0, 0.0, 0.5])
    line.SetNthControlPointPositionWorld(0, *moved)
    assert timer.active and w._editor.screws_edited
    timer.fire()
    assert dialogs == [], w.ui.statusLabel.text
    after = np.zeros(3)
    w._editor.nodes.screws[0].GetNthControlPointPositionWorld(0, after)
    np.testing.assert_allclose(after, moved, atol=1e-6)

    # A bad variant text: one quiet failure (status + warnings, no dialog), no automatic retry.
    p.variantsMm = "2, x"
    w._onParameterNodeModified()
    assert timer.active
    timer.fire()
    assert dialogs == [] and "not numbers" in w.ui.statusLabel.text
    assert "not numbers" in w.ui.planWarningsLabel.text
    w._onParameterNodeModified()
    assert not timer.active
    p.variantsMm = "3"
    w._onParameterNodeModified()
    timer.fire()
    assert set(w._editor.nodes.models) == {"nominal", "+3 mm"}

    # While a handle is dragged nothing is scheduled; the drop schedules one update.
    markups = slicer.vtkMRMLMarkupsNode
    axis = w._editor.nodes.axis
    axis.InvokeCustomModifiedEvent(markups.PointStartInteractionEvent)
    point = np.zeros(3)
    axis.GetNthControlPointPositionWorld(1, point)
    axis.SetNthControlPointPositionWorld(1, *(point + np.array([0.0, 0.3, 0.0])))
    assert not timer.active
    axis.InvokeCustomModifiedEvent(markups.PointEndInteractionEvent)
    assert timer.active

    # Export with that update still pending: it is applied first, with a setting changed meanwhile.
    p.variantsMm = "3, 4"
    for field in ("exportLattice", "exportReport", "exportCheckModel", "exportBoneModel", "exportDockingGuides"):
        setattr(p, field, False)
    w.onExportBundleButton()
    assert dialogs == [] and w._lastBundle is not None, w.ui.statusLabel.text
    assert not timer.active
    written = sorted(os.listdir(w._lastBundle.folder))
    assert {"WIDGET-1_implant_plus3mm_Ti6Al4V.stl", "WIDGET-1_implant_plus4mm_Ti6Al4V.stl", "manifest.json"} <= set(
        written)
    assert w.ui.openReportButton.enabled is True

    # A new scene: no plan, no observers.
    w._clearPlan()
    line.SetNthControlPointPositionWorld(0, *entry)
    assert not timer.active and w._editor.result is None




def test_widget_designs_from_vertebra_labels_without_points(slicer_module, monkeypatch):
    """With a vertebra segmentation as the level source and no points: the design button is enabled, empty level
    names are refused in the error dialog (problem + fix), named levels design the implant, and a dragged endplate
    regenerates with the same labels; without the segmentation the points are required again."""

    import numpy as np
    import slicer

    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
    from PatientImplantPlannerLib.scene.segments import set_segment_mask

    w, dialogs = widget_under_test(slicer_module, monkeypatch)
    labelsUsed = []
    realRegenerate = w.logic.regenerate

    def regenerate(*args, **kwargs):
        labelsUsed.append(kwargs.get("levelLabels"))
        return realRegenerate(*args, **kwargs)

    w.logic.regenerate = regenerate

    phantom = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = phantom.add_to_scene(w.logic.context(), "PhantomCT")
    bone = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Bone")
    boneId = bone.GetSegmentation().AddEmptySegment("bone", "bone")
    set_segment_mask(bone, boneId, phantom.bone_mask, ct)
    p = w._parameterNode = w.logic.getParameterNode()
    p.inputVolume, p.boneSegmentation, p.boneSegmentId = ct, bone, boneId
    p.levelSegmentation = slicer_module.PatientImplantPlannerTest.vertebraLabelSegmentation(phantom, ct)
    p.caseId = "WIDGET-LABELS"
    w._onParameterNodeModified()
    assert w.ui.designImplantButton.enabled is True  # no points placed

    w.onDesignImplantButton()
    assert len(dialogs) == 1 and w._editor.result is None
    assert "level name is empty (proximal, distal)" in dialogs[0] and "'vertebrae_L1'" in dialogs[0]
    assert w.ui.statusLabel.text.startswith("Implant design failed.")

    p.proximalLevel, p.distalLevel = "L1", "L3"
    w.onDesignImplantButton()
    assert len(dialogs) == 1 and w._editor.result is not None, w.ui.statusLabel.text
    labels = w._editor.plan.level_labels
    assert set(labels[1]) == {"L1", "L2", "L3"}
    nominal = w._editor.result.nominal.length_mm
    distalTruth = phantom.vertebra("L3").superior_endplate
    assert np.linalg.norm(w._editor.result.distal_endplate.centre - distalTruth.centre) < 1.5

    # Another vertebra segmentation selected meanwhile does not change the shown plan's level source.
    p.levelSegmentation = None
    plane = w._editor.nodes.distal_endplate
    centre = np.zeros(3)
    plane.GetCenterWorld(centre)
    plane.SetCenterWorld(*(centre - 1.5 * w._editor.result.distal_endplate.normal))
    w._editor.timer.fire()
    assert len(dialogs) == 1, w.ui.statusLabel.text
    assert labelsUsed and labelsUsed[-1] is labels
    assert w._editor.result.nominal.length_mm - nominal == pytest.approx(1.5, abs=0.1)

    w._onParameterNodeModified()
    assert w.ui.designImplantButton.enabled is False  # no labels: the points are needed again


# ------------------------------------------------------------------------- each self-test can fail


def _half_volume(real):
    def half_volume(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        result.volume_mm3 *= 0.5
        return result

    return half_volume


def _without_a_variant(real):
    def without_a_variant(self, *args, **kwargs):
        result, nodes = real(self, *args, **kwargs)
        nodes.models.pop("+4 mm")
        return result, nodes

    return without_a_variant


def _with_an_unlisted_file(real):
    def with_an_unlisted_file(self, *args, **kwargs):
        bundle = real(self, *args, **kwargs)
        with open(os.path.join(bundle.folder, "unlisted.stl"), "wb") as f:
            f.write(b"solid")
        return bundle

    return with_an_unlisted_file


def _swapped_levels(real):
    def swapped(self, *args, **kwargs):
        label_map, values = real(self, *args, **kwargs)
        return label_map, {**values, "L1": values["L3"], "L3": values["L1"]}

    return swapped


# self-test -> (logic method, how that method is broken)
SELF_TEST_BREAKS = {
    "test_BoneSegmentationPhantom": ("segmentBone", _half_volume),  # a wrong bone volume
    "test_DesignImplantPhantom": ("designImplant", _without_a_variant),  # a variant model lost
    "test_ExportBundlePhantom": ("exportBundle", _with_an_unlisted_file),  # a file not in the manifest
    "test_DesignFromVertebraLabels": ("levelLabels", _swapped_levels),  # L1 <-> L3 mixed up
}


@pytest.mark.parametrize("self_test", list(SELF_TEST_BREAKS))
def test_self_test_can_fail(slicer_module, monkeypatch, self_test):
    """A logic broken as listed in SELF_TEST_BREAKS makes that self-test fail."""
    method, breaker = SELF_TEST_BREAKS[self_test]
    logic_cls = slicer_module.PatientImplantPlannerLogic
    monkeypatch.setattr(logic_cls, method, breaker(getattr(logic_cls, method)))
    case = slicer_module.PatientImplantPlannerTest()
    case.setUp()
    with pytest.raises(AssertionError):
        getattr(case, self_test)()


# ------------------------------------------------------------------------- the design record from the widget


def test_widget_exports_a_record_with_its_segmentation(slicer_module, monkeypatch, tmp_path):
    """Segment, design and export with the widget's own handlers: the record shows the threshold the bone was
    segmented with and its measured volume, not 'n/a to n/a HU' and 'TO DO' (issue 8), and every section is
    filled."""
    import slicer
    import vtk

    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

    w, dialogs = widget_under_test(slicer_module, monkeypatch)
    phantom = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = phantom.add_to_scene(w.logic.context(), "PhantomCT")
    p = w._parameterNode = w.logic.getParameterNode()
    p.inputVolume = ct
    p.seedPoints = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "BoneSeeds")
    for level in ("L1", "L2", "L3"):
        p.seedPoints.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))
    w.onSegmentBoneButton()
    assert dialogs == [] and p.boneSegmentation is not None, w.ui.statusLabel.text

    for name, level in (("proximal", "L1"), ("distal", "L3")):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        node.AddControlPoint(vtk.vtkVector3d(*phantom.body_point(level)))
        setattr(p, f"{name}Point", node)
    p.caseId, p.placement = "WIDGET-REC", slicer_module.Placement.anterior
    p.proximalLevel, p.distalLevel = "L1", "L3"
    p.implantProfile, p.widthMm, p.depthMm = slicer_module.StrutProfile.curved_plate, 10.0, 5.0
    w.onDesignImplantButton()
    assert dialogs == [] and w._editor.result is not None, w.ui.statusLabel.text

    for part, field in slicer_module.EXPORT_PART_FIELDS.items():
        setattr(p, field, part in ("implant", "drill_guides", "report"))
    p.bundleFolder = tmp_path / "exports"
    w.onExportBundleButton()
    assert dialogs == [] and w._lastBundle is not None, w.ui.statusLabel.text
    check_exported_record(w._lastBundle.report_html, bone_volume_ml=segment_volume_ml(w._lastBundle.folder),
                          screw_names=[s.trajectory.name for s in w._editor.result.screws])


def test_defect_panel_defaults_are_the_engine_defaults(slicer_module, ctx):
    """A fresh parameter node's defect fields give the engine's mirror-defect defaults; with a resection plane
    placed the logic turns them into a validated plan block, and a half-placed rod is refused by name."""
    from PatientImplantPlannerLib.core.errors import PlanError
    from PatientImplantPlannerLib.design.defectparams import MirrorDefectParameters

    logic = slicer_module.PatientImplantPlannerLogic()
    p = logic.getParameterNode()
    defaults = MirrorDefectParameters()
    assert (p.defectFitClearanceMm, p.defectMarginMm, p.defectCutFaceFillMm, p.defectStrutDiameterMm,
            p.defectDrillGuides) == (defaults.fit_clearance_mm, defaults.margin_mm, defaults.cut_face_fill_mm,
                                     defaults.strut_diameter_mm, defaults.drill_guides)
    assert ui_combo_items(UI_FILE, "defectScrewTypeComboBox") == slicer_module.SCREW_TYPES
    plane = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "cut")
    plane.AddControlPointWorld(-5.0, 0.0, 0.0)
    plane.SetNormalWorld(-1.0, 0.0, 0.0)
    p.defectResectionPlaneA = plane
    block = logic.defectParameters(p)
    assert block["resection_planes"][0]["normal_ras"] == pytest.approx([-1.0, 0.0, 0.0])
    assert block["resection_planes"][0]["remove"] == "positive" and block["symmetry_plane"] is None
    rod = ctx.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "rod")
    rod.AddControlPointWorld(0.0, 0.0, 0.0)
    p.defectRodPoints = rod
    with pytest.raises(PlanError, match="second point"):
        logic.defectParameters(p)


@pytest.mark.slow  # 45 s on 2 cores (a whole defect implant with its lattice): run in CI's second step
def test_widget_defect_panel_finds_the_plane_builds_and_refuses(slicer_module, monkeypatch, tmp_path):
    """The "Defect implant" handlers with a mock ui on the pelvis phantom: Build stays disabled without a
    resection; Find plane puts the found plane on a markups plane and shows its residual; Build with a resection
    box writes the verified folder and shows its figures; a half-placed rod is refused in a dialog naming the fix,
    with no folder written."""
    import numpy as np
    import slicer
    import vtk

    from PatientImplantPlannerLib.phantoms.pelvis import make_pelvis_phantom
    from PatientImplantPlannerLib.scene.segments import set_segment_mask

    w, dialogs = widget_under_test(slicer_module, monkeypatch)
    w._setupDefectPanel()
    ph = make_pelvis_phantom(spacing=1.0)
    ct = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Pelvis")
    slicer.util.updateVolumeFromArray(ct, ph.array)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ph.ijk_to_ras[r, c]))
    ct.SetIJKToRASMatrix(m)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    boneId = seg.GetSegmentation().AddEmptySegment("bone")
    set_segment_mask(seg, boneId, ph.bone_mask, ct)
    p = w._parameterNode = w.logic.getParameterNode()
    p.inputVolume, p.boneSegmentation, p.boneSegmentId = ct, seg, boneId
    p.bundleFolder, p.caseId = tmp_path / "exports", "DEFECT-W"
    w._onParameterNodeModified()
    assert w.ui.defectFindPlaneButton.enabled is True and w.ui.defectBuildButton.enabled is False

    w.onDefectFindPlaneButton()
    assert dialogs == []
    o, n = [0.0] * 3, [0.0] * 3
    p.defectSymmetryPlane.GetOriginWorld(o)
    p.defectSymmetryPlane.GetNormalWorld(n)
    assert np.degrees(np.arccos(min(1.0, abs(np.dot(n, ph.plane_normal))))) <= 1.0
    assert "Residual" in w.ui.defectResidualLabel.text and "found" in w.ui.defectResidualLabel.text

    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Resection")
    roi.SetCenterWorld(*ph.local_to_ras((-30, 5, 25))[0])
    roi.SetSizeWorld(14.0, 14.0, 14.0)
    p.defectResectionROI = roi
    w._onParameterNodeModified()
    assert w.ui.defectBuildButton.enabled is True
    w.onDefectBuildButton()
    assert dialogs == []
    (folder,) = list((tmp_path / "exports").iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["case_id"] == "DEFECT-W" and manifest["defect"]["bone_overlap_mm3"] <= 1.0
    assert f"{manifest['defect']['implant_volume_mm3']:.0f}" in w.ui.defectResultLabel.text

    rod = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Rod")
    rod.AddControlPointWorld(*ph.local_to_ras((-30, -2, 25))[0])
    p.defectRodPoints = rod
    w.onDefectBuildButton()
    assert len(dialogs) == 1 and "second point" in dialogs[0]
    assert len(list((tmp_path / "exports").iterdir())) == 1


def test_screw_table_rows_show_the_aim_and_the_drill_line(slicer_module):
    """The screws table: how the layout aimed each screw ('by hand' for an edited line) and the bone its drill line
    crosses, from the plan result."""
    from types import SimpleNamespace

    result = SimpleNamespace(
        trajectories=[
            SimpleNamespace(name="P1", layout={"convergence_deg": 25.0, "skew_deg": -30.0, "outward_mm": 1.0}),
            SimpleNamespace(name="P2", layout={})],
        measurements={"screws": [
            {"trajectory": {"name": "P1"}, "length_mm": 28.0, "grade": {"gt250": 0.42}, "breach": False},
            {"trajectory": {"name": "P2"}, "length_mm": 26.0, "grade": {}, "breach": True}],
            "drill_line_bone_mm": {"P1": 31.5, "P2": 0.0}},
    )
    rows = slicer_module.PatientImplantPlannerLogic.screwRows(result)
    assert rows == [("P1", "28", "42", "no", "25.0 deg, skew -30 deg, 1 mm out", "32"),
                    ("P2", "26", "0", "yes", "by hand", "0")]
