"""Mirror-defect implant (hemisacrectomy): symmetry plane, envelope, structure, files, bad input, real CT."""

import json
import os

import numpy as np
import pytest
from conftest import LUMBAR_LABELS, SAMPLE_CT
from scipy.spatial import cKDTree

from PatientImplantPlannerLib.core.errors import OutputExistsError, PlanError
from PatientImplantPlannerLib.core.mesh import check_mesh, read_stl, signed_distance
from PatientImplantPlannerLib.design import mirrordefect as md
from PatientImplantPlannerLib.design import symmetry
from PatientImplantPlannerLib.phantoms.pelvis import S1_TOP_W, _bone_distances, make_pelvis_phantom, mirror_lr_pelvis

# Whole-export runs on phantoms (minutes together): the CI's second step, keeping the fast step near 5 min.
pytestmark = pytest.mark.slow

CLEARANCE = 0.2


@pytest.fixture(scope="module")
def phantom():
    return make_pelvis_phantom(spacing=1.0)


@pytest.fixture(scope="module")
def left(phantom):
    """The left hemisacrectomy with the plane found from the bone."""
    params = md.MirrorDefectParameters(resection_planes=phantom.hemisacrectomy_planes("left"))
    return md.build_envelope(phantom.bone_mask, phantom.ijk_to_ras, params)


def _inside(mesh, pts):
    return signed_distance(mesh, np.atleast_2d(pts)) < 0


def _local(ph, *uvw):
    return [float(x) for x in ph.local_to_ras(uvw)[0]]


def test_symmetry_plane_found_within_1mm_and_1deg(phantom, left):
    plane = left.plane
    angle = np.degrees(np.arccos(min(1.0, abs(plane.normal @ phantom.plane_normal))))
    # Distance between the planes where the bone is: the true origin to the found plane and back.
    offsets = [abs((phantom.plane_origin - plane.origin) @ plane.normal),
               abs((plane.origin - phantom.plane_origin) @ phantom.plane_normal)]
    assert angle <= 1.0, angle
    assert max(offsets) <= 1.0, offsets
    assert plane.found and plane.residual_mm < 1.0  # 1 mm voxels: surface points match within a voxel
    assert left.measurements["symmetry_plane"]["residual_mm"] == pytest.approx(plane.residual_mm, abs=1e-3)


def test_symmetry_plane_found_when_one_side_is_missing(phantom):
    """A bone already lacking its left hemisacrum (21 % of the bone, as after tumour destruction): the trimmed
    reflection ICP still finds the plane."""
    planes = phantom.hemisacrectomy_planes("left")
    kji = np.argwhere(phantom.bone_mask)
    ras = symmetry.voxel_centres_ras(phantom.ijk_to_ras, kji)
    gone = np.min([(ras - p["origin_ras"]) @ np.asarray(p["normal_ras"]) for p in planes], axis=0) > 0
    bone = phantom.bone_mask.copy()
    bone[tuple(kji[gone].T)] = False
    plane = symmetry.find_symmetry_plane(bone, phantom.ijk_to_ras)
    assert np.degrees(np.arccos(min(1.0, abs(plane.normal @ phantom.plane_normal)))) <= 1.0
    assert abs((phantom.plane_origin - plane.origin) @ plane.normal) <= 1.0
    assert plane.matched_fraction < 0.9  # the missing side shows in the figures


def test_left_hemisacrectomy_implant_fills_the_defect(phantom, left):
    m = left.measurements
    assert check_mesh(left.envelope).ok and check_mesh(left.defect).ok
    # The pores' envelope fills the mirrored defect (less the clearance layer on the cut face).
    assert abs(m["implant_volume_mm3"] - m["defect_volume_mm3"]) <= 0.05 * m["defect_volume_mm3"], m
    assert m["bone_overlap_mm3"] <= 1.0
    # Independent of the engine's meshes: no voxel of the true remaining bone has its centre in the implant.
    planes = phantom.hemisacrectomy_planes("left")
    kji = np.argwhere(phantom.bone_mask)
    ras = symmetry.voxel_centres_ras(phantom.ijk_to_ras, kji)
    removed = np.min([(ras - p["origin_ras"]) @ np.asarray(p["normal_ras"]) for p in planes], axis=0) > 0
    lo, hi = left.envelope.bounds()
    near = ~removed & np.all((ras > lo - 1) & (ras < hi + 1), axis=1)
    assert _inside(left.envelope, ras[near]).sum() == 0
    # ... and the implant is where the resected bone was: most resected voxel centres lie inside it.
    assert _inside(left.envelope, ras[removed]).mean() > 0.9


def test_implant_lies_against_the_resection_surface(phantom, left):
    """Within clearance + 0.5 mm over >= 80 % of the cut face, sampled on the true midline cut (u = -6 mm)."""
    v, w = np.meshgrid(np.arange(-45.0, 50.0, 1.0), np.arange(-60.0, S1_TOP_W, 1.0))
    u = np.full(v.shape, -6.0 + 0.05)  # on the remaining side of the cut
    in_bone = np.min(_bone_distances(u, v, w), axis=0) < -0.5  # not at the bone's own edge
    pts = phantom.local_to_ras(np.stack([u[in_bone], v[in_bone], w[in_bone]], axis=1))
    gaps = signed_distance(left.envelope, pts)
    assert len(pts) > 500
    assert np.mean(gaps <= CLEARANCE + 0.5) >= 0.8, np.quantile(gaps, [0.5, 0.8, 0.95])
    # The fit clearance is kept (to the CT-sampled bone surface, which rounds the bone's edges by up to half a
    # voxel: hence the 1 % quantile) and the cut face is never inside the implant.
    assert np.quantile(gaps, 0.01) >= CLEARANCE - 0.05 and gaps.min() > 0
    assert left.measurements["resection_surface_within_tolerance"] >= 0.8
    assert left.measurements["contact_area_mm2"] > 0.8 * left.measurements["resection_surface_mm2"]


def test_right_resection_on_mirrored_phantom_gives_the_mirror_image(phantom, left):
    mirrored = mirror_lr_pelvis(phantom)
    params = md.MirrorDefectParameters(resection_planes=mirrored.hemisacrectomy_planes("right"))
    right = md.build_envelope(mirrored.bone_mask, mirrored.ijk_to_ras, params)
    _assert_mirror_image(left.envelope, right.envelope, phantom.ijk_to_ras, phantom.array.shape[2])


def _assert_mirror_image(left, right, ijk_to_ras, nx: int):
    """``right``, flipped back across the grid's left-right middle, is ``left``: volumes within 2 %, symmetric
    Hausdorff distance (vertex to vertex, an upper bound) <= 1.5 mm."""
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 2 * ijk_to_ras[0, 3] + ijk_to_ras[0, 0] * (nx - 1)
    back = right.transformed(flip)
    a, b = left.volume(), back.volume()
    assert abs(a - b) <= 0.02 * a, (a, b)
    d_ab, _ = cKDTree(back.vertices).query(left.vertices)
    d_ba, _ = cKDTree(left.vertices).query(back.vertices)
    assert max(d_ab.max(), d_ba.max()) <= 1.5, (d_ab.max(), d_ba.max())


def test_structure_skin_strut_connector_and_screw(phantom, left):
    ph = phantom
    strut = [_local(ph, -10, 5, 25), _local(ph, -40, 5, 0)]
    rod_point = _local(ph, -25, -13.8, 15)
    params = md.MirrorDefectParameters(
        resection_planes=ph.hemisacrectomy_planes("left"), struts=[strut],
        rod={"point_ras": rod_point, "direction_ras": [float(x) for x in ph.local_direction((0, 0, 1))]},
        screws=[{"name": "S1 across", "entry": _local(ph, -47, 10, 20), "target": _local(ph, 0, 10, 20)}],
        screw_parameters={"screw_type": "6.5 cancellous"})
    s = md.build_structure(ph.array, ph.ijk_to_ras, left, params)
    assert s.mode == "zone" and any("porous zone" in w for w in s.warnings)  # 10^8 lattice samples: over budget
    for mesh in (s.implant, s.dense, s.porous_zone):
        assert check_mesh(mesh).ok
    assert s.figures["implant_bone_overlap_mm3"] <= 1.0  # the connector and holes keep the clearance
    mid = np.mean(strut, axis=0)
    assert _inside(s.dense, mid)[0]  # the strut is dense
    assert not _inside(s.porous_zone, mid)[0]
    # Skin: 0.5 mm inside the soft-tissue face (posterior, far from the cut) is dense, 3 mm inside is porous.
    v = np.arange(-40.0, 0.0, 0.05)
    face = v[np.argmax(np.min(_bone_distances(np.full_like(v, -30.0), v, np.full_like(v, -10.0)), axis=0) < 0)]
    assert _inside(s.dense, _local(ph, -30, face + 0.5, -10))[0]
    assert _inside(s.porous_zone, _local(ph, -30, face + 3.0, -10))[0]
    # The rod channel is open and the connector stands on the implant.
    n = -np.asarray(ph.local_direction((0, 1, 0)))  # posterior: out of the implant there
    axis_point = np.asarray(rod_point) + n * (0.5 * 5.5 + 1.0)
    side = np.cross(n, ph.local_direction((0, 0, 1)))
    assert not _inside(s.implant, axis_point)[0]
    assert _inside(s.implant, axis_point + (0.5 * 5.5 + 1.5) * side)[0]  # in the seat's wall
    assert not _inside(left.envelope, axis_point + (0.5 * 5.5 + 1.5) * side)[0]  # which the connector added
    # The screw: length limited by the remaining bone, no breach, and its hole cut through the implant.
    (screw,) = s.screws
    assert not screw.breach and screw.length_mm >= 60
    assert screw.tip @ ph.plane_normal - ph.plane_origin @ ph.plane_normal < 45.0  # stops inside the right sacrum
    on_axis = np.asarray(_local(ph, -30, 10, 20))
    assert _inside(left.envelope, on_axis)[0] and not _inside(s.implant, on_axis)[0]


def test_porous_lattice_on_a_small_defect(phantom, tmp_path):
    """A small box resection fits the lattice budget: gyroid body with measured porosity, files verified."""
    params = {"resection_roi": {"center_ras": _local(phantom, -30, 5, 25), "size_mm": [12, 12, 12]},
              "porous": "lattice", "lattice": {"pore_size_um": 800}, "symmetry_plane": {
                  "origin_ras": [float(x) for x in phantom.plane_origin],
                  "normal_ras": [float(x) for x in phantom.plane_normal]}}
    out = tmp_path / "defect"
    manifest = md.run_mirror_defect(phantom.array, phantom.ijk_to_ras, phantom.bone_mask, params, str(out))
    fig = manifest["defect"]["structure"]
    assert fig["mode"] == "lattice"
    assert abs(fig["measured_porosity"] - 0.70) <= 0.03, fig
    assert manifest["defect"]["bone_overlap_mm3"] <= 1.0
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["kind"] == "mirror_defect" and on_disk["files"] == manifest["files"]
    import hashlib
    for f in manifest["files"]:
        path = out / f["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]
        if f.get("format") == "3mf":
            from PatientImplantPlannerLib.export.threemf import read_3mf

            assert check_mesh(read_3mf(str(path))).ok, f["file"]
        elif f["file"].endswith(".stl"):
            assert check_mesh(read_stl(str(path))).ok, f["file"]
    implant = read_stl(str(out / "implant.stl"))
    assert check_mesh(implant).n_components == 1
    # An existing non-empty folder is refused and left as it was.
    before = sorted(os.listdir(out))
    with pytest.raises(OutputExistsError):
        md.run_mirror_defect(phantom.array, phantom.ijk_to_ras, phantom.bone_mask, params, str(out))
    assert sorted(os.listdir(out)) == before


def _refused(phantom, tmp_path, params, match, resection_mask=None):
    out = tmp_path / "never"
    with pytest.raises(PlanError, match=match) as info:
        md.run_mirror_defect(phantom.array, phantom.ijk_to_ras, phantom.bone_mask, params, str(out),
                             resection_mask=resection_mask)
    assert info.value.fix  # every refusal says what to do
    assert not out.exists() and os.listdir(tmp_path) == []  # nothing written, no temporary folder left


def test_bad_inputs_are_refused_before_anything_is_written(phantom, tmp_path):
    plane = {"origin_ras": [float(x) for x in phantom.plane_origin],
             "normal_ras": [float(x) for x in phantom.plane_normal]}
    far_left = {"origin_ras": _local(phantom, -200, 0, 0), "normal_ras": [-1.0, 0.0, 0.0], "remove": "positive"}
    _refused(phantom, tmp_path, {"resection_planes": [far_left], "symmetry_plane": plane}, "misses the bone")
    _refused(phantom, tmp_path, {"symmetry_plane": {"origin_ras": [300.0, 0, 0], "normal_ras": [1.0, 0, 0]},
                                 "resection_roi": {"center_ras": _local(phantom, -30, 5, 25), "size_mm": [9, 9, 9]}},
             "symmetry plane .* misses the bone")
    _refused(phantom, tmp_path, {"symmetry_plane": plane}, "resection is empty",
             resection_mask=np.zeros_like(phantom.bone_mask))
    _refused(phantom, tmp_path, {"resection_roi": {"center_ras": _local(phantom, 0, 0, 200), "size_mm": [9, 9, 9]},
                                 "symmetry_plane": plane}, "resection is empty")
    _refused(phantom, tmp_path, {"resection_roi": {"center_ras": _local(phantom, 0, 0, 0), "size_mm": [600] * 3},
                                 "symmetry_plane": plane}, "removes 100 %")
    _refused(phantom, tmp_path, {"resection_roi": {"center_ras": _local(phantom, -30, 5, 25), "size_mm": [9, 9, 9]},
                                 "symmetry_plane": plane,
                                 "rod": {"point_ras": _local(phantom, -30, 5, 60), "direction_ras": [0, 0, 1]}},
             "rod seat .* outside")
    near_box = _local(phantom, -30, 5 + 4.5 + 5.0, 25)  # 5 mm in front of the box's anterior face
    _refused(phantom, tmp_path, {"resection_roi": {"center_ras": _local(phantom, -30, 5, 25), "size_mm": [9, 9, 9]},
                                 "symmetry_plane": plane, "rod": {"point_ras": near_box, "direction_ras": [0, 0, 1]}},
             r"rod seat .* lies [45]\.\d mm outside")
    _refused(phantom, tmp_path, {"resection_roi": {"center_ras": _local(phantom, -30, 5, 25), "size_mm": [9, 9, 9]},
                                 "symmetry_plane": plane,
                                 "rod": {"point_ras": _local(phantom, -30, 5, 25), "direction_ras": [0, 0, 1]}},
             "rod seat .* inside the implant")
    _refused(phantom, tmp_path, {"symmetry_plane": plane}, "No resection")


def test_parameters_round_trip_and_refuse_unknown_keys():
    p = md.MirrorDefectParameters(resection_planes=[{"origin_ras": [0, 0, 0], "normal_ras": [1, 0, 0],
                                                     "remove": "negative"}], lattice={"pore_size_um": 600})
    assert md.MirrorDefectParameters.from_dict(p.as_dict()) == p
    with pytest.raises(PlanError, match="Unknown mirror-defect parameter"):
        md.MirrorDefectParameters.from_dict({"clearance": 0.2})
    with pytest.raises(PlanError, match="Unknown lattice"):
        md.MirrorDefectParameters.from_dict({"lattice": {"pores": 500}})
    with pytest.raises(PlanError, match="Unknown resection plane 1"):
        md.MirrorDefectParameters.from_dict({"resection_planes": [{"origin_ras": [0, 0, 0], "normal": [1, 0, 0]}]})
    with pytest.raises(PlanError, match="fit_clearance_mm"):
        md.MirrorDefectParameters.from_dict({"fit_clearance_mm": -1})
    with pytest.raises(PlanError, match="removes 'both'"):
        md.MirrorDefectParameters.from_dict({"resection_planes": [{"origin_ras": [0, 0, 0], "normal_ras": [1, 0, 0],
                                                                   "remove": "both"}]})
    with pytest.raises(PlanError, match="zero vector"):
        md.MirrorDefectParameters.from_dict({"rod": {"point_ras": [0, 0, 0], "direction_ras": [0, 0, 0]}})


def _lumbar():
    import SimpleITK as sitk
    from scipy import ndimage

    img = sitk.ReadImage(SAMPLE_CT)
    ct = sitk.GetArrayFromImage(img)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(LUMBAR_LABELS))
    lps = np.diag([-1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = lps @ np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    m[:3, 3] = lps @ np.array(img.GetOrigin())
    lab, _ = ndimage.label(ct > 226)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    bone = np.isin(lab, np.flatnonzero(sizes > 2000)) | (labels > 0)  # pelvis shell + filled vertebrae
    return ct, m, bone, labels


def _s1_half_envelope(m, bone, labels, side: str):
    """Envelope for a painted half of S1 (5 mm beside its centre), the plane found from the bone."""
    s1 = labels == 26
    x = symmetry.voxel_centres_ras(m, np.indices(bone.shape).reshape(3, -1).T)[:, 0].reshape(bone.shape)
    centre = symmetry.voxel_centres_ras(m, np.argwhere(s1)).mean(axis=0)
    resection = s1 & ((x < centre[0] - 5.0) if side == "left" else (x > centre[0] + 5.0))
    return md.build_envelope(bone, m, md.MirrorDefectParameters(grid_mm=1.0), resection_mask=resection)


@pytest.fixture(scope="module")
def lumbar_left():
    ct, m, bone, labels = _lumbar()
    return m, bone, labels, _s1_half_envelope(m, bone, labels, "left")


def test_lumbar_ct_left_s1_resection_envelope(lumbar_left):
    """The bundled 3 mm CT (L5, sacrum, pelvis): a plausible plane and an envelope for a painted left S1 half."""
    m, bone, labels, result = lumbar_left
    plane, meas = result.plane, result.measurements
    assert abs(plane.normal[0]) > np.cos(np.radians(10.0))  # left-right, as the patient lies on the table
    for name in (26, 27):  # S1 and L5 centres lie on the mid-sagittal plane (within a voxel or two)
        c = symmetry.voxel_centres_ras(m, np.argwhere(labels == name)).mean(axis=0)
        assert abs((c - plane.origin) @ plane.normal) < 6.0
    assert plane.residual_mm < 3.0  # about the 3 mm voxel
    assert 0.7 <= meas["implant_volume_mm3"] / meas["defect_volume_mm3"] <= 1.1, meas
    assert meas["bone_overlap_mm3"] <= 1.0
    assert meas["resection_surface_within_tolerance"] >= 0.8, meas


def test_lumbar_ct_mirrored_gives_the_mirror_image(lumbar_left):
    """The right S1 half on the left-right flipped CT gives the left implant, mirrored."""
    m, bone, labels, left = lumbar_left
    right = _s1_half_envelope(m, bone[:, :, ::-1].copy(), labels[:, :, ::-1].copy(), "right")
    _assert_mirror_image(left.envelope, right.envelope, m, bone.shape[2])


@pytest.mark.slow  # 60-90 s: CT load, segmentation, envelope, structure, guides, verified files and the record
def test_lumbar_ct_example_plan_end_to_end(ctx, tmp_path):
    """The example (demo) left hemisacrectomy on the bundled CT, bone segmented as the CLI does it (one seed in
    S1, interior filled): every file written and verified."""
    from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
    from PatientImplantPlannerLib.scene.bonesegment import segment_bone
    from PatientImplantPlannerLib.scene.ctload import load_ct
    from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras_matrix

    node = load_ct(ctx, SAMPLE_CT)
    bone = segment_bone(ctx, node, BoneSegmentationParameters(seeds_ras=[md.EXAMPLE_BONE_SEED_RAS])).mask
    ct, m = array(node), ijk_to_ras_matrix(node)
    out = tmp_path / "hemisacrectomy"
    manifest = md.run_mirror_defect(ct, m, bone, md.example_parameters(), str(out))
    d = manifest["defect"]
    assert d["bone_overlap_mm3"] <= 1.0 and d["structure"]["implant_bone_overlap_mm3"] <= 1.0
    assert 0.95 <= d["implant_volume_mm3"] / d["defect_volume_mm3"] <= 1.05, d
    assert d["structure"]["mode"] == "zone"  # a 30 cm3 porous body is far over the lattice budget
    assert {f["role"] for f in manifest["files"]} >= {"implant", "implant_dense", "implant_porous_zone",
                                                      "check_model", "defect", "implant_envelope"}
    for f in manifest["files"]:
        if f["file"].endswith(".stl"):
            assert check_mesh(read_stl(str(out / f["file"]))).ok, f["file"]
    implant = next(f for f in manifest["files"] if f["role"] == "implant")
    assert implant["components"] == 1  # one printed part, no loose bits
    assert len(manifest["screws"]) == 2 and not any(s["breach"] for s in manifest["screws"])
    assert all(s["length_mm"] - s["bone_entry_mm"] >= 20 for s in manifest["screws"])  # held in the S1 body
    # The cut face: with the cut-face fill (3 mm inside the resected bone's outline) >= 80 % lies within clearance +
    # 0.5 mm of the implant (68 % for the pure mirror image: the two sides of this pelvis differ by 1-7 mm there).
    assert d["resection_surface_within_tolerance"] >= 0.8, d
    assert 0 < d["cut_face_fill_mm3"] <= 0.05 * d["implant_volume_mm3"]
    # A drill guide per screw, seated on the implant, and the printed parts also as verified 3MF.
    assert len(manifest["drill_guides"]) == 2
    assert all(g["contact_area_mm2"] >= 20 and g["closest_bone_mm"] >= 0 for g in manifest["drill_guides"])
    printed = [f for f in manifest["files"] if f["role"] in ("implant", "drill guide")]
    assert {f["format"] for f in printed} == {"stl", "3mf"} and all(f["components"] == 1 for f in printed)
    assert (out / "design_record.pdf").is_file() and (out / "design_record.html").is_file()
