"""The planner on a further real contrast chest CT (totalsegct.py): another patient and scanner, an arterial-phase CT
angiogram on 1.5 mm isotropic voxels with a dissected descending aorta against the left of the bodies. Its bodies
are osteopenic (cancellous bone about 130 HU) and its discs about as dense (100-180 HU), so the bone segment runs on
through the discs. Before, the planner took that column for the bodies ("T4" 137 mm tall, standing across the spine)
and docked T4 -> T9 at the T7/T8 and T9/T10 discs with no error; T6 -> T8 was refused for want of room for a screw
on a 12 mm footplate.

The user's clicks: a point in each docking body, exclude seeds in the aorta's true lumen, its false lumen (a
dissection has two; a seed in the true lumen alone leaves the false one, 230-380 HU where it is filled, to the
bone) and the heart.

References, independent of the planner:
- the disc spaces, read by eye on the mid-sagittal slice (column i = 117) as the dark line between the two bright
  endplates, at slice k (S = 540.2 + 1.5 k mm): T4/T5 129, T5/T6 117, T6/T7 104, T7/T8 89, T8/T9 75, T9/T10 59,
  T10/T11 44, T11/T12 29, T12/L1 11.5. The names count up from TotalSegmentator's own T12 mask, which lies
  between the last two discs read here (checked below);
- the aorta and heart masks shipped with the CT (TotalSegmentator's output), for the clearance of the exported
  implants: distance from every vertex and triangle centre to the mask's voxel centres less the voxel's
  half-diagonal (1.3 mm), >= the required 2 mm less 0.35 mm for the masks' voxelisation, as in test_safety_chest.py.
"""

import contextlib
import glob
import io
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial import cKDTree
from totalsegct import cta_path

from PatientImplantPlannerLib.cli import main
from PatientImplantPlannerLib.core.mesh import read_stl
from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
from PatientImplantPlannerLib.imaging.levels import detect_levels
from PatientImplantPlannerLib.scene.bonesegment import segment_bone
from PatientImplantPlannerLib.scene.ctload import load_ct
from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras_matrix

pytestmark = pytest.mark.slow

# Clicked in the middle of each body on the mid-sagittal slice (RAS mm).
CLICKED = {"T4": (4.2, 105.7, 742.7), "T5": (4.2, 105.7, 724.7), "T6": (4.2, 105.7, 705.2),
           "T7": (4.2, 105.7, 685.7), "T8": (4.2, 105.7, 663.2), "T9": (4.2, 105.7, 640.7),
           "T10": (4.2, 105.7, 616.7)}
EXCLUDE = [(-16.8, 129.7, 630.2), (-31.8, 99.7, 675.2), (-22.8, 185.2, 645.2)]  # true lumen, false lumen, heart
ORDER = ["T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12"]
DISC_K = {"T4": 129, "T5": 117, "T6": 104, "T7": 89, "T8": 75, "T9": 59, "T10": 44, "T11": 29}  # below each
REQUIRED_MM, VOXELISATION_MM, HALF_DIAGONAL_MM = 2.0, 0.35, 1.3
PLATE = {"profile": "curved_plate", "width_mm": 10, "depth_mm": 5}


def _disc_s(upper: str) -> float:
    """S (mm) of the disc space below vertebra ``upper``, as read by eye."""
    return 540.2 + 1.5 * DISC_K[upper]


def _export(tmp_path, proximal, distal, parts, implant=None):
    """(folder, manifest) of the plan ``proximal`` -> ``distal`` from the clicked points and exclude seeds, exported
    through the CLI with default settings (and ``implant`` settings if given); the CLI must succeed."""
    plan = {"case_id": f"CTA-{proximal}{distal}", "proximal_level": proximal, "distal_level": distal,
            "proximal_point_ras": list(CLICKED[proximal]), "distal_point_ras": list(CLICKED[distal]),
            "segmentation": {"exclude_seeds_ras": [list(p) for p in EXCLUDE]}}
    if implant:
        plan["implant"] = implant
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["plan", cta_path(), "--plan", str(path), "--out", str(tmp_path / "out"), "--no-report",
                     "--parts", *parts])
    assert code == 0, err.getvalue()[-2000:]
    folder = glob.glob(str(tmp_path / "out" / "*" / "manifest.json"))[0].rsplit(os.sep, 1)[0]
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        return folder, json.load(f)


def _assert_clear(mesh, trees, file_name):
    """The mesh keeps the required clearance from each labelled structure (``trees``: name -> cKDTree of its voxel
    centres): distance to the voxel centres less the half-diagonal, with the voxelisation's allowance."""
    pts = np.vstack([mesh.vertices, mesh.vertices[mesh.faces].mean(axis=1)])
    for name, tree in trees.items():
        clearance = float(tree.query(pts)[0].min()) - HALF_DIAGONAL_MM
        print(file_name, name, f"{clearance:.2f} mm")
        assert clearance >= REQUIRED_MM - VOXELISATION_MM, (file_name, name)


def _mask_points_ras(name):
    img = sitk.ReadImage(cta_path(name))
    kji = np.argwhere(sitk.GetArrayFromImage(img) > 0)
    lps = np.asarray(img.GetOrigin()) + kji[:, ::-1] * np.asarray(img.GetSpacing())  # direction is identity
    return lps * [-1.0, -1.0, 1.0]


@pytest.fixture(scope="module")
def cta():
    from PatientImplantPlannerLib.scene.context import create_headless_context

    ctx = create_headless_context()
    node = load_ct(ctx, cta_path(), name="CTA")
    params = BoneSegmentationParameters(seeds_ras=[CLICKED["T4"], CLICKED["T10"]], exclude_seeds_ras=EXCLUDE)
    bone = segment_bone(ctx, node, params).mask
    yield np.asarray(array(node)), ijk_to_ras_matrix(node), bone
    ctx.scene.Clear(True)


def test_the_level_names_count_up_from_the_labelled_t12():
    t12 = _mask_points_ras("vertebrae_T12")
    # Its body lies between the T11/T12 disc read here and the next disc down (k = 11.5).
    assert 540.2 + 1.5 * 11.5 < np.median(t12[:, 2]) < _disc_s("T11")


@pytest.mark.parametrize("proximal, distal", [("T4", "T9"), ("T6", "T8"), ("T7", "T10"), ("T8", "T10")])
def test_levels_from_clicked_points_where_the_bone_runs_on_through_the_discs(cta, proximal, distal):
    ct, m, bone = cta
    r = detect_levels(bone, m, CLICKED[proximal], CLICKED[distal], proximal, distal, ct_array=ct)
    assert any("found from the CT's disc spaces" in w for w in r.warnings)
    # Each docking face lies in its own disc space (discs here are 15-25 mm apart, so the right level): within 3 mm
    # of the disc read by eye, or within 6 mm and marked doubtful for the surgeon to check.
    above_distal = ORDER[ORDER.index(distal) - 1]
    for end, ep, disc in (("proximal", r.proximal_endplate, _disc_s(proximal)),
                          ("distal", r.distal_endplate, _disc_s(above_distal))):
        off = abs(float(ep.centre[2]) - disc)
        print(f"{end}: {off:.1f} mm from the disc, doubtful: {end in r.doubtful_endplates}")
        assert off <= (6.0 if end in r.doubtful_endplates else 3.0), end
        if end not in r.doubtful_endplates:  # the spine runs within 20 deg of the scan's axis at T4-T10
            assert abs(float(ep.normal[2])) >= np.cos(np.radians(20.0)), end
    # One body between each pair of discs, each between its own two discs.
    between = ORDER[ORDER.index(proximal) + 1: ORDER.index(distal)]
    assert len(r.intermediate_centres) == len(between)
    for centre, name in zip(r.intermediate_centres, between):
        above = ORDER[ORDER.index(name) - 1]
        assert _disc_s(name) < centre[2] < _disc_s(above), name


@pytest.mark.parametrize("proximal, distal", [("T6", "T8"), ("T6", "T9"), ("T7", "T10")])
def test_docking_faces_lie_along_the_thin_slices_discs(cta, proximal, distal):
    """On these 1.5 mm slices a disc shows as its two endplates, two bright lines 4-6 mm apart. Read as two bands,
    the face's band jumped between them and its refits ran away: T6 inferior came out 27 deg and T9 superior 47 deg
    off the slices (before 2026-12-03), the T4 -> T9 strut fell apart on T9. Here the column runs straight down the
    slices and its discs lie flat in the sagittal and coronal views (read by eye at x = 113-119, y = 96-116 mm; the
    clicked points differ by < 1 mm in R and A): each face within 8 deg of the slices and 3 mm of its disc."""
    ct, m, bone = cta
    r = detect_levels(bone, m, CLICKED[proximal], CLICKED[distal], proximal, distal, ct_array=ct)
    above_distal = ORDER[ORDER.index(distal) - 1]
    for ep, disc in ((r.proximal_endplate, _disc_s(proximal)), (r.distal_endplate, _disc_s(above_distal))):
        tilt = float(np.degrees(np.arccos(min(1.0, abs(float(ep.normal[2]))))))
        print(f"{ep.level}: {tilt:.1f} deg from the slices, {ep.centre[2] - disc:+.1f} mm from the disc")
        assert tilt <= 8.0, ep.level  # measured 1.1-6.5
        assert abs(float(ep.centre[2]) - disc) <= 3.0, ep.level  # measured -2.4 to +1.0


def test_the_canal_found_from_the_bone_stays_behind_t10s_posterior_wall(cta):
    """T10's osteopenic body is open to the canal through the basivertebral notch: the bone segment leaves a pocket
    of its centre out, and the notch's gap in the posterior wall joins it to the canal's hole. The canal found from
    the bone took the pocket in up to the limit behind the axis, 8 mm in front of the wall (A 98.2 mm on the
    midline), and the T7 -> T10 footplates were shrunk to 0.4 of the endplate to keep clear of it. Reference: the
    posterior cortex read on the CT's mid-sagittal HU profile, A = 90 mm at S 619-624 (rising from 14-22 HU to
    130-139 HU). The canal's front on the midline (4 mm either side) over T10's upper half, within a voxel and its
    slice-blur widening (1.5 + 1.5 mm) of it; measured 92.2 mm."""
    from PatientImplantPlannerLib.imaging.keepout import from_ct

    ct, m, bone = cta
    axis = detect_levels(bone, m, CLICKED["T7"], CLICKED["T10"], "T7", "T10", ct_array=ct).axis_points
    canal = next(s for s in from_ct(ct, m, bone, [], axis_points=axis).structures if s.name == "spinal_canal")
    pts = (np.argwhere(canal.mask) + canal.offset)[:, ::-1] @ m[:3, :3].T + m[:3, 3]
    upper_t10 = (np.abs(pts[:, 0] - CLICKED["T10"][0]) < 4.0) & (pts[:, 2] > 617.0) & (pts[:, 2] < _disc_s("T9"))
    assert upper_t10.sum() > 50  # the canal is found there
    print(f"canal front at T10: A {pts[upper_t10, 1].max():.1f} mm")
    assert pts[upper_t10, 1].max() <= 90.0 + 3.0


def test_a_plan_exports_clear_of_the_labelled_aorta_and_heart(tmp_path):
    """T7 -> T10 through the CLI with default settings: its faces are found without doubt (before the disc's two
    endplates were read as one band, 2026-12-03, both were doubted and export waited for them), and the implant and
    its largest variant keep the required clearance from the dissected aorta (both lumens) and the heart as
    TotalSegmentator labelled them."""
    folder, manifest = _export(tmp_path, "T7", "T10", ("implant", "variants"), PLATE)
    assert manifest["safety"]["accepted"] == []
    trees = {name: cKDTree(_mask_points_ras(name)) for name in ("aorta", "heart")}
    implants = [f for f in manifest["files"] if f["file"].endswith(".stl")
                and f["role"] in ("implant", "implant oversized variant")]
    assert len(implants) >= 2
    for f in implants:
        mesh = read_stl(os.path.join(folder, f["file"]), manifest["coordinate_system"])
        _assert_clear(mesh, trees, f["file"])


def test_drill_guides_seat_where_the_strut_leaves_its_footplate_steeply(tmp_path):
    """T6 -> T8 with default settings, drill guides included. Found when the T6 face came out 27 deg off (its disc's
    two endplates read as two bands, before 2026-12-03) and was accepted as found: the strut left the T8 footplate
    30 deg off its normal and ran out over the footplate's rim beside the drill guide's pocket, and the guide's cap is
    carved clear of it (slid off the way the slot opens) instead of refusing the export (before: "overlaps the
    implant by 4.95 mm3"). Both faces now lie along the flat discs (6.5 and 3.9 deg) with no doubt to accept.
    Measured on the exported files: every drill guide is one closed piece and does not intersect the implant size it
    is made for."""
    from PatientImplantPlannerLib.core.mesh import check_mesh, to_manifold

    folder, manifest = _export(tmp_path, "T6", "T8", ("implant", "variants", "drill_guides"), PLATE)
    assert manifest["safety"]["accepted"] == []
    cs = manifest["coordinate_system"]
    implants = {f["file"]: f for f in manifest["files"] if f["file"].endswith(".stl")
                and f["role"] in ("implant", "implant oversized variant")}
    guides = [f for f in manifest["files"] if f["file"].endswith(".stl") and "drill" in f["role"]]
    assert len(guides) >= 2
    for g in guides:
        mesh = read_stl(os.path.join(folder, g["file"]), cs)
        check = check_mesh(mesh)
        assert check.ok and check.n_components == 1, g["file"]
        guide = to_manifold(mesh)
        # The guide for one size must not cut into that size; a guide for all sizes, into none.
        sized = [n for n in implants if _size_of(n) == _size_of(g["file"])] or list(implants)
        for name in sized:
            implant = to_manifold(read_stl(os.path.join(folder, name), cs))
            assert (guide ^ implant).volume() <= 0.01, (g["file"], name)


@pytest.mark.parametrize("proximal, distal", [("T7", "T10"), ("T8", "T10")])
def test_the_default_strut_exports_with_drill_access(tmp_path, proximal, distal):
    """The default strut (a 12 mm rod, placed automatically: here anterolateral right, away from the dissected
    aorta) through the CLI with default settings. Both plans were refused for drill access (before 2026-12-04:
    "runs into the implant's strut by 0.7 mm at best"), and none of the fixes named helped: the access check took
    the implant less its footplates for the strut, and that subtraction left sheets without volume on the
    footplates' free faces and rims, 0.25 mm from a drill line starting there. Measured on the exported meshes:
    the cylinder a 2.5 mm drill and a 3.5 mm-wide driver sweep 40 mm outward from each screw head shares no volume
    with the implant (every size for the proximal screws, whose end does not move; the nominal size for the distal
    ones: the phantom test of test_drill_access.py follows them into the variants), and the implant keeps the
    required clearance from the labelled aorta and heart."""
    from measure import outward_overlap_mm3

    from PatientImplantPlannerLib.core.mesh import to_manifold

    folder, manifest = _export(tmp_path, proximal, distal, ("implant", "variants"))
    assert manifest["safety"]["accepted"] == []
    assert manifest["parameters"]["implant"]["profile"] == "circle"
    screws = manifest["measurements"]["screws"]
    assert {s["trajectory"]["end"] for s in screws} == {"proximal", "distal"}
    trees = {name: cKDTree(_mask_points_ras(name)) for name in ("aorta", "heart")}
    sizes = [f for f in manifest["files"] if f["file"].endswith(".stl")
             and f["role"] in ("implant", "implant oversized variant")]
    assert len(sizes) == 4
    for f in sizes:
        mesh = read_stl(os.path.join(folder, f["file"]), manifest["coordinate_system"])
        solid = to_manifold(mesh)
        for s in screws:
            if s["trajectory"]["end"] == "distal" and f["size_variant"] != "nominal":
                continue
            for radius in (1.25, 1.75):  # the drill, the driver
                overlap = outward_overlap_mm3(solid, s["trajectory"]["entry"], s["direction"], radius)
                assert overlap <= 0.01, (f["file"], s["trajectory"]["name"], radius, overlap)
        _assert_clear(mesh, trees, f["file"])


def _size_of(file_name: str) -> str:
    """'plus2mm' / 'plus3mm' / ... or 'nominal' from an exported file's name."""
    for part in file_name.replace(".stl", "").split("_"):
        if part.startswith("plus") or part == "nominal":
            return part
    return "all"
