"""Checks of an exported design record (its HTML), shared by the CLI-path and widget-path tests."""

import html
import os
import re

import pytest

from PatientImplantPlannerLib.record.sections import REPORT_SECTIONS


def record_sections(html_path: str) -> dict:
    """{section title: its visible text, cells separated by ' | '} of an exported design record."""
    text = open(html_path, encoding="utf-8").read()
    text = re.sub(r'src="data:[^"]+"', "", text)
    chunks = re.split(r'<h2 id="s\d+">\d+\. ([^<]+)</h2>', text)[1:]
    sections = {}
    for title, body in zip(chunks[::2], chunks[1::2]):
        visible = re.sub(r"(\s*\|\s*)+", " | ", re.sub(r"<[^>]+>", " | ", body)).strip(" |")
        sections[html.unescape(title)] = html.unescape(visible)
    return sections


def check_exported_record(html_path: str, bone_volume_ml: float, screw_names: list) -> dict:
    """The checks both export paths must pass; returns the sections for path-specific ones."""
    s = record_sections(html_path)
    assert list(s) == REPORT_SECTIONS
    assert all(s.values()), [t for t, body in s.items() if not body]
    seg = s["Bone segmentation"]
    assert "Threshold | 226 to 3071 HU" in seg and "n/a to n/a" not in seg
    volume = float(re.search(r"Segmented bone volume \| ([\d.]+) ml", seg).group(1))
    assert volume == pytest.approx(bone_volume_ml, abs=0.1)
    assert re.search(r"Bone segmentation \| OK \| Bone volume [\d.]+ ml", s["Risk checklist"])
    assert "TO DO | Bone" not in s["Risk checklist"] and "No bone volume" not in s["Risk checklist"]
    assert "Slice thickness | 1.00 mm" in s["Case and input CT"]
    # Each screw row names its screw, end and type (the record's screw shape is the one the table reads).
    for name in screw_names:
        assert re.search(rf"{re.escape(name)} \| (proximal|distal) \| L\d \| 3\.5 mm cancellous \(small fragment\) "
                         r"\| 3\.5 \|", s["Screws"]), (name, s["Screws"])
    assert "Length (endplate to endplate) | " in s["Implant design"] and "Mass | n/a" not in s["Implant design"]
    assert "+2 mm | 2.0 |" in s["Oversized variants"]
    return s


def segment_volume_ml(folder: str) -> float:
    """Bone volume of the exported .seg.nrrd, read back independently of the engine."""
    import SimpleITK as sitk

    (name,) = [f for f in os.listdir(folder) if f.endswith(".seg.nrrd")]
    image = sitk.ReadImage(os.path.join(folder, name))
    voxels = int((sitk.GetArrayViewFromImage(image) > 0).sum())
    sx, sy, sz = image.GetSpacing()
    return voxels * sx * sy * sz / 1000.0
