"""Drill and driver access on the real contrast chest CT (chestct.py): the T6 -> T8 curved plate (footplates ~18 mm
apart) planned through the CLI with the TotalSegmentator label map as level source (``--levels mask.nii.gz``).
Before design-time access checks 3 of its 4 screws had a drill line running 2-15 mm3 into the other footplate.

Measured on the exported files only: for each screw, its exported markups line (entry and direction), the cylinder
a 2.5 mm drill and a 3.5 mm-wide driver sweep 40 mm outward from the entry shares no volume with the exported
nominal implant STL, nor (proximal screws, which do not move with the oversized end) with any variant STL; the
drill guides are made.
"""

import contextlib
import io
import json
import os

import pytest
from chestct import chest_ct_path, chest_labels_path
from measure import markups_line_ras, outward_overlap_mm3

from PatientImplantPlannerLib.cli import main
from PatientImplantPlannerLib.core.mesh import read_stl, to_manifold

pytestmark = pytest.mark.slow

REACH_MM = 40.0
RADII = {"2.5 mm drill": 1.25, "3.5 mm driver": 1.75}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("access_t6t8")
    plan = {"case_id": "CHEST-T6T8", "proximal_level": "T6", "distal_level": "T8",
            "implant": {"profile": "curved_plate", "width_mm": 10, "depth_mm": 5}}
    (tmp / "plan.json").write_text(json.dumps(plan))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["plan", chest_ct_path(), "--plan", str(tmp / "plan.json"), "--out", str(tmp / "out"),
                     "--levels", chest_labels_path(), "--no-report", "--parts", "implant", "variants", "drill_guides"])
    assert code == 0, err.getvalue()[-2000:]
    (folder,) = [str(p) for p in (tmp / "out").iterdir()]
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as f:
        return folder, json.load(f)


def test_drill_and_driver_lines_clear_the_exported_implants(exported):
    folder, manifest = exported
    cs = manifest["coordinate_system"]
    lines = {f["file"]: markups_line_ras(os.path.join(folder, f["file"])) for f in manifest["files"]
             if f["role"] == "screw trajectory (markups line)"}
    ends = [("proximal" if "_screw_proximal" in name else "distal") for name in lines]
    assert ends.count("proximal") >= 1 and ends.count("distal") >= 1
    implants = {f["file"]: f for f in manifest["files"]
                if f["role"].startswith("implant") and f["file"].endswith(".stl")}
    assert len(implants) == 4  # nominal and the +2, +3, +4 mm variants
    measured = {}
    for name, f in implants.items():
        solid = to_manifold(read_stl(os.path.join(folder, name), cs))
        nominal = f["role"] == "implant"
        for line, (entry, direction) in lines.items():
            if not nominal and "_screw_distal" in line:
                continue  # the variant's distal end (and its holes) moved; its lines are not exported
            for tool, r in RADII.items():
                measured[(name, line, tool)] = outward_overlap_mm3(solid, entry, direction, r, REACH_MM)
    print({k: round(v, 3) for k, v in measured.items() if v > 0})
    assert sum(k[0] == next(n for n, f in implants.items() if f["role"] == "implant") for k in measured) \
        == len(lines) * len(RADII)
    assert max(measured.values()) == 0.0


def test_screws_are_tilted_within_the_allowed_range_and_drill_guides_are_made(exported):
    folder, manifest = exported
    screws = manifest["measurements"]["screws"]
    assert all(s["screw_type"]["diameter_mm"] == 3.5 and not s["breach"] for s in screws)
    assert all(10.0 <= s["layout"]["convergence_deg"] <= 30.0 for s in screws)
    print({s["trajectory"]["name"]: s["layout"] for s in screws})
    assert manifest["safety"]["findings"] == []
    guides = [f for f in manifest["files"] if f["role"] == "drill guide"]
    assert {g["end"] for g in guides} == {"proximal", "distal"}
