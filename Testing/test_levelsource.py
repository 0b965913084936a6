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


def test_segmentation_with_named_vertebra_segments(ctx, lumbar, tmp_path):
    ct, _, _ = lumbar
    labels, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    seg = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    for name in ("L1", "L2", "L3"):
        sid = seg.GetSegmentation().AddEmptySegment("", f"vertebrae_{name}")
        set_segment_mask(seg, sid, labels == values[name], ct)
    aorta = np.zeros(labels.shape, bool)
    aorta[40:60, 20:30, 50:60] = True  # a block standing in for the aorta
    set_segment_mask(seg, seg.GetSegmentation().AddEmptySegment("", "aorta"), aorta, ct)
    label_map, named = labels_from_segmentation(seg, ct)
    assert sorted(named) == ["L1", "L2", "L3"]
    for name, value in named.items():
        assert np.array_equal(label_map == value, labels == values[name])
    # Saved as .seg.nrrd and given as --levels: its soft-tissue segments are the keep-out set.
    from PatientImplantPlannerLib.cli import _keep_out
    from PatientImplantPlannerLib.scene.workflow import write_segmentation

    path = str(tmp_path / "levels.seg.nrrd")
    write_segmentation(seg, path)
    ko = _keep_out(ctx, ct, demo_plan(), None, path, load_level_labels(ctx, path, ct))
    assert [(s.name, s.voxels) for s in ko.structures] == [("aorta", int(aorta.sum()))]


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


def _write_masks(folder, masks: dict):
    """One mask file per structure, on the lumbar labels' grid (TotalSegmentator's default output layout)."""
    import SimpleITK as sitk

    ref = sitk.ReadImage(LUMBAR_LABELS)
    folder.mkdir()
    for name, mask in masks.items():
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.CopyInformation(ref)
        sitk.WriteImage(img, str(folder / f"{name}.nii.gz"))
    return str(folder)


def test_totalsegmentator_output_folder_as_level_and_keep_out_source(ctx, tmp_path):
    """A folder of per-structure mask files gives the same vertebrae as the labelmap; files of other structures
    and empty masks (TotalSegmentator writes one for every structure) are left out; its soft-tissue masks become
    the keep-out set when no --keep-out is given."""
    from PatientImplantPlannerLib.cli import _keep_out
    from PatientImplantPlannerLib.scene.labelfiles import load_keep_out_labels

    ct = load_ct(ctx, SAMPLE_CT)
    labels, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    aorta = np.zeros(labels.shape, bool)
    aorta[40:60, 20:30, 50:60] = True  # a block standing in for the aorta
    masks = {f"vertebrae_{n}": labels == values[n] for n in ("L1", "L2", "L3", "L4")}
    masks |= {"vertebrae_T4": np.zeros(labels.shape, bool), "rib_left_1": labels == values["L5"], "aorta": aorta}
    folder = _write_masks(tmp_path / "segmentations", masks)

    label_map, named = load_level_labels(ctx, folder, ct)
    assert sorted(named) == ["L1", "L2", "L3", "L4"]  # no empty T4, no rib
    for name, value in named.items():
        assert np.array_equal(label_map == value, labels == values[name])

    keep, structures = load_keep_out_labels(ctx, folder, ct)
    assert list(structures) == ["aorta"] and np.array_equal(keep == structures["aorta"], aorta)
    plan = demo_plan()
    ko = _keep_out(ctx, ct, plan, None, folder, (label_map, named))
    assert [s.name for s in ko.structures] == ["aorta"] and ko.structures[0].voxels == aorta.sum()
    # A folder without any keep-out structure: no keep-out set from the levels (design uses what the CT shows).
    bare = _write_masks(tmp_path / "bare", {k: v for k, v in masks.items() if k != "aorta"})
    assert _keep_out(ctx, ct, plan, None, bare, load_level_labels(ctx, bare, ct)) is None
    with pytest.raises(PlanError, match="no non-empty keep-out labels files"):
        load_keep_out_labels(ctx, bare, ct)


def test_labels_out_of_anatomical_order_are_refused(ctx, tmp_path):
    """Labels read with the wrong numbering (a TotalSegmentator v1 labelmap read as v2) or misnamed segments: the
    vertebrae would not be stacked in order, and a plan's levels would land on the wrong structures silently."""
    import SimpleITK as sitk

    ct = load_ct(ctx, SAMPLE_CT)
    labels, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    swapped = labels.copy()
    swapped[labels == values["L1"]], swapped[labels == values["L3"]] = values["L3"], values["L1"]
    ref = sitk.ReadImage(LUMBAR_LABELS)
    img = sitk.GetImageFromArray(swapped.astype(np.int16))
    img.CopyInformation(ref)
    path = str(tmp_path / "swapped.nii.gz")
    sitk.WriteImage(img, path)
    with pytest.raises(PlanError, match=r"not in anatomical order: L\d .*below L\d") as err:
        load_level_labels(ctx, path, ct)
    assert "TotalSegmentator 2" in err.value.fix
    misnamed = _write_masks(tmp_path / "misnamed", {"vertebrae_L1": labels == values["L3"],
                                                    "vertebrae_L3": labels == values["L1"],
                                                    "vertebrae_L2": labels == values["L2"]})
    with pytest.raises(PlanError, match="not in anatomical order"):
        load_level_labels(ctx, misnamed, ct)


def _loaded_as_segmentation(ctx, tmp_path, label_array, name):
    """``label_array`` written as a labelmap on the lumbar CT's grid and loaded into Slicer as a segmentation, as
    a user does with a labelmap file (Slicer's own import: segments keep the label values)."""
    import SimpleITK as sitk
    import slicer

    img = sitk.GetImageFromArray(label_array)
    img.CopyInformation(sitk.ReadImage(LUMBAR_LABELS))
    path = str(tmp_path / f"{name}.nii.gz")
    sitk.WriteImage(img, path)
    seg = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
        ctx.volumes_logic.AddArchetypeVolume(path, name, 1), seg)
    return seg


def test_labelmap_loaded_as_a_segmentation_is_read_by_its_values(ctx, tmp_path):
    """A VerSe labelmap loaded into Slicer as a segmentation has segments named 'Label_20' or after a colour table,
    not after vertebrae: the GUI's level source reads them by their label values (VerSe's numbering recognised), in
    anatomical order. A segmentation with one unnamed segment, or with label values that are not vertebrae, is
    refused naming both fixes."""
    import slicer

    from PatientImplantPlannerLib.imaging.levelsource import VERSE_VERTEBRAE

    ct = load_ct(ctx, SAMPLE_CT)
    labels, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    verse = np.zeros(labels.shape, np.uint8)
    verse_value = {name: v for v, name in VERSE_VERTEBRAE.items()}
    for name, v in values.items():
        verse[labels == v] = verse_value.get(name, 26)
    seg = _loaded_as_segmentation(ctx, tmp_path, verse, "verse")
    segments = seg.GetSegmentation()
    names = [segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())]
    assert names[:3] == ["Label_18", "Label_19", "Label_20"]  # no colour table in the headless scene
    label_map, named = labels_from_segmentation(seg, ct)
    assert named == {"T11": 18, "T12": 19, "L1": 20, "L2": 21, "L3": 22, "L4": 23, "L5": 24}
    for name, value in named.items():
        assert np.array_equal(label_map == value, labels == values[name])

    other = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "not vertebrae")
    for number, name in ((60, "liver"), (61, "spleen")):
        segment = slicer.vtkSegment()
        segment.SetName(name)
        segment.SetLabelValue(number)
        other.GetSegmentation().AddSegment(segment)
    for node in (other, ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "one segment")):
        if node is not other:
            node.GetSegmentation().AddEmptySegment("", "Segment_1")
        with pytest.raises(PlanError, match="no vertebra segments") as err:
            labels_from_segmentation(node, ct)
        assert "VerSe" in err.value.fix and "'vertebrae_L1'" in err.value.fix


def test_segments_drawn_in_the_segment_editor_are_not_read_as_numbered_vertebrae(ctx, tmp_path):
    """Segments drawn in Slicer's Segment Editor share one layer with values 1, 2, 3... and the Editor's names
    'Segment_1'...: chosen by mistake as the level source they were read in VerSe's numbering as C1-C3 (three
    hand-drawn lumbar bodies became cervical levels). They are refused as having no vertebra segments."""

    ct = load_ct(ctx, SAMPLE_CT)
    labels, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    drawn = np.zeros(labels.shape, np.uint8)
    for number, name in enumerate(("T12", "L1", "L2"), start=1):  # top to bottom, as C1-C3 would lie
        drawn[labels == values[name]] = number
    seg = _loaded_as_segmentation(ctx, tmp_path, drawn, "drawn")
    segments = seg.GetSegmentation()
    for n in range(segments.GetNumberOfSegments()):
        segments.GetNthSegment(n).SetName(f"Segment_{n + 1}")
    assert sorted(segments.GetNthSegment(n).GetLabelValue() for n in range(3)) == [1, 2, 3]
    with pytest.raises(PlanError, match="no vertebra segments"):
        labels_from_segmentation(seg, ct)


def test_totalsegmentator_labelmap_loaded_as_a_segmentation_gives_levels_and_keep_out(ctx, tmp_path):
    """TotalSegmentator's labelmap loaded as a segmentation in Slicer: its vertebrae are the level source and its
    soft tissue (here a block labelled 52, the aorta) the keep-out anatomy, as the CLI reads the same file."""
    import SimpleITK as sitk

    from PatientImplantPlannerLib.scene.workflow import keep_out_for

    ct = load_ct(ctx, SAMPLE_CT)
    labels, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    ts = sitk.GetArrayFromImage(sitk.ReadImage(LUMBAR_LABELS))
    ts[40:60, 20:30, 50:60] = 52
    seg = _loaded_as_segmentation(ctx, tmp_path, ts, "total")
    label_map, named = labels_from_segmentation(seg, ct)
    assert named == values
    aorta = load_level_labels(ctx, str(tmp_path / "total.nii.gz"), ct)[0] == 52
    for name, value in named.items():
        assert np.array_equal(label_map == value, (labels == values[name]) & ~aorta)
    ko = keep_out_for(ct, None, seg)
    assert [(s.name, s.voxels) for s in ko.structures] == [("aorta", int(aorta.sum()))] and aorta.sum() > 1000


def test_verse_labelmap_as_level_source(ctx, lumbar, tmp_path):
    """A labelmap numbered as VerSe's (1 = C1 ... 24 = L5, as public spine datasets label them) gives the same
    vertebrae as TotalSegmentator's, and the same docking faces. It labels no soft tissue, so nothing of it is read
    as keep-out anatomy (read as TotalSegmentator's, its T8 and T9 would be 'oesophagus' and 'trachea') and the
    run says so."""
    import SimpleITK as sitk

    from PatientImplantPlannerLib.cli import _keep_out, _level_label_notes
    from PatientImplantPlannerLib.imaging.levelsource import VERSE_VERTEBRAE, labelmap_numbering

    ct, plan, seg = lumbar
    labels, values = load_level_labels(ctx, LUMBAR_LABELS, ct)
    verse = np.zeros(labels.shape, np.uint8)
    verse_value = {name: v for v, name in VERSE_VERTEBRAE.items()}
    for name, v in values.items():
        verse[labels == v] = verse_value.get(name, 26)  # S1 -> VerSe's sacrum
    img = sitk.GetImageFromArray(verse)
    img.CopyInformation(sitk.ReadImage(LUMBAR_LABELS))
    path = str(tmp_path / "verse_seg.nii.gz")
    sitk.WriteImage(img, path)

    assert labelmap_numbering(labels) == "totalsegmentator"
    assert labelmap_numbering(verse) == "verse"
    label_map, named = load_level_labels(ctx, path, ct)
    assert named == {"T11": 18, "T12": 19, "L1": 20, "L2": 21, "L3": 22, "L4": 23, "L5": 24}
    for name, value in named.items():
        assert np.array_equal(label_map == value, labels == values[name])
    assert _keep_out(ctx, ct, plan, None, path, (label_map, named)) is None
    thoracic = label_map.copy()
    thoracic[label_map == 20], thoracic[label_map == 21] = 15, 16  # VerSe's T8 and T9 values
    assert _keep_out(ctx, ct, plan, None, path, (thoracic, named)) is None
    assert "VerSe's numbering" in _level_label_notes(path, (label_map, named), None)[0]
    assert _level_label_notes(LUMBAR_LABELS, (labels, values), None) == []

    results = []
    for source in ((labels, values), (label_map, named)):
        unclicked = demo_plan()
        unclicked.proximal_point_ras = unclicked.distal_point_ras = None
        results.append(design_in_scene(ctx, ct, seg.segmentation_node, seg.segment_id, unclicked,
                                       level_labels=source)[0])
    ts, vs = results
    for ea, eb in ((ts.proximal_endplate, vs.proximal_endplate), (ts.distal_endplate, vs.distal_endplate)):
        assert np.allclose(ea.centre, eb.centre, atol=1e-6) and np.allclose(ea.normal, eb.normal, atol=1e-9)
