"""Export bundle: every part written, read back and verified; manifest checksums; lattice figures; no overwrite."""

import json
import os
import tempfile

import numpy as np
import pytest

from PatientImplantPlannerLib.core import mesh as M
from PatientImplantPlannerLib.core.errors import OutputExistsError
from PatientImplantPlannerLib.design.plan import Plan, design_implant
from PatientImplantPlannerLib.design.strut import ImplantParameters
from PatientImplantPlannerLib.export.bundle import export_bundle
from PatientImplantPlannerLib.export.manifest import sha256_of, verify_manifest
from PatientImplantPlannerLib.export.parameters import ExportParameters
from PatientImplantPlannerLib.export.threemf import read_3mf
from PatientImplantPlannerLib.phantoms.spine import make_spine_phantom


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
        lps = mesh_file_entry(path, check, "implant", "LPS")["bounding_box_mm"]
        ras = mesh_file_entry(path, check, "implant", "RAS")["bounding_box_mm"]
        raw = M.read_stl(path, "RAS")  # the file's own coordinates
    np.testing.assert_allclose(lps, raw.bounds(), atol=1e-5)
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
