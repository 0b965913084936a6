"""The design record (technical-file report) of an implant export, as self-contained HTML and as PDF.

``write_report(record, images, out_dir)`` turns the export's record (record.DesignRecord, or its plain-dict shape) into
one document model (sections of paragraphs, key-value tables, tables and pictures) rendered twice, so the HTML and
the PDF always say the same thing. Every value comes from the record; a missing one is written "n/a". Statuses in
the risk checklist are derived from the record by explicit rules (checklist.py), never assumed; the sections are in
sections.py, the formatting and reference numbers in values.py.
The PDF uses fpdf2 (pure Python) with its built-in Helvetica, so text is reduced to Latin-1.
"""

import base64
import datetime
import html
import os

from ..core.errors import OutputExistsError
from ..core.mesh import atomic_write_bytes
from .designrecord import DesignRecord
from .sections import TITLE, Document, _meta_rows, build_document
from .values import (
    ATTENTION,
    OK,
    TODO,
    fmt,
)

# ---- document model ------------------------------------------------------------------------------------------


# ---- content -------------------------------------------------------------------------------------------------


# ---- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: Helvetica, Arial, sans-serif; color: #222; max-width: 60em; margin: 2em auto; padding: 0 1em;
       font-size: 14px; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #345; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #bbb; padding-bottom: .2em; color: #234; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; color: #345; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #eef1f4; }
td.mono { font-family: monospace; word-break: break-all; }
.status { font-weight: bold; padding: 1px 6px; border-radius: 3px; white-space: nowrap; }
.s-ok { background: #dff0d8; color: #2b5a2b; } .s-attention { background: #fcf0cf; color: #7a5a00; }
.s-todo { background: #f8d7da; color: #7a1f27; }
figure { margin: 1em 0 1.5em; } figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption { font-style: italic; color: #555; font-size: .9em; }
.meta td:first-child { width: 30%; }
@media print { body { max-width: none; margin: 0; } h2, h3 { page-break-after: avoid; }
               tr, figure { page-break-inside: avoid; } }
"""

_STATUS_CLASS = {OK: "s-ok", ATTENTION: "s-attention", TODO: "s-todo"}


def _html(doc: Document, record: dict) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(TITLE)} - {e(fmt(record.get('case_id')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(TITLE)}</h1>",
        '<table class="meta">'
        + "".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td></tr>" for a, b in _meta_rows(record))
        + "</table>",
    ]
    for block in doc.blocks:
        kind = block[0]
        if kind == "section":
            out.append(f'<h2 id="s{block[1]}">{block[1]}. {e(block[2])}</h2>')
        elif kind == "sub":
            out.append(f"<h3>{e(block[1])}</h3>")
        elif kind == "para":
            out.append(f"<p>{e(block[1])}</p>")
        elif kind == "bullets":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in block[1]) + "</ul>")
        elif kind == "table":
            _, headers, rows, widths, status_col, mono = block
            total = float(sum(widths))
            cols = "".join(f'<col style="width:{100 * w / total:.1f}%">' for w in widths)
            head = "".join(f"<th>{e(h)}</th>" for h in headers)
            body = []
            for row in rows:
                cells = []
                for i, c in enumerate(row):
                    if i == status_col:
                        cells.append(f'<td><span class="status {_STATUS_CLASS.get(c, "")}">{e(c)}</span></td>')
                    else:
                        cells.append(f'<td class="mono">{e(c)}</td>' if i in mono else f"<td>{e(c)}</td>")
                body.append("<tr>" + "".join(cells) + "</tr>")
            out.append(
                f"<table><colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>"
                + "".join(body)
                + "</tbody></table>"
            )
        elif kind == "image":
            _, path, caption = block
            if path:
                with open(path, "rb") as f:
                    data = base64.b64encode(f.read()).decode("ascii")
                mime = "image/png" if path.lower().endswith(".png") else "image/jpeg"
                out.append(
                    f'<figure><img src="data:{mime};base64,{data}" alt="{e(caption)}">'
                    f"<figcaption>{e(caption)}</figcaption></figure>"
                )
            else:
                out.append(f"<p><em>{e(caption)}: n/a (image missing).</em></p>")
    out.append("</body></html>")
    return "\n".join(out)


# ---- PDF -----------------------------------------------------------------------------------------------------

_LATIN1 = {
    "\u2013": "-",
    "\u2014": "-",
    "\u2265": ">=",
    "\u2264": "<=",
    "\u2192": "->",
    "\u2248": "~",
    "\u2026": "...",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2212": "-",
}


def _latin1(text: str) -> str:
    """Helvetica in PDF covers Latin-1 only: map common symbols, replace the rest with '?'."""
    s = str(text)
    for a, b in _LATIN1.items():
        s = s.replace(a, b)
    return s.encode("latin-1", "replace").decode("latin-1")


_PDF_STATUS_FILL = {OK: (223, 240, 216), ATTENTION: (252, 240, 207), TODO: (248, 215, 218)}


def _pdf(doc: Document, record: dict) -> bytes:
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    case = _latin1(fmt(record.get("case_id")))

    class _Report(FPDF):
        def header(self):
            self.set_font("Helvetica", "", 8)
            self.set_text_color(110)
            self.cell(0, 5, _latin1(f"{TITLE} - case {case}"), align="L")
            self.ln(7)
            self.set_text_color(0)

        def footer(self):
            self.set_y(-12)
            self.set_font("Helvetica", "", 8)
            self.set_text_color(110)
            self.cell(0, 5, f"Page {self.page_no()}/{{nb}}", align="R")
            self.set_text_color(0)

    pdf = _Report(orientation="P", unit="mm", format="A4")
    pdf.set_title(_latin1(f"{TITLE} - {case}"))
    pdf.set_creator("PatientImplantPlanner")
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(18, 14, 18)
    pdf.add_page()
    width = pdf.epw
    heading = FontFace(emphasis="BOLD", fill_color=(238, 241, 244))

    def table(headers, rows, widths, status_col=None, mono=(), size=8.0):
        pdf.set_font("Helvetica", "", size)
        with pdf.table(
            col_widths=tuple(widths),
            headings_style=heading,
            line_height=1.25 * size * 0.3528 + 1.0,
            text_align="LEFT",
            borders_layout="ALL",
            padding=1.2,
            first_row_as_headings=bool(headers),
        ) as t:
            if headers:
                hr = t.row()
                for h in headers:
                    hr.cell(_latin1(h))
            for row in rows:
                tr = t.row()
                for i, c in enumerate(row):
                    if i == status_col:
                        tr.cell(_latin1(c), style=FontFace(emphasis="BOLD", fill_color=_PDF_STATUS_FILL.get(c)))
                    elif i in mono:
                        tr.cell(_latin1(c), style=FontFace(family="Courier", size_pt=size - 1))
                    else:
                        tr.cell(_latin1(c))
        pdf.ln(2)

    pdf.set_font("Helvetica", "B", 16)
    pdf.multi_cell(0, 8, _latin1(TITLE), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    table([], [list(r) for r in _meta_rows(record)], [30, 70], size=9)

    def image_size(path):
        from PIL import Image

        with Image.open(path) as im:
            w_px, h_px = im.size
        w = min(width, 150.0)
        h = w * h_px / w_px
        if h > 120.0:  # tall slices: limit the height, keep the aspect
            h, w = 120.0, 120.0 * w_px / h_px
        return w, h

    def first_part_height(i):
        """Height (mm) of what must stay on the page with a heading: the start of the next block."""
        if i >= len(doc.blocks):
            return 0.0
        nxt = doc.blocks[i]
        if nxt[0] == "image" and nxt[1]:
            return image_size(nxt[1])[1] + 12
        if nxt[0] == "sub":
            return 10 + first_part_height(i + 1)
        return 25.0 if nxt[0] == "table" else 15.0

    for index, block in enumerate(doc.blocks):
        kind = block[0]
        if kind == "section":
            if pdf.get_y() + 14 + first_part_height(index + 1) > pdf.h - pdf.b_margin:  # no orphan headings
                pdf.add_page()
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 13)
            pdf.set_text_color(34, 51, 68)
            pdf.multi_cell(0, 7, _latin1(f"{block[1]}. {block[2]}"), new_x="LMARGIN", new_y="NEXT")
            pdf.set_draw_color(180)
            pdf.line(pdf.l_margin, pdf.get_y(), pdf.l_margin + width, pdf.get_y())
            pdf.set_draw_color(0)
            pdf.set_text_color(0)
            pdf.ln(2)
        elif kind == "sub":
            if pdf.get_y() + 8 + first_part_height(index + 1) > pdf.h - pdf.b_margin:
                pdf.add_page()
            pdf.set_font("Helvetica", "B", 10.5)
            pdf.multi_cell(0, 6, _latin1(block[1]), new_x="LMARGIN", new_y="NEXT")
        elif kind == "para":
            pdf.set_font("Helvetica", "", 9.5)
            pdf.multi_cell(0, 4.8, _latin1(block[1]), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1.5)
        elif kind == "bullets":
            pdf.set_font("Helvetica", "", 9.5)
            for item in block[1]:
                pdf.multi_cell(0, 4.8, _latin1("- " + item), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1.5)
        elif kind == "table":
            _, headers, rows, widths, status_col, mono = block
            table(headers, rows, widths, status_col, mono)
        elif kind == "image":
            _, path, caption = block
            if not path:
                pdf.set_font("Helvetica", "I", 9)
                pdf.multi_cell(0, 5, _latin1(f"{caption}: n/a (image missing)."), new_x="LMARGIN", new_y="NEXT")
                continue
            w, h = image_size(path)
            if pdf.get_y() + h + 12 > pdf.h - pdf.b_margin:
                pdf.add_page()
            pdf.image(path, x=pdf.l_margin + (width - w) / 2, w=w, h=h)
            pdf.set_font("Helvetica", "I", 8.5)
            pdf.multi_cell(0, 4.5, _latin1(caption), new_x="LMARGIN", new_y="NEXT", align="C")
            pdf.ln(3)
    return bytes(pdf.output())


# ---- entry point ---------------------------------------------------------------------------------------------


def write_report(
    record, images: dict, out_dir: str, basename: str = "design_record", overwrite: bool = False, build=None
) -> tuple:
    """Write ``<basename>.html`` (self-contained, pictures embedded) and ``<basename>.pdf`` into ``out_dir``.

    ``record``: a record.DesignRecord, or its ``as_dict()`` shape (parts of it may be missing: shown "n/a").

    ``images``: {key: path or (path, caption)}; known keys "render_3d", "ct_sagittal", "ct_coronal" get standard
    captions. Refuses (OutputExistsError, nothing written) if either file exists unless ``overwrite``. Both files
    are written atomically. ``build(record, images)`` makes the document (default: the strut's sections; the
    mirror-defect kind passes its own). Returns (html_path, pdf_path).
    """
    record = record.as_dict() if isinstance(record, DesignRecord) else dict(record or {})
    html_path = os.path.join(os.fspath(out_dir), basename + ".html")
    pdf_path = os.path.join(os.fspath(out_dir), basename + ".pdf")
    if not overwrite:
        for p in (html_path, pdf_path):
            if os.path.exists(p):
                raise OutputExistsError(
                    f"The design record {p} already exists.", "Choose another folder or name, or allow overwriting."
                )
    record.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    doc = (build or build_document)(record, images or {})
    html_bytes = _html(doc, record).encode("utf-8")
    pdf_bytes = _pdf(doc, record)  # built fully before anything is written
    atomic_write_bytes(pdf_path, pdf_bytes, overwrite=overwrite)
    atomic_write_bytes(html_path, html_bytes, overwrite=overwrite)
    return html_path, pdf_path
