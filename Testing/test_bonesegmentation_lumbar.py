"""Bone segmentation on the bundled real lumbar CT (3 mm voxels, osteopenic): one seed in L3 must give every
lumbar vertebra, interior included, measured against the TotalSegmentator reference labels."""

import numpy as np
import scipy.ndimage as ndi
from conftest import LUMBAR_LABELS, LUMBAR_LEVELS, SAMPLE_CT

from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
from PatientImplantPlannerLib.scene.bonesegment import segment_bone
from PatientImplantPlannerLib.scene.segments import get_segment_mask
from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras

LUMBAR = ("L1", "L2", "L3", "L4", "L5")


def _load(ctx):
    ct = ctx.volumes_logic.AddArchetypeVolume(SAMPLE_CT, "LumbarCT")
    labels = ctx.volumes_logic.AddArchetypeVolume(LUMBAR_LABELS, "LumbarLabels", 1)
    return ct, array(labels).copy()


def test_seed_in_l3_gives_every_lumbar_vertebra_with_its_interior(ctx):
    ct, labels = _load(ctx)
    hu = array(ct)
    l3 = labels == LUMBAR_LEVELS["L3"]
    centre = np.array(ndi.center_of_mass(l3))  # (k, j, i): the middle of L3's body, cancellous, ~45 HU here
    seed = ijk_to_ras(ct, centre[::-1])[0]
    assert hu[tuple(np.round(centre).astype(int))] < 226

    result = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=[tuple(seed)]))
    mask = result.mask
    shell_only = (hu >= 226) & (hu <= 3071)
    for name in LUMBAR:
        ref = labels == LUMBAR_LEVELS[name]
        covered = np.count_nonzero(mask & ref) / np.count_nonzero(ref)
        threshold_alone = np.count_nonzero(shell_only & ref) / np.count_nonzero(ref)
        print(f"{name}: {covered:.1%} of the reference inside the segment (threshold alone {threshold_alone:.1%})")
        assert covered >= 0.90
        assert threshold_alone < 0.45  # the filling did the work
    # Not a blob: the segment near the lumbar spine stays close to the reference.
    lumbar = np.isin(labels, [LUMBAR_LEVELS[n] for n in LUMBAR])
    zs = np.flatnonzero(lumbar.any(axis=(1, 2)))
    column = np.zeros_like(lumbar)
    column[zs.min() : zs.max() + 1] = ndi.binary_dilation(lumbar.any(axis=0), iterations=2)
    ref = (labels > 0) & column
    seg = mask & column
    dice = 2 * np.count_nonzero(seg & ref) / (np.count_nonzero(seg) + np.count_nonzero(ref))
    print(f"Dice around the lumbar column {dice:.3f}, {result.timings_s}")
    assert dice > 0.8
    assert np.array_equal(get_segment_mask(result.segmentation_node, result.segment_id, ct), mask)
