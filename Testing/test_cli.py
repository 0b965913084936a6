"""The command line: help on every subcommand, segment on the real sample CT, plan on a phantom, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAMPLE_CT

from PatientImplantPlannerLib import mesh as M
from PatientImplantPlannerLib.cli import SAMPLE_L3_SEED_RAS, build_parser, demo_plan, main
from PatientImplantPlannerLib.manifest import verify_manifest


@pytest.mark.parametrize("command", ["segment", "plan", "demo", "write-demo-plan"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: implant-planner" in capsys.readouterr().out


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "PatientImplantPlannerLib", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "segment" in out.stdout and "plan" in out.stdout


def test_segment_sample_ct_writes_verified_bone_model(tmp_path, capsys):
    out = tmp_path / "bone"
    seed = [str(x) for x in SAMPLE_L3_SEED_RAS]
    assert main(["segment", SAMPLE_CT, "--out", str(out), "--seed", *seed]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(out)) == ["bone.seg.nrrd", "bone.stl", "manifest.json"]
    assert verify_manifest(str(out / "manifest.json")) == []
    stl = M.read_stl(str(out / "bone.stl"))
    check = M.check_mesh(stl)
    assert check.ok, check.problems
    entry = json.load(open(out / "manifest.json"))["files"][0]
    # The STL encloses the segment's voxel volume within 2 % (3 mm voxels: the surface is oversampled).
    assert stl.volume() == pytest.approx(entry["segment_volume_mm3"], rel=0.02)
    assert summary["watertight"] is True
    # Lumbar spine bone (L1-L5 + sacrum region), not the whole skeleton or a speck.
    assert 100.0 < summary["bone_volume_ml"] < 1500.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["segment", "/no/such/ct.nii.gz"], "does not exist"),
        (["segment", SAMPLE_CT, "--threshold", "5000", "6000"], "no voxel in the ct lies within the threshold"),
        (["segment", SAMPLE_CT, "--seed", "900", "900", "900"], "outside"),
        (["plan", SAMPLE_CT, "--plan", "/no/such/plan.json"], "not found"),
    ],
)
def test_bad_input_exits_with_a_message_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err.lower() and "fix:" in err
    assert not out.exists() or os.listdir(out) == []


def test_non_empty_output_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    assert main(["segment", SAMPLE_CT, "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["keep.txt"]


def test_write_demo_plan_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["write-demo-plan", str(path)]) == 0
    assert json.load(open(path))["case_id"] == demo_plan().case_id
    assert main(["write-demo-plan", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_plan_command_on_a_phantom_writes_parts_markups_and_manifest(tmp_path, capsys):
    from PatientImplantPlannerLib.phantom import make_spine_phantom
    from PatientImplantPlannerLib.plan import Plan

    ph = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = tmp_path / "phantom.nrrd"
    ph.write(str(ct))
    plan = Plan(case_id="CLI-1", proximal_level="L1", distal_level="L3",
                proximal_point_ras=list(ph.body_point("L1")), distal_point_ras=list(ph.body_point("L3")))
    plan.implant.profile = "curved_plate"
    plan.implant.width_mm, plan.implant.depth_mm = 10.0, 5.0
    plan.placement = "anterior"
    plan.save(str(tmp_path / "plan.json"))
    code = main(["plan", str(ct), "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "exports"),
                 "--parts", "implant", "variants", "drill_guides"])
    assert code == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1].split(" to ")[-1]
    files = os.listdir(folder)
    assert verify_manifest(os.path.join(folder, "manifest.json")) == []
    assert "CLI-1_plan.json" in files and "CLI-1_spinal-axis.mrk.json" in files
    assert sum(f.endswith(".mrk.json") for f in files) == 3 + 4  # axis, 2 endplates, 4 screws
    implants = sorted(f for f in files if "_implant_" in f)
    assert len(implants) == 4  # nominal + 3 variants
    lengths = [np.ptp(M.read_stl(os.path.join(folder, f)).vertices[:, 2]) for f in implants]
    assert all(M.check_mesh(M.read_stl(os.path.join(folder, f))).ok for f in implants)
    assert max(lengths) > min(lengths) + 3.5  # +4 mm variant is longer along S
    axis = json.load(open(os.path.join(folder, "CLI-1_spinal-axis.mrk.json")))
    assert axis["markups"][0]["type"] == "Curve"
