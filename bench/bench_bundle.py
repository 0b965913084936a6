"""Benchmark: the full export bundle of the phantom plan, and lattice generation time against layer volume.

The plan is the demo's (L1-L3 phantom at 0.7 mm, 10 x 5 mm curved plate in front of L2, variants +2/+3/+4 mm),
designed on our own bone segmentation of the phantom. The bundle is ``export_bundle`` with the default
``ExportParameters()`` with STL and 3MF: implant with porous layers, three variants, docking guides per end and
size, two drill guides, check model, bone model and the design record (HTML + PDF). Printed against the figures of
the same bundle before issue 9 (``PREVIOUS``): per-step seconds (``BundleResult.seconds``; parts are built, written
and verified one at a time, so the steps interleave), the export's peak memory, and every mesh file's size,
triangles and shells. Then lattice generation on elliptic footplates of three sizes (``lattice_benchmark_rows``),
each with its own peak memory.

Peak memory is the kernel's high-water mark of this process (VmHWM), reset before the export (and before each
plate) through /proc/self/clear_refs, so it is the largest resident size reached then (baseline included).
Run once; figures are printed, never asserted. Usage:

    .venv/bin/python bench/bench_bundle.py [--spacing 0.7] [--plates 20x14 30x22 40x30]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


class PeakMemory:
    """Per-step peak resident memory from the kernel's high-water mark, reset at each step start, and the wall
    time between step starts. (After a reset ``ru_maxrss`` no longer holds the process peak: use ``peak_mb``.)"""

    def __init__(self):
        self.steps = {}  # name -> (window seconds, peak RSS MB)
        self.current = None
        self.t0 = 0.0

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def peak_mb(self) -> float:
        return max(peak for _, peak in self.steps.values())

    def start(self, name: str) -> None:
        self.stop()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            pass
        self.current = name
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        if self.current is not None:
            self.steps[self.current] = (time.perf_counter() - self.t0, self._status("VmHWM"))
        self.current = None


def design_phantom_plan(spacing: float):
    """(phantom, bone mask, PlanResult, seconds of segmentation, seconds of design)."""
    from bench_plan import demo_like_plan

    from PatientImplantPlannerLib.design.plan import design_implant
    from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
    from PatientImplantPlannerLib.scene.bonesegment import segment_bone
    from PatientImplantPlannerLib.scene.context import create_headless_context

    phantom = make_spine_phantom(spacing=spacing, levels=("L1", "L2", "L3"))
    ctx = create_headless_context()
    ct = phantom.add_to_scene(ctx)
    t0 = time.perf_counter()
    seeds = [tuple(phantom.body_point(n)) for n in ("L1", "L2", "L3")]
    mask = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=seeds)).mask
    t_seg = time.perf_counter() - t0
    plan = demo_like_plan(phantom)  # the same plan as the plan benchmark
    t1 = time.perf_counter()
    result = design_implant(plan, phantom.array, phantom.ijk_to_ras, mask)
    return phantom, mask, result, t_seg, time.perf_counter() - t1


# The same bundle before issue 9 (commit aaa4981 with its fixes, docs/performance.md section 3), same machine kind.
PREVIOUS = {
    "total s": 74.2,
    "implants_and_lattice s": 32.3,
    "file_safe_and_verify s": 27.0,
    "write_and_verify s": 13.1,
    "peak MB": 3893,
    "implant triangles": 1_830_000,
    "implant STL MB": 92.0,
}


# The same bundle after issue 9's first round (commit 8016c3a, docs/performance.md section 3; STL and 3MF).
ROUND1 = {
    "total s": 198.5,
    "implants_and_lattice s": 81.3,
    "write_and_verify s": 110.6,
    "peak MB": 2013,
    "implant triangles": 1_577_936,
    "implant STL MB": 78.9,
    "implant 3MF MB": 21.3,
}


def bench_bundle(spacing: float) -> None:
    from PatientImplantPlannerLib.export.bundle import export_bundle
    from PatientImplantPlannerLib.export.parameters import ExportParameters

    phantom, mask, result, t_seg, t_design = design_phantom_plan(spacing)
    print(f"phantom L1-L3 {list(phantom.array.shape)} voxels [k, j, i] at {spacing} mm; bone segmentation "
          f"{t_seg:.1f} s and design {t_design:.1f} s before the export (not part of the figures below)")
    mem = PeakMemory()
    baseline = mem.rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        mem.start("export")
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        bundle = export_bundle(result, mask, phantom.ijk_to_ras, out_parent=tmp,
                               params=ExportParameters(formats=("stl", "3mf")), ct_array=phantom.array)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        mem.stop()
        files = sorted(os.listdir(bundle.folder))
        sizes = {f: os.path.getsize(os.path.join(bundle.folder, f)) for f in files}
    total_bytes = sum(sizes.values())
    print()
    print(f"export_bundle, STL + 3MF: {len(bundle.parts)} parts, {len(files)} files, {total_bytes / 1e6:.1f} MB, "
          f"{wall:.1f} s wall, {cpu:.1f} s CPU (this process); RSS before the export {baseline:.0f} MB")
    print(f"{'step':<26}{'now s':>10}{'round 1 s':>10}{'before s':>10}")
    for key, seconds in bundle.seconds.items():
        before = PREVIOUS.get(f"{key} s")
        round1 = ROUND1.get(f"{key} s")
        print(f"{key:<26}{seconds:>10.2f}{round1 if round1 is not None else float('nan'):>10.1f}"
              f"{before if before is not None else float('nan'):>10.1f}")
    peak = mem.steps["export"][1]
    print(f"{'peak memory MB':<26}{peak:>10.0f}{ROUND1['peak MB']:>10.0f}{PREVIOUS['peak MB']:>10.0f}")
    print("(before: STL only, pre issue 9; round 1: issue 9's first round, commit 8016c3a, STL + 3MF as now; "
          "times on a loaded machine, compare with care)")
    print()
    print(f"{'file':<64}{'MB':>8}{'triangles':>11}{'shells':>7}")
    for e in bundle.files:
        if e["file"].endswith((".stl", ".3mf")):
            c = e.get("checks", {})
            print(f"{e['file']:<64}{sizes[e['file']] / 1e6:>8.2f}{c.get('triangles', 0):>11d}"
                  f"{c.get('components', 0):>7d}")
    print(f"before: each implant {PREVIOUS['implant triangles']:,} triangles, {PREVIOUS['implant STL MB']:.0f} MB STL; "
          f"round 1: {ROUND1['implant triangles']:,} triangles, {ROUND1['implant STL MB']} MB STL, "
          f"{ROUND1['implant 3MF MB']} MB 3MF; targets 25 MB STL, 10 MB 3MF")
    print()
    print("porous layers in the bundle (the variants reuse each end's lattice, moved):")
    for row in bundle.lattice:
        print(f"  {row['end']:<9} layer {row['layer_mm']:.2f} mm, {row['layer_volume_mm3']:.0f} mm3, "
              f"{row['seconds']:.2f} s; porosity {row['measured_porosity']:.3f} (target {row['target_porosity']}), "
              f"pore {row['measured_pore_um']:.0f} um (target {row['target_pore_um']:.0f})")


def lattice_row(plate) -> dict:
    """One row of lattice_benchmark_rows in this process, with the peak memory of that row alone."""
    from PatientImplantPlannerLib.parts.lattice import LatticeParameters, lattice_benchmark_rows

    mem = PeakMemory()
    mem.start("calibration")
    t0 = time.perf_counter()
    LatticeParameters().calibration()  # once per process and cached: not part of a plate's figures
    calibration_s = time.perf_counter() - t0
    mem.stop()
    before = mem.rss_mb()
    mem.start("plate")
    row = lattice_benchmark_rows(plates_mm=(plate,))[0]
    mem.stop()
    row.update(rss_before_mb=before, peak_rss_mb=mem.steps["plate"][1], calibration_s=calibration_s,
               calibration_peak_mb=mem.steps["calibration"][1])
    return row


def bench_lattice(plates) -> None:
    """Each plate in a fresh subprocess, so its peak memory is its own."""
    print()
    print("lattice generation on elliptic footplates (3 mm plate, default 1.5 mm gyroid layer, 550 um / 70 %), "
          "each in its own process:")
    print(f"{'plate mm':<20}{'layer mm3':>10}{'voxels':>11}{'triangles':>11}{'s':>7}{'s/cm3':>7}{'peak MB':>9}"
          f"{'+MB':>7}{'B/voxel':>8}{'porosity':>9}{'pore um':>8}")
    for da, dl in plates:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--lattice-plate", f"{da}x{dl}"],
                              capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if not lines:
            raise RuntimeError(f"lattice plate {da}x{dl} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        row = json.loads(lines[0][4:])
        volume = row["layer_volume_mm3"]
        extra = row["peak_rss_mb"] - row["rss_before_mb"]
        calibration = f"{row['calibration_s']:.1f} s, peak {row['calibration_peak_mb']:.0f} MB"
        print(f"{row['plate_mm']:<20}{volume:>10.0f}{row['voxels']:>11d}{row['triangles']:>11d}{row['seconds']:>7.2f}"
              f"{row['seconds'] / volume * 1000.0:>7.2f}{row['peak_rss_mb']:>9.0f}{extra:>7.0f}"
              f"{extra * 2**20 / row['voxels']:>8.0f}{row['measured_porosity']:>9.3f}"
              f"{row['measured_pore_size_um']:>8.0f}")
    print(f"unit-cell calibration, once per process before the plate (not in the rows): {calibration}")
    print("(s: apply_porous_layer's own time incl. pore measurement; "
          "+MB: peak minus the process's memory before; "
          "B/voxel: that per sampled voxel)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=0.7)
    parser.add_argument("--plates", nargs="+", default=["20x14", "30x22", "40x30"],
                        help="elliptic footplate diameters AxL in mm for the lattice table")
    parser.add_argument("--skip-bundle", action="store_true", help="only the lattice table")
    parser.add_argument("--lattice-plate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lattice_plate:
        print("ROW " + json.dumps(lattice_row(tuple(float(v) for v in args.lattice_plate.split("x")))))
        return
    plates = [tuple(float(v) for v in p.lower().split("x")) for p in args.plates]
    print("run once on a shared 2-core machine (another engineer's tests were running at the same time)")
    if not args.skip_bundle:
        bench_bundle(args.spacing)
    bench_lattice(plates)


if __name__ == "__main__":
    main()
