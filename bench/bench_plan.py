"""Benchmark: implant design on the 3-level phantom against the bone segmentation of the same phantom.

The plan is the demo's: L1 inferior to L3 superior endplate, a 10 x 5 mm curved plate lying in front of the L2
body ("anterior" placement), three oversized variants (+2, +3, +4 mm). Timed, each ``--repeats`` times (median
printed):

- baseline: ``segment_bone`` of the phantom (a seed in each vertebral body), the step a user runs before designing;
- ``build_implant`` x 4 with the planned screw holes (nominal + three variants): target under 2 s;
- the whole ``design_implant`` (levels, screws, implant + variants, measurements) with its own per-part seconds.

Figures are printed, never asserted. Usage:

    .venv/bin/python bench/bench_plan.py [--spacing 0.7] [--repeats 3]
"""

import argparse
import resource
import statistics
import time

IMPLANT_TARGET_S = 2.0


def demo_like_plan(phantom):
    """The demo plan (cli.demo_plan) with the phantom's L1 and L3 body centres as the level points."""
    from PatientImplantPlannerLib.design.plan import Plan
    from PatientImplantPlannerLib.design.strut import ImplantParameters

    return Plan(
        case_id="BENCH-L2",
        proximal_level="L1",
        distal_level="L3",
        proximal_point_ras=[float(v) for v in phantom.body_point("L1")],
        distal_point_ras=[float(v) for v in phantom.body_point("L3")],
        implant=ImplantParameters(profile="curved_plate", width_mm=10.0, depth_mm=5.0),
        placement="anterior",
    )


def time_segmentation(ctx, ct, seeds) -> tuple:
    """(seconds, timings_s, mask) of one segment_bone run; its segmentation node is removed afterwards."""
    from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
    from PatientImplantPlannerLib.scene.bonesegment import segment_bone

    t0 = time.perf_counter()
    result = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=[tuple(s) for s in seeds]))
    seconds = time.perf_counter() - t0
    ctx.scene.RemoveNode(result.segmentation_node)
    return seconds, dict(result.timings_s), result.mask


def time_implants(result) -> float:
    """build_implant x (1 + variants) with the planned holes, as design_implant does it."""
    from PatientImplantPlannerLib.design.implant import build_implant
    from PatientImplantPlannerLib.design.screws import hole_specs

    holes = hole_specs(result.screws)
    params = result.implant_parameters
    t0 = time.perf_counter()
    build_implant(result.axis_points, result.proximal_endplate, result.distal_endplate, params, holes=holes)
    for extra in sorted(result.plan.variants_mm):
        build_implant(result.axis_points, result.proximal_endplate, result.distal_endplate, params, holes=holes,
                      extra_length_mm=extra)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from PatientImplantPlannerLib.design.plan import design_implant
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom
    from PatientImplantPlannerLib.scene.context import create_headless_context

    t0 = time.perf_counter()
    phantom = make_spine_phantom(spacing=args.spacing, levels=("L1", "L2", "L3"))
    ctx = create_headless_context()
    ct = phantom.add_to_scene(ctx)
    print(f"phantom L1-L3, {list(phantom.array.shape)} voxels [k, j, i] at {args.spacing} mm "
          f"({time.perf_counter() - t0:.1f} s to generate, not timed below); {args.repeats} repeats, median shown")

    seeds = [phantom.body_point(n) for n in ("L1", "L2", "L3")]  # each phantom vertebra is its own component
    seg_runs = [time_segmentation(ctx, ct, seeds) for _ in range(args.repeats)]
    mask = seg_runs[-1][2]
    plan = demo_like_plan(phantom)
    design_runs, implant_runs = [], []
    for _ in range(args.repeats):
        t1 = time.perf_counter()
        result = design_implant(plan, phantom.array, phantom.ijk_to_ras, mask)
        design_runs.append((time.perf_counter() - t1, dict(result.seconds)))
        implant_runs.append(time_implants(result))

    def med(values):
        return statistics.median(values)

    seg_s = med([r[0] for r in seg_runs])
    design_s = med([r[0] for r in design_runs])
    implant_s = med(implant_runs)
    print()
    print(f"{'step':<52}{'median s':>10}{'min s':>8}{'max s':>8}{'x seg':>8}")

    def row(name, values):
        print(f"{name:<52}{med(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}{med(values) / seg_s:>8.2f}")

    row("baseline: segment_bone (a seed in each vertebra)", [r[0] for r in seg_runs])
    for key in seg_runs[0][1]:
        if key != "total":
            row(f"  segmentation: {key}", [r[1][key] for r in seg_runs])
    row("build_implant x 4 (nominal + 3 variants, with holes)", implant_runs)
    row("design_implant (whole)", [r[0] for r in design_runs])
    for key in design_runs[0][1]:
        row(f"  design: {key}", [r[1][key] for r in design_runs])
    row("  design: rest (anterior placement, validation)", [r[0] - sum(r[1].values()) for r in design_runs])
    n_holes = len(result.screws)
    print()
    print(f"implant + holes + 3 variants: {implant_s:.2f} s for {1 + len(plan.variants_mm)} solids with {n_holes} "
          f"holes each (target < {IMPLANT_TARGET_S:.0f} s): {'met' if implant_s < IMPLANT_TARGET_S else 'MISSED'}")
    print(f"design_implant / segmentation: {design_s / seg_s:.2f}  ({design_s:.2f} s vs {seg_s:.2f} s)")
    print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0:.0f} MB")
    if result.warnings:
        print("design warnings: " + "; ".join(result.warnings))


if __name__ == "__main__":
    main()
