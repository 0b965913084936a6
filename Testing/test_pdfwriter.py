"""The project's own PDF writer (record/pdfwriter.py) and the PDF design record drawn with it, checked by reading the
files back with a small parser written here: the xref table, the page tree, the page-number footers, the pictures,
the line widths of wrapped text, Latin-1 text; and that nothing imports fpdf2 (LGPL-3.0) any more."""

import ast
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
from test_report import realistic_record

from PatientImplantPlannerLib.record.pdfreport import _latin1, render_pdf
from PatientImplantPlannerLib.record.pdfwriter import FONTS, MM, PdfWriter
from PatientImplantPlannerLib.record.report import write_report
from PatientImplantPlannerLib.record.sections import Document

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE_DIR = os.path.join(ROOT, "PatientImplantPlanner")
RIGHT_EDGE_PT = (210.0 - 18.0) * MM  # the text width of the record's A4 pages ends here
LEFT_EDGE_PT = 18.0 * MM

# ---- a small PDF reader ----------------------------------------------------------------------------------------


def parse_pdf(data: bytes) -> tuple:
    """(objects {number: body}, trailer) read through the xref table, which is checked on the way: startxref points
    at it, every in-use entry points at "N 0 obj" of its own number."""
    m = re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", data)
    assert m, "no startxref at the end"
    xref = int(m.group(1))
    head = re.match(rb"xref\r?\n0 (\d+)\r?\n", data[xref:])
    assert head, "startxref does not point at the xref table"
    count = int(head.group(1))
    start = xref + len(head.group(0))
    entries = [data[start + 20 * i: start + 20 * (i + 1)] for i in range(count)]
    assert entries[0] == b"0000000000 65535 f \n"
    offsets = {}
    for n, entry in enumerate(entries[1:], start=1):
        assert re.fullmatch(rb"\d{10} \d{5} n \n", entry), entry
        offsets[n] = int(entry[:10])
        assert data[offsets[n]:].startswith(b"%d 0 obj" % n), f"xref entry {n} points at {data[offsets[n]:][:12]!r}"
    trailer = re.search(rb"trailer\s*<<(.*?)>>\s*startxref", data[start + 20 * count:], re.S)
    assert trailer
    assert int(re.search(rb"/Size (\d+)", trailer.group(1)).group(1)) == count
    ends = sorted(offsets.values()) + [xref]
    objects = {}
    for n, off in offsets.items():
        body = data[off: ends[ends.index(off) + 1]]
        body = body[len(b"%d 0 obj" % n):].strip()
        assert body.endswith(b"endobj"), n
        objects[n] = body[: -len(b"endobj")].strip()
    return objects, trailer.group(1)


def ref(body: bytes, key: bytes) -> int:
    return int(re.search(rb"/" + key + rb" (\d+) 0 R", body).group(1))


def stream_data(body: bytes) -> bytes:
    """The decoded data of a stream object (its /Length checked)."""
    head, _, rest = body.partition(b"stream\n")
    length = int(re.search(rb"/Length (\d+)", head).group(1))
    assert rest[length:].strip() == b"endstream", "/Length does not end at endstream"
    raw = rest[:length]
    return zlib.decompress(raw) if b"/FlateDecode" in head else raw


def pages(data: bytes) -> tuple:
    """(objects, page bodies in order, decoded content stream of each page)."""
    objects, trailer = parse_pdf(data)
    catalog = objects[ref(trailer, b"Root")]
    tree = objects[ref(catalog, b"Pages")]
    kids = [int(k) for k in re.findall(rb"(\d+) 0 R", re.search(rb"/Kids \[(.*?)\]", tree).group(1))]
    assert int(re.search(rb"/Count (\d+)", tree).group(1)) == len(kids)
    bodies = [objects[k] for k in kids]
    return objects, bodies, [stream_data(objects[ref(b, b"Contents")]) for b in bodies]


TEXT_OP = re.compile(rb"BT /(F\d) ([\d.]+) Tf [\d. ]+ rg (?:([-\d.]+) Tw )?([-\d.]+) ([-\d.]+) Td "
                     rb"\(((?:\\.|[^\\)])*)\) Tj ET")


def text_ops(content: bytes) -> list:
    """(font resource, size pt, word spacing pt, x pt, y pt, text bytes) of every line of text."""
    out = []
    for font, size, tw, x, y, s in TEXT_OP.findall(content):
        s = re.sub(rb"\\(.)", lambda m: b"\r" if m.group(1) == b"r" else m.group(1), s)
        out.append((font.decode(), float(size), float(tw or 0), float(x), float(y), s))
    return out


WIDTHS = {name: widths for name, _, widths in FONTS.values()}


def width_pt(font: str, size: float, tw: float, s: bytes) -> float:
    return sum(WIDTHS[font][c] for c in s) * size / 1000.0 + tw * s.count(b" ")


def pictures(tmp_path) -> dict:
    """Three pictures like the record's: an RGB render, an RGBA slice (transparent border), a greyscale JPEG."""
    render = np.zeros((640, 800, 3), np.uint8)
    render[:, :400] = (200, 60, 40)
    render[:, 400:] = (30, 90, 200)
    rgba = np.zeros((300, 200, 4), np.uint8)
    rgba[50:250, 50:150] = (0, 160, 0, 255)
    grey = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (180, 1))
    paths = {"render_3d": tmp_path / "render.png", "ct_sagittal": tmp_path / "sag.png",
             "ct_coronal": tmp_path / "cor.jpg"}
    Image.fromarray(render).save(paths["render_3d"])
    Image.fromarray(rgba, "RGBA").save(paths["ct_sagittal"])
    Image.fromarray(grey, "L").save(paths["ct_coronal"], quality=95)
    return {k: str(p) for k, p in paths.items()}


@pytest.fixture(scope="module")
def record_pdf(tmp_path_factory) -> bytes:
    tmp = tmp_path_factory.mktemp("record")
    _, pdf_path = write_report(realistic_record(), pictures(tmp), str(tmp))
    with open(pdf_path, "rb") as f:
        return f.read()


# ---- the design record -----------------------------------------------------------------------------------------


def test_record_pdf_xref_page_tree_and_footers(record_pdf):
    assert record_pdf.startswith(b"%PDF-1.4\n")
    objects, bodies, contents = pages(record_pdf)
    n = len(bodies)
    assert n >= 4
    assert sum(1 for b in objects.values() if re.match(rb"<< /Type /Page\b", b)) == n
    for i, content in enumerate(contents, start=1):
        lines = [t[5] for t in text_ops(content)]
        assert b"Page %d/%d" % (i, n) in lines, f"page {i} has no footer Page {i}/{n}"
        assert b"Design record: patient-specific spinal implant - case UMCU-2024-017" in lines
    _, trailer = parse_pdf(record_pdf)
    info = objects[ref(trailer, b"Info")]
    assert b"/Title (Design record: patient-specific spinal implant - UMCU-2024-017)" in info
    assert b"/Creator (PatientImplantPlanner)" in info
    for body in bodies:
        assert b"/MediaBox [0 0 595.28 841.89]" in body  # A4 portrait


def test_record_pdf_text_stays_within_the_margins(record_pdf):
    _, _, contents = pages(record_pdf)
    checked = 0
    for content in contents:
        for font, size, tw, x, _, s in text_ops(content):
            right = x + width_pt(font, size, tw, s)
            assert x >= LEFT_EDGE_PT - 0.01 and right <= RIGHT_EDGE_PT + 0.01, (s, x, right)
            checked += 1
    assert checked > 300


def test_record_pdf_pictures_decode_back(record_pdf, tmp_path):
    objects, _, contents = pages(record_pdf)
    images = [b for b in objects.values() if b"/Subtype /Image" in b]
    assert len(images) == 3
    sizes = set()
    for body in images:
        w = int(re.search(rb"/Width (\d+)", body).group(1))
        h = int(re.search(rb"/Height (\d+)", body).group(1))
        assert b"/ColorSpace /DeviceRGB" in body and b"/BitsPerComponent 8" in body
        assert len(stream_data(body)) == w * h * 3
        sizes.add((w, h))
    assert sizes == {(800, 640), (200, 300), (256, 180)}
    placed = re.findall(rb"q ([\d.]+) 0 0 ([\d.]+) ([\d.]+) [\d.]+ cm /I\d Do Q", b"".join(contents))
    assert len(placed) == 3
    for w, h, x in placed:  # centred on the text width, at most 150 mm wide and 120 mm tall
        w, h, x = float(w) / MM, float(h) / MM, float(x) / MM
        assert w <= 150.01 and h <= 120.01 and x + w / 2 == pytest.approx(105.0, abs=0.01)


def test_record_pdf_is_the_same_for_the_same_record(tmp_path):
    pics = pictures(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_report(realistic_record() | {"created": "2024-05-02"}, pics, str(tmp_path / "a"))[1]
    b = write_report(realistic_record() | {"created": "2024-05-02"}, pics, str(tmp_path / "b"))[1]
    assert open(a, "rb").read() == open(b, "rb").read()


def test_symbols_are_reduced_to_latin1():
    text = "Pore \u2265 500 \u00b5m at 37 \u00b0C \u2013 \u201cok\u201d \u2603"
    assert _latin1(text) == 'Pore >= 500 \u00b5m at 37 \u00b0C - "ok" ?'
    doc = Document()
    doc.para(text)
    _, _, contents = pages(render_pdf(doc, {"case_id": "S\u00fcd-1"}))
    assert b'(Pore >= 500 \xb5m at 37 \xb0C - "ok" ?) Tj' in contents[0]  # WinAnsi bytes, written literally
    assert b"(Design record: patient-specific spinal implant - case S\xfcd-1) Tj" in contents[0]


def test_long_table_repeats_its_heading_row_and_never_splits_a_row():
    doc = Document()
    rows = [[f"row {i}", "a value long enough to wrap in its narrow column " * (1 + i % 3)] for i in range(150)]
    doc.table(["Name", "Value"], rows, [3, 1])
    _, _, contents = pages(render_pdf(doc, {"case_id": "T"}))
    assert len(contents) >= 3
    seen = []
    for content in contents:
        lines = [t[5] for t in text_ops(content)]
        on_page = [s.decode() for s in lines if s.startswith(b"row ")]
        assert on_page and lines.count(b"Name") == 1 and lines.count(b"Value") == 1
        seen += on_page
    assert seen == [r[0] for r in rows]  # each row once, in order, whole on one page


# ---- the writer ------------------------------------------------------------------------------------------------


def test_width_tables_are_the_core14_metrics():
    helv, bold, obl, cour = (WIDTHS[FONTS[k][0]] for k in (("helvetica", ""), ("helvetica", "B"),
                                                          ("helvetica", "I"), ("courier", "")))
    for ch, w in {" ": 278, "W": 944, "i": 222, "m": 833, "\u00b5": 556, "\u00b0": 400, "\u00a9": 737}.items():
        assert helv[ord(ch)] == w, ch
    for ch, w in {" ": 278, "A": 722, "i": 278, "m": 889, "\u00e9": 556}.items():
        assert bold[ord(ch)] == w, ch
    assert obl == helv and set(cour[32:]) == {600}
    pdf = PdfWriter()
    pdf.set_font("Helvetica", "", 10)
    assert pdf.string_width("Wim") == pytest.approx((944 + 222 + 833) * 10 / 1000 / MM)


def test_long_paragraph_wraps_within_the_text_width():
    words = ("The strut bridges the gap between two healthy vertebrae; its footplates rest on the endplates "
             "and the screws follow the planned trajectories. ") * 12
    pdf = PdfWriter()
    pdf.add_page()
    pdf.set_font("Helvetica", "", 9.5)
    pdf.multi_cell(0, 4.8, words)
    ops = text_ops(pages(pdf.output())[2][0])
    assert len(ops) >= 15
    inner_right = (210.0 - 18.0 - 1.0) * MM  # text width minus the cell's 1 mm inner margin
    for i, (font, size, tw, x, _, s) in enumerate(ops):
        natural = width_pt(font, size, 0.0, s)
        assert natural <= inner_right - x + 0.01, s  # the words fit before any justification
        if i < len(ops) - 1:  # justified: every line but the last ends at the right edge
            assert tw > 0 and x + width_pt(font, size, tw, s) == pytest.approx(inner_right, abs=0.05)
    assert b" ".join(s for *_, s in ops).split() == words.encode("latin-1").split()
    ys = [y for *_, y, _ in ops]
    assert np.allclose(np.diff(ys), -4.8 * MM, atol=0.02)


def test_a_word_wider_than_the_line_breaks_at_characters():
    sha = "9f2c" * 16
    pdf = PdfWriter()
    pdf.set_font("Courier", "", 7)
    lines = pdf.wrap(sha, 20.0)
    assert len(lines) > 1 and "".join(t for t, _ in lines) == sha
    assert all(pdf.string_width(t) <= 20.0 for t, _ in lines)


def test_text_is_written_literally_with_escapes():
    pdf = PdfWriter()
    pdf.add_page()
    pdf.cell(0, 5, "f(x) = a\\b (UMCU-2024-017)")
    content = pages(pdf.output())[2][0]
    assert b"(f\\(x\\) = a\\\\b \\(UMCU-2024-017\\)) Tj" in content


def test_pictures_are_rgb_with_transparency_on_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (255, 0, 0, 255)  # opaque red | transparent | half-transparent blue
    rgba[:2, 3:] = (0, 0, 255, 0)
    rgba[2:, 3:] = (0, 0, 255, 128)
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pdf = PdfWriter()
    pdf.add_page()
    pdf.image(path, x=20, w=60)
    pdf.image(path, x=20, w=30)  # the same file twice: stored once
    assert pdf.y == pytest.approx(pdf.t_margin + 40 + 20)
    objects, _, _ = pages(pdf.output())
    images = [b for b in objects.values() if b"/Subtype /Image" in b]
    assert len(images) == 1
    px = np.frombuffer(stream_data(images[0]), np.uint8).reshape(4, 6, 3)
    assert (px[:, :3] == (255, 0, 0)).all() and (px[:2, 3:] == 255).all()
    assert np.abs(px[2:, 3:].astype(int) - (127, 127, 255)).max() <= 1


# ---- no fpdf2 ---------------------------------------------------------------------------------------------------


def test_nothing_imports_fpdf():
    found = []
    for dirpath, dirnames, files in os.walk(MODULE_DIR):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                             else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                    found += [f"{path}: {n}" for n in names if n.split(".")[0] == "fpdf"]
    assert found == []


def test_the_record_is_written_with_fpdf_blocked(tmp_path):
    code = ("import sys\n"
            "sys.modules['fpdf'] = None  # any import of fpdf now fails\n"
            "from PatientImplantPlannerLib.record.report import write_report\n"
            "html, pdf = write_report({'case_id': 'NO-FPDF'}, {}, sys.argv[1])\n"
            "assert open(pdf, 'rb').read(5) == b'%PDF-'\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fpdf' and sys.modules[m] is not None))\n")
    env = dict(os.environ, PYTHONPATH=MODULE_DIR)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
