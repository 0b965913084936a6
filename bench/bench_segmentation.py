"""Benchmark: our load -> segment -> surface -> STL path against Slicer's default path, on the same phantom.

Slicer's default path is what a user gets with the Segment Editor's threshold and "Export to files":
segmentation node threshold (226..3071 HU) -> CreateClosedSurfaceRepresentation (default smoothing factor 0.5) ->
model -> STL through the model storage node with UseCompression=1 (binary). Ours is ``load_ct`` -> ``segment_bone``
(one seed in every vertebral body, so both paths keep the whole spine) -> ``export_bone_model`` (flying edges,
verification, STL read back and checked, manifest).

Each path runs in its own subprocess, so wall time and peak memory (its VmHWM, the max RSS) are its own; the
parent samples the child's resident memory every few milliseconds and the child marks where each step starts, which
gives the time and peak memory of every step. Figures are printed, never asserted. The distance is one-sided
(ours -> Slicer's): Slicer's default keeps the CT table and leaves the cancellous interior hollow (inner cortex
surfaces), so only our surface has a counterpart everywhere. Usage:

    .venv/bin/python bench/bench_segmentation.py [--size 512 512 400] [--spacing 0.7] [--keep DIR]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

TIME_RATIO_TARGET = 0.5
PEAK_MB_TARGET = 1536.0
DISTANCE_TARGET_MM = 0.3
LEVELS = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
LEVEL_PITCH_MM = 34.0  # body + disc of a lower thoracic / lumbar level

# Progress messages of segment_bone and export_bone_model -> the step they start.
OUR_STEPS = {
    "Thresholding": "threshold",
    "Finding connected bone": "connected components",
    "Separating bone from touching structures (GrowCut)": "GrowCut",
    "Adding cancellous bone next to the shell": "fill: cancellous",
    "Filling enclosed cavities": "fill: 3D cavities",
    "Filling enclosed cavities per slice": "fill: per-slice cavities",
    "Removing small islands": "islands",
    "Smoothing": "smoothing",
    "Writing the Bone segment": "segment write",
    "Bone segmentation done": "(segment returned)",
    "Reading bone segment": "export: read segment mask",
    "Extracting surface": "surface (flying edges, smoothing, pieces)",
    "Checking the surface": "surface check (as the file holds it)",
    "Writing STL": "STL write",
    "Verifying written file": "STL read back (byte compare) + manifest",
}


# ---------------------------------------------------------------------------------------------- phantom


def make_phantom(path: str, size, spacing: float) -> dict:
    from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

    n_levels = min(len(LEVELS), max(3, int(size[2] * spacing / LEVEL_PITCH_MM)))
    names = LEVELS[len(LEVELS) - n_levels:]
    ph = make_spine_phantom(spacing=spacing, levels=names, with_table=True, with_vessel=False)
    _write_padded(ph.array, ph.ijk_to_ras, size, path)
    return {
        "seeds": [[float(x) for x in ph.body_point(n)] for n in names],
        "shape": list(size),
        "levels": list(names),
        "phantom_shape_kji": list(ph.array.shape),
        "bone_mm3": float(ph.bone_mask.sum() * abs(ph.ijk_to_ras[0, 0] * ph.ijk_to_ras[1, 1] * ph.ijk_to_ras[2, 2])),
    }


def _write_padded(array, ijk_to_ras, size, path: str) -> None:
    """Centre the phantom in a grid of exactly ``size`` (i, j, k) voxels, air around it (crop if larger)."""
    import numpy as np
    import SimpleITK as sitk

    target = (size[2], size[1], size[0])
    out = np.full(target, -1000, dtype=np.int16)
    src, dst = [], []
    for n, t in zip(array.shape, target):
        if n <= t:
            off = (t - n) // 2
            src.append(slice(0, n))
            dst.append(slice(off, off + n))
        else:
            off = (n - t) // 2
            src.append(slice(off, off + t))
            dst.append(slice(0, t))
    out[tuple(dst)] = array[tuple(src)]
    shift_kji = np.array([d.start - s.start for s, d in zip(src, dst)])
    m = np.array(ijk_to_ras, dtype=float)
    origin_ras = m[:3, 3] - m[:3, :3] @ shift_kji[::-1]
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction_lps = np.diag([-1.0, -1.0, 1.0]) @ (m[:3, :3] / spacing)
    image = sitk.GetImageFromArray(out)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ origin_ras).tolist())
    image.SetDirection(direction_lps.ravel().tolist())
    sitk.WriteImage(image, path, True)


# ------------------------------------------------------------------------------------------- the two paths


class _Marks:
    """Step start times (CLOCK_MONOTONIC, comparable with the parent's samples) of the child process."""

    def __init__(self):
        self.marks = []

    def mark(self, name: str) -> None:
        self.marks.append((time.monotonic(), name))

    def progress(self, _fraction: float, message: str) -> None:
        name = OUR_STEPS.get(message)
        if name and (not self.marks or self.marks[-1][1] != name):
            self.mark(name)


def run_ours(ct_path: str, out_dir: str, seeds) -> dict:
    from PatientImplantPlannerLib.export.boneexport import export_bone_model
    from PatientImplantPlannerLib.imaging.bonesegmentation import BoneSegmentationParameters
    from PatientImplantPlannerLib.scene.bonesegment import segment_bone
    from PatientImplantPlannerLib.scene.context import create_headless_context
    from PatientImplantPlannerLib.scene.ctload import load_ct

    ctx = create_headless_context()
    marks = _Marks()
    t = {}
    t0 = time.perf_counter()
    marks.mark("load")
    ct = load_ct(ctx, ct_path)
    t["load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    params = BoneSegmentationParameters(seeds_ras=[tuple(s) for s in seeds])
    result = segment_bone(ctx, ct, params, progress=marks.progress)
    t["segment"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    export = export_bone_model(ctx, result.segmentation_node, result.segment_id, out_dir, reference_volume=ct,
                               progress=marks.progress, mask=result.mask)
    t["surface+stl"] = time.perf_counter() - t2
    t["total"] = time.perf_counter() - t0
    marks.mark("end")
    return {"seconds": t, "stl": export.stl_path, "triangles": export.check.n_triangles, "marks": marks.marks,
            "segment_timings": result.timings_s, "volume_mm3": result.volume_mm3, "warnings": result.warnings}


def run_slicer_default(ct_path: str, out_dir: str) -> dict:
    import numpy as np
    import slicer
    import vtk

    from PatientImplantPlannerLib.scene.context import create_headless_context
    from PatientImplantPlannerLib.scene.segments import set_segment_mask
    from PatientImplantPlannerLib.scene.volumes import array

    ctx = create_headless_context()
    marks = _Marks()
    t = {}
    t0 = time.perf_counter()
    marks.mark("load")
    ct = ctx.volumes_logic.AddArchetypeVolume(ct_path, "CT", 0)
    t["load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    marks.mark("threshold")
    seg = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    sid = seg.GetSegmentation().AddEmptySegment("Bone")
    a = array(ct)
    mask = (a >= 226) & (a <= 3071)  # the Threshold effect's default bone range
    marks.mark("segment write")
    set_segment_mask(seg, sid, mask, ct)
    t["segment"] = time.perf_counter() - t1
    mask_voxels = int(np.count_nonzero(mask))
    del mask
    t2 = time.perf_counter()
    marks.mark("closed surface (flying edges + smoothing 0.5)")
    seg.CreateClosedSurfaceRepresentation()
    marks.mark("export to model node")
    folder = ctx.scene.GetSubjectHierarchyNode().CreateFolderItem(
        ctx.scene.GetSubjectHierarchyNode().GetSceneItemID(), "models")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(sid)
    ctx.segmentations_logic.ExportSegmentsToModels(seg, ids, folder)
    model = ctx.scene.GetFirstNodeByClass("vtkMRMLModelNode")
    marks.mark("STL write")
    storage = slicer.vtkMRMLModelStorageNode()
    ctx.scene.AddNode(storage)
    stl = os.path.join(out_dir, "slicer_default.stl")
    storage.SetFileName(stl)
    storage.SetUseCompression(1)  # binary STL (ASCII otherwise)
    if not storage.WriteData(model):
        raise RuntimeError(f"Slicer's model storage node could not write {stl}")
    t["surface+stl"] = time.perf_counter() - t2
    t["total"] = time.perf_counter() - t0
    marks.mark("end")
    return {"seconds": t, "stl": stl, "triangles": int(model.GetPolyData().GetNumberOfCells()), "marks": marks.marks,
            "mask_voxels": mask_voxels}


# --------------------------------------------------------------------------------------------- measuring


def surface_distance(from_stl: str, to_stl: str) -> dict:
    """Distance from every vertex of one surface to the nearest point of the other (point-to-triangle, VTK)."""
    import numpy as np
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    from PatientImplantPlannerLib.core.mesh import read_stl, to_polydata

    source, target = read_stl(from_stl, "LPS"), read_stl(to_stl, "LPS")
    filt = vtk.vtkDistancePolyDataFilter()
    filt.SetInputData(0, to_polydata(source))
    filt.SetInputData(1, to_polydata(target))
    filt.SignedDistanceOff()
    filt.ComputeSecondDistanceOff()
    filt.Update()
    d = np.abs(vtk_to_numpy(filt.GetOutput().GetPointData().GetScalars()))
    return {"mean_mm": float(d.mean()), "median_mm": float(np.median(d)), "p95_mm": float(np.percentile(d, 95)),
            "max_mm": float(d.max()), "points": int(len(d))}


def _rss_mb(pid: int):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _warm_imports() -> None:
    """Import what either path imports lazily, before any timer starts: in Slicer these are loaded already."""
    import scipy.ndimage  # noqa: F401
    import scipy.spatial  # noqa: F401
    import SimpleITK  # noqa: F401
    import slicer  # noqa: F401
    import vtk  # noqa: F401

    import PatientImplantPlannerLib.export.boneexport  # noqa: F401
    import PatientImplantPlannerLib.export.manifest  # noqa: F401
    import PatientImplantPlannerLib.imaging.bonesegmentation  # noqa: F401
    import PatientImplantPlannerLib.imaging.ctimport  # noqa: F401
    import PatientImplantPlannerLib.scene.segments  # noqa: F401


def _child(mode: str, args: list) -> None:
    """Run one path and print its JSON result plus peak memory."""
    _warm_imports()
    out = run_ours(*args) if mode == "ours" else run_slicer_default(*args)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would include the parent's size at fork.
    with open("/proc/self/status") as f:
        out["peak_rss_mb"] = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024.0
    print("RESULT " + json.dumps(out))


def _run_child(mode: str, *args, sample_s: float = 0.005) -> dict:
    """Run one path in a subprocess, sampling its resident memory; returns the child's result plus the samples."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, *map(str, args)]
    samples = []
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            if rss is not None:
                samples.append((time.monotonic(), rss))
            time.sleep(sample_s)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            result["steps"] = _steps(result["marks"], samples)
            return result
    raise RuntimeError(f"{mode} path failed (exit {proc.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")


def _steps(marks, samples) -> list:
    """(name, seconds, peak RSS MB within the step) for consecutive marks."""
    out = []
    for (t0, name), (t1, _) in zip(marks[:-1], marks[1:]):
        inside = [rss for t, rss in samples if t0 <= t <= t1]
        out.append((name, t1 - t0, max(inside) if inside else float("nan")))
    return out


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=3, type=int, default=[512, 512, 400], help="i j k voxels")
    parser.add_argument("--spacing", type=float, default=0.7)
    parser.add_argument("--keep", help="copy the CT and both STL files into this folder")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *rest = args.child
        if mode == "ours":
            rest = [rest[0], rest[1], json.loads(rest[2])]
        _child(mode, rest)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ct_path = os.path.join(tmp, "phantom.nrrd")
        t0 = time.perf_counter()
        info = make_phantom(ct_path, args.size, args.spacing)
        levels = info["levels"]
        print(f"CT {info['shape'][0]} x {info['shape'][1]} x {info['shape'][2]} voxels (i j k) at {args.spacing} mm, "
              f"{os.path.getsize(ct_path) / 1e6:.0f} MB gzip NRRD; spine phantom {levels[0]}-{levels[-1]} "
              f"({len(info['levels'])} vertebrae) with a CT table ({time.perf_counter() - t0:.1f} s to generate, "
              "not timed)")
        print(f"ours: one seed in each of the {len(info['seeds'])} vertebral bodies; Slicer default: threshold "
              "226..3071 HU of the whole CT. Each path in its own subprocess, run once; shared 2-core machine.")
        os.makedirs(os.path.join(tmp, "ours"))
        os.makedirs(os.path.join(tmp, "slicer"))
        ours = _run_child("ours", ct_path, os.path.join(tmp, "ours"), json.dumps(info["seeds"]))
        theirs = _run_child("slicer", ct_path, os.path.join(tmp, "slicer"))
        dist = surface_distance(ours["stl"], theirs["stl"])
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for p in (ct_path, ours["stl"], theirs["stl"]):
                shutil.copy(p, os.path.join(args.keep, os.path.basename(p)))
    print()
    header = ("path", "load s", "segment s", "surface+STL s", "total s", "peak MB", "triangles")
    widths = (16, 9, 11, 15, 9, 9, 11)
    print(f"{header[0]:<16}" + "".join(f"{h:>{w}}" for h, w in zip(header[1:], widths[1:])))
    for name, r in (("ours", ours), ("Slicer default", theirs)):
        s = r["seconds"]
        print(f"{name:<16}{s['load']:>9.2f}{s['segment']:>11.2f}{s['surface+stl']:>15.2f}{s['total']:>9.2f}"
              f"{r['peak_rss_mb']:>9.0f}{r['triangles']:>11d}")
    for name, r in (("ours", ours), ("Slicer default", theirs)):
        print()
        print(f"{name}: per step{'s':>35}{'peak RSS MB':>13}")
        for step, seconds, peak in r["steps"]:
            print(f"  {step:<40}{seconds:>6.2f}{peak:>13.0f}")
    print()
    print("segment_bone's own timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in ours["segment_timings"].items()))
    print(f"bone volume: ours {ours['volume_mm3'] / 1e3:.0f} cm3, phantom truth {info['bone_mm3'] / 1e3:.0f} cm3; "
          f"Slicer's threshold mask {theirs['mask_voxels'] * args.spacing ** 3 / 1e3:.0f} cm3 (hollow bodies + table)")
    ratio = ours["seconds"]["total"] / theirs["seconds"]["total"]
    print()

    def verdict(ok):
        return "met" if ok else "MISSED"

    print(f"time ours / Slicer default: {ratio:.2f}  (target <= {TIME_RATIO_TARGET:.2f}): {verdict(ratio <= 0.5)}")
    print(f"peak memory ours: {ours['peak_rss_mb']:.0f} MB  (target <= {PEAK_MB_TARGET:.0f} MB): "
          f"{verdict(ours['peak_rss_mb'] <= PEAK_MB_TARGET)}")
    print(f"surface distance ours -> Slicer default (one-sided: Slicer's default also keeps the CT table and "
          f"inner cortex surfaces of the unfilled bodies, so only our surface has a counterpart everywhere): "
          f"mean {dist['mean_mm']:.3f} mm, median {dist['median_mm']:.3f}, p95 {dist['p95_mm']:.3f}, "
          f"max {dist['max_mm']:.2f} mm over {dist['points']} vertices (target mean <= {DISTANCE_TARGET_MM} mm): "
          f"{verdict(dist['mean_mm'] <= DISTANCE_TARGET_MM)}")


if __name__ == "__main__":
    main()
