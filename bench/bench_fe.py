"""Benchmark: finite-element check of the demo implant (all sizes) on the bundled lumbar CT.

The plan is cli.demo_plan() designed as the demo does (segmentation and design are not timed). Timed: the whole
``fe.analyse_plan`` (thinnest wall, fTetWild mesh of every size in the meshing worker processes, P2 solve per size,
the 5.5 mm rod per size): wall time, CPU time of this process and its workers, peak memory of the process tree
(sampled proportional set size), and per size its meshing and solving time with the tetrahedra count; optionally the
mesh convergence check (``--convergence``: the nominal mesh split 8x and solved again). ``--workers 1`` meshes in
this process, one size after the other. Targets: <= 60 s and <= 2 GB peak memory on 2 cores for all sizes. Figures
are printed, never asserted. Usage:

    .venv/bin/python bench/bench_fe.py [--convergence] [--workers N]
"""

import argparse
import os
import resource
import sys
import threading
import time

TARGET_S = 60.0
TARGET_MB = 2048.0


def _peak_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def _tree_pss_mb(pid: int) -> float:
    """Proportional set size (shared pages split between the processes sharing them) of a process and all its
    descendants now, MB (Linux /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, total = [pid], 0.0
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024.0
        except (OSError, StopIteration, ValueError):
            continue
    return total


def _cpu_s() -> float:
    """CPU seconds of this process and its finished worker processes."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                            resource.RUSAGE_CHILDREN)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--convergence", action="store_true", help="also time the mesh convergence check")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes meshing the sizes side by side (default: fe's, 2 on a multi-core machine)")
    args = parser.parse_args()

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Testing"))
    from conftest import SAMPLE_CT

    from PatientImplantPlannerLib.analysis import fe, tetmesh
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

    # The meshing workers' own peaks are not measurable from here (a spawned child's ru_maxrss includes the parent's
    # pages it shared before exec), so the process tree's memory (PSS) is sampled while the FE runs.
    tree_peak, done = [0.0], threading.Event()

    def sample():
        while not done.wait(0.1):
            tree_peak[0] = max(tree_peak[0], _tree_pss_mb(os.getpid()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t1, c1 = time.perf_counter(), _cpu_s()
    report = fe.analyse_plan(result, check_convergence=args.convergence, workers=args.workers)
    total, cpu = time.perf_counter() - t1, _cpu_s() - c1
    done.set()
    sampler.join()
    peak, tree = _peak_mb(), tree_peak[0]
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
    print(f"FE of all sizes: {total:.1f} s (target <= {TARGET_S:.0f} s): {'met' if total <= TARGET_S else 'MISSED'}; "
          f"CPU {cpu:.1f} s (this process and its meshing workers)")
    workers = tetmesh.default_workers() if args.workers is None else max(1, args.workers)
    print(f"peak memory: this process {peak:.0f} MB (resident, whole run); during the FE this process and its "
          f"{workers} meshing worker(s) together {tree:.0f} MB (PSS sampled every 0.1 s); "
          f"target <= {TARGET_MB:.0f} MB: {'met' if max(peak, tree) <= TARGET_MB else 'MISSED'}")
    ctx.scene.Clear(True)


if __name__ == "__main__":
    main()
