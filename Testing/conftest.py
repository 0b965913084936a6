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
