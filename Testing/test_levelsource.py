"""Vertebra labels (TotalSegmentator names or numbering) as the level source instead of clicked points."""

import numpy as np
import pytest
from conftest import LUMBAR_LABELS, SAMPLE_CT

from PatientImplantPlannerLib.cli import demo_plan
from PatientImplantPlannerLib.core.errors import PlanError
from PatientImplantPlannerLib.imaging.levelsource import TOTALSEGMENTATOR_VERTEBRAE, vertebra_name
from PatientImplantPlannerLib.scene.bonesegment import segment_bone
from PatientImplantPlannerLib.scene.ctload import load_ct
from PatientImplantPlannerLib.scene.labelfiles import labels_from_segmentation, load_level_labels
from PatientImplantPlannerLib.scene.segments import set_segment_mask
from PatientImplantPlannerLib.scene.workflow import design_in_scene


@pytest.mark.parametrize(
    "text, name",
    [("vertebrae_L1", "L1"), ("Vertebra T12", "T12"), ("C7", "C7"), ("vertebrae_S1", "S1"), ("sacrum", "S1"),
     ("rib_left_1", None), ("L", None), ("aorta", None)],
)
def test_vertebra_names(text, name):
    assert vertebra_name(text) == name


def test_totalsegmentator_numbering_matches_the_sample_labels():
    # Testing/data/ATTRIBUTION.md: 26=S1, 27=L5, ..., 31=L1, 32=T12, 33=T11.
    assert [TOTALSEGMENTATOR_VERTEBRAE[v] for v in range(26, 34)] == ["S1", "L5", "L4", "L3", "L2", "L1", "T12", "T11"]
    assert TOTALSEGMENTATOR_VERTEBRAE[50] == "C1"


@pytest.fixture
def lumbar(ctx):
    ct = load_ct(ctx, SAMPLE_CT)
    plan = demo_plan()
    seg = segment_bone(ctx, ct, plan.segmentation)
    return ct, plan, seg


def test_labelmap_as_level_source_without_points(ctx, lumbar):
    from PatientImplantPlannerLib.scene.volumes import ijk_to_ras_matrix

    ct, plan, seg = lumbar
    label_map, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    assert {"L1", "L2", "L3"} <= set(values)
    unclicked = demo_plan()
    unclicked.case_id = "LABELS"
    unclicked.proximal_point_ras = unclicked.distal_point_ras = None
    result, _ = design_in_scene(ctx, ct, seg.segmentation_node, seg.segment_id, unclicked,
                                level_labels=(label_map, values))
    assert result.levels.intermediate_levels == ["L2"]
    m = ijk_to_ras_matrix(ct)

    def points(level):
        k, j, i = np.nonzero(label_map == values[level])
        return np.stack([i, j, k], axis=1) @ m[:3, :3].T + m[:3, 3]

    l1, l2, l3 = points("L1"), points("L2"), points("L3")
    # Each endplate lies on its own vertebra (within a 3 mm voxel of its labels), on the face towards L2.
    for endplate, own in ((result.proximal_endplate, l1), (result.distal_endplate, l3)):
        assert np.linalg.norm(own - endplate.centre, axis=1).min() < 3.0
        assert (endplate.centre - own.mean(axis=0)) @ (l2.mean(axis=0) - own.mean(axis=0)) > 0
    assert result.proximal_endplate.normal @ result.distal_endplate.normal < -0.85
    assert result.measurements["interference_mm3"] == pytest.approx(0.0, abs=1e-6)


def test_segmentation_with_named_vertebra_segments(ctx, lumbar):
    ct, _, _ = lumbar
    labels, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    seg = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    for name in ("L1", "L2", "L3"):
        sid = seg.GetSegmentation().AddEmptySegment("", f"vertebrae_{name}")
        set_segment_mask(seg, sid, labels == values[name], ct)
    seg.GetSegmentation().AddEmptySegment("", "aorta")
    label_map, named = labels_from_segmentation(seg, ct)
    assert sorted(named) == ["L1", "L2", "L3"]
    for name, value in named.items():
        assert np.array_equal(label_map == value, labels == values[name])


def test_missing_levels_are_refused(ctx, lumbar):
    ct, _, seg = lumbar
    labels = load_level_labels(ctx, LUMBAR_LABELS, ct)
    plan = demo_plan()
    plan.proximal_point_ras = None
    plan.proximal_level = "T4"  # not in this CT
    n = ctx.scene.GetNumberOfNodes()
    with pytest.raises(PlanError, match="T4"):
        design_in_scene(ctx, ct, seg.segmentation_node, seg.segment_id, plan, level_labels=labels)
    assert ctx.scene.GetNumberOfNodes() == n
    empty = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    empty.GetSegmentation().AddEmptySegment("", "liver")
    with pytest.raises(PlanError, match="no vertebra segments"):
        labels_from_segmentation(empty, ct)


def test_level_name_contradicting_the_labels_is_an_error(ctx, lumbar):
    """A clicked point in L1 named "T4" (engraved on the parts) is refused, naming both and the fix."""
    ct, _, seg = lumbar
    labels = load_level_labels(ctx, LUMBAR_LABELS, ct)
    plan = demo_plan()  # points in L1 and L3
    plan.proximal_level = "T4"
    with pytest.raises(PlanError, match="lies in L1.*names the proximal level T4") as err:
        design_in_scene(ctx, ct, seg.segmentation_node, seg.segment_id, plan, level_labels=labels)
    assert "proximal_level" in err.value.fix
