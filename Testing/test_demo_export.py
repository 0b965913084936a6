"""The README's main job end to end, as a user runs it: `implant-planner demo --no-fe` on the bundled real lumbar CT
writes a bundle whose every printable file, read back from disk, is one closed body of the expected size.

Added after the demo stopped on main with "2 separate shells" (a 0.1 mm lattice speck left loose by the glued
porous end) while every test passed: no test exported the demo plan's lattice on the real CT."""

import glob
import json
import os
import subprocess
import sys

import pytest

from PatientImplantPlannerLib.core.mesh import check_mesh, read_stl

pytestmark = pytest.mark.slow

MAX_IMPLANT_STL_BYTES = 25_000_000  # issue 9: an implant with its porous layers at most 25 MB as binary STL


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run = subprocess.run([sys.executable, "-m", "PatientImplantPlannerLib", "demo", "--no-fe", "--out", str(out)],
                         capture_output=True, text=True, encoding="utf-8", timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    (folder,) = glob.glob(os.path.join(str(out), "DEMO-*"))
    with open(os.path.join(folder, "manifest.json"), encoding="utf-8") as fh:
        return folder, json.load(fh), run.stdout


def test_every_printable_file_is_one_closed_body(bundle):
    folder, manifest, _ = bundle
    printable = [f for f in manifest["files"] if f["file"].endswith(".stl") and f["role"] != "bone model"]
    roles = {f["role"] for f in printable}
    assert {"implant", "implant oversized variant", "docking guide", "drill guide"} <= roles
    for f in printable:
        mesh = read_stl(os.path.join(folder, f["file"]), manifest["coordinate_system"])
        check = check_mesh(mesh)
        assert check.ok and check.n_degenerate == 0, (f["file"], check.problems)
        if "implant" in f["role"] or "guide" in f["role"]:
            assert check.n_components == 1, f["file"]
        assert check.volume_mm3 == pytest.approx(f["volume_mm3"], rel=1e-3)


def test_implants_carry_their_porous_layers_within_the_file_size(bundle):
    folder, manifest, _ = bundle
    implants = [f for f in manifest["files"] if "implant" in f["role"] and f["file"].endswith(".stl")]
    assert len(implants) == 4  # nominal, +2, +3, +4 mm
    for f in implants:
        size = os.path.getsize(os.path.join(folder, f["file"]))
        assert size == f["bytes"] and size <= MAX_IMPLANT_STL_BYTES, (f["file"], size)
        assert f["triangles"] > 100_000  # the lattice is there (the plain strut is a few thousand triangles)
    for layer in manifest["lattice"]:
        assert 0.65 <= layer["measured_porosity"] <= 0.75


def test_the_drill_lines_through_the_intact_l2_are_reported(bundle):
    _, manifest, stdout = bundle
    crossing = manifest["measurements"]["drill_line_bone_mm"]
    assert len(crossing) == 4 and min(crossing.values()) > 10.0  # the plate lies in front of the intact L2
    assert any("drill and driver line of 4 screw(s) crosses bone" in w for w in manifest["warnings"])
    assert "drill_line_bone_mm" in stdout


def test_the_record_gives_the_solid_and_the_printed_volume_each_labelled(bundle):
    """A new-user trial read 'Volume 6138 mm3 / Mass 27.2 g' in the record beside a 5026 mm3 nominal file: the first
    is the solid implant, the file has its pores. The record labels the solid figures and gives the file's own, read
    back from the STL, with its mass."""
    import html
    import re

    folder, manifest, _ = bundle
    (nominal,) = [f for f in manifest["files"] if f["role"] == "implant" and f["file"].endswith(".stl")]
    volume = check_mesh(read_stl(os.path.join(folder, nominal["file"]), manifest["coordinate_system"])).volume_mm3
    with open(os.path.join(folder, "design_record.html"), encoding="utf-8") as fh:
        text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fh.read())))
    found = re.search(r"Volume / mass as printed \(nominal file\) (\d+) mm³ / ([\d.]+) g", text)
    assert found, text[text.find("Volume, solid"):][:300]
    assert float(found.group(1)) == pytest.approx(volume, abs=1.0)
    assert float(found.group(2)) == pytest.approx(volume / 1000 * 4.43, abs=0.1)  # Ti6Al4V
    solid = re.search(r"Volume, solid \(before the porous layer\) (\d+) mm³", text)
    assert solid and float(solid.group(1)) > volume  # the pores take material out
