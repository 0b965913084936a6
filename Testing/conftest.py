"""Shared fixtures: a fresh headless Slicer scene per test, paths to the bundled real CT samples."""

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "Testing", "data")
SAMPLE_CT = os.path.join(ROOT, "PatientImplantPlanner", "Resources", "SampleData", "example_ct.nii.gz")
LUMBAR_LABELS = os.path.join(DATA, "lumbar_ct", "example_ct_vertebra_labels.nii.gz")
DICOM_DIR = os.path.join(DATA, "dicom_ct")
# TotalSegmentator label values of the bundled lumbar CT.
LUMBAR_LEVELS = {"S1": 26, "L5": 27, "L4": 28, "L3": 29, "L2": 30, "L1": 31, "T12": 32, "T11": 33}


@pytest.fixture
def ctx():
    from PatientImplantPlannerLib.scene.context import create_headless_context

    context = create_headless_context()
    yield context
    context.scene.Clear(True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """A test worker that died without a Python error (the CI saw one once): print the kernel's out-of-memory lines,
    if it has any, so that the log tells a killed worker from a crash (a crash prints its own traceback)."""
    if not error:
        return
    import subprocess

    try:
        kernel = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return
    oom = [line for line in kernel if "out of memory" in line.lower() or "killed process" in line.lower()]
    print(f"\n[{node.gateway.id}] kernel out-of-memory lines: {oom[-5:] or 'none'}")
