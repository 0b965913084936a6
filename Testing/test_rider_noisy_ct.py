"""The planner on a noisy real CT (riderct.py): a chest CT without contrast reconstructed with a sharp LUNG kernel,
1.25 mm slices. A new user's trial: every default plan (T4 -> T9, T6 -> T8, T5 -> T7, T8 -> T10, T9 -> T11) was
refused with "The vertebral body has no recognisable endplate face" and a fix about the point and the segmentation,
though the points were in the bodies: the bone segment is speckled by the noise (1234 ml of "bone" reaching into the
soft tissue). The refusal now names the noise and the fix that works (a soft-tissue or bone kernel series).

Points: the body centres read by the trial on a straightened mid-sagittal reformat (midpoint of the two endplates),
the levels counted from the first rib (T1, about 90 % sure) and checked against rib 12.
"""

import contextlib
import io
import json
import re

import pytest
from riderct import rider_dicom_folder

from PatientImplantPlannerLib.cli import main
from PatientImplantPlannerLib.imaging.ctnoise import NOISY_CT_HU, noise_hu

pytestmark = pytest.mark.slow

CENTRES = {"T5": (-3.0, -48.9, -128.1), "T6": (0.2, -52.0, -150.7), "T7": (1.1, -53.8, -173.1),
           "T8": (1.2, -53.4, -196.2)}
T6_T7_DISC_S = -161.9  # read by the trial on the same reformat

# On the soft-kernel copy (soft_kernel_ct below), along the line between the clicked centres (the mean CT of nine
# parallel lines 4 mm apart): the disc's dark centre and the bright cortical endplate of the docking body beside it
# (S, mm). A docking face lies between the two. The T6/T7 disc's centre read so (-161.4) is the trial's (-161.9)
# within 0.5 mm.
T5_INFERIOR_S = (-139.8, -136.3)  # disc centre, T5's inferior endplate
T6_INFERIOR_S = (-161.4, -157.9)  # disc centre, T6's inferior endplate
T8_SUPERIOR_S = (-187.5, -184.0)  # T8's superior endplate, disc centre


def _plan(tmp_path, ct, proximal, distal):
    """The CLI's plan command from clicked body centres, implant only; (exit code, what it printed on stderr)."""
    plan = {"case_id": f"RIDER-{proximal}{distal}", "proximal_level": proximal, "distal_level": distal,
            "proximal_point_ras": list(CENTRES[proximal]), "distal_point_ras": list(CENTRES[distal])}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["plan", str(ct), "--plan", str(path), "--out", str(tmp_path / "out"), "--no-report",
                     "--parts", "implant"])
    return code, err.getvalue()


def test_the_sharp_kernel_noise_is_measured():
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    folder = rider_dicom_folder()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    ct = sitk.GetArrayFromImage(reader.Execute())
    assert ct.shape == (236, 512, 512)
    measured = noise_hu(ct)
    print(f"noise {measured:.1f} HU")
    assert measured > NOISY_CT_HU + 5.0  # measured 41 HU; the other real CTs 2-23


def test_a_refused_plan_names_the_noise_and_a_fix_that_works(tmp_path):
    code, text = _plan(tmp_path, rider_dicom_folder(), "T6", "T8")
    assert code == 2, text[-2000:]
    assert "The CT is noisy (4" in text and "soft-tissue or bone kernel" in text
    assert "smooth this CT within each slice only (Gaussian, sigma 0.7 mm in plane" in text  # it works: below
    assert "slice thickness 1.25 mm is above" not in text  # 1.2500000000000007 mm from the DICOM positions
    assert not list((tmp_path / "out").glob("*/*.stl"))


@pytest.fixture(scope="module")
def smoothed_ct(tmp_path_factory):
    """The trial's own remedy for the noise: a Gaussian-smoothed copy (sigma 0.7 mm) of the series."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(rider_dicom_folder()))
    smoothed = sitk.Cast(sitk.SmoothingRecursiveGaussian(sitk.Cast(reader.Execute(), sitk.sitkFloat32), 0.7),
                         sitk.sitkInt16)
    ct_path = str(tmp_path_factory.mktemp("rider") / "rider_smoothed.nii.gz")
    sitk.WriteImage(smoothed, ct_path)
    return ct_path


def test_a_face_the_spine_runs_along_is_refused_by_name(tmp_path, smoothed_ct):
    """The smoothed copy gets T5 -> T7 past the noise, but its T7
    "superior face" is misread: 9 mm above the T6/T7 disc and facing forwards (81 deg from the axis; flagged
    doubtful). The plan was then refused in placement with "The spinal axis does not cross the distal endplate plane
    ... or the endplates are swapped", about an axis the user never gave. It is now refused as soon as the faces are
    found, naming that face, where it was found and the detection's doubt."""
    code, text = _plan(tmp_path, smoothed_ct, "T5", "T7")
    assert code == 2, text[-2000:]
    assert "does not cross" not in text
    refusal = re.search(r"The distal endplate plane \(T7 superior\) at RAS \(([-\d., ]+)\) lies (\d+) deg from the "
                        r"spinal axis", text)
    assert refusal, text[-2000:]
    centre = [float(x) for x in refusal.group(1).split(",")]
    assert int(refusal.group(2)) > 70  # measured 81
    assert abs(centre[2] - T6_T7_DISC_S) > 5.0  # misread: 9 mm above the T6/T7 disc
    assert "found from the CT and doubted: The distal endplate (T7 superior) may be" in text
    assert not list((tmp_path / "out").glob("*/*.stl"))


def test_docking_faces_are_measured_from_all_bone_when_the_segment_holds_only_the_docking_bodies(tmp_path,
                                                                                                   smoothed_ct):
    """T5 -> T8 on the smoothed copy, whose segment from the CLI's default seeds (the two points) holds T5 and T8
    alone. Before, the faces were found on bands inside the docking bodies (T5 8.8 mm and T8 14.0 mm tall between
    them, where the trial's reformat shows bodies 20-23 mm apart; later doubted for those heights), and on the copy
    smoothed by another tool the implant fell apart "(this is a bug if they do)". The disc bands are now measured on
    all bone of the CT: T5 inferior lies at its disc. This copy is blurred across its slices like 2.9 mm ones, and
    T8 superior's fit does not settle (30 deg off the column): both faces' doubts block export, naming how to set
    them."""
    code, text = _plan(tmp_path, smoothed_ct, "T5", "T8")
    assert code == 2, text[-2000:]
    assert "this is a bug" not in text
    assert "endplate:proximal" in text and "endplate:distal" in text
    assert "proximal_endplate" in text and "distal_endplate" in text
    found = re.search(r"the proximal endplate's .*?found at RAS \(([-\d., ]+)\)", text)
    assert found, text[-2000:]
    assert T5_INFERIOR_S[0] <= float(found.group(1).split(",")[2]) <= T5_INFERIOR_S[1]  # measured -138.1
    assert not list((tmp_path / "out").glob("*/*.stl"))


@pytest.fixture(scope="module")
def soft_kernel_ct(tmp_path_factory):
    """A soft-tissue kernel's stand-in: the series smoothed in plane only (sigma 0.7 mm), its 1.25 mm slices kept
    sharp, so it is measured as thin slices (a disc shows its two endplates)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(rider_dicom_folder()))
    smoothed = sitk.Cast(sitk.SmoothingRecursiveGaussian(sitk.Cast(reader.Execute(), sitk.sitkFloat32),
                                                         [0.7, 0.7, 0.01]), sitk.sitkInt16)
    ct_path = str(tmp_path_factory.mktemp("rider_soft") / "rider_soft.nii.gz")
    sitk.WriteImage(smoothed, ct_path)
    return ct_path



def test_thin_slices_whose_segment_holds_only_the_docking_bodies_give_faces_at_their_discs(soft_kernel_ct):
    """T5 -> T8 with the CLI's default seeds (the two points): the discs are dark, so the segment holds T5 and T8
    alone and the disc bands could not be measured on it. Before, the faces were taken from the bodies isolated from
    the segment: T5 inferior 3.4 mm above T5's cortical endplate and turned 36 deg, T8 superior 1.9 mm below T8's
    (bodies "10.2 and 13.9 mm tall"), both doubted, export blocked. They are now measured on all bone of the CT, and
    T6, split by a band across its middle, is found between them."""
    import numpy as np

    from PatientImplantPlannerLib.design.plan import _axis_outside_segment
    from PatientImplantPlannerLib.imaging import levels
    from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
    from PatientImplantPlannerLib.scene.bonesegment import segment_bone
    from PatientImplantPlannerLib.scene.context import create_headless_context
    from PatientImplantPlannerLib.scene.ctload import load_ct
    from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras_matrix

    ctx = create_headless_context()
    node = load_ct(ctx, soft_kernel_ct, name="RiderSoft")
    m = ijk_to_ras_matrix(node)
    points = [np.array(CENTRES[n]) for n in ("T5", "T8")]
    bone = segment_bone(ctx, node, BoneSegmentationParameters(seeds_ras=[tuple(p) for p in points])).mask
    inv = np.linalg.inv(m)
    for name in ("T6", "T7"):  # the case: the bodies between are not in the segment
        i, j, k = np.rint(inv[:3] @ np.append(CENTRES[name], 1.0)).astype(int)
        assert not bone[k - 3: k + 4, j - 3: j + 4, i - 3: i + 4].any(), name
    r = levels.detect_levels(bone, m, points[0], points[1], "T5", "T8", ct_array=np.asarray(array(node)))
    ctx.scene.Clear(True)
    prox, dist = r.proximal_endplate, r.distal_endplate
    print(prox.centre, prox.normal, dist.centre, dist.normal, r.proximal.body_height, r.distal.body_height)
    assert T5_INFERIOR_S[0] <= prox.centre[2] <= T5_INFERIOR_S[1]  # measured -137.8
    assert T8_SUPERIOR_S[0] <= dist.centre[2] <= T8_SUPERIOR_S[1]  # measured -186.1
    for ep, (a, b) in ((prox, ("T5", "T6")), (dist, ("T8", "T7"))):  # square to the column between the centres
        line = np.subtract(CENTRES[b], CENTRES[a])
        assert np.degrees(np.arccos(ep.normal @ line / np.linalg.norm(line))) < 8.0  # measured 1-2
    assert r.doubtful_endplates == {}
    assert 15.0 < r.proximal.body_height < 25.0 and 15.0 < r.distal.body_height < 25.0  # measured 17.5, 22.0
    assert len(r.intermediate_centres) == 2
    for c, name in zip(r.intermediate_centres, ("T6", "T7")):
        assert abs(c[2] - CENTRES[name][2]) < 4.0, (name, c)
    # The plan says the bone and check models, made from this segment, lack T6 and T7 (measured: 38 mm of the axis).
    warning = _axis_outside_segment(r, bone, m)
    run = float(warning.split(" along ")[1].split(" mm")[0])
    top, bottom = (float(part.split(")")[0].split(",")[2]) for part in warning.split("RAS (")[1:3])
    assert run > 30.0 and top > CENTRES["T6"][2] and bottom < CENTRES["T7"][2], warning


def test_the_in_plane_smoothing_the_refusal_names_gives_an_exported_plan(tmp_path, soft_kernel_ct):
    """The noisy series' remedy as the refusal words it, through the CLI: T6 -> T8 is designed and exported once the
    surgeon accepts the side chosen without seeing the aorta (no contrast, no labels); its docking faces lie at their
    discs."""
    import numpy as np

    plan = {"case_id": "RIDER-soft", "proximal_level": "T6", "distal_level": "T8",
            "proximal_point_ras": list(CENTRES["T6"]), "distal_point_ras": list(CENTRES["T8"])}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["plan", soft_kernel_ct, "--plan", str(path), "--out", str(tmp_path / "out"), "--no-report",
                     "--parts", "implant", "--accept-risk", "unchecked:aorta"])
    assert code == 0, err.getvalue()[-2000:]
    assert "The CT is noisy" not in err.getvalue()
    assert list((tmp_path / "out").glob("*/*implant_nominal*.stl"))
    faces = {}
    for end in ("proximal", "distal"):
        (f,) = (tmp_path / "out").glob(f"*/*endplate_{end}.mrk.json")
        doc = json.loads(f.read_text(encoding="utf-8"))["markups"][0]
        centre = np.asarray(doc.get("center") or doc["controlPoints"][0]["position"], float)
        faces[end] = centre[2]  # S is the same in RAS and LPS
    print(faces)
    assert T6_INFERIOR_S[0] <= faces["proximal"] <= T6_INFERIOR_S[1]  # measured -159.4
    assert T8_SUPERIOR_S[0] <= faces["distal"] <= T8_SUPERIOR_S[1]  # measured -186.0
