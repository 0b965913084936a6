"""Export bundle: every part written, read back and verified; manifest checksums; lattice figures; no overwrite."""

import json
import os
import tempfile

import numpy as np
import pytest
from scipy.spatial import cKDTree

from PatientImplantPlannerLib.core import mesh as M
from PatientImplantPlannerLib.core.errors import OutputExistsError
from PatientImplantPlannerLib.design.plan import Plan, design_implant
from PatientImplantPlannerLib.design.strut import ImplantParameters
from PatientImplantPlannerLib.export.bundle import export_bundle
from PatientImplantPlannerLib.export.manifest import sha256_of, verify_manifest
from PatientImplantPlannerLib.export.parameters import ExportParameters
from PatientImplantPlannerLib.export.threemf import read_3mf
from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom

# Whole-export runs on phantoms (minutes together): the CI's second step, keeping the fast step near 5 min.
pytestmark = pytest.mark.slow


def folded_edges(mesh) -> tuple:
    """(count, overlapping area mm2) of the edges whose two triangles fold back onto each other (normals within
    1 degree of opposite): coplanar overlapping faces, which check_mesh's edge counts do not see, and a slicer
    may print as a sliver or a hole. Two faces on the same three corners count too. Planted folds are found
    (test below)."""
    f, v = mesh.faces, mesh.vertices
    normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    length = np.linalg.norm(normal, axis=1)
    normal /= np.maximum(length, 1e-300)[:, None]
    n = np.int64(len(v))
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]]).astype(np.int64)
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]]).astype(np.int64)
    face = np.tile(np.arange(len(f)), 3)
    fwd, rev = np.argsort(a * n + b), np.argsort(b * n + a)  # a closed manifold: the i-th of each are twins
    assert np.array_equal((a * n + b)[fwd], (b * n + a)[rev])
    f1, f2 = face[fwd], face[rev]
    # Slivers (under 1 um high: from the booleans' cuts, a few dozen in a lattice implant) have no direction to
    # fold in: 0.4 um-wide needles lying along a neighbour are not an overlap a printer could see.
    longest = np.max(np.linalg.norm(v[f] - v[np.roll(f, 1, axis=1)], axis=2), axis=1)
    solid = length / np.maximum(longest, 1e-300) >= 1e-3
    real = solid[f1] & solid[f2]
    fold = np.flatnonzero(real)[np.einsum("ij,ij->i", normal[f1[real]], normal[f2[real]]) < -np.cos(np.radians(1.0))]
    same = np.sort(f, axis=1)
    duplicates = len(same) - len(np.unique(same, axis=0))
    overlap = np.minimum(length[f1[fold]], length[f2[fold]]).sum() / 4.0  # each fold twice; at most the smaller face
    return int(len(fold) // 2) + duplicates, float(overlap)


@pytest.fixture(scope="module")
def designed():
    ph = make_spine_phantom(spacing=0.7, levels=("L1", "L2", "L3"))
    plan = Plan(
        case_id="BUNDLE-1",
        proximal_level="L1",
        distal_level="L3",
        proximal_point_ras=list(ph.body_point("L1")),
        distal_point_ras=list(ph.body_point("L3")),
        implant=ImplantParameters(profile="curved_plate", width_mm=10.0, depth_mm=5.0),
        placement="anterior",
        variants_mm=[2.0],  # one variant keeps the test short; the bench runs the default three
    )
    return ph, design_implant(plan, ph.array, ph.ijk_to_ras, ph.bone_mask)


@pytest.fixture(scope="module")
def bundle(designed, tmp_path_factory):
    ph, result = designed
    out = tmp_path_factory.mktemp("export")
    return export_bundle(result, ph.bone_mask, ph.ijk_to_ras, out_parent=str(out), ct_array=ph.array)


def test_the_manifest_says_which_coordinates_its_measured_points_are_in(bundle):
    """The meshes are LPS, the measured points (screw entries and tips) RAS as Slicer shows them: the manifest says
    so (a new user read the screw entries as LPS, like the meshes). Measured: every screw entry (on the axis of its
    hole in the footplate) lies within the hole's radius plus 1 mm of the exported nominal implant's surface when read
    as RAS (measured 1.9 mm)."""
    manifest = json.load(open(bundle.manifest_path, encoding="utf-8"))
    assert manifest["coordinate_system"] == "LPS" and manifest["measurements_coordinate_system"] == "RAS"
    nominal = next(e for e in manifest["files"] if e["role"] == "implant" and e["file"].endswith(".stl"))
    mesh = M.read_stl(os.path.join(bundle.folder, nominal["file"]), nominal["coordinate_system"])  # -> RAS
    tri = mesh.vertices[mesh.faces]
    tree = cKDTree(np.vstack([mesh.vertices, tri.mean(axis=1), 0.5 * (tri + np.roll(tri, 1, axis=1)).reshape(-1, 3)]))
    screws = manifest["measurements"]["screws"]
    assert screws
    for s in screws:
        entry = np.asarray(s["trajectory"]["entry"], float)
        assert tree.query(entry)[0] <= s["screw_type"]["diameter_mm"] / 2 + 1.0


def test_folded_edges_finds_a_fold():
    """A square pyramid whose apex is pushed down through its base: two of its faces fold onto the base."""
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1.0]])
    f = np.array([[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    assert folded_edges(M.TriMesh(v, f)) == (0, 0.0)
    flat = v.copy()
    flat[4] = [0.75, 0.25, 0.0]  # the apex in the base plane, inside the base: faces fold onto it
    count, area = folded_edges(M.TriMesh(flat, f))
    assert count > 0 and area > 0.1


def test_every_file_is_listed_checked_and_matches_its_checksum(bundle):
    manifest = json.load(open(bundle.manifest_path))
    on_disk = sorted(f for f in os.listdir(bundle.folder) if f != "manifest.json")
    assert sorted(e["file"] for e in manifest["files"]) == on_disk
    assert verify_manifest(bundle.manifest_path) == []
    meshes = [e for e in manifest["files"] if e["file"].endswith(".stl")]
    for entry in meshes:
        path = os.path.join(bundle.folder, entry["file"])
        check = M.check_mesh(M.read_stl(path, entry["coordinate_system"]))
        assert check.ok, (entry["file"], check.problems)
        assert check.n_degenerate == 0, entry["file"]  # no zero-area triangles for a slicer to drop
        if "implant" in entry["role"] or "guide" in entry["role"]:
            assert check.n_components == 1, entry["file"]  # one printed body, no loose lattice bits
            # No coplanar overlaps: none in a guide; in a lattice implant a few needles left by the booleans'
            # cuts (1-2 um wide; measured 7-8 on each demo implant, 0.0009 mm2 in all) fold onto a neighbour after
            # the file's float32 rounding: bounded here by their area, far below anything a printer resolves.
            count, area = folded_edges(M.read_stl(path, entry["coordinate_system"]))
            assert (count == 0) if "guide" in entry["role"] else (area < 0.005), (entry["file"], count, area)
        assert entry["checks"]["ok"] and entry["units"] == "mm" and entry["coordinate_system"] == "LPS"
        assert check.volume_mm3 == pytest.approx(entry["volume_mm3"], rel=1e-4)
        assert entry["sha256"] == sha256_of(path)
    assert manifest["parameters"]["case_id"] == "BUNDLE-1"
    assert manifest["software"]["name"] == "PatientImplantPlanner"


def test_bundle_has_every_part_for_every_size(bundle):
    roles = [(e["role"], e.get("size_variant"), e.get("end")) for e in json.load(open(bundle.manifest_path))["files"]]
    assert ("implant", "nominal", "") in roles
    assert ("implant oversized variant", "+2 mm", "") in roles
    docking = [r for r in roles if r[0] == "docking guide"]
    assert sorted((s, e) for _, s, e in docking) == sorted(
        (s, e) for s in ("nominal", "+2 mm") for e in ("proximal", "distal"))
    assert {e for r, _, e in roles if r == "drill guide"} == {"proximal", "distal"}
    assert any(r == "check model" for r, _, _ in roles) and any(r == "bone model" for r, _, _ in roles)
    assert os.path.exists(bundle.report_html) and open(bundle.report_pdf, "rb").read(4) == b"%PDF"
    materials = {e["role"]: e["material"] for e in json.load(open(bundle.manifest_path))["files"] if "material" in e}
    assert materials["implant"] == "Ti6Al4V ELI" and materials["docking guide"] == "PA12"


def test_lattice_figures_are_measured_and_on_target(bundle):
    assert {row["end"] for row in bundle.lattice} == {"proximal", "distal"}
    for row in bundle.lattice:
        assert abs(row["measured_porosity"] - 0.70) <= 0.03
        assert row["measured_pore_um"] == pytest.approx(550.0, rel=0.10)


def test_implant_with_lattice_keeps_its_docking_geometry(designed, bundle):
    _, result = designed
    implant = next(p for p in bundle.parts if p.role == "implant")
    plain = result.nominal.mesh
    assert implant.mesh.volume() < plain.volume()  # pores removed from the layer
    # The contact faces still bound the implant: no lattice beyond the endplate planes.
    for ep in (result.proximal_endplate, result.distal_endplate):
        d_lat = (implant.mesh.vertices - ep.centre) @ ep.normal
        d_plain = (plain.vertices - ep.centre) @ ep.normal
        assert d_lat.min() == pytest.approx(d_plain.min(), abs=0.01)


def test_export_into_a_non_empty_folder_is_refused_and_leaves_it_unchanged(designed, tmp_path):
    ph, result = designed
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "notes.txt").write_text("surgeon's notes")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(OutputExistsError, match="not empty"):
        export_bundle(result, ph.bone_mask, ph.ijk_to_ras, folder=str(folder),
                      params=ExportParameters(parts=("implant",)))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_ras_and_3mf_outputs(designed, tmp_path):
    ph, result = designed
    params = ExportParameters(coordinate_system="RAS", formats=("stl", "3mf"), parts=("implant", "drill_guides"))
    b = export_bundle(result, ph.bone_mask, ph.ijk_to_ras, folder=str(tmp_path / "ras"), params=params)
    implant_3mf = next(e for e in b.files if e["file"].endswith(".3mf") and e["role"] == "implant")
    mesh3mf = read_3mf(os.path.join(b.folder, implant_3mf["file"]), "RAS")
    assert M.check_mesh(mesh3mf).ok
    np.testing.assert_allclose(mesh3mf.bounds(), result.nominal.mesh.bounds(), atol=1e-3)
    stl = next(e for e in b.files if e["file"].endswith(".stl") and e["role"] == "implant")
    raw = M.read_stl(os.path.join(b.folder, stl["file"]), "RAS")  # RAS: no flip on reading
    np.testing.assert_allclose(raw.bounds(), result.nominal.mesh.bounds(), atol=1e-3)
    np.testing.assert_allclose(stl["bounding_box_mm"], raw.bounds(), atol=1e-3)


def test_manifest_bounding_box_is_in_the_files_coordinates():
    """An LPS file's manifest entry gives its bounding box as the file holds it (x and y negated from RAS), not the
    RAS box of the mesh read back (a new-user trial found the RAS box labelled LPS)."""
    from PatientImplantPlannerLib.export.manifest import mesh_file_entry

    mesh = M.TriMesh(np.array([[1.0, 2.0, 3.0], [4.0, 2.0, 3.0], [1.0, 6.0, 3.0], [1.0, 2.0, 8.0]]),
                     np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]))
    check = M.check_mesh(mesh)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.stl")
        M.write_stl(mesh, path, "LPS")
        lps_entry = mesh_file_entry(path, check, "implant", "LPS")
        lps = lps_entry["bounding_box_mm"]
        ras = mesh_file_entry(path, check, "implant", "RAS")["bounding_box_mm"]
        raw = M.read_stl(path, "RAS")  # the file's own coordinates
    np.testing.assert_allclose(lps, raw.bounds(), atol=1e-5)
    np.testing.assert_allclose(lps_entry["checks"]["bounds_mm"], lps)  # the checks too (the trial found RAS there)
    np.testing.assert_allclose(lps, [[-4.0, -6.0, 3.0], [-1.0, -2.0, 8.0]])
    np.testing.assert_allclose(ras, [[1.0, 2.0, 3.0], [4.0, 6.0, 8.0]])


def test_a_failed_export_leaves_no_half_written_folder(designed, tmp_path, monkeypatch):
    import PatientImplantPlannerLib.export.bundle as bundle_module

    ph, result = designed

    def broken_report(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(bundle_module, "_write_report", broken_report)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        export_bundle(result, ph.bone_mask, ph.ijk_to_ras, out_parent=str(tmp_path),
                      params=ExportParameters(parts=("implant", "report")))
    assert os.listdir(tmp_path) == []  # neither the bundle nor its temporary folder
    ok = export_bundle(result, ph.bone_mask, ph.ijk_to_ras, out_parent=str(tmp_path),
                       params=ExportParameters(parts=("implant",)))
    assert os.listdir(tmp_path) == [os.path.basename(ok.folder)]
    assert verify_manifest(ok.manifest_path) == []


def test_the_records_3d_picture_keeps_the_spine_and_leaves_the_ribs_out():
    """A trial's chest records showed ribs, sternum and contrast vessels in front of the implant. The picture's bone
    is the spine within the implant's reach of the axis plus 20 mm: bone 30 mm from the axis stays, 90 mm goes."""
    from types import SimpleNamespace

    from PatientImplantPlannerLib.export.bundle import _near_axis

    m = np.eye(4)  # 1 mm voxels, RAS = (i, j, k)
    mask = np.zeros((40, 120, 120), bool)
    mask[5:35, 55:65, 55:65] = True  # a column of bodies round the axis x = y = 60
    mask[5:35, 55:65, 88:92] = True  # a transverse process ~30 mm out
    mask[5:35, 10:14, 55:65] = True  # a "rib" 46-50 mm from the axis
    implant = M.TriMesh(np.array([[60.0, 80.0, 5.0], [61.0, 80.0, 35.0], [60.0, 81.0, 20.0], [62, 82, 20]]),
                        np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]]))  # 20-22 mm from the axis
    result = SimpleNamespace(axis_points=np.array([[60.0, 60.0, z] for z in range(0, 41, 5)]),
                             nominal=SimpleNamespace(mesh=implant))
    kept = _near_axis(mask, m, result)
    assert kept[5:35, 55:65, 55:65].all() and kept[5:35, 55:65, 88:92].all()  # body and process: within 42 mm
    assert not kept[5:35, 10:14, 55:65].any()  # 46-50 mm from the axis: beyond the reach
    assert kept.sum() < mask.sum() and not (kept & ~mask).any()
