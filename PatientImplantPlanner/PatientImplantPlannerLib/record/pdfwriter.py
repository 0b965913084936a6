"""A minimal PDF 1.4 writer: the part of a PDF library the design record needs, and nothing more.

Why our own: the design record used to be written with fpdf2, which is LGPL-3.0, and the project takes permissively
licensed dependencies only. This writer needs Pillow (images) and zlib, nothing else.

What it does: A4 (or any) pages in millimetres with the origin at the top left; the standard 14 fonts Helvetica,
Helvetica-Bold, Helvetica-Oblique and Courier (not embedded, text encoded as WinAnsi, so Latin-1 only); single-line
cells and wrapped multi-line cells (left, right, centred or justified); lines; filled and stroked rectangles; PNG or
JPEG pictures (decoded to RGB, transparency composited on white, stored FlateDecode); a header drawn when a page starts
and a footer drawn on every page once the page count is known ("Page n/N"); /Info /Title and /Creator; every stream
compressed with zlib. Strings are written literally, one ``(...) Tj`` per line, so text can be found in the
decompressed content streams.

Character widths (for wrapping) are the Adobe Core14 AFM metrics of the WinAnsi codes 32-255, in 1/1000 of the font
size; Helvetica-Oblique has Helvetica's widths, every Courier glyph is 600.
"""

import math
import zlib

from PIL import Image

MM = 72.0 / 25.4  # points per millimetre

# Adobe Core14 AFM widths of WinAnsi codes 32..255 (the codes WinAnsi leaves undefined show a bullet).
_HELVETICA_AFM = """
278 278 355 556 556 889 667 191 333 333 389 584 278 333 278 278 556 556 556 556 556 556 556 556 556 556 278 278 584
584 584 556 1015 667 667 722 722 667 611 778 722 278 500 667 556 833 722 778 667 778 722 667 611 722 667 944 667 667
611 278 278 278 469 556 333 556 556 500 556 556 278 556 556 222 222 500 222 833 556 556 556 556 333 500 278 556 500
722 500 500 500 334 260 334 584 350 556 350 222 556 333 1000 556 556 333 1000 667 333 1000 350 611 350 350 222 222
333 333 350 556 1000 333 1000 500 333 944 350 500 667 278 333 556 556 556 556 260 556 333 737 370 556 584 333 737 333
400 584 333 333 333 556 537 278 333 333 365 556 834 834 834 611 667 667 667 667 667 667 1000 722 667 667 667 667 278
278 278 278 722 722 778 778 778 778 778 584 778 722 722 722 722 667 667 611 556 556 556 556 556 556 889 500 556 556
556 556 278 278 278 278 556 556 556 556 556 556 556 584 611 556 556 556 556 500 556 500
"""
_HELVETICA_BOLD_AFM = """
278 333 474 556 556 889 722 238 333 333 389 584 278 333 278 278 556 556 556 556 556 556 556 556 556 556 333 333 584
584 584 611 975 722 722 722 722 667 611 778 722 278 556 722 611 833 722 778 667 778 722 667 611 722 667 944 667 667
611 333 278 333 584 556 333 556 611 556 611 556 333 611 611 278 278 556 278 889 611 611 611 611 389 556 333 611 556
778 556 556 500 389 280 389 584 350 556 350 278 556 500 1000 556 556 333 1000 667 333 1000 350 611 350 350 278 278
500 500 350 556 1000 333 1000 556 333 944 350 500 667 278 333 556 556 556 556 280 556 333 737 370 556 584 333 737 333
400 584 333 333 333 611 556 278 333 333 365 556 834 834 834 611 722 722 722 722 722 722 1000 722 667 667 667 667 278
278 278 278 722 722 778 778 778 778 778 584 778 722 722 722 722 667 667 611 556 556 556 556 556 556 889 556 556 556
556 556 278 278 278 278 611 611 611 611 611 611 611 584 611 611 611 611 611 556 611 556
"""


def _width_table(afm: str) -> tuple:
    widths = [int(v) for v in afm.split()]
    assert len(widths) == 224, "one width per WinAnsi code 32..255"
    return (0,) * 32 + tuple(widths)


_HELVETICA = _width_table(_HELVETICA_AFM)

# (family, style) -> (resource name, PostScript name, widths per code 0..255)
FONTS = {
    ("helvetica", ""): ("F1", "Helvetica", _HELVETICA),
    ("helvetica", "B"): ("F2", "Helvetica-Bold", _width_table(_HELVETICA_BOLD_AFM)),
    ("helvetica", "I"): ("F3", "Helvetica-Oblique", _HELVETICA),
    ("courier", ""): ("F4", "Courier", (0,) * 32 + (600,) * 224),
}


def to_winansi(text) -> bytes:
    """Text as the bytes of a standard-14 font: Latin-1, '?' for anything else, control characters as spaces."""
    data = str(text).encode("latin-1", "replace")
    return bytes(32 if c < 32 else c for c in data)


def pdf_string(data: bytes) -> bytes:
    """A PDF literal string: backslash, parentheses and carriage return escaped, everything else as is."""
    return b"(" + data.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)").replace(b"\r", b"\\r") + b")"


def _info_string(text: str) -> bytes:
    """A document-information string: literal if ASCII, else UTF-16BE with its byte-order mark."""
    text = str(text)
    if text.isascii():
        return pdf_string(text.encode("ascii"))
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode("ascii") + b">"


def _num(v: float, digits: int = 2) -> str:
    s = f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _rgb(*v) -> tuple:
    """A colour from one grey level or three components, 0-255."""
    if len(v) == 1 and isinstance(v[0], (tuple, list)):
        v = tuple(v[0])
    if len(v) == 1:
        v = (v[0],) * 3
    return tuple(max(0.0, min(1.0, float(c) / 255.0)) for c in v)


def _colour_op(rgb: tuple, op: str) -> str:
    return " ".join(_num(c, 3) for c in rgb) + " " + op


def decode_image(path) -> tuple:
    """(width, height, RGB bytes) of a picture; transparency is composited on white."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = im.convert("RGB")
    return rgb.width, rgb.height, rgb.tobytes()


class PdfWriter:
    """Pages laid out top-down in millimetres. ``header(pdf)`` runs when a page starts; ``footer(pdf, page, pages)``
    runs for every page when the document is written, so it can print the total page count."""

    def __init__(self, width: float = 210.0, height: float = 297.0, margins=(18.0, 14.0, 18.0), bottom: float = 16.0,
                 header=None, footer=None):
        self.w, self.h = float(width), float(height)
        self.l_margin, self.t_margin, self.r_margin = (float(m) for m in margins)
        self.b_margin = float(bottom)  # automatic page break below h - b_margin
        self.c_margin = 1.0  # inner margin of a cell's text
        self.header, self.footer = header, footer
        self.title, self.creator = "", ""
        self.x, self.y = self.l_margin, self.t_margin
        self.pages = []  # one list of content-stream lines per page
        self.page = -1  # index of the page being drawn
        self._images = {}  # path -> (resource name, width, height, RGB bytes)
        self.set_font("Helvetica", "", 10)
        self.text_rgb, self.draw_rgb, self.fill_rgb = _rgb(0), _rgb(0), _rgb(255)
        self.line_width = 0.2

    # ---- state --------------------------------------------------------------------------------------------

    @property
    def epw(self) -> float:
        """Effective page width: between the left and right margins."""
        return self.w - self.l_margin - self.r_margin

    @property
    def page_break_trigger(self) -> float:
        return self.h - self.b_margin

    def set_font(self, family: str, style: str = "", size: float = None):
        key = (family.lower(), style.upper())
        if key not in FONTS:
            raise ValueError(f"Font {family} {style!r} is not one of {sorted(FONTS)}.")
        self.font_key = key
        if size is not None:
            self.font_size_pt = float(size)

    @property
    def font_size(self) -> float:
        """The font size in millimetres."""
        return self.font_size_pt / MM

    def set_text_color(self, *rgb):
        self.text_rgb = _rgb(*rgb)

    def set_draw_color(self, *rgb):
        self.draw_rgb = _rgb(*rgb)

    def set_fill_color(self, *rgb):
        self.fill_rgb = _rgb(*rgb)

    def set_line_width(self, mm: float):
        self.line_width = float(mm)

    def string_width(self, text, font_key=None, size_pt=None) -> float:
        """Width of the text in millimetres in the current (or the given) font and size."""
        widths = FONTS[font_key or self.font_key][2]
        units = sum(widths[c] for c in to_winansi(text))
        return units * (size_pt or self.font_size_pt) / 1000.0 / MM

    # ---- pages --------------------------------------------------------------------------------------------

    def add_page(self):
        self.pages.append([])
        self.page = len(self.pages) - 1
        self.x, self.y = self.l_margin, self.t_margin
        if self.header:
            self.header(self)

    def ln(self, h: float):
        self.x = self.l_margin
        self.y += h

    def _out(self, op: str):
        if self.page < 0:
            raise RuntimeError("add_page() first")
        self.pages[self.page].append(op)

    def _pt(self, x: float, y: float) -> str:
        return f"{_num(x * MM)} {_num((self.h - y) * MM)}"

    # ---- drawing ------------------------------------------------------------------------------------------

    def line(self, x1: float, y1: float, x2: float, y2: float):
        self._out(f"{_num(self.line_width * MM)} w {_colour_op(self.draw_rgb, 'RG')} "
                  f"{self._pt(x1, y1)} m {self._pt(x2, y2)} l S")

    def rect(self, x: float, y: float, w: float, h: float, fill: bool = False, stroke: bool = True):
        if not (fill or stroke):
            return
        ops = []
        if fill:
            ops.append(_colour_op(self.fill_rgb, "rg"))
        if stroke:
            ops += [f"{_num(self.line_width * MM)} w", _colour_op(self.draw_rgb, "RG")]
        paint = "B" if fill and stroke else ("f" if fill else "S")
        ops.append(f"{self._pt(x, y + h)} {_num(w * MM)} {_num(h * MM)} re {paint}")
        self._out(" ".join(ops))

    def text(self, x: float, y: float, text, word_spacing_pt: float = 0.0):
        """Write one line of text with its baseline at (x, y) mm in the current font and text colour."""
        name = FONTS[self.font_key][0]
        word_spacing_pt = math.floor(word_spacing_pt * 1000.0) / 1000.0  # rounded down: never past the margin
        tw = f"{_num(word_spacing_pt, 3)} Tw " if word_spacing_pt > 0 else ""
        op = (f"BT /{name} {_num(self.font_size_pt)} Tf {_colour_op(self.text_rgb, 'rg')} {tw}{self._pt(x, y)} Td "
              + pdf_string(to_winansi(text)).decode("latin-1") + " Tj ET")
        self._out(op + (" 0 Tw" if tw else ""))

    def cell(self, w: float, h: float, text="", align: str = "L", fill: bool = False, border: bool = False,
             justify_to: float = None):
        """A single-line cell at (x, y); ``w`` 0 reaches the right margin. Moves x to the cell's right edge."""
        if w == 0:
            w = self.w - self.r_margin - self.x
        if fill or border:
            self.rect(self.x, self.y, w, h, fill=fill, stroke=border)
        text = str(text).replace("\n", " ")
        if text:
            sw = self.string_width(text)
            spacing = 0.0
            if align == "C":
                tx = self.x + (w - sw) / 2
            elif align == "R":
                tx = self.x + w - self.c_margin - sw
            else:
                tx = self.x + self.c_margin
                spaces = text.count(" ")
                if align == "J" and justify_to is not None and spaces and justify_to > sw:
                    spacing = (justify_to - sw) * MM / spaces
            self.text(tx, self.y + 0.5 * h + 0.3 * self.font_size, text, word_spacing_pt=spacing)
        self.x += w

    def wrap(self, text, width: float, font_key=None, size_pt=None) -> list:
        """Lines of the text (split at its newlines, then at spaces, long words at characters) no wider than
        ``width`` mm; each line as (text, ends its paragraph?)."""
        def fits(s):
            return self.string_width(s, font_key, size_pt) <= width + 1e-9

        lines = []
        for para in str(text).split("\n"):
            current = ""
            for word in para.split(" "):
                trial = word if not current else current + " " + word
                if fits(trial):
                    current = trial
                    continue
                if current:
                    lines.append((current, False))
                    current = ""
                while word and not fits(word):  # a word wider than the line: break it at characters
                    n = 1
                    while n < len(word) and fits(word[: n + 1]):
                        n += 1
                    lines.append((word[:n], False))
                    word = word[n:]
                current = word
            lines.append((current, True))
        return lines

    def multi_cell(self, w: float, h: float, text, align: str = "J", fill: bool = False):
        """Text wrapped to ``w`` mm (0: to the right margin), one line every ``h`` mm, a new page when a line does
        not fit; justified lines except each paragraph's last. Ends at the left margin below the text."""
        x0 = self.x
        if w == 0:
            w = self.w - self.r_margin - x0
        inner = w - 2 * self.c_margin
        for line, last in self.wrap(text, inner):
            if self.y + h > self.page_break_trigger and self.y > self.t_margin + 1e-6:
                self.add_page()
            self.x = x0
            line = line.rstrip(" ") if not last else line
            a = "L" if align == "J" and last else align
            self.cell(w, h, line, align=a, fill=fill, justify_to=inner if a == "J" else None)
            self.y += h
        self.x = self.l_margin

    def image(self, path, x: float, y: float = None, w: float = 0.0, h: float = 0.0):
        """A picture with its top left at (x, y) (y: the current position, which then moves below the picture),
        ``w`` by ``h`` mm (one of them 0: keep the aspect)."""
        key = str(path)
        if key not in self._images:
            width, height, rgb = decode_image(path)
            self._images[key] = (f"I{len(self._images) + 1}", width, height, rgb)
        name, px_w, px_h, _ = self._images[key]
        if not w and not h:
            w = px_w * 25.4 / 96.0
        if not w:
            w = h * px_w / px_h
        if not h:
            h = w * px_h / px_w
        advance = y is None
        y = self.y if y is None else y
        self._out(f"q {_num(w * MM)} 0 0 {_num(h * MM)} {self._pt(x, y + h)} cm /{name} Do Q")
        if advance:
            self.y = y + h

    # ---- output -------------------------------------------------------------------------------------------

    def output(self) -> bytes:
        """The finished document. Footers are drawn here, once the number of pages is known."""
        if not self.pages:
            self.add_page()
        if self.footer:
            keep = self.page, self.x, self.y
            for i in range(len(self.pages)):
                self.page = i
                self.footer(self, i + 1, len(self.pages))
            self.page, self.x, self.y = keep

        objects = []  # object n is objects[n - 1]

        def new(body: bytes = b"") -> int:
            objects.append(body)
            return len(objects)

        def stream(header: str, data: bytes) -> bytes:
            packed = zlib.compress(data, 6)
            return (f"<< {header} /Filter /FlateDecode /Length {len(packed)} >>\nstream\n".encode("ascii")
                    + packed + b"\nendstream")

        catalog, pages_id = new(), new()
        fonts = {name: new(f"<< /Type /Font /Subtype /Type1 /BaseFont /{base} /Encoding /WinAnsiEncoding >>"
                           .encode("ascii")) for name, base, _ in FONTS.values()}
        images = {}
        for name, width, height, rgb in self._images.values():
            images[name] = new(stream(f"/Type /XObject /Subtype /Image /Width {width} /Height {height} "
                                      "/ColorSpace /DeviceRGB /BitsPerComponent 8", rgb))
        font_refs = " ".join(f"/{n} {i} 0 R" for n, i in fonts.items())
        image_refs = " ".join(f"/{n} {i} 0 R" for n, i in images.items())
        resources = new(f"<< /ProcSet [/PDF /Text /ImageC] /Font << {font_refs} >> /XObject << {image_refs} >> >>"
                        .encode("ascii"))
        kids = []
        box = f"[0 0 {_num(self.w * MM)} {_num(self.h * MM)}]"
        for ops in self.pages:
            content = new(stream("", "\n".join(ops).encode("latin-1")))
            kids.append(new(f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox {box} /Resources {resources} 0 R "
                            f"/Contents {content} 0 R >>".encode("ascii")))
        objects[pages_id - 1] = (f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] "
                                 f"/Count {len(kids)} >>").encode("ascii")
        objects[catalog - 1] = f"<< /Type /Catalog /Pages {pages_id} 0 R >>".encode("ascii")
        info = new(b"<< /Title " + _info_string(self.title) + b" /Creator " + _info_string(self.creator)
                   + b" /Producer (PatientImplantPlanner pdfwriter) >>")

        out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        offsets = []
        for n, body in enumerate(objects, start=1):
            offsets.append(len(out))
            out += f"{n} 0 obj\n".encode("ascii") + body + b"\nendobj\n"
        xref = len(out)
        out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode("ascii")
        out += b"".join(f"{o:010d} 00000 n \n".encode("ascii") for o in offsets)
        out += (f"trailer\n<< /Size {len(objects) + 1} /Root {catalog} 0 R /Info {info} 0 R >>\n"
                f"startxref\n{xref}\n%%EOF\n").encode("ascii")
        return bytes(out)
