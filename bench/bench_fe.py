"""Benchmark: finite-element check of the demo implant (all sizes) on the bundled lumbar CT.

The plan is cli.demo_plan() designed as the demo does (segmentation and design are not timed). Timed: the whole
``fe.analyse_plan`` (thinnest wall, fTetWild mesh of every size, P2 solve per size, the 5.5 mm rod per size) and,
per size, its meshing and solving time with the tetrahedra count; optionally the mesh
convergence check (``--convergence``: the nominal mesh split 8x and solved again). Targets: <= 60 s and <= 2 GB
peak memory on 2 cores for all sizes. Figures are printed, never asserted. Usage:

    .venv/bin/python bench/bench_fe.py [--convergence]
"""

import argparse
import os
import resource
import sys
import time

TARGET_S = 60.0
TARGET_MB = 2048.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--convergence", action="store_true", help="also time the mesh convergence check")
    args = parser.parse_args()

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Testing"))
    from conftest import SAMPLE_CT

    from PatientImplantPlannerLib.analysis import fe
    from PatientImplantPlannerLib.cli import demo_plan
    from PatientImplantPlannerLib.design.plan import design_implant
    from PatientImplantPlannerLib.scene.bonesegment import segment_bone
    from PatientImplantPlannerLib.scene.context import create_headless_context
    from PatientImplantPlannerLib.scene.ctload import load_ct
    from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras_matrix

    t0 = time.perf_counter()
    ctx = create_headless_context()
    ct = load_ct(ctx, SAMPLE_CT)
    plan = demo_plan()
    seg = segment_bone(ctx, ct, plan.segmentation)
    result = design_implant(plan, array(ct).copy(), ijk_to_ras_matrix(ct), seg.mask)
    before_mb = _peak_mb()
    print(f"demo plan designed in {time.perf_counter() - t0:.1f} s (not timed below); "
          f"{1 + len(result.variants)} sizes; peak memory before FE {before_mb:.0f} MB")

    t1 = time.perf_counter()
    report = fe.analyse_plan(result, check_convergence=args.convergence)
    total = time.perf_counter() - t1
    peak = _peak_mb()
    print(f"thinnest wall {report.thinnest_wall_mm:.2f} mm -> element {report.element_size_mm:.2f} mm")
    print()
    print(f"{'size':<10}{'tetrahedra':>11}{'mesh s':>8}{'solve s':>9}{'k N/mm':>10}{'k rod':>10}{'ratio':>7}"
          f"{'max MPa':>9}{'p99 MPa':>9}{'SF yield':>9}{'SF fat.':>8}{'bend MPa':>9}  mesh")
    for label, size in report.sizes.items():
        m, d = size.manifest_dict(), size.details()
        print(f"{label:<10}{m['tetrahedra']:>11}{d['mesh_seconds']:>8.1f}{d['seconds']:>9.1f}{m['axial_stiffness_N_per_mm']:>10.0f}"
              f"{m['rod_axial_stiffness_N_per_mm']:>10.0f}{m['stiffness_ratio_vs_rod']:>7.3f}"
              f"{m['max_von_mises_MPa']:>9.1f}{m['p99_von_mises_MPa']:>9.1f}{m['safety_factor_yield']:>9.2f}"
              f"{d['safety_factor_fatigue']:>8.2f}{d['bending_max_von_mises_MPa']:>9.1f}  {d['mesh']}")
    if report.convergence:
        c = report.convergence
        print(f"convergence: {c['tetrahedra']} -> {c['refined_tetrahedra']} tetrahedra, stiffness "
              f"{c['stiffness_N_per_mm']:.0f} -> {c['refined_stiffness_N_per_mm']:.0f} N/mm "
              f"({100 * c['relative_change']:.2f} %)")
    print()
    print(f"FE of all sizes: {total:.1f} s (target <= {TARGET_S:.0f} s): {'met' if total <= TARGET_S else 'MISSED'}")
    print(f"peak memory of this process: {peak:.0f} MB (target <= {TARGET_MB:.0f} MB): "
          f"{'met' if peak <= TARGET_MB else 'MISSED'}")
    ctx.scene.Clear(True)


if __name__ == "__main__":
    main()
