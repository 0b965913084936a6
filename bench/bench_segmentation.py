"""Benchmark: our load -> segment -> surface -> STL path against Slicer's default path, on the same phantom.

Slicer's default path is what a user gets with the Segment Editor's threshold and "Export to files":
segmentation node threshold -> CreateClosedSurfaceRepresentation (default smoothing 0.5) -> STL through the model
storage node. Each path runs in its own subprocess so wall time and peak memory (max RSS) are its own.
Prints a table and the mean surface distance between the two results. Usage:

    .venv/bin/python bench/bench_segmentation.py [--size 512 512 400] [--spacing 0.7]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def make_phantom(path: str, size, spacing: float) -> dict:
    from PatientImplantPlannerLib.phantom import make_spine_phantom

    n_levels = max(3, int(size[2] * spacing / 34.0))
    names = ["T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"][:n_levels]
    ph = make_spine_phantom(spacing=spacing, levels=tuple(names), with_table=True, with_vessel=False)
    _write_padded(ph.array, ph.ijk_to_ras, size, path)
    mid = names[len(names) // 2]
    return {"seed": [float(x) for x in ph.body_point(mid)], "shape": list(size), "levels": names}


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


def run_ours(ct_path: str, out_dir: str, seed) -> dict:
    from PatientImplantPlannerLib.boneexport import export_bone_model
    from PatientImplantPlannerLib.bonesegmentation import BoneSegmentationParameters, segment_bone
    from PatientImplantPlannerLib.context import create_headless_context
    from PatientImplantPlannerLib.ctimport import load_ct

    ctx = create_headless_context()
    t = {}
    t0 = time.perf_counter()
    ct = load_ct(ctx, ct_path)
    t["load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = segment_bone(ctx, ct, BoneSegmentationParameters(seeds_ras=[tuple(seed)]))
    t["segment"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    export = export_bone_model(ctx, result.segmentation_node, result.segment_id, out_dir, reference_volume=ct)
    t["surface+stl"] = time.perf_counter() - t2
    t["total"] = time.perf_counter() - t0
    return {"seconds": t, "stl": export.stl_path, "triangles": export.check.n_triangles}


def run_slicer_default(ct_path: str, out_dir: str) -> dict:
    import numpy as np
    import slicer
    import vtk

    from PatientImplantPlannerLib.context import create_headless_context
    from PatientImplantPlannerLib.segments import set_segment_mask
    from PatientImplantPlannerLib.volumes import array

    ctx = create_headless_context()
    t = {}
    t0 = time.perf_counter()
    ct = ctx.volumes_logic.AddArchetypeVolume(ct_path, "CT", 0)
    t["load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    seg = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    sid = seg.GetSegmentation().AddEmptySegment("Bone")
    a = array(ct)
    set_segment_mask(seg, sid, (a >= 226) & (a <= 3071), ct)  # the Threshold effect
    t["segment"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    seg.CreateClosedSurfaceRepresentation()  # default: flying edges + smoothing factor 0.5
    folder = ctx.scene.GetSubjectHierarchyNode().CreateFolderItem(
        ctx.scene.GetSubjectHierarchyNode().GetSceneItemID(), "models")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(sid)
    ctx.segmentations_logic.ExportSegmentsToModels(seg, ids, folder)
    model = ctx.scene.GetFirstNodeByClass("vtkMRMLModelNode")
    storage = slicer.vtkMRMLModelStorageNode()
    ctx.scene.AddNode(storage)
    stl = os.path.join(out_dir, "slicer_default.stl")
    storage.SetFileName(stl)
    storage.SetUseCompression(1)  # binary STL (ASCII otherwise)
    storage.WriteData(model)
    t["surface+stl"] = time.perf_counter() - t2
    t["total"] = time.perf_counter() - t0
    return {"seconds": t, "stl": stl, "triangles": int(model.GetPolyData().GetNumberOfCells()),
            "mask_voxels": int(np.count_nonzero((a >= 226) & (a <= 3071)))}


def mean_surface_distance(ours_stl: str, theirs_stl: str, n_samples: int = 200000) -> dict:
    """Mean/95th percentile distance from points of our surface to Slicer's surface (one-sided: Slicer's default
    also keeps the CT table and does not fill the interior, so only our surface has a counterpart everywhere)."""
    import numpy as np
    import vtk

    from PatientImplantPlannerLib.mesh import read_stl, to_polydata

    ours = read_stl(ours_stl, "LPS")
    theirs = read_stl(theirs_stl, "LPS")
    rng = np.random.default_rng(0)
    pts = ours.vertices[rng.choice(len(ours.vertices), min(n_samples, len(ours.vertices)), replace=False)]
    loc = vtk.vtkStaticCellLocator()
    loc.SetDataSet(to_polydata(theirs))
    loc.BuildLocator()
    d = np.empty(len(pts))
    closest = [0.0, 0.0, 0.0]
    cell, sub, dist2 = vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
    for i, p in enumerate(pts):
        loc.FindClosestPoint(p, closest, cell, sub, dist2)
        d[i] = dist2.get() ** 0.5
    return {"mean_mm": float(d.mean()), "p95_mm": float(np.percentile(d, 95)), "samples": int(len(d))}


def _child(mode: str, args: list) -> None:
    """Run one path and print its JSON result plus peak memory."""
    if mode == "ours":
        out = run_ours(*args)
    else:
        out = run_slicer_default(*args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("RESULT " + json.dumps(out))


def _run_child(mode: str, *args) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, *map(str, args)], capture_output=True, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} path failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=3, type=int, default=[512, 512, 400], help="i j k voxels")
    parser.add_argument("--spacing", type=float, default=0.7)
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
        print(f"phantom {info['shape'][::-1]} voxels at {args.spacing} mm, levels {info['levels']} "
              f"({time.perf_counter() - t0:.1f} s to generate, not timed below)")
        os.makedirs(os.path.join(tmp, "ours"))
        os.makedirs(os.path.join(tmp, "slicer"))
        ours = _run_child("ours", ct_path, os.path.join(tmp, "ours"), json.dumps(info["seed"]))
        theirs = _run_child("slicer", ct_path, os.path.join(tmp, "slicer"))
        dist = mean_surface_distance(ours["stl"], theirs["stl"])
    print()
    header = ("path", "load s", "segment s", "surface+STL s", "total s", "peak MB", "triangles")
    widths = (22, 9, 11, 15, 9, 9, 11)
    print(f"{header[0]:<22}" + "".join(f"{h:>{w}}" for h, w in zip(header[1:], widths[1:])))
    for name, r in (("ours", ours), ("Slicer default", theirs)):
        s = r["seconds"]
        print(f"{name:<22}{s['load']:>9.2f}{s['segment']:>11.2f}{s['surface+stl']:>15.2f}{s['total']:>9.2f}"
              f"{r['peak_rss_mb']:>9.0f}{r['triangles']:>11d}")
    ratio = ours["seconds"]["total"] / theirs["seconds"]["total"]
    print()
    print(f"time ours / Slicer default: {ratio:.2f}  (target <= 0.50)")
    print(f"peak memory ours: {ours['peak_rss_mb']:.0f} MB  (target <= 1536 MB)")
    print(f"surface distance ours -> Slicer default: mean {dist['mean_mm']:.3f} mm, p95 {dist['p95_mm']:.3f} mm "
          f"(target mean <= 0.3 mm)")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
