"""The design record exported through the CLI path: one record shape, every section filled.

The Slicer widget's path (its segment, design and export handlers) is exported and checked the same way in
test_slicer_module_widget.py with ``check_exported_record``.
"""

import html
import json
import os
import re

import numpy as np
import pytest

from PatientImplantPlannerLib.record import SegmentationInfo
from PatientImplantPlannerLib.report import REPORT_SECTIONS


def record_sections(html_path: str) -> dict:
    """{section title: its visible text, cells separated by ' | '} of an exported design record."""
    text = open(html_path, encoding="utf-8").read()
    text = re.sub(r'src="data:[^"]+"', "", text)
    chunks = re.split(r'<h2 id="s\d+">\d+\. ([^<]+)</h2>', text)[1:]
    sections = {}
    for title, body in zip(chunks[::2], chunks[1::2]):
        visible = re.sub(r"(\s*\|\s*)+", " | ", re.sub(r"<[^>]+>", " | ", body)).strip(" |")
        sections[html.unescape(title)] = html.unescape(visible)
    return sections


def check_exported_record(html_path: str, bone_volume_ml: float, screw_names: list) -> dict:
    """The checks both export paths must pass; returns the sections for path-specific ones."""
    s = record_sections(html_path)
    assert list(s) == REPORT_SECTIONS
    assert all(s.values()), [t for t, body in s.items() if not body]
    seg = s["Bone segmentation"]
    assert "Threshold | 226 to 3071 HU" in seg and "n/a to n/a" not in seg
    volume = float(re.search(r"Segmented bone volume \| ([\d.]+) ml", seg).group(1))
    assert volume == pytest.approx(bone_volume_ml, abs=0.1)
    assert re.search(r"Bone segmentation \| OK \| Bone volume [\d.]+ ml", s["Risk checklist"])
    assert "TO DO | Bone" not in s["Risk checklist"] and "No bone volume" not in s["Risk checklist"]
    assert "Slice thickness | 1.00 mm" in s["Case and input CT"]
    # Each screw row names its screw, end and type (the record's screw shape is the one the table reads).
    for name in screw_names:
        assert re.search(rf"{re.escape(name)} \| (proximal|distal) \| L\d \| 3\.5 mm cancellous \(small fragment\) "
                         r"\| 3\.5 \|", s["Screws"]), (name, s["Screws"])
    assert "Length (endplate to endplate) | " in s["Implant design"] and "Mass | n/a" not in s["Implant design"]
    assert "+2 mm | 2.0 |" in s["Oversized variants"]
    return s


def test_cli_record_has_every_section_and_the_segmentation(tmp_path):
    from PatientImplantPlannerLib.bundle import ExportParameters
    from PatientImplantPlannerLib.cli import run_plan
    from PatientImplantPlannerLib.phantom import make_spine_phantom
    from PatientImplantPlannerLib.plan import Plan

    ph = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = ph.write(str(tmp_path / "phantom.nrrd"))
    plan = Plan(case_id="REC-CLI", proximal_level="L1", distal_level="L3",
                proximal_point_ras=list(ph.body_point("L1")), distal_point_ras=list(ph.body_point("L3")))
    plan.implant.profile, plan.placement = "curved_plate", "anterior"
    plan.implant.width_mm, plan.implant.depth_mm = 10.0, 5.0
    summary = run_plan(ct, plan, str(tmp_path / "exports"),
                       export_params=ExportParameters(parts=("implant", "drill_guides", "report")))
    # The volume shown is the exported segmentation's, read back from its file.
    s = check_exported_record(summary["report"], bone_volume_ml=_segment_volume_ml(summary["folder"]),
                              screw_names=[sc["name"] for sc in summary["screws"]])
    assert "drill guide" in s["Surgical guides"]


def _truth_ml(phantom) -> float:
    return float(phantom.bone_mask.sum()) * float(np.prod(phantom.spacing)) / 1000.0


def _segment_volume_ml(folder: str) -> float:
    """Bone volume of the exported .seg.nrrd, read back independently of the engine."""
    import SimpleITK as sitk

    (name,) = [f for f in os.listdir(folder) if f.endswith(".seg.nrrd")]
    image = sitk.ReadImage(os.path.join(folder, name))
    voxels = int((sitk.GetArrayViewFromImage(image) > 0).sum())
    sx, sy, sz = image.GetSpacing()
    return voxels * sx * sy * sz / 1000.0


def test_record_from_a_loaded_segmentation_names_its_source_and_measures_it(ctx, tmp_path):
    """A segment the planner did not make: unknown parameters are n/a, not invented; its source is named and
    its volume measured."""
    import slicer

    from PatientImplantPlannerLib.bundle import ExportParameters
    from PatientImplantPlannerLib.phantom import make_spine_phantom
    from PatientImplantPlannerLib.plan import Plan
    from PatientImplantPlannerLib.segments import set_segment_mask
    from PatientImplantPlannerLib.workflow import design_in_scene, export_in_scene

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
    from PatientImplantPlannerLib.bonesegmentation import BoneSegmentationParameters

    params = BoneSegmentationParameters(threshold_min=250.0, seeds_ras=[(1.0, 2.0, 3.0)]).as_dict()
    old = SegmentationInfo.from_json(json.dumps({"ct": "CT1", "bone_segmentation": params}))
    assert old.parameters == params and old.ct_name == "CT1" and old.volume_ml is None
    info = SegmentationInfo(parameters=params, volume_ml=12.5, ct_name="CT1", warnings=["w"])
    assert SegmentationInfo.from_json(info.to_json()) == info
    assert SegmentationInfo.from_json("") == SegmentationInfo()
