"""Benchmark: the porous footplate's mesh (triangles, file sizes, chordal error) and its time, now against a
baseline commit measured in the same run.

For each elliptic footplate (3 mm thick, default 1.5 mm gyroid layer, 550 um / 70 %) ``apply_porous_layer`` runs in
its own process, once with the engine of this work tree and once with the engine of ``--baseline`` (extracted from
git into a temporary folder), so both see the same machine load. Printed per plate and engine: layer volume,
triangles of the fused part, triangles per mm3 of layer, binary STL and 3MF size of the part, the chordal error of
the lattice against the exact gyroid (sample points of every triangle away from the cut faces, as in
Testing/test_lattice.py: mean and max), seconds (generation alone, the process's first lattice; then with the
measurement), peak memory of the process, porosity and pore size.
Figures are printed, never asserted. Usage:

    .venv/bin/python bench/bench_lattice_mesh.py [--plates 20x14 40x30] [--baseline 7ded357]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def plate_row(da: float, dl: float) -> dict:
    import numpy as np

    try:
        from PatientImplantPlannerLib.core.mesh import check_mesh, stl_bytes
        from PatientImplantPlannerLib.export.threemf import write_3mf
        from PatientImplantPlannerLib.parts import lattice
        from PatientImplantPlannerLib.parts.gyroid import gyroid_distance
    except ImportError:  # a baseline commit from before the stage sub-packages
        from PatientImplantPlannerLib import lattice
        from PatientImplantPlannerLib.mesh import check_mesh, stl_bytes
        from PatientImplantPlannerLib.threemf import write_3mf
        gyroid_distance = lattice.gyroid_distance
    LatticeParameters, apply_porous_layer = lattice.LatticeParameters, lattice.apply_porous_layer
    elliptic_plate = lattice.elliptic_plate

    params = LatticeParameters()
    params.calibration()  # cached per process; not part of the timing
    import vtk  # noqa: F401  # loaded long before any lattice in the CLI and in Slicer (scene, segmentation): 0.5 s
    plate = elliptic_plate(da / 2.0, dl / 2.0, 3.0)
    # Generation alone first (the first lattice of the process: a tiled engine reads or meshes its tile here),
    # then again with the porosity and pore-size measurement the export records.
    t0 = time.perf_counter()
    try:
        apply_porous_layer(plate, (0, 0, 0), (0, 0, 1), params=params, anterior=(1, 0, 0), measure=False)
    except TypeError:  # an engine from before the measure switch
        apply_porous_layer(plate, (0, 0, 0), (0, 0, 1), params=params, anterior=(1, 0, 0))
    generation = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = apply_porous_layer(plate, (0, 0, 0), (0, 0, 1), params=params, anterior=(1, 0, 0))
    seconds = time.perf_counter() - t0
    check = check_mesh(r.mesh)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "part.3mf")
        write_3mf(r.mesh, path, "part")
        mb_3mf = os.path.getsize(path) / 1e6
    # Chordal error as in test_lattice.py (points of every triangle on the lattice's own surface, off the cuts).
    mesh = r.layer_mesh
    bary = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1], [4, 1, 1], [1, 4, 1], [1, 1, 4]], float)
    points = np.einsum("sk,mkd->msd", bary / bary.sum(axis=1, keepdims=True), mesh.vertices[mesh.faces]).reshape(-1, 3)
    u, v, w = points.T
    step = r.voxel_mm
    walls = (np.sqrt((u / (da / 2)) ** 2 + (v / (dl / 2)) ** 2) - 1.0) * (min(da, dl) / 2)
    own = (w < -step) & (w > -params.layer_thickness_mm + step) & (walls < -step)
    err = np.abs(gyroid_distance(points[own], r.cell_size_mm, r.level)) * 1000.0
    return {
        "plate": f"{da:g} x {dl:g}", "layer_mm3": r.layer_volume_mm3, "triangles": r.mesh.n_triangles,
        "stl_mb": len(stl_bytes(r.mesh)) / 1e6, "3mf_mb": mb_3mf, "err_mean_um": float(err.mean()),
        "err_max_um": float(err.max()), "generation_s": generation, "seconds": seconds, "peak_mb": _peak_mb(),
        "porosity": r.measured_porosity, "pore_um": r.measured_pore_size_um, "shells": check.n_components,
        "ok": check.ok, "degenerate": check.n_degenerate,
    }


def _run(engine_path: str, plate) -> dict:
    env = dict(os.environ, PYTHONPATH=engine_path)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--row", f"{plate[0]}x{plate[1]}"],
                          capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
    if not lines:
        raise RuntimeError(f"plate {plate} failed with {engine_path}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[0][4:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plates", nargs="+", default=["20x14", "40x30"])
    parser.add_argument("--baseline", default="7ded357", help="git commit of the engine to compare with")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print("ROW " + json.dumps(plate_row(*(float(x) for x in args.row.split("x")))))
        return
    plates = [tuple(float(x) for x in p.lower().split("x")) for p in args.plates]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.baseline, "PatientImplantPlanner"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        engines = [("now", os.path.join(ROOT, "PatientImplantPlanner")),
                   (f"base {args.baseline}", os.path.join(tmp, "PatientImplantPlanner"))]
        print("elliptic footplates 3 mm thick, default gyroid layer (1.5 mm, 550 um, 70 %); each run in its own "
              "process, the two engines alternating (shared machine: compare within a plate)")
        head = (f"{'plate mm':<10}{'engine':<16}{'layer mm3':>10}{'triangles':>11}{'tri/mm3':>8}{'STL MB':>8}"
                f"{'3MF MB':>8}{'err mean':>9}{'err max':>8}{'gen s':>7}{'s':>7}{'peak MB':>8}{'porosity':>9}"
                f"{'pore um':>8}{'shells':>7}")
        print(head)
        for plate in plates:
            for name, path in engines:
                r = _run(path, plate)
                print(f"{r['plate']:<10}{name:<16}{r['layer_mm3']:>10.0f}{r['triangles']:>11d}"
                      f"{r['triangles'] / r['layer_mm3']:>8.0f}{r['stl_mb']:>8.1f}{r['3mf_mb']:>8.1f}"
                      f"{r['err_mean_um']:>9.1f}{r['err_max_um']:>8.1f}{r['generation_s']:>7.1f}{r['seconds']:>7.1f}"
                      f"{r['peak_mb']:>8.0f}"
                      f"{r['porosity']:>9.3f}{r['pore_um']:>8.0f}{r['shells']:>7d}")
        print("(err: um from the exact gyroid at the sample points of every lattice triangle off the cut faces; "
              "triangles and file sizes of the whole fused plate; gen s: the process's first lattice, generation "
              "only; s: the same plate again with the porosity and pore-size measurement)")


if __name__ == "__main__":
    main()
