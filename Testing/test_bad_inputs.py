"""Catalogue of bad inputs through the command line (CT files, DICOM folders, plan JSON, options, output paths,
interruptions). Each one: exit code 2, a message naming the problem and the fix, no traceback, and every file and
folder (inputs, output folder, anything already there) exactly as it was before."""

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DICOM_DIR
from test_ctimport import write_copy_series

from PatientImplantPlannerLib.cli import demo_plan, main

NEW_UID = "1.2.826.0.1.3680043.2.1125.99.2"
# The tiny CT's bone block (RAS mm): its centre, and two points in it for the plan's vertebrae.
BONE_CENTRE = (-24.0, -24.0, 20.0)
PROXIMAL, DISTAL = (-24.0, -24.0, 26.0), (-24.0, -24.0, 14.0)


def tiny_ct(spacing=(1.0, 1.0, 1.0), shape=(40, 48, 48), pixel=np.int16):
    """Air around a soft-tissue body with a bone block in the middle (voxel (24, 24, 20) = RAS BONE_CENTRE at
    1 mm), as a SimpleITK image. Small enough that loading and segmenting take well under a second."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    values = np.full(shape, -1000, dtype=np.float64)
    values[(x - 24) ** 2 + (y - 24) ** 2 < 20**2] = 40.0
    values[(abs(x - 24) < 8) & (abs(y - 24) < 8) & (abs(z - 20) < 12)] = 700.0
    image = sitk.GetImageFromArray(values.astype(pixel))
    image.SetSpacing(spacing)
    return image


def write(image, path) -> str:
    sitk.WriteImage(image, str(path), useCompression=str(path).endswith((".gz", ".nrrd")))
    return str(path)


def truncate(path, fraction=0.5) -> str:
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * fraction)])
    return path


def snapshot(*folders) -> dict:
    """Every file (sha256) and folder, hidden ones included, under ``folders``."""
    out = {}
    for folder in folders:
        for dirpath, _dirnames, filenames in os.walk(folder):
            out[dirpath] = "dir"
            for f in filenames:
                p = os.path.join(dirpath, f)
                out[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Bad (and a few good) inputs written once; the catalogue checks they are left untouched."""
    d = tmp_path_factory.mktemp("inputs")
    ct = write(tiny_ct(), d / "ct.nii.gz")
    files = {"ct": ct}
    files["trunc_nii_gz"] = truncate(write(tiny_ct(), d / "trunc.nii.gz"))
    files["trunc_nii"] = truncate(write(tiny_ct(), d / "trunc.nii"), 0.7)
    files["trunc_nrrd"] = truncate(write(tiny_ct(), d / "trunc.nrrd"))
    files["trunc_mha"] = truncate(write(tiny_ct(), d / "trunc.mha"), 0.9)
    (d / "garbage.nii.gz").write_bytes(np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8).tobytes())
    files["garbage"] = str(d / "garbage.nii.gz")
    (d / "notes.txt").write_text("not a CT")
    files["text"] = str(d / "notes.txt")
    files["voxels_50mm"] = write(tiny_ct(spacing=(50.0, 50.0, 50.0)), d / "voxels50.nrrd")
    files["thick"] = write(tiny_ct(spacing=(0.3, 0.3, 5.0)), d / "thick.nrrd")
    files["slice_2d"] = write(tiny_ct(shape=(1, 48, 48)), d / "slice.nrrd")
    files["constant"] = write(sitk.Image(16, 16, 16, sitk.sitkInt16), d / "constant.nrrd")
    mr = sitk.GetImageFromArray(np.random.default_rng(1).uniform(0, 1200, (12, 16, 16)).astype(np.int16))
    files["mr_like"] = write(mr, d / "mr.nii.gz")
    nan = sitk.GetArrayFromImage(tiny_ct(pixel=np.float32))
    nan[5, 5, 5] = np.nan
    files["nan"] = write(sitk.GetImageFromArray(nan), d / "nan.nrrd")
    rgb = sitk.Compose([tiny_ct()] * 3)
    files["vector"] = write(rgb, d / "vector.nrrd")
    (d / "empty_folder").mkdir()
    files["empty_folder"] = str(d / "empty_folder")
    # DICOM folders made from the bundled 20-slice series.
    series = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(DICOM_DIR))
    for name, kept in (("dicom_missing_slice", series[:10] + series[11:]), ("dicom_one_file", series[:1]),
                       ("dicom_truncated", series)):
        (d / name).mkdir()
        for f in kept:
            shutil.copy(f, d / name / os.path.basename(f))
        files[name] = str(d / name)
    truncate(os.path.join(files["dicom_truncated"], os.path.basename(series[7])), 0.6)
    (d / "dicom_mr").mkdir()
    write_copy_series(series[:4], str(d / "dicom_mr"), NEW_UID, modality="MR", description="mr")
    files["dicom_mr"] = str(d / "dicom_mr")
    files["dicom"] = DICOM_DIR
    files["folder"] = str(d)
    return files


def plan_dict(**changes) -> dict:
    """A valid plan for the tiny CT, with ``changes`` (dotted keys reach into sub-objects)."""
    plan = demo_plan()
    plan.proximal_point_ras, plan.distal_point_ras = list(PROXIMAL), list(DISTAL)
    plan.segmentation.seeds_ras = []
    d = plan.to_dict()
    for key, value in changes.items():
        target, *rest = key.split(".")
        if rest:
            d[target][rest[0]] = value
        else:
            d[key] = value
    return d


def plan_file(tmp_path, data, name="plan.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def seg(inputs, ct_key, tmp_path, *extra):
    return ["segment", inputs[ct_key], "--out", str(tmp_path / "out"), "--seed", *map(str, BONE_CENTRE), *extra]


def plan(inputs, tmp_path, data=None, *extra, ct_key="ct"):
    path = plan_file(tmp_path, plan_dict() if data is None else data)
    return ["plan", inputs[ct_key], "--plan", path, "--out", str(tmp_path / "exports"), *extra]


def existing_file(tmp_path, name="taken") -> str:
    (tmp_path / name).write_text("keep me")
    return str(tmp_path / name)


def non_empty_folder(tmp_path) -> str:
    (tmp_path / "full").mkdir()
    existing_file(tmp_path / "full")
    return str(tmp_path / "full")


# id -> (argv builder (inputs, tmp_path), regex the message must match)
CASES = {
    # ---- CT files
    "ct_missing": (lambda i, t: seg(i, "ct", t)[:1] + [str(t / "nope.nii.gz")] + seg(i, "ct", t)[2:],
                   r"does not exist.*fix: Check the path"),
    "ct_truncated_nii_gz": (lambda i, t: seg(i, "trunc_nii_gz", t), r"is damaged: its compressed data is incomplete"),
    "ct_truncated_nii": (lambda i, t: seg(i, "trunc_nii", t), r"is damaged: the header announces 48 x 48 x 40"),
    "ct_truncated_nrrd": (lambda i, t: seg(i, "trunc_nrrd", t), r"is damaged: its compressed data is incomplete"),
    "ct_truncated_mha": (lambda i, t: seg(i, "trunc_mha", t), r"is damaged: the header announces"),
    "ct_garbage": (lambda i, t: seg(i, "garbage", t), r"is damaged: its header cannot be read.*Copy or export"),
    "ct_not_an_image": (lambda i, t: seg(i, "text", t), r"Cannot read .*notes.txt.*fix: Use a CT saved as NRRD"),
    "ct_50mm_voxels": (lambda i, t: seg(i, "voxels_50mm", t), r"voxels of 50 x 50 x 50 mm: outside 0.05-10 mm"),
    "ct_single_slice": (lambda i, t: seg(i, "slice_2d", t), r"a single image.*fix: Load the whole CT series"),
    "ct_constant": (lambda i, t: seg(i, "constant", t), r"is empty: every voxel is 0"),
    "ct_mr_like": (lambda i, t: seg(i, "mr_like", t), r"does not look like a CT.*fix:.*--allow-non-ct"),
    "ct_nan": (lambda i, t: seg(i, "nan", t), r"NaN or infinite voxel values.*fix: Replace them"),
    "ct_vector": (lambda i, t: seg(i, "vector", t), r"(values per voxel|not a single-channel)"),
    "ct_thick_slices_for_plan": (lambda i, t: plan(i, t, None, ct_key="thick"),
                                 r"slice thickness is 5.00 mm, more than the largest oversized variant \(\+4 mm\).*"
                                 r"--accept-thick-slices"),
    "ct_thin_plan_variants": (lambda i, t: plan(i, t, plan_dict(variants_mm=[0.5]), ct_key="dicom"),
                              r"slice thickness is 3.00 mm, more than the largest oversized variant \(\+0.5 mm\)"),
    # ---- DICOM folders
    "dicom_empty_folder": (lambda i, t: seg(i, "empty_folder", t), r"No DICOM image series found.*fix: Choose"),
    "dicom_missing_slice": (lambda i, t: seg(i, "dicom_missing_slice", t), r"uneven slice spacing.*slices missing"),
    "dicom_truncated_file": (lambda i, t: seg(i, "dicom_truncated", t), r"uneven slice spacing.*slices missing"),
    "dicom_one_file": (lambda i, t: seg(i, "dicom_one_file", t), r"a single image"),
    "dicom_mr_series": (lambda i, t: seg(i, "dicom_mr", t), r"is MR, not CT.*fix:.*--series-uid.*--allow-non-ct"),
    "dicom_unknown_series_uid": (lambda i, t: seg(i, "dicom", t, "--series-uid", "1.2.3"),
                                 r"Series UID '1.2.3' is not in folder.*fix: Pick one of the series"),
    # ---- plan JSON (all refused before the CT is read)
    "plan_missing": (lambda i, t: plan(i, t)[:3] + [str(t / "nope.json")] + plan(i, t)[4:], r"Plan file not found"),
    "plan_not_json": (lambda i, t: plan(i, t, "{case_id: 1"), r"is not valid JSON.*fix: Fix or re-save"),
    "plan_is_a_list": (lambda i, t: plan(i, t, "[1, 2]"), r"The plan is a JSON list.*write-demo-plan"),
    "plan_misspelt_top_key": (lambda i, t: plan(i, t, {**plan_dict(), "varients_mm": [2.0]}),
                              r"Unknown plan key 'varients_mm'.*Did you mean 'variants_mm'"),
    "plan_misspelt_implant_key": (lambda i, t: plan(i, t, plan_dict(**{"implant.widht_mm": 10})),
                                  r"Unknown plan key 'implant.widht_mm'.*Did you mean 'width_mm'"),
    "plan_wrong_type": (lambda i, t: plan(i, t, plan_dict(**{"implant.width_mm": "ten"})),
                        r"'implant.width_mm' is 'ten' \(string\), but it must be a finite number"),
    "plan_point_two_numbers": (lambda i, t: plan(i, t, plan_dict(proximal_point_ras=[1, 2])),
                               r"'proximal_point_ras' is \[1, 2\].*three numbers"),
    "plan_seed_wrong_type": (lambda i, t: plan(i, t, plan_dict(**{"segmentation.seeds_ras": [[1, 2, "x"]]})),
                             r"'segmentation.seeds_ras\[0\]'.*three numbers"),
    "plan_same_level": (lambda i, t: plan(i, t, plan_dict(proximal_level="L1", distal_level="L1")),
                        r"both L1.*fix: Choose the last healthy"),
    "plan_absurd_variant": (lambda i, t: plan(i, t, plan_dict(variants_mm=[2.0, 50.0])),
                            r"Oversized variant of 50.0 mm is not possible"),
    "plan_repeated_variant": (lambda i, t: plan(i, t, plan_dict(variants_mm=[2.0, 2.0])), r"Variant lengths repeat"),
    "plan_no_proximal_point": (lambda i, t: plan(i, t, plan_dict(proximal_point_ras=None)),
                               r"no proximal vertebra.*fix: Place a point.*proximal_point_ras in the plan.*--levels"),
    "plan_bad_placement": (lambda i, t: plan(i, t, plan_dict(placement="posterior")), r"Unknown placement"),
    "plan_bad_screw": (lambda i, t: plan(i, t, plan_dict(**{"screws.screw_type": "4.0 cortical"})),
                       r"Unknown screw type '4.0 cortical'.*catalogue"),
    "plan_implant_range": (lambda i, t: plan(i, t, plan_dict(**{"implant.footplate_thickness_mm": 40})),
                           r"footplate_thickness_mm = 40.*between 0.5 and 20 mm"),
    "plan_other_json": (lambda i, t: plan(i, t, {"schema": "something.else", "files": []}), r"Not a plan file"),
    "plan_newer_schema": (lambda i, t: plan(i, t, plan_dict(schema_version=99)), r"schema version 99, newer"),
    "plan_outputs_unknown_key": (lambda i, t: plan(i, t, plan_dict(outputs={"lattice": {"porosty": 0.5}})),
                                 r"'outputs.lattice.porosty'.*Did you mean 'porosity'"),
    "plan_outputs_porosity": (lambda i, t: plan(i, t, plan_dict(outputs={"lattice": {"porosity": 0.95}})),
                              r"Lattice porosity 0.95 is out of range"),
    "plan_outputs_format": (lambda i, t: plan(i, t, plan_dict(outputs={"formats": ["obj"]})),
                            r"Unknown export formats \['obj'\]"),
    "plan_proximal_point_outside": (lambda i, t: plan(i, t, plan_dict(proximal_point_ras=[0.0, 0.0, 900.0])),
                                    r"The proximal point \(proximal_point_ras\) at \(0, 0, 900\) RAS lies outside"),
    "plan_exclude_seed_outside": (
        lambda i, t: plan(i, t, plan_dict(**{"segmentation.exclude_seeds_ras": [[500.0, 0.0, 0.0]]})),
        r"The exclude seed \(segmentation.exclude_seeds_ras\[0\]\) at \(500, 0, 0\) RAS lies outside"),
    # ---- command-line options
    "opt_triangles_negative": (lambda i, t: seg(i, "ct", t, "--triangles", "-5"), r"--triangles -5 is too few"),
    "opt_threshold_reversed": (lambda i, t: seg(i, "ct", t, "--threshold", "3071", "226"),
                               r"--threshold 3071 226 is not a range"),
    "opt_seed_nan": (lambda i, t: seg(i, "ct", t, "--seed", "nan", "0", "0"), r"--seed nan 0 0 is not a point"),
    "opt_seed_outside": (lambda i, t: seg(i, "ct", t, "--seed", "900", "0", "0"),
                         r"The --seed at \(900, 0, 0\) RAS lies outside the CT volume"),
    "opt_exclude_seed_outside": (lambda i, t: seg(i, "ct", t, "--exclude-seed", "0", "0", "-900"),
                                 r"The --exclude-seed at \(0, 0, -900\) RAS lies outside"),
    "opt_roi_zero_size": (lambda i, t: seg(i, "ct", t, "--roi", "0", "0", "0", "0", "10", "10"),
                          r"--roi 0 0 0 0 10 10 is not a box"),
    "opt_smoothing_negative": (lambda i, t: seg(i, "ct", t, "--smoothing", "-1"), r"--smoothing -1 mm is out of range"),
    "opt_stub_length_short": (lambda i, t: plan(i, t, None, "--stub-length", "1"),
                              r"stub_length_mm = 1.0 is invalid.*between 2 and 60 mm"),
    "opt_levels_missing": (lambda i, t: plan(i, t, None, "--levels", str(t / "no_labels.nii.gz")),
                           r"--levels path .* does not exist"),
    "opt_segmentation_missing": (lambda i, t: plan(i, t, None, "--segmentation", str(t / "no.seg.nrrd")),
                                 r"--segmentation path .* does not exist"),
    "opt_nothing_to_export": (lambda i, t: plan(i, t, None, "--parts", "report", "--no-report"),
                              r"Nothing is selected for export"),
    # ---- output paths
    "out_segment_is_a_file": (lambda i, t: seg(i, "ct", t)[:3] + [existing_file(t)] + seg(i, "ct", t)[4:],
                              r"--out .*taken is an existing file, not a folder"),
    "out_plan_is_a_file": (lambda i, t: plan(i, t)[:5] + [existing_file(t)], r"--out .*taken is an existing file"),
    "out_demo_is_a_file": (lambda i, t: ["demo", "--out", existing_file(t)], r"--out .*taken is an existing file"),
    "out_below_a_file": (lambda i, t: seg(i, "ct", t)[:3] + [os.path.join(existing_file(t), "sub")] +
                         seg(i, "ct", t)[4:], r"goes through .*taken, which is a file"),
    "out_not_empty": (lambda i, t: seg(i, "ct", t)[:3] + [non_empty_folder(t)] + seg(i, "ct", t)[4:],
                      r"exists and is not empty.*fix: Choose a new folder, or pass --overwrite"),
    "out_demo_plan_exists": (lambda i, t: ["write-demo-plan", existing_file(t, "plan.json")], r"already exists"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_with_problem_and_fix_and_changes_nothing(case, inputs, tmp_path, capsys):
    build, pattern = CASES[case]
    argv = build(inputs, tmp_path)
    before = snapshot(tmp_path, inputs["folder"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err[err.index("error: "):]  # after any progress lines
    assert "\n  fix: " in message, message
    assert re.search(pattern, message, flags=re.S), message
    assert snapshot(tmp_path, inputs["folder"]) == before


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 40


def test_disk_without_space_is_refused_before_work(inputs, tmp_path, capsys, monkeypatch):
    usage = SimpleNamespace(total=10**9, used=10**9 - 5_000_000, free=5_000_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
    before = snapshot(tmp_path)
    assert main(seg(inputs, "ct", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "has only 5 MB free (at least 100 MB are needed)" in err and "fix: Free space" in err
    assert snapshot(tmp_path) == before


def test_disk_full_while_writing_leaves_nothing(inputs, tmp_path, capsys, monkeypatch):
    from PatientImplantPlannerLib.core import mesh

    def full(mesh_, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(mesh, "write_stl", full)
    before = snapshot(tmp_path)
    assert main(seg(inputs, "ct", tmp_path)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: The disk is full: could not write " in err and "bone.stl" in err and "fix: Free space" in err
    assert snapshot(tmp_path) == before  # the staged folder with bone.seg.nrrd is gone


def without_root_override():
    """Run as root but without the capabilities that let root write anywhere (CAP_DAC_OVERRIDE, _READ_SEARCH)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_read_only_output_folder_is_refused_before_work(inputs, tmp_path):
    ct = shutil.copy(inputs["ct"], tmp_path / "ct.nii.gz")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    before = snapshot(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "PatientImplantPlannerLib", "segment", ct, "--out", str(locked / "out"),
         "--seed", *map(str, BONE_CENTRE)], capture_output=True, text=True, timeout=120,
        preexec_fn=without_root_override if os.geteuid() == 0 else None)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"No permission to write in {locked}" in proc.stderr
    assert "fix: Choose a folder you can write to" in proc.stderr
    assert snapshot(tmp_path) == before


# ---- interrupted while writing: a subprocess pauses inside the staged folder, then gets the signal

SLOW_WRITER = """
import importlib, sys, time
from PatientImplantPlannerLib import cli

module_name, function = sys.argv[1].rsplit(".", 1)
module = importlib.import_module("PatientImplantPlannerLib." + module_name)
write = getattr(module, function)


def write_then_wait(*args, **kwargs):  # the signal arrives while the staged folder holds a file
    result = write(*args, **kwargs)
    time.sleep(120)
    return result


setattr(module, function, write_then_wait)
sys.exit(cli.main(sys.argv[2:]))
"""


def interrupt_while_writing(folder, writer: str, written: str, argv, sig) -> str:
    """Run the CLI with ``writer`` pausing after it wrote; signal it once a staged folder in ``folder`` holds a
    file ending in ``written``. Returns stderr after checking the exit code."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, writer, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    staged, deadline = False, time.monotonic() + 300
    while not staged and proc.poll() is None and time.monotonic() < deadline:
        for dirpath, _dirs, files in os.walk(folder):
            staged = staged or (".partial-" in dirpath and any(f.endswith(written) for f in files))
        time.sleep(0.05)
    assert staged, proc.communicate(timeout=10)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: interrupted ({sig.name}): partial output removed, nothing written; run the command "
                     "again to produce it."]
    return err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_writing_leaves_nothing_behind(inputs, tmp_path, sig):
    ct = shutil.copy(inputs["ct"], tmp_path / "ct.nii.gz")
    before = snapshot(tmp_path)
    interrupt_while_writing(tmp_path, "scene.workflow.write_segmentation", "bone.seg.nrrd",
                            ["segment", ct, "--out", str(tmp_path / "out"), "--seed", *map(str, BONE_CENTRE)], sig)
    assert snapshot(tmp_path) == before  # no .partial-PID folder, no out folder


def test_sigterm_while_writing_an_export_bundle_leaves_nothing_behind(tmp_path):
    from PatientImplantPlannerLib.design.plan import Plan
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

    ph = make_spine_phantom(spacing=1.0, levels=("L1", "L2", "L3"))
    ct = ph.write(str(tmp_path / "phantom.nrrd"))
    Plan(case_id="KILL", proximal_level="L1", distal_level="L3", proximal_point_ras=list(ph.body_point("L1")),
         distal_point_ras=list(ph.body_point("L3"))).save(str(tmp_path / "plan.json"))
    before = snapshot(tmp_path)
    interrupt_while_writing(tmp_path, "export.bundle._write_and_verify", ".stl",
                            ["plan", ct, "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "exports"),
                             "--parts", "implant", "variants"], signal.SIGTERM)
    assert snapshot(tmp_path) == before  # no exports/ made for it, no .partial folder with unchecked STLs
