"""The real contrast chest CT (chestct.py, 2.5 mm slices) resampled to 1 mm slices, as an overlapping reconstruction
or a resampled series gives it: thin spacing, thick blur. Measured before the blur was detected from the data: the
thin-slice path merged bodies through the blurred discs (7 of 15 clicked pairs T2-T12 refused as 'the same
vertebra') or put the faces 10-56 mm off without a warning; now they are measured as on thick slices."""

import numpy as np
import pytest
import SimpleITK as sitk
from chestct import chest_ct_path, chest_labels_path, reference_endplate
from test_levels_chest import EXCLUDE, KEEP_T6, VERTEBRAE, _clicked_point

from PatientImplantPlannerLib.core.grid import VoxelGrid
from PatientImplantPlannerLib.imaging import levels
from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
from PatientImplantPlannerLib.imaging.keepout import _crop
from PatientImplantPlannerLib.imaging.levelsource import labels_from_labelmap, level_point
from PatientImplantPlannerLib.imaging.thicklevels import resolution_mm, thick_slice_axis
from PatientImplantPlannerLib.scene.bonesegment import segment_bone
from PatientImplantPlannerLib.scene.ctload import load_ct
from PatientImplantPlannerLib.scene.labelfiles import load_level_labels
from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras_matrix

pytestmark = pytest.mark.slow
SLICE_MM = 1.0


def _resampled(src, dst, interpolator, fill):
    img = sitk.ReadImage(src)
    sp, size = img.GetSpacing(), img.GetSize()
    nz = int(round((size[2] - 1) * sp[2] / SLICE_MM)) + 1
    out = sitk.Resample(img, [size[0], size[1], nz], sitk.Transform(), interpolator, img.GetOrigin(),
                        [sp[0], sp[1], SLICE_MM], img.GetDirection(), fill, img.GetPixelID())
    sitk.WriteImage(out, str(dst))
    return str(dst)


@pytest.fixture(scope="module")
def thin(tmp_path_factory):
    from PatientImplantPlannerLib.scene.context import create_headless_context

    tmp = tmp_path_factory.mktemp("thin_chest")
    ct_path = _resampled(chest_ct_path(), tmp / "ct.nii.gz", sitk.sitkLinear, -1024)
    labels_path = _resampled(chest_labels_path(), tmp / "labels.nii.gz", sitk.sitkNearestNeighbor, 0)
    ctx = create_headless_context()
    node = load_ct(ctx, ct_path, name="ThinChest")
    labels, _ = load_level_labels(ctx, labels_path, node)  # the whole label map, in the CT's array order
    bone = segment_bone(ctx, node, BoneSegmentationParameters(seeds_ras=[KEEP_T6], exclude_seeds_ras=EXCLUDE)).mask
    yield np.asarray(array(node)), labels, ijk_to_ras_matrix(node), bone
    ctx.scene.Clear(True)


def _off(ep, labels, m, level, side):
    centre, normal = reference_endplate(labels, m, VERTEBRAE[level], side)
    return float(np.linalg.norm(ep.centre - centre)), float(np.degrees(np.arccos(min(1.0, abs(ep.normal @ normal)))))


def test_the_blur_across_the_slices_is_found(thin):
    ct, _, m, _ = thin
    grid = VoxelGrid(m, ct.shape)
    res = resolution_mm(ct, grid)
    print("effective resolution (k, j, i) mm", res.round(2))
    assert grid.spacing_kji[0] == pytest.approx(SLICE_MM, abs=1e-3)
    assert res[0] >= 2.5 and res[0] >= 1.4 * res[1:].mean() and res[1:].max() < 2.2
    axis, thickness, from_blur = thick_slice_axis(grid, ct)
    assert (axis, from_blur) == (0, True) and thickness == pytest.approx(res[0])


@pytest.mark.parametrize("proximal, distal", [("T4", "T9"), ("T6", "T8")])
def test_clicked_points_give_the_docking_faces(thin, proximal, distal):
    """Centres within 2 mm of the label references; a face more than 5 deg off is named as doubtful (T9 superior:
    5.1 deg, flagged; the others 1.9-4.9 deg)."""
    ct, labels, m, bone = thin
    r = levels.detect_levels(bone, m, _clicked_point(labels, m, VERTEBRAE[proximal]),
                             _clicked_point(labels, m, VERTEBRAE[distal]), proximal, distal, ct_array=ct)
    assert any("blurred across them" in w for w in r.warnings)
    for end, ep, level, side in (("proximal", r.proximal_endplate, proximal, "inferior"),
                                 ("distal", r.distal_endplate, distal, "superior")):
        distance, angle = _off(ep, labels, m, level, side)
        print(f"{level} {side}: {distance:.2f} mm, {angle:.1f} deg, doubtful {end in r.doubtful_endplates}")
        assert distance <= 2.0
        assert angle <= 5.0 or end in r.doubtful_endplates



def test_a_refit_that_loses_the_disc_bands_keeps_the_one_before_it_and_doubts_the_face(thin):
    """T10 -> T12 from clicked points: T12's fourth refit, turned 6 deg from the third, found no disc band towards
    T11, and the plan was refused as "could not be told apart as two vertebrae". Now the third fit is kept and the face
    doubted (measured: T12 superior 7.3 mm and 7.6 deg from its label reference, 6.6 mm of it forwards, where the mid
    body reaches further than the face; T10 inferior 3.2 mm, 1.4 deg), which blocks export until the surgeon has
    checked it. The docking bodies are the right vertebrae."""
    ct, labels, m, bone = thin
    t10, t12 = 34, 32  # TotalSegmentator's values
    r = levels.detect_levels(bone, m, _clicked_point(labels, m, t10), _clicked_point(labels, m, t12), "T10", "T12",
                             ct_array=ct)
    assert "lost its disc bands" in r.doubtful_endplates.get("distal", "")
    assert "proximal" not in r.doubtful_endplates
    centre, normal = reference_endplate(labels, m, t10, "inferior")
    distance = float(np.linalg.norm(r.proximal_endplate.centre - centre))
    angle = float(np.degrees(np.arccos(min(1.0, abs(r.proximal_endplate.normal @ normal)))))
    print(f"T10 inferior: {distance:.2f} mm, {angle:.1f} deg")
    assert distance <= 3.5 and angle <= 5.0
    # The docking bodies (measured: T10's 97 % in T10; T12's 79 % in T12, 17 % in no label (disc, soft tissue), 2.9 %
    # the cord, 0.7 % L1; the plan takes the keep-out structures out of them before sizing screws, test_screws.py).
    for end, value, most in (("proximal", t10, 0.9), ("distal", t12, 0.75)):
        crop, lo = r.docking[end]
        lab = labels[tuple(slice(a, a + n) for a, n in zip(lo, crop.shape))][crop]
        other = np.isin(lab, list(range(26, 51))) & (lab != value)
        print(end, f"{np.mean(lab == value):.2f} in its vertebra, {np.mean(other):.3f} in another")
        assert np.mean(lab == value) >= most and np.mean(other) <= 0.02

@pytest.mark.parametrize("proximal, distal", [("T4", "T9"), ("T6", "T8")])
def test_labelled_levels_with_the_cord_give_the_docking_faces(thin, proximal, distal):
    """With the labels (and the cord) the faces are refitted from the labelled bodies as on thick slices: measured
    1.09 / 0.16 / 1.03 / 1.86 mm and 3.1 / 2.1 / 1.2 / 1.4 deg (the smoothed-surface fit gave up to 4 mm / 6.7 deg
    over T2-T12)."""
    ct, labels, m, bone = thin
    vert = np.where((labels >= 26) & (labels <= 50), labels, 0)
    lm, values = labels_from_labelmap(vert)
    r = levels.detect_levels(bone, m, list(level_point(lm, m, values[proximal])),
                             list(level_point(lm, m, values[distal])), proximal, distal, ct_array=ct, label_map=lm,
                             label_values=values, cord=_crop(labels == 79))
    for ep, level, side in ((r.proximal_endplate, proximal, "inferior"), (r.distal_endplate, distal, "superior")):
        distance, angle = _off(ep, labels, m, level, side)
        print(f"{level} {side}: {distance:.2f} mm, {angle:.1f} deg")
        assert distance <= 2.0 and angle <= 5.0


def test_the_canal_found_without_labels_holds_the_cord(thin):
    """The canal (no labels: the bony ring, bridged and widened by the slices' blur) holds the labelled cord over
    T2 -> T5, where the column tilts most. Widened by the 1 mm spacing it held 97 % of the cord within 0.5 mm, the
    rest up to 2.3 mm in front of it at T2/T3; by the blur measured across the slices (3.2 mm), 99.7 %, up to 1.2 mm."""
    from scipy.spatial import cKDTree

    from PatientImplantPlannerLib.imaging.keepout import from_ct

    ct, labels, m, bone = thin
    axis = levels.detect_levels(bone, m, _clicked_point(labels, m, 42),
                                _clicked_point(labels, m, VERTEBRAE["T5"]), "T2", "T5", ct_array=ct).axis_points
    canal = next(s for s in from_ct(ct, m, bone, [], axis_points=axis).structures if s.name == "spinal_canal")
    canal_pts = (np.argwhere(canal.mask) + canal.offset)[:, ::-1] @ m[:3, :3].T + m[:3, 3]
    cord = np.argwhere(labels == 79)[:, ::-1] @ m[:3, :3].T + m[:3, 3]
    cord = cord[(cord[:, 2] > axis[:, 2].min()) & (cord[:, 2] < axis[:, 2].max())]
    d = cKDTree(canal_pts).query(cord)[0]
    print(f"cord within 0.5 mm of the canal: {np.mean(d < 0.5):.3f}, up to {d.max():.1f} mm")
    assert np.mean(d < 0.5) >= 0.99 and d.max() <= 1.5
