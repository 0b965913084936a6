"""Command-line entry point ``implant-planner`` (also ``python -m PatientImplantPlannerLib``).

Runs the same engine functions as the Slicer module on a headless scene, for batch use and tests.
"""

import argparse
import datetime
import json
import os
import sys
import time

from .errors import PlannerError

# A point on the L3 vertebral body (RAS mm) of the bundled sample CT, found from its reference vertebra labels.
SAMPLE_L3_SEED_RAS = (-7.0, 146.3, 304.3)


def sample_ct_path() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, "Resources", "SampleData", "example_ct.nii.gz")


class ProgressBar:
    """Text progress bar on stderr (a single updating line on a terminal, sparse lines otherwise)."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.last_message = None
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, fraction: float, message: str) -> None:
        filled = int(round(fraction * self.width))
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% {message}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if fraction >= 1.0:
                self.stream.write("\n")
        elif message != self.last_message:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last_message = message


def _points(values):
    return [tuple(float(x) for x in v) for v in (values or [])]


def _new_output_folder(base: str, prefix: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(base, f"{prefix}-{stamp}")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(base, f"{prefix}-{stamp}-{n}")
    return path


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
    if os.path.isfile(out_dir):
        raise PlannerError(f"--out {out_dir} is a file.", "Give a folder path.")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise PlannerError(
            f"Output folder {out_dir} exists and is not empty.", "Choose a new folder, or pass --overwrite."
        )


def run_segment(args, progress=None) -> dict:
    from .boneexport import export_bone_model
    from .bonesegmentation import BoneSegmentationParameters, segment_bone
    from .context import create_headless_context
    from .ctimport import load_ct
    from .progress import Progress

    _check_out_dir(args.out, args.overwrite)
    prog = Progress(progress)
    ctx = create_headless_context()
    ct = load_ct(ctx, args.ct, progress=prog.sub(0.0, 0.1).report)
    params = BoneSegmentationParameters(
        threshold_min=args.threshold[0],
        threshold_max=args.threshold[1],
        seeds_ras=_points(args.seed),
        exclude_seeds_ras=_points(args.exclude_seed),
        roi_center_ras=tuple(args.roi[:3]) if args.roi else None,
        roi_size_mm=tuple(args.roi[3:]) if args.roi else None,
        fill_interior=not args.no_fill,
        min_island_mm3=args.min_island,
        smoothing_mm=args.smoothing,
    )
    result = segment_bone(ctx, ct, params, progress=prog.sub(0.1, 0.6).report)
    os.makedirs(args.out, exist_ok=True)
    seg_path = os.path.join(args.out, "bone.seg.nrrd")
    _write_segmentation(ctx, result.segmentation_node, seg_path, args.overwrite)
    export = export_bone_model(
        ctx,
        result.segmentation_node,
        result.segment_id,
        args.out,
        name="bone",
        coordinate_system=args.coordinates,
        target_triangles=args.triangles,
        overwrite=args.overwrite,
        parameters={"ct": os.path.abspath(args.ct), "segmentation": params.as_dict()},
        progress=prog.sub(0.6, 1.0).report,
        reference_volume=ct,
    )
    return {
        "segmentation": seg_path,
        "stl": export.stl_path,
        "manifest": export.manifest_path,
        "bone_volume_ml": round(result.volume_mm3 / 1000.0, 2),
        "triangles": export.check.n_triangles,
        "watertight": export.check.watertight,
        "warnings": list(result.warnings),
    }


def _write_segmentation(ctx, segmentation_node, path: str, overwrite: bool) -> None:
    """Save a segmentation as .seg.nrrd atomically (written under a temporary name, then renamed)."""
    import slicer

    from .errors import OutputExistsError

    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(f"Output file already exists: {path}.", "Choose a new folder or pass --overwrite.")
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(tmp)
    storage.SetUseCompression(True)
    if not storage.WriteData(segmentation_node):
        if os.path.exists(tmp):
            os.remove(tmp)
        raise PlannerError(f"Could not write the segmentation to {path}.", "Check the folder is writable.")
    os.replace(tmp, path)


def cmd_segment(args) -> int:
    summary = run_segment(args, ProgressBar())
    print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(args) -> int:
    out = _new_output_folder(args.out, "demo")
    seg_args = argparse.Namespace(
        ct=sample_ct_path(),
        out=out,
        overwrite=False,
        threshold=[226.0, 3071.0],
        seed=[SAMPLE_L3_SEED_RAS],
        exclude_seed=[],
        roi=None,
        no_fill=False,
        min_island=1000.0,
        smoothing=0.0,
        coordinates="LPS",
        triangles=None,
    )
    t0 = time.time()
    summary = run_segment(seg_args, ProgressBar())
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary, indent=2))
    print(f"Demo output written to {os.path.abspath(out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="implant-planner",
        description="Patient-specific spinal implant planning from CT (headless engine of the Slicer extension).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser(
        "segment",
        help="Segment bone in a CT and export the bone model (STL + manifest).",
        description="Threshold bone, keep what is connected to the seeds, fill the interior, write "
        "bone.seg.nrrd, bone.stl and manifest.json into --out. Points are RAS mm.",
    )
    seg.add_argument("ct", help="CT file (.nrrd, .nii, .nii.gz, .mha) or DICOM folder")
    seg.add_argument("--out", required=True, help="output folder (created; must be empty unless --overwrite)")
    seg.add_argument("--threshold", nargs=2, type=float, default=[226.0, 3071.0], metavar=("LO", "HI"),
                     help="bone threshold range in HU (default 226 3071)")
    seg.add_argument("--seed", nargs=3, type=float, action="append", metavar=("R", "A", "S"),
                     help="keep bone connected to this point (repeatable)")
    seg.add_argument("--exclude-seed", nargs=3, type=float, action="append", metavar=("R", "A", "S"),
                     help="point in a structure to reject, e.g. a contrast vessel touching the spine (repeatable)")
    seg.add_argument("--roi", nargs=6, type=float, metavar=("R", "A", "S", "SIZE_R", "SIZE_A", "SIZE_S"),
                     help="region of interest box: centre and size, mm")
    seg.add_argument("--no-fill", action="store_true", help="do not fill the cancellous interior")
    seg.add_argument("--min-island", type=float, default=1000.0, help="remove bone pieces below this size, mm3")
    seg.add_argument("--smoothing", type=float, default=0.0, help="Gaussian smoothing of the mask, mm (0 = off)")
    seg.add_argument("--coordinates", choices=["LPS", "RAS"], default="LPS", help="STL coordinate system")
    seg.add_argument("--triangles", type=int, default=None, help="decimate the STL to about this many triangles")
    seg.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    seg.set_defaults(func=cmd_segment)

    demo = sub.add_parser(
        "demo",
        help="Run the main job on the bundled sample CT.",
        description="Plans on the bundled lumbar CT and writes all outputs into a new time-stamped folder "
        "under --out.",
    )
    demo.add_argument("--out", default="output", help="parent folder for the new demo folder (default: output)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PlannerError as exc:
        print(f"error: {exc.problem}", file=sys.stderr)
        if exc.fix:
            print(f"  fix: {exc.fix}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
