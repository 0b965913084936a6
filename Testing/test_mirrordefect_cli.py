"""The mirror-defect kind through the plan JSON and the CLI: the example plan, its validation, an end-to-end run on
the bundled sample CT with every file verified and the manifest's "defect" block."""

import json
import os
import subprocess
import sys

import pytest
from conftest import SAMPLE_CT

from PatientImplantPlannerLib.core.errors import PlanError
from PatientImplantPlannerLib.design.plan import Plan

CLI = [sys.executable, "-m", "PatientImplantPlannerLib"]


def test_example_plan_round_trips_and_bad_parameters_are_refused(tmp_path):
    path = tmp_path / "md.json"
    subprocess.run(CLI + ["write-demo-plan", "--kind", "mirror_defect", str(path)], check=True, capture_output=True)
    plan = Plan.load(str(path))
    assert plan.kind == "mirror_defect" and plan.mirror_defect["resection_planes"]
    plan.validate()  # no vertebra points needed for this kind
    with pytest.raises(PlanError, match="kind"):
        Plan(kind="plate").validate()
    bad = json.loads(path.read_text())
    bad["mirror_defect"]["fit_clearence_mm"] = 0.2
    with pytest.raises(PlanError, match="fit_clearence_mm"):
        Plan.from_dict(bad).validate()


@pytest.mark.slow
def test_sample_ct_left_hemisacrectomy_end_to_end(tmp_path):
    path = tmp_path / "md.json"
    subprocess.run(CLI + ["write-demo-plan", "--kind", "mirror_defect", str(path)], check=True, capture_output=True)
    out = tmp_path / "out"
    run = subprocess.run(CLI + ["plan", SAMPLE_CT, "--plan", str(path), "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    (folder,) = [out / d for d in os.listdir(out)]
    manifest = json.loads((folder / "manifest.json").read_text())
    d = manifest["defect"]
    assert {"symmetry_plane", "defect_volume_mm3", "implant_volume_mm3", "bone_overlap_mm3", "contact_area_mm2",
            "max_gap_mm"} <= set(d)
    assert abs(d["symmetry_plane"]["normal_ras"][0]) > 0.99  # left-right
    assert d["bone_overlap_mm3"] <= 1.0
    assert 0.9 < d["implant_volume_mm3"] / d["defect_volume_mm3"] < 1.05 or d["structure"]["mode"] == "zone"
    import hashlib

    for f in manifest["files"]:
        assert (folder / f["file"]).is_file(), f
        assert hashlib.sha256((folder / f["file"]).read_bytes()).hexdigest() == f["sha256"], f["file"]
        if f["role"] != "design record":
            assert f["check"]["ok"], f
    assert {f["file"] for f in manifest["files"] if f["role"] == "design record"} == {"design_record.html",
                                                                                     "design_record.pdf"}
    # The CLI's own segmentation and CT go into the record (seed, threshold, slice thickness).
    html = (folder / "design_record.html").read_text()
    assert "226 to 3071 HU" in html and "3.00 mm" in html
