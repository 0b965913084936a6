"""The design record exported through the CLI path: one record shape, every section filled.

The Slicer widget's path (its segment, design and export handlers) is exported and checked the same way in
test_slicer_module_widget.py (checks in recordcheck.py).
"""

import json

import numpy as np
from recordcheck import check_exported_record, record_sections, segment_volume_ml

from PatientImplantPlannerLib.record.designrecord import SegmentationInfo


def test_cli_record_has_every_section_and_the_segmentation(tmp_path):
    from PatientImplantPlannerLib.cli import run_plan
    from PatientImplantPlannerLib.design.plan import Plan
    from PatientImplantPlannerLib.export.parameters import ExportParameters
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

    ph = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = ph.write(str(tmp_path / "phantom.nrrd"))
    plan = Plan(case_id="REC-CLI", proximal_level="L1", distal_level="L3",
                proximal_point_ras=list(ph.body_point("L1")), distal_point_ras=list(ph.body_point("L3")))
    plan.implant.profile, plan.placement = "curved_plate", "anterior"
    plan.implant.width_mm, plan.implant.depth_mm = 10.0, 5.0
    summary = run_plan(ct, plan, str(tmp_path / "exports"),
                       export_params=ExportParameters(parts=("implant", "drill_guides", "report")))
    # The volume shown is the exported segmentation's, read back from its file.
    s = check_exported_record(summary["report"], bone_volume_ml=segment_volume_ml(summary["folder"]),
                              screw_names=[sc["name"] for sc in summary["screws"]])
    assert "drill guide" in s["Surgical guides"]


def _truth_ml(phantom) -> float:
    return float(phantom.bone_mask.sum()) * float(np.prod(phantom.spacing)) / 1000.0


def test_record_from_a_loaded_segmentation_names_its_source_and_measures_it(ctx, tmp_path):
    """A segment the planner did not make: unknown parameters are n/a, not invented; its source is named and
    its volume measured."""
    import slicer

    from PatientImplantPlannerLib.design.plan import Plan
    from PatientImplantPlannerLib.export.parameters import ExportParameters
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
    from PatientImplantPlannerLib.scene.segments import set_segment_mask
    from PatientImplantPlannerLib.scene.workflow import design_in_scene, export_in_scene

    ph = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = ph.add_to_scene(ctx, "PhantomCT")
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "DrawnBone")
    seg_id = seg.GetSegmentation().AddEmptySegment("bone", "bone")
    set_segment_mask(seg, seg_id, ph.bone_mask, ct)
    plan = Plan(case_id="REC-LOADED", proximal_level="L1", distal_level="L3",
                proximal_point_ras=list(ph.body_point("L1")), distal_point_ras=list(ph.body_point("L3")))
    result, nodes = design_in_scene(ctx, ct, seg, seg_id, plan)
    bundle = export_in_scene(ctx, result, nodes, ct, seg, seg_id, out_parent=str(tmp_path),
                             export_params=ExportParameters(parts=("implant", "report")),
                             segmentation=SegmentationInfo.from_json(""))  # the widget with no stored record
    s = record_sections(bundle.report_html)["Bone segmentation"]
    assert "Threshold | n/a to n/a HU" in s
    assert "Source | segmentation 'DrawnBone' in the scene (not segmented by this planner)" in s
    assert f"Segmented bone volume | {_truth_ml(ph):.1f} ml" in s


def test_segmentation_info_reads_what_earlier_scenes_stored():
    """Scenes saved before the typed record stored {"ct": name, "bone_segmentation": parameters}."""
    from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters

    params = BoneSegmentationParameters(threshold_min=250.0, seeds_ras=[(1.0, 2.0, 3.0)]).as_dict()
    old = SegmentationInfo.from_json(json.dumps({"ct": "CT1", "bone_segmentation": params}))
    assert old.parameters == params and old.ct_name == "CT1" and old.volume_ml is None
    info = SegmentationInfo(parameters=params, volume_ml=12.5, ct_name="CT1", warnings=["w"])
    assert SegmentationInfo.from_json(info.to_json()) == info
    assert SegmentationInfo.from_json("") == SegmentationInfo()


def test_fe_figures_fill_the_record_and_drive_the_checklist():
    """With the FE check's per-size figures the record's FE entry is done (no 'TO DO'), its summary names the lowest
    safety factor, and the checklist row is OK above 1 and ATTENTION below."""
    from PatientImplantPlannerLib.record.checklist import risk_checklist
    from PatientImplantPlannerLib.record.designrecord import fe_check
    from PatientImplantPlannerLib.record.values import ATTENTION, OK, TODO

    def size(sf):
        return {"load_N": 500.0, "axial_stiffness_N_per_mm": 1400.0, "rod_axial_stiffness_N_per_mm": 52000.0,
                "stiffness_ratio_vs_rod": 0.027, "max_von_mises_MPa": 795.0 / sf, "p99_von_mises_MPa": 200.0,
                "safety_factor_yield": sf, "strength_ratio_vs_rod": 1.2, "tetrahedra": 7000,
                "porous_layer": "left out"}

    def row(entry):
        return next(r for r in risk_checklist({"fe_check": entry}) if r[0].startswith("FE check"))

    good = fe_check({"nominal": size(3.1), "+4 mm": size(2.9)})
    assert good["done"] and good["min_safety_factor_yield"] == 2.9 and "+4 mm" in good["summary"]
    assert row(good)[1] == OK and "2.90" in row(good)[2]
    assert row(fe_check({"nominal": size(0.8)}))[1] == ATTENTION
    assert fe_check(None) == {} and row({})[1] == TODO


def test_the_stiffness_row_takes_the_fe_figure_over_the_cross_section_when_there_is_one():
    """A new-user trial read 'Stiffness vs 5.5 mm rod: OK, axial x1.9' in the checklist beside an FE table giving
    0.027 x the rod (a plate 28 mm off the spinal axis bends under the axial load). With an FE result the row uses
    it; without one, the cross-section ratios."""
    from PatientImplantPlannerLib.record.checklist import design_considerations, risk_checklist
    from PatientImplantPlannerLib.record.designrecord import fe_check
    from PatientImplantPlannerLib.record.values import ATTENTION, OK

    def size(ratio):
        return {"load_N": 500.0, "axial_stiffness_N_per_mm": 52000.0 * ratio, "rod_axial_stiffness_N_per_mm": 52000.0,
                "stiffness_ratio_vs_rod": ratio, "max_von_mises_MPa": 250.0, "p99_von_mises_MPa": 100.0,
                "safety_factor_yield": 3.2, "strength_ratio_vs_rod": 0.09, "tetrahedra": 7000,
                "porous_layer": "left out"}

    measured = {"implant": {"measurements": {"axial_stiffness_ratio": 1.9, "bending_stiffness_ratio": 0.6}}}

    def row(record):
        return next(r for r in risk_checklist(record) if r[0] == "Stiffness vs 5.5 mm rod")

    assert row(measured)[1] == ATTENTION and "x1.9" in row(measured)[2]  # the section only (bending 0.6 < 1)
    with_fe = {**measured, "fe_check": fe_check({"nominal": size(0.05), "+4 mm": size(0.027)})}
    status, text = row(with_fe)[1:]
    assert status == ATTENTION and "x0.027" in text and "off the axis" in text
    alternatives = next(c for c in design_considerations(with_fe) if c[0] == "Alternatives")
    assert "x0.027 as stiff as the rod" in alternatives[2] and "less stiff axially" not in alternatives[2]
    stiff = {**measured, "fe_check": fe_check({"nominal": size(1.4)})}
    assert row(stiff)[1] == OK and "x1.4" in row(stiff)[2]


def test_a_screw_warning_the_plan_sums_up_is_listed_once():
    """A trial's record listed each screw's low-density warning twice: once in the plan's sum over the screws, once
    per screw. A screw's other warnings are still listed."""
    from PatientImplantPlannerLib.record.sections import _all_warnings

    low = "62 % of the screw is in bone below 130 HU (osteoporotic range): expect weak purchase"
    record = {"warnings": ["2 screw(s) lie mostly in bone below 130 HU (osteoporotic range; share of each screw's "
                           "length in bone: proximal right 62 %, distal left 58 %): expect weak purchase."],
              "screws": [{"name": "proximal right", "warnings": [low, "the bone continues to the edge of the CT"]},
                         {"name": "distal left", "warnings": [low.replace("62", "58")]}]}
    warnings = _all_warnings(record)
    assert sum("weak purchase" in w for w in warnings) == 1
    assert "Screw proximal right: the bone continues to the edge of the CT" in warnings
