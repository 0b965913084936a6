"""The contrast chest CT as a 5 mm scan, planned with its TotalSegmentator labels (the CLI's --levels): T4 -> T9.

The copy: every two 2.5 mm slices averaged into one 5 mm slice (centred between them); the labels of the first slice
of each pair (within 1.25 mm of the copy's slices, as a label map made on the thick scan would differ from the thin
one anyway). On such slices the labelled vertebrae are stair-stepped: measured, a face fitted to the 5 mm labels
(the method of chestct.reference_endplate) lies 11.5 deg (T6 inferior), 6.0 (T8 and T9 superior) and 1.6 (T4 inferior)
from the same face on the 2.5 mm labels. So both docking faces are findings that export waits for.

Accepted, the plan is measured on its exported files against the original 2.5 mm labels (which the planner never
saw), as test_safety_chest_clicked.py does: clearance of the nominal implant and the largest variant to aorta,
heart, oesophagus, trachea and spinal cord >= 2 mm (less 0.35 mm for the labels' voxelisation); every screw inside
its docking vertebra over >= 95 % of its length beyond half a slice past its bone entry, never in another vertebra
or the cord.
"""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from chestct import chest_ct_path, chest_labels_path, voxel_centres
from scipy.spatial import cKDTree
from test_safety_chest_clicked import CORD, REQUIRED_MM, STRUCTURES, VERTEBRAE, VOXELISATION_MM, _labels, _lookup

from PatientImplantPlannerLib.cli import main
from PatientImplantPlannerLib.core.mesh import read_stl

pytestmark = pytest.mark.slow


def _five_mm(path, out, average):
    img = sitk.ReadImage(path)
    a = sitk.GetArrayFromImage(img)
    n = a.shape[0] // 2 * 2
    thick = np.rint(0.5 * (a[0:n:2].astype(float) + a[1:n:2])).astype(a.dtype) if average else a[0:n:2]
    im = sitk.GetImageFromArray(thick)
    im.SetSpacing(img.GetSpacing()[:2] + (2 * img.GetSpacing()[2],))
    im.SetDirection(img.GetDirection())
    k = np.reshape(img.GetDirection(), (3, 3))[:, 2] * img.GetSpacing()[2]
    im.SetOrigin(tuple(np.asarray(img.GetOrigin()) + 0.5 * k))  # the pair's centre
    sitk.WriteImage(im, out)
    return out


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chest5mm")
    ct = _five_mm(chest_ct_path(), str(tmp / "chest_5mm.nii.gz"), True)
    labels = _five_mm(chest_labels_path(), str(tmp / "labels_5mm.nii.gz"), False)
    (tmp / "plan.json").write_text(json.dumps({"case_id": "CHEST5-T4T9", "proximal_level": "T4",
                                               "distal_level": "T9"}), encoding="utf-8")

    def run(*extra):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["plan", ct, "--plan", str(tmp / "plan.json"), "--levels", labels, "--out", str(tmp / "out"),
                         "--no-report", "--parts", "implant", "variants", "--accept-thick-slices", *extra])
        return code, err.getvalue()

    refused = run()
    accepted = run("--accept-risk", "endplate:proximal", "--accept-risk", "endplate:distal")
    folders = [os.path.join(tmp / "out", f) for f in os.listdir(tmp / "out")] if (tmp / "out").exists() else []
    manifest = json.load(open(os.path.join(folders[0], "manifest.json"), encoding="utf-8")) if folders else None
    return refused, accepted, (folders[0] if folders else None), manifest


def test_both_faces_wait_for_the_surgeon_then_the_plan_exports(plans):
    (code1, err1), (code2, err2), _, manifest = plans
    assert code1 == 2 and "endplate:proximal" in err1 and "endplate:distal" in err1
    assert code2 == 0, err2[-2000:]
    assert sorted(manifest["safety"]["accepted"]) == ["endplate:distal", "endplate:proximal"]
    assert sum("labelled vertebrae are stair-stepped" in w for w in manifest["warnings"]) == 2


def test_the_plan_is_safe_against_the_thin_labels(plans):
    _, (code, err), folder, manifest = plans
    assert code == 0, err[-2000:]
    lab, m = _labels()
    half_diagonal = 0.5 * float(np.linalg.norm(np.linalg.norm(m[:3, :3], axis=0)))
    trees = {name: cKDTree(voxel_centres(lab == value, m)) for name, value in STRUCTURES.items()}
    meshes = [f["file"] for f in manifest["files"] if f["file"].endswith(".stl")
              and ("implant_nominal" in f["file"] or "plus4mm" in f["file"])]
    assert len(meshes) == 2
    clearance = {}
    for f in meshes:
        mesh = read_stl(os.path.join(folder, f), manifest["coordinate_system"])
        samples = np.vstack([mesh.vertices, mesh.vertices[mesh.faces].mean(axis=1)])
        for name, tree in trees.items():
            clearance[(f, name)] = float(tree.query(samples)[0].min()) - half_diagonal
    print({k[1]: round(v, 2) for k, v in clearance.items()})
    assert min(clearance.values()) >= REQUIRED_MM - VOXELISATION_MM, clearance

    half_slice = 1.25  # of the thin labels
    screws = manifest["measurements"]["screws"]
    assert {s["trajectory"]["end"] for s in screws} == {"proximal", "distal"}
    for s in screws:
        entry, tip = np.asarray(s["trajectory"]["entry"], float), np.asarray(s["tip"], float)
        length = float(np.linalg.norm(tip - entry))
        dock = VERTEBRAE["T4" if s["trajectory"]["end"] == "proximal" else "T9"]
        t = np.arange(s["bone_entry_mm"] + half_slice, length + 1e-6, 0.25)
        on = _lookup(lab, m, entry + t[:, None] * (tip - entry) / length)
        assert np.mean(on == dock) >= 0.95, (s["trajectory"]["name"], np.unique(on, return_counts=True))
        assert not np.isin(on, [v for v in range(26, 51) if v != dock]).any()
        assert not (on == CORD).any()
