"""The demo plan on the bundled real lumbar CT: L1 inferior to L3 superior endplate, L2 left intact."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import LUMBAR_LABELS, LUMBAR_LEVELS, SAMPLE_CT

from PatientImplantPlannerLib.cli import demo_plan
from PatientImplantPlannerLib.core.mesh import check_mesh, to_manifold
from PatientImplantPlannerLib.design.plan import design_implant
from PatientImplantPlannerLib.export.boneexport import mask_surface
from PatientImplantPlannerLib.scene.bonesegment import segment_bone
from PatientImplantPlannerLib.scene.ctload import load_ct
from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras_matrix


@pytest.fixture(scope="module")
def demo(request):
    from PatientImplantPlannerLib.scene.context import create_headless_context

    ctx = create_headless_context()
    ct = load_ct(ctx, SAMPLE_CT)
    plan = demo_plan()
    seg = segment_bone(ctx, ct, plan.segmentation)
    m = ijk_to_ras_matrix(ct)
    result = design_implant(plan, array(ct).copy(), m, seg.mask)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(LUMBAR_LABELS))
    yield result, labels, m
    ctx.scene.Clear(True)


def test_demo_plan_designs_closed_implant_and_variants(demo):
    result, _, _ = demo
    for geom in [result.nominal, *result.variants.values()]:
        assert check_mesh(geom.mesh).ok
    assert sorted(result.variants) == [2.0, 3.0, 4.0]
    for extra, geom in result.variants.items():
        assert geom.length_mm - result.nominal.length_mm == pytest.approx(extra, abs=0.05)
    assert len(result.screws) == 4
    assert 30.0 < result.nominal.length_mm < 80.0  # L1 inferior to L3 superior endplate, L2 between


def test_endplates_face_each_other_across_l2(demo):
    result, labels, m = demo
    p, d = result.proximal_endplate, result.distal_endplate
    assert p.normal @ d.normal < -0.85  # they face each other (lordosis tilts them by ~25 degrees here)
    # Each centre lies on its own vertebra's labelled face (3 mm voxels: within 4 mm of a labelled voxel).
    for ep, name in ((p, "L1"), (d, "L3")):
        k, j, i = np.nonzero(labels == LUMBAR_LEVELS[name])
        pts = np.stack([i, j, k], axis=1) @ m[:3, :3].T + m[:3, 3]
        assert np.linalg.norm(pts - ep.centre, axis=1).min() < 4.0
    # L2's labelled voxels lie between the two endplate planes.
    k, j, i = np.nonzero(labels == LUMBAR_LEVELS["L2"])
    l2 = np.stack([i, j, k], axis=1) @ m[:3, :3].T + m[:3, 3]
    assert np.median((l2 - p.centre) @ p.normal) > 0 and np.median((l2 - d.centre) @ d.normal) > 0


def test_implant_does_not_intersect_l2_outside_the_footplates(demo):
    result, labels, m = demo
    l2 = labels == LUMBAR_LEVELS["L2"]
    bone = to_manifold(mask_surface(l2, m))
    strut = to_manifold(result.nominal.mesh)
    keep = result.implant_parameters.footplate_thickness_mm + 1.0
    for ep in (result.proximal_endplate, result.distal_endplate):
        strut = strut.trim_by_plane(list(map(float, ep.normal)), float(ep.normal @ ep.centre + keep))
    assert strut.volume() > 1000.0  # the strut is really there
    assert (strut ^ bone).volume() == pytest.approx(0.0, abs=1e-6)
    assert result.measurements["interference_mm3"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_the_same_ct_stored_in_coronal_slices_gives_the_same_plan(demo, tmp_path):
    """The sample CT saved in coronal slices (the same voxels in another storage order, as a reformatted series is
    exported) gives the demo plan it gives in axial slices. Before it was re-ordered on loading: 3974 instead of
    6138 mm3, 9 x 9 mm instead of 18 x 18 mm footplate semi-axes, one screw per end, endplates 4.8 mm apart."""
    from PatientImplantPlannerLib.scene.context import create_headless_context

    result, _, _ = demo
    path = tmp_path / "coronal.nii.gz"
    sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(SAMPLE_CT), [2, 0, 1]), str(path))
    ctx = create_headless_context()
    ct = load_ct(ctx, str(path))
    plan = demo_plan()
    seg = segment_bone(ctx, ct, plan.segmentation)
    other = design_implant(plan, array(ct).copy(), ijk_to_ras_matrix(ct), seg.mask)
    ctx.scene.Clear(True)
    for a, b in ((result.proximal_endplate, other.proximal_endplate), (result.distal_endplate, other.distal_endplate)):
        assert np.linalg.norm(a.centre - b.centre) < 0.01 and a.normal @ b.normal > 0.99999
    assert len(other.screws) == len(result.screws) == 4
    assert abs(other.nominal.mesh.volume() - result.nominal.mesh.volume()) < 0.01 * result.nominal.mesh.volume()
