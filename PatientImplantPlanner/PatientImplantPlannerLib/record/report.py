"""The design record (technical-file report) of an implant export, as self-contained HTML and as PDF.

``write_report(record, images, out_dir)`` turns the export's record (record.DesignRecord, or its plain-dict shape) into
one document model (sections of paragraphs, key-value tables, tables and pictures) rendered twice, so the HTML and
the PDF always say the same thing. Every value comes from the record; a missing one is written "n/a". Statuses in
the risk checklist are derived from the record by explicit rules (checklist.py), never assumed; the sections are in
sections.py, the formatting and reference numbers in values.py.
The PDF is drawn by pdfreport.py with the project's own PDF writer (pdfwriter.py).
"""

import base64
import datetime
import html
import os

from ..core.errors import OutputExistsError
from ..core.mesh import atomic_write_bytes
from .designrecord import DesignRecord
from .pdfreport import render_pdf
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
    pdf_bytes = render_pdf(doc, record)  # built fully before anything is written
    atomic_write_bytes(pdf_path, pdf_bytes, overwrite=overwrite)
    atomic_write_bytes(html_path, html_bytes, overwrite=overwrite)
    return html_path, pdf_path
