"""The bundled sample CT, registered in Slicer's Sample Data module."""

import logging
import os
import pathlib

from slicer.i18n import tr as _

SAMPLE_CATEGORY = "PatientImplantPlanner"
SAMPLE_NAME = "PatientImplantPlannerLumbarCT"
SAMPLE_FILE = "example_ct.nii.gz"
# The module folder (PatientImplantPlanner.py and Resources/), one level above this package.
MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#
# Register sample data sets in Sample Data module
#


def registerSampleData():
    """Add the bundled lumbar CT to the Sample Data module.

    The file ships with the extension, so it is "downloaded" from a file:// URI (SampleData copies it into its cache
    with urllib, which reads local files): no network is needed. The checksum makes SampleData replace a stale
    cached copy.
    """
    import SampleData

    moduleDir = MODULE_DIR
    iconsPath = os.path.join(moduleDir, "Resources", "Icons")
    samplePath = os.path.join(moduleDir, "Resources", "SampleData", SAMPLE_FILE)
    if not os.path.isfile(samplePath):
        logging.warning(f"Patient Implant Planner sample CT is missing: {samplePath}")
        return

    SampleData.SampleDataLogic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=_("Patient Implant Planner"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "PatientImplantPlannerSampleCT.png"),
        uris=pathlib.Path(samplePath).resolve().as_uri(),
        fileNames="PatientImplantPlannerLumbarCT.nii.gz",
        checksums=f"SHA256:{_sampleChecksum(samplePath)}",
        nodeNames="LumbarCT",
        loadFileTypes="VolumeFile",
    )


def _sampleChecksum(path: str) -> str:
    from PatientImplantPlannerLib.export.manifest import sha256_of

    return sha256_of(path)
