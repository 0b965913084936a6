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


def test_docking_bodies_measured_far_too_short_name_their_faces(tmp_path, smoothed_ct):
    """T5 -> T8 on the smoothed copy: the faces were found on bands inside the docking bodies (T5 8.8 mm and T8
    14.0 mm tall between them, where the trial's reformat shows bodies 20-23 mm apart) and no doubt was raised: on
    this copy the plan was blocked only for the trachea and a screw, on the copy smoothed by another tool the implant
    fell apart "(this is a bug if they do)". Both faces are now doubted with the heights measured: they block export
    as findings naming how to set them, and a refusal for an implant in pieces names them too."""
    code, text = _plan(tmp_path, smoothed_ct, "T5", "T8")
    assert code == 2, text[-2000:]
    assert "this is a bug" not in text
    heights = dict(re.findall(r"(T\d)'s body measured ([\d.]+) mm tall", text))
    print(heights)
    assert set(heights) == {"T5", "T8"}, text[-2000:]
    assert all(float(h) < 15.0 for h in heights.values())  # measured 8.8 and 14.0
    # blocked as doubtful endplates (or named in the refusal when the implant falls apart, as on another smoothing)
    assert ("endplate:proximal" in text and "endplate:distal" in text) or "the endplates it was built on are in " \
        "doubt" in text
    assert "proximal_endplate" in text and "distal_endplate" in text
    assert not list((tmp_path / "out").glob("*/*.stl"))
