"""The command line: help on every subcommand, segment on the real sample CT, plan on a phantom, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAMPLE_CT

from PatientImplantPlannerLib.cli import SAMPLE_L3_SEED_RAS, build_parser, demo_plan, main
from PatientImplantPlannerLib.core import mesh as M
from PatientImplantPlannerLib.export.manifest import verify_manifest


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
    written = json.load(open(path))
    assert written["case_id"] == demo_plan().case_id
    # Users copy the example to their own CT: its side must be the clearance-respecting automatic one (fixed anterior,
    # it put the chest CT's T4 -> T9 strut into the aorta; test_safety_chest).
    assert written["placement"] == "auto" and written["placement_angle_deg"] is None
    before = path.read_bytes()
    assert main(["write-demo-plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "rename or delete the existing file" in err
    assert "allow overwriting" not in err  # the command has no such option
    assert path.read_bytes() == before


def test_plan_command_on_a_phantom_writes_parts_markups_and_manifest(tmp_path, capsys):
    from PatientImplantPlannerLib.design.plan import Plan
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

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
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout is the JSON summary alone, the note goes to stderr
    folder = summary["folder"]
    assert f"Export written to {os.path.abspath(folder)}" in captured.err
    seconds = summary["seconds"]
    # The export's own total is named as such: a "total" below the design's steps read as the whole run's time.
    assert "total" not in seconds and 0.0 < seconds["export_total"] < sum(seconds.values())
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


def phantom_plan(tmp_path, spacing=1.0, **changes):
    """A phantom CT and a plan file for it (anterior curved plate L1-L3), with plan attributes ``changes``."""
    from PatientImplantPlannerLib.design.plan import Plan
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

    ph = make_spine_phantom(spacing=spacing, levels=("L1", "L2", "L3"))
    ct = str(tmp_path / "phantom.nrrd")
    ph.write(ct)
    plan = Plan(case_id="CLI-2", proximal_level="L1", distal_level="L3", placement="anterior",
                proximal_point_ras=list(ph.body_point("L1")), distal_point_ras=list(ph.body_point("L3")))
    plan.implant.profile, plan.implant.width_mm, plan.implant.depth_mm = "curved_plate", 10.0, 5.0
    for key, value in changes.items():
        setattr(plan, key, value)
    plan.save(str(tmp_path / "plan.json"))
    return ct, str(tmp_path / "plan.json")


def bundle_of(capsys) -> str:
    return json.loads(capsys.readouterr().out)["folder"]


def test_plan_outputs_are_honoured_and_the_command_line_overrides_them(tmp_path, capsys):
    ct, plan_path = phantom_plan(tmp_path, outputs={"formats": ["3mf"], "parts": ["implant", "docking_guides"],
                                                    "coordinate_system": "RAS", "lattice": {"porosity": 0.6},
                                                    "guides": {"stub_length_mm": 8.0}})
    assert main(["plan", ct, "--plan", plan_path, "--out", str(tmp_path / "exports"), "--stub-length", "9"]) == 0
    folder = bundle_of(capsys)
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    meshes = [e for e in manifest["files"] if "triangles" in e]
    assert meshes and all(e["file"].endswith(".3mf") and e["coordinate_system"] == "RAS" for e in meshes)
    roles = sorted({e["role"] for e in meshes})
    assert "implant" in roles and not any("variant" in r for r in roles) and any("docking" in r for r in roles)
    assert not any(f.endswith((".stl", ".html")) for f in os.listdir(folder))  # no STL, no record: not asked for
    # The plan written into the bundle says what was exported: the plan's outputs, the CLI's stub length.
    used = json.load(open(os.path.join(folder, "CLI-2_plan.json")))["outputs"]
    assert used["formats"] == ["3mf"] and used["parts"] == ["implant", "docking_guides"]
    assert used["lattice"]["porosity"] == 0.6 and used["guides"]["stub_length_mm"] == 9.0
    assert manifest["export"]["formats"] == ["3mf"]


def test_thick_slices_are_refused_then_accepted_and_recorded(tmp_path, capsys):
    ct, plan_path = phantom_plan(tmp_path, spacing=(1.0, 1.0, 2.0), variants_mm=[1.0])
    argv = ["plan", ct, "--plan", plan_path, "--out", str(tmp_path / "exports"), "--parts", "implant", "report"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "slice thickness is 2.00 mm, more than the largest oversized variant (+1 mm)" in err
    assert "--accept-thick-slices" in err and not (tmp_path / "exports").exists()
    assert main([*argv, "--accept-thick-slices"]) == 0
    folder = bundle_of(capsys)
    statement = "more than the largest oversized variant (+1 mm); accepted by the user (--accept-thick-slices)"
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert any(statement in w for w in manifest["warnings"])
    assert manifest["ct"]["slice_thickness"] == 2.0 and manifest["ct"]["path"] == os.path.abspath(ct)
    assert statement in open(os.path.join(folder, "design_record.html"), encoding="utf-8").read()


def test_segment_names_the_dicom_series_in_summary_and_manifest(tmp_path, capsys):
    from conftest import DICOM_DIR

    out = tmp_path / "bone"
    assert main(["segment", DICOM_DIR, "--out", str(out), "--seed", "-0.49", "143.57", "-804.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    series = "took (no series UID) (CT, 20 slices, 'CT Body 3.0'): the only image series"
    assert summary["ct_series"] == series
    assert json.load(open(out / "manifest.json"))["parameters"]["ct_series"] == series
    assert "3.00 mm is above 1.25 mm" in summary["warnings"][0]  # 3 mm slices: a warning, not a refusal


def test_allow_non_ct_segments_a_volume_without_hounsfield_units(tmp_path, capsys):
    import SimpleITK as sitk
    from test_bad_inputs import BONE_CENTRE, tiny_ct

    path = str(tmp_path / "shifted.nrrd")
    sitk.WriteImage(tiny_ct() + 2000, path)  # air at 1000: not HU
    argv = ["segment", path, "--out", str(tmp_path / "bone"), "--seed", *map(str, BONE_CENTRE),
            "--threshold", "2500", "3000", "--no-fill"]  # interior filling works in HU
    assert main(argv) == 2
    assert "--allow-non-ct" in capsys.readouterr().err
    assert main([*argv, "--allow-non-ct"]) == 0
    assert json.loads(capsys.readouterr().out)["bone_volume_ml"] == pytest.approx(15 * 15 * 23 / 1000.0, rel=0.05)
