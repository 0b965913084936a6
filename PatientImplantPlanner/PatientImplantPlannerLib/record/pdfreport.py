"""The design record's document model drawn as PDF (A4 portrait) with the project's own writer (pdfwriter.py).

Layout: margins 18/14/18 mm, a header line "TITLE - case X" and a footer "Page n/N" on every page, automatic page
breaks, no heading left alone at the foot of a page, tables with borders, a bold grey heading row repeated on every
page the table spans, wrapped cell text, status cells filled by colour, monospace columns, pictures centred and scaled,
captions in italics. The standard PDF fonts cover Latin-1 only, so text is reduced to Latin-1 first (_latin1).
"""

from PIL import Image

from .pdfwriter import PdfWriter
from .sections import TITLE, Document, _meta_rows
from .values import ATTENTION, OK, TODO, fmt

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
_HEADING_FILL = (238, 241, 244)
_GREY_TEXT = 110
_CELL_PADDING = 1.2  # mm, every side of a table cell


def _table(pdf: PdfWriter, headers, rows, widths, status_col=None, mono=(), size=8.0):
    """A table across the text width; ``widths`` are the columns' shares of it. Each row is as tall as its tallest
    cell, moves whole to the next page if it does not fit, and the heading row is repeated there."""
    total = float(sum(widths))
    cols = [pdf.epw * w / total for w in widths]
    line_h = 1.25 * size * 0.3528 + 1.0

    def style(i, text, heading):
        if heading or i == status_col:
            return "Helvetica", "B", size, (_HEADING_FILL if heading else _PDF_STATUS_FILL.get(text))
        if i in mono:
            return "Courier", "", size - 1, None
        return "Helvetica", "", size, None

    def layout(cells, heading):
        laid = []
        for i, text in enumerate(cells):
            family, emphasis, pt, fill = style(i, text, heading)
            pdf.set_font(family, emphasis, pt)
            lines = [t for t, _ in pdf.wrap(_latin1(text), cols[i] - 2 * _CELL_PADDING)]
            laid.append((family, emphasis, pt, fill, lines))
        height = max((len(c[4]) for c in laid), default=1) * line_h + 2 * _CELL_PADDING
        return laid, height

    def draw(laid, height):
        x = pdf.l_margin
        pdf.set_draw_color(0)
        for (family, emphasis, pt, fill, lines), w in zip(laid, cols):
            if fill:
                pdf.set_fill_color(*fill)
            pdf.rect(x, pdf.y, w, height, fill=bool(fill), stroke=True)
            pdf.set_font(family, emphasis, pt)
            top = pdf.y + (height - len(lines) * line_h) / 2  # vertically centred
            for k, line in enumerate(lines):
                pdf.text(x + _CELL_PADDING, top + k * line_h + 0.5 * line_h + 0.3 * pdf.font_size, line)
            x += w
        pdf.y += height

    heading = layout(headers, True) if headers else None
    if heading and pdf.y + heading[1] > pdf.page_break_trigger:
        pdf.add_page()
    if heading:
        draw(*heading)
    for row in rows:
        laid, height = layout(row, False)
        if pdf.y + height > pdf.page_break_trigger:
            pdf.add_page()
            if heading:
                draw(*heading)
        draw(laid, height)
    pdf.set_font("Helvetica", "", size)
    pdf.ln(2)


def _image_size(path, width: float) -> tuple:
    """(w, h) mm of a picture: at most the text width and 150 mm wide, at most 120 mm tall, aspect kept."""
    with Image.open(path) as im:
        w_px, h_px = im.size
    w = min(width, 150.0)
    h = w * h_px / w_px
    if h > 120.0:  # tall slices: limit the height, keep the aspect
        h, w = 120.0, 120.0 * w_px / h_px
    return w, h


def render_pdf(doc: Document, record: dict) -> bytes:
    """The document as PDF bytes."""
    case = _latin1(fmt(record.get("case_id")))

    def header(pdf):
        pdf.set_font("Helvetica", "", 8)
        pdf.set_text_color(_GREY_TEXT)
        pdf.cell(0, 5, _latin1(f"{TITLE} - case {case}"), align="L")
        pdf.ln(7)
        pdf.set_text_color(0)

    def footer(pdf, page, pages):
        pdf.x, pdf.y = pdf.l_margin, pdf.h - 12
        pdf.set_font("Helvetica", "", 8)
        pdf.set_text_color(_GREY_TEXT)
        pdf.cell(0, 5, f"Page {page}/{pages}", align="R")
        pdf.set_text_color(0)

    pdf = PdfWriter(210.0, 297.0, margins=(18.0, 14.0, 18.0), bottom=16.0, header=header, footer=footer)
    pdf.title = _latin1(f"{TITLE} - {case}")
    pdf.creator = "PatientImplantPlanner"
    pdf.add_page()
    width = pdf.epw

    pdf.set_font("Helvetica", "B", 16)
    pdf.multi_cell(0, 8, _latin1(TITLE))
    pdf.ln(2)
    _table(pdf, [], [list(r) for r in _meta_rows(record)], [30, 70], size=9)

    def first_part_height(i):
        """Height (mm) of what must stay on the page with a heading: the start of the next block."""
        if i >= len(doc.blocks):
            return 0.0
        nxt = doc.blocks[i]
        if nxt[0] == "image" and nxt[1]:
            return _image_size(nxt[1], width)[1] + 12
        if nxt[0] == "sub":
            return 10 + first_part_height(i + 1)
        return 25.0 if nxt[0] == "table" else 15.0

    for index, block in enumerate(doc.blocks):
        kind = block[0]
        if kind == "section":
            if pdf.y + 14 + first_part_height(index + 1) > pdf.page_break_trigger:  # no orphan headings
                pdf.add_page()
            pdf.ln(3)
            pdf.set_font("Helvetica", "B", 13)
            pdf.set_text_color(34, 51, 68)
            pdf.multi_cell(0, 7, _latin1(f"{block[1]}. {block[2]}"), align="L")
            pdf.set_draw_color(180)
            pdf.line(pdf.l_margin, pdf.y, pdf.l_margin + width, pdf.y)
            pdf.set_draw_color(0)
            pdf.set_text_color(0)
            pdf.ln(2)
        elif kind == "sub":
            if pdf.y + 8 + first_part_height(index + 1) > pdf.page_break_trigger:
                pdf.add_page()
            pdf.set_font("Helvetica", "B", 10.5)
            pdf.multi_cell(0, 6, _latin1(block[1]), align="L")
        elif kind == "para":
            pdf.set_font("Helvetica", "", 9.5)
            pdf.multi_cell(0, 4.8, _latin1(block[1]))
            pdf.ln(1.5)
        elif kind == "bullets":
            pdf.set_font("Helvetica", "", 9.5)
            for item in block[1]:
                pdf.multi_cell(0, 4.8, _latin1("- " + item))
            pdf.ln(1.5)
        elif kind == "table":
            _, headers, rows, widths, status_col, mono = block
            _table(pdf, headers, rows, widths, status_col, mono)
        elif kind == "image":
            _, path, caption = block
            if not path:
                pdf.set_font("Helvetica", "I", 9)
                pdf.multi_cell(0, 5, _latin1(f"{caption}: n/a (image missing)."))
                continue
            w, h = _image_size(path, width)
            if pdf.y + h + 12 > pdf.page_break_trigger:
                pdf.add_page()
            pdf.image(path, x=pdf.l_margin + (width - w) / 2, w=w, h=h)
            pdf.set_font("Helvetica", "I", 8.5)
            pdf.multi_cell(0, 4.5, _latin1(caption), align="C")
            pdf.ln(3)
    return pdf.output()
