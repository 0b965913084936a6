"""CT import: volume files and DICOM folders load with the geometry and voxels SimpleITK reads, bad input is
refused with a specific error and leaves the scene untouched."""

import os
import random
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DICOM_DIR, SAMPLE_CT

from PatientImplantPlannerLib.core.errors import InputFileError, NotCTError, PlanError
from PatientImplantPlannerLib.imaging.ctimport import (
    CTInfo,
    DicomSeriesInfo,
    choose_series,
    describe_ct,
    list_dicom_series,
    validate_ct,
)
from PatientImplantPlannerLib.scene.context import create_headless_context
from PatientImplantPlannerLib.scene.ctload import load_ct
from PatientImplantPlannerLib.scene.volumes import array, ijk_to_ras_matrix

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
NEW_UID = "1.2.826.0.1.3680043.2.1125.99.1"


def sitk_ijk_to_ras(image) -> np.ndarray:
    d = np.array(image.GetDirection()).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ d @ np.diag(image.GetSpacing())
    m[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return m


def assert_same_as_sitk(node, image, atol=1e-4):
    np.testing.assert_allclose(ijk_to_ras_matrix(node), sitk_ijk_to_ras(image), atol=atol)
    voxels = array(node)
    expected = sitk.GetArrayFromImage(image)  # also [k, j, i]
    assert voxels.shape == expected.shape
    np.testing.assert_array_equal(voxels, expected)


def node_ids(scene):
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def sorted_dicom_image():
    return sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(DICOM_DIR))


@pytest.fixture(scope="module")
def sample_small():
    """A 40x40x30 crop of the sample CT around the spine (keeps round trips quick, keeps real HU)."""
    image = sitk.ReadImage(SAMPLE_CT)
    return image[40:80, 30:70, 40:70]


# ------------------------------------------------------------------------------------------------ volume files


def test_sample_nifti_loads_with_sitk_geometry_and_voxels(ctx):
    steps = []
    node = load_ct(ctx, SAMPLE_CT, progress=lambda f, m: steps.append((f, m)))
    assert node.IsA("vtkMRMLScalarVolumeNode")
    assert node.GetName() == "example_ct"
    assert_same_as_sitk(node, sitk.ReadImage(SAMPLE_CT))
    info = describe_ct(node)
    assert isinstance(info, CTInfo)
    assert info.dimensions == (122, 101, 112)
    assert info.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert info.slice_thickness == pytest.approx(3.0)
    assert info.path == os.path.abspath(SAMPLE_CT)
    assert info.hu_range == (-1207.0, 3382.0)
    assert info.series_uid == "" and info.series_note == ""
    # Origin is the RAS centre of voxel (0, 0, 0): LPS origin with x and y negated.
    o = sitk.ReadImage(SAMPLE_CT).GetOrigin()
    assert info.origin_ras == pytest.approx((-o[0], -o[1], o[2]), abs=1e-4)
    fractions = [f for f, _ in steps]
    assert len(steps) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_int32_and_float32_nifti_load_with_same_geometry(ctx, tmp_path):
    source = sitk.ReadImage(SAMPLE_CT)
    reference = load_ct(ctx, SAMPLE_CT)
    for pixel, name in ((sitk.sitkInt32, "ct_int32.nii.gz"), (sitk.sitkFloat32, "ct_float32.nii")):
        path = str(tmp_path / name)
        sitk.WriteImage(sitk.Cast(source, pixel), path)
        node = load_ct(ctx, path)
        assert array(node).dtype == (np.int32 if pixel == sitk.sitkInt32 else np.float32)
        np.testing.assert_allclose(ijk_to_ras_matrix(node), ijk_to_ras_matrix(reference), atol=1e-4)
        np.testing.assert_array_equal(array(node), array(reference))


@pytest.mark.parametrize("name", ["ct.mha", "ct.mhd", "ct.nrrd", "ct.nhdr"])
def test_metaimage_and_nrrd_round_trip(ctx, tmp_path, sample_small, name):
    path = str(tmp_path / name)
    sitk.WriteImage(sample_small, path)
    node = load_ct(ctx, path, name="roundtrip")
    assert node.GetName() == "roundtrip"
    assert_same_as_sitk(node, sample_small)
    assert describe_ct(node).dimensions == (40, 40, 30)


# ------------------------------------------------------------------------------------------------------- DICOM


def test_dicom_folder_matches_sorted_series_reader(ctx):
    files_on_disk = sorted(os.path.join(DICOM_DIR, f) for f in os.listdir(DICOM_DIR))
    series = list_dicom_series(DICOM_DIR)
    assert len(series) == 1 and isinstance(series[0], DicomSeriesInfo)
    assert series[0].n_files == 20 and series[0].modality == "CT"
    assert series[0].files != files_on_disk  # the point of sorting: disk order is not slice order
    node = load_ct(ctx, DICOM_DIR)
    assert_same_as_sitk(node, sorted_dicom_image())
    info = describe_ct(node)
    assert info.dimensions == (512, 512, 20)
    assert info.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert info.slice_thickness == pytest.approx(3.0)  # nominal thickness from the header, not the 2 mm spacing
    assert info.path == os.path.abspath(DICOM_DIR)
    assert info.series_note == "took (no series UID) (CT, 20 slices, 'CT Body 3.0'): the only image series"


def test_dicom_with_shuffled_names_gives_same_volume(ctx, tmp_path):
    rng = random.Random(7)
    files = sorted(os.listdir(DICOM_DIR))
    names = [f"IM{n:04d}" for n in rng.sample(range(1000), len(files))]
    for f, n in zip(files, names):
        shutil.copy(os.path.join(DICOM_DIR, f), tmp_path / n)
    node = load_ct(ctx, str(tmp_path))
    assert_same_as_sitk(node, sorted_dicom_image())
    # Picking one file of the series loads the whole series.
    single = load_ct(ctx, str(tmp_path / names[5]))
    np.testing.assert_array_equal(array(single), array(node))


def write_copy_series(src_files, folder, uid, modality="CT", description="copy"):
    """Write the slices again as a new series (new SeriesInstanceUID) with SimpleITK."""
    for i, f in enumerate(src_files):
        reader = sitk.ImageFileReader()
        reader.SetFileName(f)
        image = reader.Execute()
        copy = sitk.GetImageFromArray(sitk.GetArrayFromImage(image))
        copy.SetSpacing(image.GetSpacing())
        copy.SetOrigin(image.GetOrigin())
        for key in ("0020|0032", "0020|0037", "0020|0013", "0018|0050", "0028|0030"):
            copy.SetMetaData(key, reader.GetMetaData(key))
        copy.SetMetaData("0008|0060", modality)
        copy.SetMetaData("0020|000e", uid)
        copy.SetMetaData("0008|103e", description)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(os.path.join(folder, f"{description}{i:03d}.dcm"))
        writer.Execute(copy)


def test_two_series_in_one_folder(ctx, tmp_path):
    sorted_files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(DICOM_DIR)
    for f in sorted_files:
        shutil.copy(f, tmp_path / os.path.basename(f))
    write_copy_series(sorted_files[3:9], str(tmp_path), NEW_UID)
    series = list_dicom_series(str(tmp_path))
    assert [s.n_files for s in series] == [20, 6]

    node = load_ct(ctx, str(tmp_path))
    assert_same_as_sitk(node, sorted_dicom_image())
    note = describe_ct(node).series_note
    assert "2 series" in note and "20 slices" in note and "most slices" in note
    assert node.GetAttribute("PatientImplantPlanner.SeriesNote") == note

    picked = load_ct(ctx, str(tmp_path), series_uid=NEW_UID)
    assert describe_ct(picked).series_uid == NEW_UID
    assert "selected by series UID" in describe_ct(picked).series_note
    assert_same_as_sitk(picked, sitk.ReadImage(list(sorted_files[3:9])))
    # Picking one file of the small series loads that series, not the largest one.
    by_file = load_ct(ctx, str(tmp_path / "copy002.dcm"))
    assert describe_ct(by_file).dimensions == (512, 512, 6)

    before = node_ids(ctx.scene)
    with pytest.raises(InputFileError) as err:
        load_ct(ctx, str(tmp_path), series_uid="1.2.3.4")
    assert "1.2.3.4" in str(err.value) and NEW_UID in str(err.value) and "20 files" in str(err.value)
    assert node_ids(ctx.scene) == before


def test_non_ct_modality_series_needs_allow_non_ct(ctx, tmp_path):
    sorted_files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(DICOM_DIR)
    write_copy_series(sorted_files[:4], str(tmp_path), NEW_UID, modality="MR", description="mr")
    before = node_ids(ctx.scene)
    with pytest.raises(NotCTError, match="MR, not CT.*--allow-non-ct"):
        load_ct(ctx, str(tmp_path))
    assert node_ids(ctx.scene) == before
    node = load_ct(ctx, str(tmp_path), allow_non_ct=True)
    assert describe_ct(node).dimensions == (512, 512, 4)


def test_dicom_series_with_missing_slice_is_refused(ctx, tmp_path):
    sorted_files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(DICOM_DIR)
    for f in sorted_files[:10] + sorted_files[11:]:
        shutil.copy(f, tmp_path / os.path.basename(f))
    before = node_ids(ctx.scene)
    with pytest.raises(InputFileError, match="uneven slice spacing.*2.00 to 4.00 mm"):
        load_ct(ctx, str(tmp_path))
    assert node_ids(ctx.scene) == before


def test_choose_series_prefers_largest_ct():
    scout = DicomSeriesInfo("1.1", "Topogram", "CT", 2, ["a", "b"])
    pet = DicomSeriesInfo("1.2", "PET", "PT", 300, [])
    body = DicomSeriesInfo("1.3", "CT Body", "CT", 120, [])
    chosen, note = choose_series([pet, body, scout])
    assert chosen is body
    assert note == "folder holds 3 series; took 1.3 (CT, 120 slices, 'CT Body'): the CT series with the most slices"
    chosen, note = choose_series([scout, body])
    assert chosen is body and note.endswith(": the most slices")
    assert choose_series([scout]) == (scout, "took 1.1 (CT, 2 slices, 'Topogram'): the only image series")
    assert choose_series([pet, body], series_uid="1.2")[0] is pet


# ------------------------------------------------------------------------------------------------- bad inputs


def write_volume(path, values, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return str(path)


def bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"NRRD0004\nthis is not a volume\n" + bytes(rng.integers(0, 255, 500, dtype=np.uint8)))
    no_dicom = tmp_path / "no_dicom"
    (no_dicom / "sub").mkdir(parents=True)
    (no_dicom / "notes.txt").write_text("not an image")
    (no_dicom / "sub" / "readme.md").write_text("nothing")
    mr = rng.uniform(0, 1200, (12, 16, 16)).astype(np.int16)
    return {
        "missing": (str(tmp_path / "nope.nrrd"), InputFileError, "does not exist"),
        "garbage": (str(garbage), InputFileError, "is damaged: its header has no valid .sizes. field"),
        "no_dicom": (str(no_dicom), InputFileError, "No DICOM image series"),
        "2d": (write_volume(tmp_path / "slice.nrrd", rng.integers(-1000, 1000, (1, 16, 16)).astype(np.int16)),
               NotCTError, "needs a 3D CT volume"),
        "mr_like": (write_volume(tmp_path / "mr.nii.gz", mr), NotCTError, "air at about -1000 HU.*--allow-non-ct"),
        "constant": (write_volume(tmp_path / "zero.nrrd", np.zeros((8, 8, 8), np.int16)), NotCTError, "empty"),
    }


@pytest.mark.parametrize("case", ["missing", "garbage", "no_dicom", "2d", "mr_like", "constant"])
def test_bad_input_raises_specific_error_and_leaves_scene_unchanged(ctx, tmp_path, case):
    load_ct(ctx, SAMPLE_CT)  # the scene already holds work that must survive
    path, error, pattern = bad_inputs(tmp_path)[case]
    before = node_ids(ctx.scene)
    with pytest.raises(error, match=pattern) as err:
        load_ct(ctx, path)
    assert err.value.problem and err.value.fix  # names the problem and the fix
    assert node_ids(ctx.scene) == before


def test_allow_non_ct_accepts_mr_like_but_not_2d(ctx, tmp_path):
    cases = bad_inputs(tmp_path)
    node = load_ct(ctx, cases["mr_like"][0], allow_non_ct=True)
    assert describe_ct(node).hu_range[0] >= 0
    with pytest.raises(NotCTError, match="needs a 3D CT volume"):
        load_ct(ctx, cases["2d"][0], allow_non_ct=True)


def test_padding_and_small_field_of_view_are_normal_ct(ctx, tmp_path, sample_small):
    values = sitk.GetArrayFromImage(sample_small).astype(np.int16)
    k, j, i = np.mgrid[: values.shape[0], : values.shape[1], : values.shape[2]]
    outside_circle = (j - 20) ** 2 + (i - 20) ** 2 > 18**2
    for pad in (-2048, -3024):
        padded = values.copy()
        padded[outside_circle] = pad
        node = load_ct(ctx, write_volume(tmp_path / f"pad{-pad}.nrrd", padded))
        assert describe_ct(node).hu_range[0] == pad
    # A small reconstruction field inside the body: no air, but fat; padding outside the circle.
    inside_body = np.clip(values, -150, None)
    inside_body[outside_circle] = -2048
    assert np.count_nonzero((inside_body > -1500) & (inside_body < -500)) == 0
    load_ct(ctx, write_volume(tmp_path / "small_fov.nrrd", inside_body))
    # ... whereas the same without any fat or air is not accepted as CT.
    no_soft_tissue = np.clip(values, 0, None)
    no_soft_tissue[outside_circle] = -2048
    with pytest.raises(NotCTError):
        load_ct(ctx, write_volume(tmp_path / "raw.nrrd", no_soft_tissue))


def test_validate_ct_on_existing_node(ctx):
    node = load_ct(ctx, SAMPLE_CT)
    validate_ct(node)
    array(node)[:] = 40
    node.GetImageData().Modified()
    with pytest.raises(NotCTError, match="every voxel is 40"):
        validate_ct(node)


def test_localizer_in_series_is_dropped_and_noted(ctx, tmp_path):
    sorted_files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(DICOM_DIR)
    write_copy_series(sorted_files[:5], str(tmp_path), NEW_UID)
    write_copy_series(sorted_files[9:10], str(tmp_path), NEW_UID, description="localizer")
    localizer = str(tmp_path / "localizer000.dcm")
    image = sitk.ReadImage(localizer)  # carries its tags along
    image.SetMetaData("0020|0037", "0\\1\\0\\0\\0\\-1")  # sagittal
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(localizer)
    writer.Execute(image)
    assert list_dicom_series(str(tmp_path))[0].n_files == 6
    node = load_ct(ctx, str(tmp_path))
    assert "dropped 1 file(s) with a different slice orientation" in describe_ct(node).series_note
    assert_same_as_sitk(node, sitk.ReadImage(list(sorted_files[:5])))


# ------------------------------------------------------------------------------- integrity and geometry checks


@pytest.mark.parametrize("name, compressed", [("ct.nii.gz", True), ("ct.nii", False), ("ct.nrrd", False),
                                              ("ct.nrrd", True), ("ct.mha", False), ("ct.mha", True)])
def test_truncated_file_is_refused_not_read_as_zeros(ctx, tmp_path, sample_small, name, compressed):
    path = tmp_path / name
    sitk.WriteImage(sample_small, str(path), useCompression=compressed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = node_ids(ctx.scene)
    with pytest.raises(InputFileError, match="is damaged: .*(compressed data is incomplete|40 x 40 x 30 voxels)"):
        load_ct(ctx, str(path))
    assert node_ids(ctx.scene) == before
    path.write_bytes(data)  # the same file complete loads
    assert_same_as_sitk(load_ct(ctx, str(path)), sample_small)


def test_detached_nrrd_with_short_data_file_is_refused(ctx, tmp_path, sample_small):
    sitk.WriteImage(sample_small, str(tmp_path / "ct.nhdr"))
    raw = next(p for p in tmp_path.iterdir() if p.suffix == ".raw")
    raw.write_bytes(raw.read_bytes()[:-2])
    with pytest.raises(InputFileError, match="96,000 bytes of data|192,000 bytes of data"):
        load_ct(ctx, str(tmp_path / "ct.nhdr"))


@pytest.mark.parametrize("spacing", [(50.0, 50.0, 50.0), (0.01, 0.01, 1.0)])
def test_implausible_voxel_size_is_refused(ctx, tmp_path, sample_small, spacing):
    image = sitk.Image(sample_small)
    image.SetSpacing(spacing)
    path = str(tmp_path / "ct.nrrd")
    sitk.WriteImage(image, path)
    with pytest.raises(NotCTError, match="voxels of .* outside 0.05-10 mm"):
        load_ct(ctx, path)


def test_slices_at_the_thin_limit_give_no_thickness_warning(ctx, tmp_path, sample_small):
    """1.25 mm slices whose spacing comes out of the DICOM positions as 1.2500000000000007 mm are thin slices, not
    "1.25 mm is above 1.25 mm" (a new user's RIDER lung CT); 1.26 mm still warns."""
    image = sitk.Image(sample_small)
    for spacing, warned in ((1.2500000000000007, False), (1.26, True)):
        image.SetSpacing((0.6, 0.6, spacing))
        path = str(tmp_path / f"ct{spacing}.nrrd")
        sitk.WriteImage(image, path)
        notes = [n for n in describe_ct(load_ct(ctx, path)).notes if "slice thickness" in n]
        assert bool(notes) == warned, (spacing, notes)


def test_thick_slices_warn_then_need_acceptance_above_the_largest_variant(ctx, tmp_path, sample_small):
    image = sitk.Image(sample_small)
    image.SetSpacing((0.3, 0.3, 5.0))
    path = str(tmp_path / "thick.nrrd")
    sitk.WriteImage(image, path)
    # Without a plan limit (Slicer module, segment command) a warning with the length uncertainty.
    notes = describe_ct(load_ct(ctx, path)).notes
    assert notes == ["CT slice thickness 5.00 mm is above 1.25 mm: the endplates are located to about +/-2.5 mm "
                     "each, so the implant length is uncertain by up to 5.0 mm."]
    before = node_ids(ctx.scene)
    with pytest.raises(PlanError, match="slice thickness is 5.00 mm, more than the largest oversized variant "
                                        r"\(\+4 mm\).*--accept-thick-slices"):
        load_ct(ctx, path, max_slice_mm=4.0)
    assert node_ids(ctx.scene) == before
    accepted = describe_ct(load_ct(ctx, path, max_slice_mm=4.0, accept_thick_slices=True)).notes
    assert len(accepted) == 1 and "accepted by the user (--accept-thick-slices)" in accepted[0]
    # The bundled 3 mm sample is within the default +4 mm variant: a warning only.
    assert "3.00 mm is above 1.25 mm" in describe_ct(load_ct(ctx, SAMPLE_CT, max_slice_mm=4.0)).notes[0]


def test_point_outside_the_volume_is_named_as_given(ctx):
    with pytest.raises(PlanError, match=r"The proximal point \(proximal_point_ras\) at \(0, 0, 900\) RAS lies "
                                        "outside the CT volume.*Correct the proximal point"):
        load_ct(ctx, SAMPLE_CT, points=[("proximal point (proximal_point_ras)", (0.0, 0.0, 900.0))])
    load_ct(ctx, SAMPLE_CT, points=[("seed", (-7.0, 146.3, 304.3))])


# ------------------------------------------------------------------------------------------- fast NRRD reader


def _scene_xml_of(node) -> dict:
    """What the archetype loader sets on a volume node and its display and storage nodes (IDs left out)."""
    display, storage = node.GetDisplayNode(), node.GetStorageNode()
    image = node.GetImageData()
    return {
        "class": node.GetClassName(),
        "name": node.GetName(),
        "attributes": {a: node.GetAttribute(a) for a in node.GetAttributeNames()},
        "ijk_to_ras": ijk_to_ras_matrix(node).tolist(),
        "spacing": node.GetSpacing(),
        "origin": node.GetOrigin(),
        "image": (image.GetOrigin(), image.GetSpacing(), image.GetExtent(), image.GetScalarType(),
                  image.GetNumberOfScalarComponents(), image.GetPointData().GetScalars().GetName()),
        "scalar_range": image.GetScalarRange(),
        "display": (display.GetClassName(), display.GetColorNodeID(), display.GetAutoWindowLevel(),
                    display.GetWindow(), display.GetLevel(), display.GetAutoThreshold(), display.GetApplyThreshold(),
                    display.GetLowerThreshold(), display.GetUpperThreshold(), display.GetInterpolate(),
                    display.GetVisibility()),
        "storage": (storage.GetClassName(), storage.GetFileName(), storage.GetUseCompression(),
                    storage.GetUseOrientationFromFile(), storage.GetSingleFile(), storage.GetCenterImage()),
    }


def _oblique_ct(pixel=sitk.sitkInt16):
    """A small CT with an oblique direction, unequal spacing and HU values (air, fat, bone)."""
    rng = np.random.default_rng(3)
    voxels = rng.integers(-1024, 1600, size=(23, 31, 37)).astype(np.int16)
    voxels[:, :5] = -1000
    voxels[:, 5:9] = -100
    image = sitk.Cast(sitk.GetImageFromArray(voxels), pixel)
    image.SetSpacing((0.71, 0.83, 1.25))
    image.SetOrigin((-101.3, 44.7, -512.25))
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return image


@pytest.mark.parametrize("name, pixel, compressed", [
    ("ct.nrrd", sitk.sitkInt16, True), ("ct.nrrd", sitk.sitkInt16, False), ("ct.nhdr", sitk.sitkInt16, True),
    ("ct.nhdr", sitk.sitkInt16, False), ("ct.nrrd", sitk.sitkFloat32, True), ("ct.nrrd", sitk.sitkInt32, False),
    ("ct.nrrd", sitk.sitkUInt16, True)])
def test_fast_nrrd_reader_gives_the_archetype_loaders_node(ctx, tmp_path, monkeypatch, name, pixel, compressed):
    import PatientImplantPlannerLib.scene.ctload as ctload

    path = str(tmp_path / name)
    image = _oblique_ct(pixel)
    if pixel == sitk.sitkUInt16:
        image = sitk.Cast(sitk.GetImageFromArray(sitk.GetArrayFromImage(_oblique_ct()).astype(np.int32) + 1024),
                          pixel)  # CT stored without rescale
        image.CopyInformation(_oblique_ct())
    sitk.WriteImage(image, path, useCompression=compressed)
    used = []
    real = ctload.read_nrrd
    monkeypatch.setattr(ctload, "read_nrrd", lambda p: used.append(real(p)) or used[-1])
    fast = load_ct(ctx, path, name="fast", allow_non_ct=pixel == sitk.sitkUInt16)
    assert used[-1] is not None  # the fast reader took it
    monkeypatch.setattr(ctload, "read_nrrd", lambda p: None)  # Slicer's archetype loader, as before
    other = create_headless_context()
    archetype = load_ct(other, path, name="fast", allow_non_ct=pixel == sitk.sitkUInt16)
    assert load_ct(other, path, name="fast", allow_non_ct=True).GetName() == "fast_1"
    monkeypatch.setattr(ctload, "read_nrrd", real)
    assert load_ct(ctx, path, name="fast", allow_non_ct=True).GetName() == "fast_1"  # unique names alike
    a, b = _scene_xml_of(fast), _scene_xml_of(archetype)
    np.testing.assert_allclose(a.pop("ijk_to_ras"), b.pop("ijk_to_ras"), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.pop("origin"), b.pop("origin"), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.pop("spacing"), b.pop("spacing"), rtol=0, atol=1e-12)
    assert a == b
    assert array(fast).dtype == array(archetype).dtype
    np.testing.assert_array_equal(array(fast), array(archetype))
    assert_same_as_sitk(fast, image, atol=1e-9)
    # The node owns usable, writable voxels after the reader's objects are gone.
    import gc

    used.clear()
    gc.collect()
    voxels = array(fast)
    voxels[0, 0, 0] = 7
    assert array(fast)[0, 0, 0] == 7


@pytest.mark.parametrize("damage", ["cut trailer", "cut half", "flip byte", "trailing bytes", "big endian"])
def test_fast_nrrd_reader_declines_what_it_cannot_prove_complete(tmp_path, damage):
    from PatientImplantPlannerLib.imaging.nrrdread import read_nrrd

    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(_oblique_ct(), str(path), useCompression=True)
    assert read_nrrd(str(path)) is not None
    data = path.read_bytes()
    header_end = data.index(b"\n\n") + 2
    if damage == "cut trailer":
        data = data[:-3]
    elif damage == "cut half":
        data = data[: len(data) // 2]
    elif damage == "flip byte":
        middle = (header_end + len(data)) // 2
        data = data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:]
    elif damage == "trailing bytes":
        data = data + b"\0\0\0\0"
    else:
        data = data.replace(b"endian: little", b"endian: big")
    path.write_bytes(data)
    assert read_nrrd(str(path)) is None


def test_fast_nrrd_load_refuses_damaged_files_with_the_same_message(ctx, tmp_path, monkeypatch):
    import PatientImplantPlannerLib.scene.ctload as ctload

    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(_oblique_ct(), str(path), useCompression=True)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    messages = []
    for reader in (ctload.read_nrrd, lambda p: None):
        monkeypatch.setattr(ctload, "read_nrrd", reader)
        with pytest.raises(InputFileError) as err:
            load_ct(ctx, str(path))
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "is damaged" in messages[0]


@pytest.mark.parametrize("dtype, low, high", [(np.int16, -1024, 3071), (np.int16, -3024, 1500), (np.int16, 5, 90),
                                              (np.uint16, 0, 4095), (np.int32, -2048, 60000), (np.int16, -7, -3)])
def test_auto_window_range_is_slicers_histogram_window(dtype, low, high):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    from PatientImplantPlannerLib.imaging.nrrdread import auto_window_range

    rng = np.random.default_rng(int(high - low))
    voxels = np.concatenate([np.full(5000, low), rng.normal((low + high) / 2, (high - low) / 6, 40000).round(),
                             rng.integers(low, high + 1, 3000), [high]]).clip(low, high).astype(dtype)
    voxels = voxels[: 12 * 17 * (voxels.size // (12 * 17))].reshape(-1, 17, 12)
    image = vtk.vtkImageData()
    image.SetDimensions(12, 17, voxels.shape[0])
    image.GetPointData().SetScalars(numpy_to_vtk(voxels.ravel(), deep=True))
    stats = vtk.vtkImageHistogramStatistics()  # as vtkMRMLScalarVolumeDisplayNode sets it up
    stats.SetAutoRangePercentiles(0.1, 99.9)
    stats.SetAutoRangeExpansionFactors(0.0, 0.0)
    stats.SetInputData(image)
    stats.Update()
    assert auto_window_range(voxels) == tuple(stats.GetAutoRange())
    assert auto_window_range(voxels.astype(np.float32)) is None  # VTK bins floats differently: left to it


def test_fast_load_keeps_automatic_window_level_live(ctx, tmp_path):
    path = str(tmp_path / "ct.nrrd")
    sitk.WriteImage(_oblique_ct(), path, useCompression=True)
    display = load_ct(ctx, path).GetDisplayNode()
    window, level = display.GetWindow(), display.GetLevel()
    assert display.GetAutoWindowLevel() == 1 and (window, level) != (256.0, 128.0)
    display.SetInterpolate(0)  # any modification recomputes it with VTK: the same values
    assert (display.GetWindow(), display.GetLevel()) == (window, level)


# ------------------------------------------------------------------------------------------------ slice orientation


@pytest.mark.parametrize("order, stored", [((2, 0, 1), "coronal"), ((1, 2, 0), "sagittal")])
def test_a_ct_stored_in_sagittal_or_coronal_slices_is_loaded_in_axial_slices(ctx, tmp_path, order, stored):
    """A reformatted series saved in sagittal or coronal slices (the same voxels in another storage order) is
    re-ordered to axial slices on loading, every voxel at its place, and the record says so: the bone fill and the
    levels work slice by slice, and on the bundled lumbar CT stored in coronal slices the demo plan came out with
    9 mm instead of 18 mm footplates and one screw per end."""
    from PatientImplantPlannerLib.imaging.ctimport import ATTR_INPUT_NOTES, stacked_along

    image = sitk.ReadImage(SAMPLE_CT)
    path = tmp_path / f"{stored}.nii.gz"
    sitk.WriteImage(sitk.PermuteAxes(image, list(order)), str(path))
    assert stacked_along(sitk_ijk_to_ras(sitk.ReadImage(str(path)))) != "superior-inferior"
    node = load_ct(ctx, str(path))
    m = ijk_to_ras_matrix(node)
    assert stacked_along(m) == "superior-inferior"
    assert f"stored in {stored} slices: re-ordered to axial" in node.GetAttribute(ATTR_INPUT_NOTES)
    original = sitk.GetArrayFromImage(image)
    kji = np.stack([np.random.default_rng(0).integers(0, n, 2000) for n in original.shape], axis=1)
    ras = (sitk_ijk_to_ras(image) @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3]
    ijk = np.rint(ras @ np.linalg.inv(m)[:3, :3].T + np.linalg.inv(m)[:3, 3]).astype(int)
    np.testing.assert_array_equal(array(node)[ijk[:, 2], ijk[:, 1], ijk[:, 0]], original[tuple(kji.T)])
    ctx.scene.RemoveNode(node)


def test_a_node_stored_in_sagittal_slices_is_refused_before_segmentation_or_design(ctx):
    """A volume loaded some other way (Slicer's DICOM browser keeps a sagittal series' order) is refused with the
    fixes before any work: segmenting or designing on it would fill and measure the wrong slices."""
    from PatientImplantPlannerLib.core.errors import SegmentationError
    from PatientImplantPlannerLib.design.plan import Plan, design_implant
    from PatientImplantPlannerLib.scene.bonesegment import segment_bone
    from PatientImplantPlannerLib.scene.volumes import add_volume

    axial = load_ct(ctx, SAMPLE_CT)
    m = ijk_to_ras_matrix(axial)
    sagittal_m = m.copy()
    sagittal_m[:3, :3] = m[:3, [1, 2, 0]]  # new (i, j, k) = old (j, k, i): the slices now stacked left-right
    voxels = np.ascontiguousarray(np.transpose(array(axial), (2, 0, 1)))
    node = add_volume(ctx, voxels, sagittal_m, "SagittalCT")
    before = node_ids(ctx.scene)
    with pytest.raises(SegmentationError) as err:
        segment_bone(ctx, node)
    assert "stored in sagittal slices" in err.value.problem and "Orient Scalar Volume" in err.value.fix
    assert node_ids(ctx.scene) == before
    with pytest.raises(PlanError) as err:
        design_implant(Plan(), voxels, sagittal_m, np.zeros(voxels.shape, bool))
    assert "stored in sagittal slices" in err.value.problem and "'Load CT'" in err.value.fix
    for n in (node, axial):
        ctx.scene.RemoveNode(n)


def test_a_dicom_series_in_sagittal_slices_is_loaded_in_axial_slices(ctx, tmp_path, sample_small):
    """The same for a DICOM series of sagittal slices; its header's slice thickness (5 mm here) is that of the
    sagittal slices, so it no longer stands for the spacing along the axis (3 mm) that the record states."""
    from PatientImplantPlannerLib.imaging.ctimport import ATTR_INPUT_NOTES, ATTR_SLICE_THICKNESS, stacked_along

    sagittal = sitk.PermuteAxes(sitk.Cast(sample_small, sitk.sitkInt16), [1, 2, 0])
    d, uid = sagittal.GetDirection(), NEW_UID + ".7"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(sagittal.GetDepth()):
        s, corner = sagittal[:, :, k], sagittal.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (("0008|0060", "CT"), ("0020|000e", uid), ("0020|000d", uid + ".0"),
                           ("0008|0018", f"{uid}.{k + 1}"), ("0020|0013", str(k + 1)), ("0018|0050", "5.0"),
                           ("0020|0037", "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
                           ("0020|0032", "\\".join(f"{v:.4f}" for v in corner))):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"s{k:03d}.dcm"))
        writer.Execute(s)
    node = load_ct(ctx, str(tmp_path))
    m = ijk_to_ras_matrix(node)
    assert stacked_along(m) == "superior-inferior"
    assert node.GetAttribute(ATTR_SLICE_THICKNESS) is None
    notes = node.GetAttribute(ATTR_INPUT_NOTES)
    assert "stored in sagittal slices" in notes and "slice thickness 3.00 mm" in notes
    expected = sitk.GetArrayFromImage(sample_small)
    kji = np.argwhere(np.ones(expected.shape, bool))
    ras = (sitk_ijk_to_ras(sample_small) @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3]
    ijk = np.rint(ras @ np.linalg.inv(m)[:3, :3].T + np.linalg.inv(m)[:3, 3]).astype(int)
    np.testing.assert_array_equal(array(node)[ijk[:, 2], ijk[:, 1], ijk[:, 0]], expected[tuple(kji.T)])
    ctx.scene.RemoveNode(node)
