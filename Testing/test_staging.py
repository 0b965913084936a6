"""All-or-nothing output folders."""

import os

import pytest

from PatientImplantPlannerLib.export.staging import moved, staged_folder


def test_success_renames_the_staged_folder_into_place(tmp_path):
    final = tmp_path / "export"
    with staged_folder(str(final)) as work:
        assert work != str(final) and not final.exists()
        (tmp_path / work / "a.stl").write_text("mesh")
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert (final / "a.stl").read_text() == "mesh"
    assert moved(os.path.join(work, "a.stl"), work, str(final)) == str(final / "a.stl")


def test_failure_leaves_nothing_and_keeps_an_existing_empty_folder(tmp_path):
    final = tmp_path / "export"
    final.mkdir()
    with pytest.raises(ValueError):
        with staged_folder(str(final)) as work:
            (tmp_path / work / "half.stl").write_text("half")
            raise ValueError("boom")
    assert sorted(os.listdir(tmp_path)) == ["export"] and os.listdir(final) == []


def test_non_empty_folder_is_written_in_place(tmp_path):
    final = tmp_path / "export"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with staged_folder(str(final)) as work:
        assert work == str(final)
        (final / "new.txt").write_text("new")
    assert sorted(os.listdir(final)) == ["new.txt", "old.txt"]


def test_failure_also_removes_the_parent_folders_it_made(tmp_path):
    final = tmp_path / "new" / "deeper" / "export"
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(str(final)) as work:
            (tmp_path / work / "half.stl").write_text("half")
            raise KeyboardInterrupt("SIGTERM")
    assert os.listdir(tmp_path) == []
