"""Command-line entry point ``implant-planner`` (also ``python -m PatientImplantPlannerLib``).

Runs the same engine functions as the Slicer module on a headless scene, for batch use and tests.
"""

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import time

from .core.errors import OutputExistsError, OutputWriteError, PlanError, PlannerError, from_os_error
from .export.parameters import ALL_PARTS
from .export.staging import interrupts_raise
from .scene.segments import load_segmentation_file

# Points (RAS mm) in the bundled sample CT, found from its reference vertebra labels: a bone voxel of the L3 body
# (segmentation seed) and the centres of the L1 and L3 vertebral bodies (the healthy levels of the demo plan).
SAMPLE_L3_SEED_RAS = (-7.0, 146.3, 304.3)
SAMPLE_L1_BODY_RAS = (-6.5, 125.1, 386.2)
SAMPLE_L3_BODY_RAS = (-5.0, 146.0, 315.6)
MIN_TRIANGLES = 1000  # a decimated bone model below this is no longer the bone's shape
MIN_FREE_MB = 100  # refuse to start on a nearly full disk (a plan bundle with lattices takes hundreds of MB)
FE_LOAD_N = 500.0  # finite-element check: axial load of the reference case (fe.DEFAULT_LOAD_N; fe is imported lazily)


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
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputWriteError(f"--out {out_dir} is an existing file, not a folder.",
                               "Give a folder path with --out (it is created if missing).")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise PlannerError(
            f"Output folder {out_dir} exists and is not empty.", "Choose a new folder, or pass --overwrite."
        )
    _check_writable(out_dir)


def _check_out_parent(out_parent: str) -> None:
    """``--out`` of plan/demo: a folder (made if missing) in which a new bundle folder is created."""
    if os.path.exists(out_parent) and not os.path.isdir(out_parent):
        raise OutputWriteError(f"--out {out_parent} is an existing file, not a folder.",
                               "Give a folder with --out; a new <case>_<date-time> folder is made in it.")
    _check_writable(out_parent)


def _check_writable(folder: str) -> None:
    """Before any work: the nearest existing folder on the way to ``folder`` is a writable folder with space."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputWriteError(f"--out {folder} goes through {existing}, which is a file, not a folder.",
                               "Give a folder path with --out.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputWriteError(f"No permission to write in {existing} (for --out {folder}).",
                               "Choose a folder you can write to with --out, or change the folder's permissions.")
    free_mb = shutil.disk_usage(existing).free / 1e6
    if free_mb < MIN_FREE_MB:
        raise OutputWriteError(f"The disk of {existing} has only {free_mb:.0f} MB free (at least {MIN_FREE_MB} MB "
                               "are needed).", "Free space on that disk, or write to another disk with --out.")


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def _check_segment_args(args) -> None:
    """The segment command's numbers, before the CT is read."""
    lo, hi = args.threshold
    if not _finite(args.threshold) or lo >= hi:
        raise PlannerError(f"--threshold {lo:g} {hi:g} is not a range (the low value must be below the high one).",
                           "Give --threshold LO HI in HU with LO < HI, e.g. --threshold 226 3071.")
    for option, points in (("--seed", args.seed), ("--exclude-seed", args.exclude_seed)):
        for p in points or []:
            if not _finite(p):
                raise PlannerError(f"{option} {' '.join(f'{v:g}' for v in p)} is not a point.",
                                   f"Give {option} as three finite numbers R A S in mm.")
    if args.roi and (not _finite(args.roi) or min(args.roi[3:]) <= 0):
        raise PlannerError(f"--roi {' '.join(f'{v:g}' for v in args.roi)} is not a box.",
                           "Give --roi R A S SIZE_R SIZE_A SIZE_S: a centre and three positive sizes in mm.")
    if args.triangles is not None and args.triangles < MIN_TRIANGLES:
        raise PlannerError(f"--triangles {args.triangles} is too few for a bone model.",
                           f"Give at least {MIN_TRIANGLES} triangles, or leave --triangles out to keep the full "
                           "resolution.")
    if not math.isfinite(args.min_island) or args.min_island < 0:
        raise PlannerError(f"--min-island {args.min_island:g} is not a volume.",
                           "Give --min-island in mm3, 0 or more (default 1000).")
    if not math.isfinite(args.smoothing) or not 0 <= args.smoothing <= 10:
        raise PlannerError(f"--smoothing {args.smoothing:g} mm is out of range.",
                           "Give --smoothing between 0 (off) and 10 mm.")


def run_segment(args, progress=None) -> dict:
    from .core.progress import Progress
    from .export.boneexport import export_bone_model
    from .export.staging import moved, staged_folder
    from .imaging.bonesegmentation import BoneSegmentationParameters
    from .imaging.ctimport import describe_ct
    from .scene.bonesegment import segment_bone
    from .scene.context import create_headless_context
    from .scene.ctload import load_ct
    from .scene.workflow import write_segmentation

    _check_segment_args(args)
    _check_out_dir(args.out, args.overwrite)
    prog = Progress(progress)
    ctx = create_headless_context()
    points = [("--seed", p) for p in args.seed or []] + [("--exclude-seed", p) for p in args.exclude_seed or []]
    ct = load_ct(ctx, args.ct, series_uid=args.series_uid, progress=prog.sub(0.0, 0.1).report,
                 allow_non_ct=args.allow_non_ct, points=points)
    ct_info = describe_ct(ct)
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
    with staged_folder(args.out) as work:  # all three files or none
        write_segmentation(result.segmentation_node, os.path.join(work, "bone.seg.nrrd"), args.overwrite)
        export = export_bone_model(
            ctx,
            result.segmentation_node,
            result.segment_id,
            work,
            name="bone",
            coordinate_system=args.coordinates,
            target_triangles=args.triangles,
            overwrite=args.overwrite,
            parameters={"ct": os.path.abspath(args.ct), "ct_series": ct_info.series_note,
                        "ct_notes": ct_info.notes, "segmentation": params.as_dict()},
            progress=prog.sub(0.6, 1.0).report,
            reference_volume=ct,
            mask=result.mask,
        )
    seg_path = os.path.join(os.path.abspath(args.out), "bone.seg.nrrd")
    return {
        "segmentation": seg_path,
        "stl": moved(export.stl_path, work, args.out),
        "manifest": moved(export.manifest_path, work, args.out),
        "bone_volume_ml": round(result.volume_mm3 / 1000.0, 2),
        "triangles": export.check.n_triangles,
        "watertight": export.check.watertight,
        "ct_series": ct_info.series_note,
        "warnings": ct_info.notes + list(result.warnings),
    }


def demo_plan():
    """The demo plan: an L2 corpectomy-like gap bridged from the L1 inferior to the L3 superior endplate with a
    10 x 5 mm curved plate lying in front of the L2 body (L2 stays intact in this CT, so it must not be touched)."""
    from .design.plan import Plan
    from .design.strut import ImplantParameters

    plan = Plan(
        case_id="DEMO-L2",
        proximal_level="L1",
        distal_level="L3",
        proximal_point_ras=list(SAMPLE_L1_BODY_RAS),
        distal_point_ras=list(SAMPLE_L3_BODY_RAS),
        implant=ImplantParameters(profile="curved_plate", width_mm=10.0, depth_mm=5.0),
    )  # placement left automatic: anterior here (nothing kept out), and safe where this example is copied to a chest CT
    plan.segmentation.seeds_ras = [SAMPLE_L3_SEED_RAS]
    return plan


def run_plan(ct_path: str, plan, out_parent: str, segmentation_path=None, export_params=None, progress=None,
             overwrite: bool = False, levels_path=None, series_uid=None, lattice_params=None, guide_params=None,
             ct_checks=None, keep_out_path=None, fe_load_N=None) -> dict:
    """CT + plan -> segmentation (unless given) -> design -> scene nodes -> export bundle. Returns a summary.
    ``ct_checks``: keyword arguments of ``load_ct`` (see ``_ct_checks``)."""
    from .core.progress import Progress
    from .export.bundle import new_bundle_folder
    from .export.parameters import ExportParameters
    from .imaging.ctimport import describe_ct
    from .record.designrecord import SegmentationInfo
    from .scene.bonesegment import segment_bone
    from .scene.context import create_headless_context
    from .scene.ctload import load_ct
    from .scene.workflow import design_in_scene, export_in_scene

    prog = Progress(progress)
    ctx = create_headless_context()
    ct = load_ct(ctx, ct_path, series_uid=series_uid, progress=prog.sub(0.0, 0.05).report, **(ct_checks or {}))
    if plan.kind == "mirror_defect":
        return _run_mirror_defect(ctx, ct, plan, out_parent, segmentation_path, export_params, prog)
    level_labels = None
    if levels_path:
        from .imaging.levelsource import fill_plan_points
        from .scene.labelfiles import load_level_labels
        from .scene.volumes import ijk_to_ras_matrix

        level_labels = load_level_labels(ctx, levels_path, ct)
        fill_plan_points(plan, *level_labels, ijk_to_ras_matrix(ct))
    plan.validate()
    keep_out = _keep_out(ctx, ct, plan, keep_out_path, levels_path, level_labels)
    folder = new_bundle_folder(out_parent, plan.case_id)
    if segmentation_path:
        seg_node, segment_id = load_segmentation_file(ctx, segmentation_path)
        seg_info = SegmentationInfo(source=os.path.abspath(segmentation_path))
    else:
        seg_params = plan.segmentation
        if not seg_params.seeds_ras:
            # The two healthy vertebrae seed the spine when the plan names no seeds.
            seg_params.seeds_ras = [tuple(p) for p in (plan.proximal_point_ras, plan.distal_point_ras) if p]
        not_bone = keep_out.labelled_mask() if keep_out is not None else None
        seg = segment_bone(ctx, ct, seg_params, progress=prog.sub(0.05, 0.3).report, not_bone=not_bone)
        seg_node, segment_id = seg.segmentation_node, seg.segment_id
        seg_info = SegmentationInfo.from_segmentation(seg, ct.GetName())
        if not_bone is not None:
            # Contrast-filled heart and aorta are above the bone threshold: without this they were in the bone
            # model (343 of 370 ml of heart, 182 of 188 ml of aorta) while the record said the segmentation was OK.
            seg_info.warnings.append("Left out of the bone as labelled soft tissue: "
                                     + ", ".join(s.name for s in keep_out.structures if s.source == "labels") + ".")
    result, nodes = design_in_scene(ctx, ct, seg_node, segment_id, plan, progress=prog.sub(0.3, 0.5).report,
                                    level_labels=level_labels, keep_out=keep_out)
    ct_info = describe_ct(ct)
    result.warnings[:0] = ct_info.notes + _level_label_notes(levels_path, level_labels, keep_out_path)
    if fe_load_N:  # finite-element check of every size; its figures go into the manifest under "fe"
        from .analysis.fe import analyse_plan

        # The FE gets its own share of the bar (it had a zero-width range: the bar stood still at 50 %).
        result.fe_analysis = analyse_plan(result, load_N=float(fe_load_N), progress=prog.sub(0.5, 0.65).report)
        result.fe = result.fe_analysis.manifest()
    bundle = export_in_scene(
        ctx, result, nodes, ct, seg_node, segment_id, folder=folder,
        export_params=export_params or ExportParameters(), segmentation=seg_info, overwrite=overwrite,
        progress=prog.sub(0.65 if fe_load_N else 0.5, 1.0).report, lattice_params=lattice_params,
        guide_params=guide_params,
    )
    m = result.measurements
    return {
        "folder": bundle.folder,
        "manifest": bundle.manifest_path,
        "report": bundle.report_html,
        "files": len(bundle.files),
        "ct_series": ct_info.series_note,
        "implant_length_mm": round(m["length_mm"], 2),
        "implant_volume_ml": round(m["volume_mm3"] / 1000.0, 3),
        "mass_g": round(m["mass_g"], 2),
        "bone_interference_mm3": round(m["interference_mm3"], 2),
        "drill_line_bone_mm": {k: round(v, 1) for k, v in m.get("drill_line_bone_mm", {}).items()},
        "screws": [{"name": sp.trajectory.name, "length_mm": sp.length_mm, "breach": sp.breach}
                   for sp in result.screws],
        "variants_mm": sorted(result.variants),
        "placement": m.get("placement_detail"),
        "safety": {k: m["safety"][k] for k in ("required_clearance_mm", "clearance_mm", "overlap_mm3", "accepted")}
        | {"not_checked": m["safety"]["keep_out"]["not_checked"]},
        "warnings": list(result.warnings),
        # The export's own "total" is only the writing: named so it is not read as the whole run's.
        "seconds": {k: round(v, 2) for k, v in {**result.seconds, **{
            ("export_total" if k == "total" else k): v for k, v in bundle.seconds.items()}}.items()},
    }


def _run_mirror_defect(ctx, ct, plan, out_parent, segmentation_path, export_params, prog) -> dict:
    """A mirror-defect plan: bone segment (given or from the plan's seeds) -> mirrordefect.run_mirror_defect into
    a new folder (every file verified, the manifest with its "defect" block). Returns a summary."""
    from .design.mirrordefect import run_mirror_defect
    from .export.bundle import new_bundle_folder
    from .imaging.ctimport import describe_ct
    from .record.designrecord import SegmentationInfo, ct_fields
    from .scene.bonesegment import segment_bone
    from .scene.segments import get_segment_mask
    from .scene.volumes import array, ijk_to_ras_matrix

    plan.validate()
    if segmentation_path:
        seg_node, segment_id = load_segmentation_file(ctx, segmentation_path)
        mask = get_segment_mask(seg_node, segment_id, ct)
        seg_info = SegmentationInfo(source=os.path.abspath(segmentation_path))
    else:
        if not plan.segmentation.seeds_ras:
            raise PlanError("A mirror-defect plan needs a seed in the bone to segment (segmentation.seeds_ras).",
                            "Add a point in the sacrum or pelvis to segmentation.seeds_ras, or give --segmentation.")
        seg = segment_bone(ctx, ct, plan.segmentation, progress=prog.sub(0.05, 0.3).report)
        mask = seg.mask
        seg_info = SegmentationInfo.from_segmentation(seg, ct.GetName())
    folder = new_bundle_folder(out_parent, plan.case_id)
    cs = export_params.coordinate_system if export_params is not None else "LPS"
    prog.report(0.35, "Mirror-defect implant")
    # The implant and its drill guides are always written as 3MF too (their units travel with them).
    manifest = run_mirror_defect(array(ct), ijk_to_ras_matrix(ct), mask, plan.mirror_defect, folder,
                                 coordinate_system=cs, formats=("stl", "3mf"), case_id=plan.case_id,
                                 ct_description=ct_fields(describe_ct(ct)), segmentation=seg_info.as_dict())
    plan.save(os.path.join(folder, f"{plan.case_id}_plan.json"))
    prog.report(1.0, "Done")
    d = manifest.get("defect", {})
    return {"folder": folder, "manifest": os.path.join(folder, "manifest.json"), "kind": "mirror_defect",
            "files": len(manifest.get("files", [])),
            "defect": {k: d.get(k) for k in ("symmetry_plane", "defect_volume_mm3", "implant_volume_mm3",
                                             "bone_overlap_mm3", "contact_area_mm2", "max_gap_mm")},
            "screws": manifest.get("screws"), "warnings": manifest.get("warnings", [])}


def _keep_out(ctx, ct, plan, keep_out_path, levels_path, level_labels):
    """The keep-out anatomy: --keep-out (a TotalSegmentator labelmap, a .seg.nrrd with structures named like 'aorta'
    or a folder of mask files named so), else the soft-tissue structures of the --levels labels, else None (design
    then uses what the CT shows)."""
    from .imaging.keepout import from_labels
    from .imaging.levelsource import labelmap_numbering
    from .scene.labelfiles import load_keep_out_labels
    from .scene.volumes import ijk_to_ras_matrix

    names = plan.keep_out_structures
    m = ijk_to_ras_matrix(ct)
    if keep_out_path:
        label_map, values = load_keep_out_labels(ctx, keep_out_path, ct)
        return from_labels(label_map, m, values, names)
    if not levels_path or level_labels is None:
        return None
    if os.path.isdir(levels_path) or levels_path.lower().endswith(".seg.nrrd"):
        # Named segments or files: the level source's own soft-tissue structures, when it has any.
        label_map, values = load_keep_out_labels(ctx, levels_path, ct, required=False)
        ko = from_labels(label_map, m, values, names) if label_map is not None else None
    elif labelmap_numbering(level_labels[0]) == "verse":
        return None  # its values are all vertebrae: read as TotalSegmentator's, 15 and 16 (T8, T9) were "oesophagus"
    else:
        ko = from_labels(level_labels[0], m, None, names)
    return ko if ko is not None and ko.structures else None


def _level_label_notes(levels_path, level_labels, keep_out_path) -> list:
    """What the record must say about how a --levels labelmap was read (its numbering is recognised, not given)."""
    from .imaging.levelsource import labelmap_numbering

    if not levels_path or level_labels is None or os.path.isdir(levels_path) \
            or levels_path.lower().endswith(".seg.nrrd") or labelmap_numbering(level_labels[0]) != "verse":
        return []
    return ["The vertebra labels were read with VerSe's numbering (1 = C1 ... 24 = L5). They label no soft tissue: "
            + ("the keep-out anatomy is from --keep-out." if keep_out_path else
               "the keep-out anatomy is what the CT shows (exclude-seed vessels, airway, spinal canal); give "
               "--keep-out labels to check the others.")]


def _plan_outputs(plan, args=None) -> tuple:
    """(export, lattice, guide parameters): the plan's ``outputs`` with the command line's options over them. The
    plan's ``outputs`` is set to what is used, so the plan saved in the bundle says what was exported."""
    from .design.planschema import output_parameters

    export, lattice, guides = output_parameters(plan.outputs)
    if args is not None:
        export.formats = tuple(args.formats) if args.formats else export.formats
        export.parts = tuple(args.parts) if args.parts else export.parts
        export.coordinate_system = args.coordinates or export.coordinate_system
        if args.no_report:
            export.parts = tuple(p for p in export.parts if p != "report")
        if args.stub_length is not None:
            guides.stub_length_mm = args.stub_length
    for params in (export, lattice, guides):
        params.validate()
    if not export.parts:
        raise PlannerError("Nothing is selected for export.", "Give --parts (or the plan's outputs.parts) with at "
                           f"least one of {', '.join(ALL_PARTS)}.")
    plan.outputs = {**export.as_dict(), "lattice": lattice.as_dict(), "guides": guides.as_dict()}
    return export, lattice, guides


def _ct_checks(plan, allow_non_ct: bool = False, accept_thick_slices: bool = False) -> dict:
    """load_ct's checks for this plan: slices no thicker than its largest variant (or THIN_SLICE_MM without
    variants), and every point it gives inside the CT, named as the plan names it."""
    from .imaging.ctimport import THIN_SLICE_MM

    points = [(f"{end} point ({end}_point_ras)", p)
              for end, p in (("proximal", plan.proximal_point_ras), ("distal", plan.distal_point_ras)) if p is not None]
    for key, label in (("seeds_ras", "seed"), ("exclude_seeds_ras", "exclude seed")):
        points += [(f"{label} (segmentation.{key}[{i}])", p) for i, p in enumerate(getattr(plan.segmentation, key))]
    return {"allow_non_ct": allow_non_ct, "accept_thick_slices": accept_thick_slices,
            "max_slice_mm": max(plan.variants_mm, default=THIN_SLICE_MM), "points": points}


def cmd_plan(args) -> int:
    from .core.errors import InputFileError
    from .design.plan import Plan
    from .design.planschema import check_plan

    # Everything that can be checked without the CT first: the plan (keys, types, ranges), options, paths.
    plan = Plan.load(args.plan)
    export, lattice, guides = _plan_outputs(plan, args)
    check_plan(plan, points_from_levels=bool(args.levels))
    if args.clearance is not None:
        plan.keep_out_clearance_mm = float(args.clearance)
    plan.accepted_risks = list(plan.accepted_risks) + [r for r in (args.accept_risk or [])
                                                       if r not in plan.accepted_risks]
    plan.validate_safety_options()
    for option, path in (("CT", args.ct), ("--segmentation", args.segmentation), ("--levels", args.levels),
                         ("--keep-out", args.keep_out)):
        if path and not os.path.exists(path):
            raise InputFileError(f"{option} path '{path}' does not exist.", f"Check the {option} path.")
    _check_out_parent(args.out)
    summary = run_plan(args.ct, plan, args.out, args.segmentation, export, ProgressBar(), levels_path=args.levels,
                       series_uid=args.series_uid, lattice_params=lattice, guide_params=guides,
                       ct_checks=_ct_checks(plan, args.allow_non_ct, args.accept_thick_slices),
                       keep_out_path=args.keep_out, fe_load_N=args.fe_load if args.fe else None)
    print(json.dumps(summary, indent=2))  # stdout is the JSON summary alone (for scripts); the note to stderr
    print(f"Export written to {os.path.abspath(summary['folder'])}", file=sys.stderr)
    return 0


def cmd_write_demo_plan(args) -> int:
    if os.path.exists(args.path):  # this command has no overwrite option: say what the user can do instead
        raise OutputExistsError(f"Output file already exists: {args.path}.",
                                "Give another path, or rename or delete the existing file first.")
    if args.kind == "mirror_defect":
        from .design.mirrordefect import EXAMPLE_BONE_SEED_RAS, example_parameters
        from .design.plan import Plan

        plan = Plan(case_id="DEMO-HEMISACRUM", kind="mirror_defect", mirror_defect=example_parameters())
        plan.segmentation.seeds_ras = [list(EXAMPLE_BONE_SEED_RAS)]
        plan.save(args.path)
    else:
        demo_plan().save(args.path)
    print(f"Plan written to {args.path}")
    return 0


def cmd_segment(args) -> int:
    summary = run_segment(args, ProgressBar())
    print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(args) -> int:
    t0 = time.time()
    plan = demo_plan()
    _check_out_parent(args.out)
    export, lattice, guides = _plan_outputs(plan)
    summary = run_plan(sample_ct_path(), plan, args.out, export_params=export, progress=ProgressBar(),
                       lattice_params=lattice, guide_params=guides, ct_checks=_ct_checks(plan),
                       fe_load_N=None if getattr(args, "no_fe", False) else FE_LOAD_N)
    summary["total_seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary, indent=2))
    print(f"Demo output (STL files, manifest.json, design_record.html/.pdf) written to "
          f"{os.path.abspath(summary['folder'])}", file=sys.stderr)
    return 0


def cmd_demo_segment(args) -> int:
    _check_out_parent(args.out)
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
        series_uid=None,
        allow_non_ct=False,
    )
    t0 = time.time()
    summary = run_segment(seg_args, ProgressBar())
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary, indent=2))
    print(f"Demo output written to {os.path.abspath(out)}")
    return 0


ALLOW_NON_CT_HELP = ("use a volume that does not look like a CT in Hounsfield units, or a non-CT DICOM series "
                     "(bone thresholds then have to be set by hand)")


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
    seg.add_argument("--triangles", type=int, default=None,
                     help=f"decimate the STL to about this many triangles (at least {MIN_TRIANGLES})")
    seg.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    seg.add_argument("--series-uid", help="DICOM folder with several series: the SeriesInstanceUID to load "
                     "(default: the CT series with the most slices; the summary and manifest name the one used)")
    seg.add_argument("--allow-non-ct", action="store_true", help=ALLOW_NON_CT_HELP)
    seg.set_defaults(func=cmd_segment)

    pl = sub.add_parser(
        "plan",
        help="Design the implant from a plan file and write the export bundle.",
        description="Segments bone (unless --segmentation is given), detects axis and endplates, designs the "
        "implant, screws and variants from PLAN.json, and writes a new bundle folder under --out: STL of the implant "
        "and each variant, guides, check and bone models, markups JSON of axis/endplates/screws, the plan, "
        "manifest.json with measurements and checksums, and the design record (HTML + PDF).",
    )
    pl.add_argument("ct", help="CT file (.nrrd, .nii, .nii.gz, .mha) or DICOM folder")
    pl.add_argument("--plan", required=True, help="plan JSON (schema: docs/plan-schema.md)")
    pl.add_argument("--out", required=True, help="parent folder; a new <case>_<date-time> folder is made in it")
    pl.add_argument("--segmentation", help="existing bone segmentation (.seg.nrrd) to use instead of segmenting")
    pl.add_argument("--levels", help="vertebra labels as the level source: a .seg.nrrd with segments named like "
                    "'vertebrae_L1', a TotalSegmentator or VerSe labelmap on the CT grid (numbering recognised), or "
                    "TotalSegmentator's output folder "
                    "(one mask file per structure: vertebrae_T4.nii.gz, aorta.nii.gz, ...); the plan's level names "
                    "pick the ends and its points may be omitted")
    pl.add_argument("--coordinates", choices=["LPS", "RAS"], default=None,
                    help="coordinates of the mesh files (default: the plan's outputs.coordinate_system, else LPS)")
    pl.add_argument("--formats", nargs="+", choices=["stl", "3mf"], default=None,
                    help="mesh file formats (default: the plan's outputs.formats, else stl)")
    pl.add_argument("--no-report", action="store_true", help="skip the design record")
    pl.add_argument("--series-uid", help="DICOM folder with several series: the SeriesInstanceUID to load "
                    "(default: the CT series with the most slices; the summary, manifest and record name the one used)")
    pl.add_argument("--parts", nargs="+", choices=list(ALL_PARTS), default=None,
                    help="which parts to export (default: the plan's outputs.parts, else all)")
    pl.add_argument("--stub-length", type=float, default=None, metavar="MM",
                    help="docking guide: strut stub kept beyond the footplate, 2-60 mm (default: the plan's "
                    "outputs.guides.stub_length_mm, else 15)")
    pl.add_argument("--allow-non-ct", action="store_true", help=ALLOW_NON_CT_HELP)
    pl.add_argument("--keep-out", metavar="LABELS",
                    help="keep-out anatomy: a TotalSegmentator labelmap on the CT grid, a .seg.nrrd with segments "
                         "named like 'aorta', 'heart', 'esophagus', 'trachea', 'spinal_cord', or a folder of mask "
                         "files named so (default: the --levels labels' soft-tissue structures, else what the CT "
                         "shows from the exclude seeds)")
    pl.add_argument("--clearance", type=float, metavar="MM",
                    help="required clearance from every keep-out structure (plan: keep_out_clearance_mm, default 2)")
    pl.add_argument("--accept-risk", action="append", metavar="ID",
                    help="accept a safety finding by its id (e.g. clearance:aorta, screw:proximal left); repeatable; "
                         "written into the design record (plan: accepted_risks)")
    pl.add_argument("--accept-thick-slices", action="store_true",
                    help="plan on a CT whose slices are thicker than the largest oversized variant (the implant "
                    "length is then uncertain by more than the variants absorb); the manifest and design record "
                    "state it")
    pl.add_argument("--fe", action="store_true",
                    help="finite-element strength check of every size (axial load, von Mises stress, stiffness and "
                    "strength vs a 5.5 mm titanium rod); figures in manifest.json under 'fe' (about 20-40 s on 2 "
                    "cores)")
    pl.add_argument("--fe-load", type=float, default=FE_LOAD_N, metavar="N",
                    help=f"axial load of the finite-element check in newtons (default {FE_LOAD_N:g})")
    pl.set_defaults(func=cmd_plan)

    wp = sub.add_parser("write-demo-plan", help="Write the demo plan JSON (a starting point for your own plan).",
                        description="Writes the plan used by `demo` to PATH (refuses to overwrite).")
    wp.add_argument("path", help="where to write the plan JSON")
    wp.add_argument("--kind", choices=("strut", "mirror_defect"), default="strut",
                    help="strut (default: the L2 demo) or mirror_defect (a left hemisacrectomy on the sample CT)")
    wp.set_defaults(func=cmd_write_demo_plan)

    demo = sub.add_parser(
        "demo",
        help="Run the main job on the bundled sample CT.",
        description="Plans an implant on the bundled lumbar CT (L1 inferior to L3 superior endplate, as for an L2 "
        "corpectomy) and writes the full bundle into a new time-stamped folder under --out.",
    )
    demo.add_argument("--out", default="output", help="parent folder for the new demo folder (default: output)")
    demo.add_argument("--segment-only", action="store_true", help="only segment the spine and export the bone model")
    demo.add_argument("--no-fe", action="store_true", help="skip the finite-element check (about 20-40 s on 2 cores)")
    demo.set_defaults(func=lambda a: cmd_demo_segment(a) if a.segment_only else cmd_demo(a))
    return parser


def main(argv=None) -> int:
    """Run a subcommand. Every refusal and failure the user can act on ends with exit code 2 and a message naming
    the problem and the fix (no traceback); SIGINT/SIGTERM remove partial output and end with one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.environ.get("IMPLANT_PLANNER_VTK_WARNINGS"):
        # VTK's and MRML's own warnings ("bad X server connection" of the offscreen pictures, colour tables the
        # headless scene lacks) are noise to a CLI user: every problem the user can act on is a PlannerError.
        from vtkmodules.vtkCommonCore import vtkObject

        vtkObject.GlobalWarningDisplayOff()
    try:
        with interrupts_raise():
            return args.func(args)
    except PlannerError as exc:
        error = exc
    except OSError as exc:  # permissions, full disk, ... wherever they happen
        error = from_os_error(exc)
    except KeyboardInterrupt as exc:  # staging.Interrupted (SIGTERM) is one too
        print(f"error: interrupted ({exc or 'SIGINT'}): partial output removed, nothing written; run the command "
              "again to produce it.", file=sys.stderr)
        return 2
    print(f"error: {error.problem}", file=sys.stderr)
    if error.fix:
        print(f"  fix: {error.fix}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
