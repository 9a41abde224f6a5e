"""Cohort QC report of a batch run: summary.csv and a self-contained, sortable report.html."""
from __future__ import annotations

import base64
import csv
import io
from collections import Counter
from html import escape
from pathlib import Path

from . import labels as L
from .imageio import write_bytes

SUMMARY_NAME = "summary.csv"
REPORT_NAME = "report.html"
TITLE = "Registration misalignment report"
FLAG_MARKER = "\u2691 over threshold"
WORST_WHEN_NONE_FLAGGED = 5
THUMBNAIL_VIEWS = ("axial", "coronal", "sagittal")
SUMMARY_COLUMNS = ("case_id", "status", "error", "correct_fraction", "poor_fraction", "wrong_fraction",
                   "correct_ml", "poor_ml", "wrong_ml", "mask_ml", "mean_confidence", "calibrated", "wrong_regions",
                   "largest_wrong_region_ml", "total_s", "device",
                   "weights_sha256", "flagged", "warnings")
SUMMARY_START = ",".join(SUMMARY_COLUMNS[:3]) + ","  # how the header of every version's summary.csv begins
OWN_HEAD_BYTES = 4096  # read of an existing summary or report to tell whether batch wrote it
CLASSES = tuple(L.CLASS_NAMES[value] for value in L.CLASS_VALUES)
WRONG = L.CLASS_NAMES[L.WRONG]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.counts span, .legend span { margin-right: 1.5em; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin-right: .3em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; vertical-align: middle; }
td.text, th.text { text-align: left; }
th[data-type] { cursor: pointer; user-select: none; background: #f0f0f0; }
th.sorted-asc::after { content: " \\25B2"; }
th.sorted-desc::after { content: " \\25BC"; }
tr.flagged { background: #fde8d0; }
tr.failed { background: #e4e4e4; color: #555; }
.marker { font-weight: bold; color: #8a4b00; white-space: nowrap; }
.error { font-family: monospace; white-space: pre-wrap; }
.warning { color: #8a4b00; font-size: .9em; white-space: pre-wrap; }
td img { height: 64px; }
.placeholder { display: inline-block; min-width: 64px; padding: .5em; border: 1px dashed #999; color: #777; }
.worst figure { display: inline-block; width: 256px; margin: 0 1em 1em 0; vertical-align: top; }
.worst img { width: 256px; }
"""

SCRIPT = """
document.querySelectorAll("table[data-sortable]").forEach(function (table) {
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function key(row, index) {
    var text = row.cells[index].getAttribute("data-sort");
    return headers[index].getAttribute("data-type") === "number" && text !== "" ? parseFloat(text) : text;
  }
  function sortBy(index, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, index), y = key(b, index);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var order = x < y ? -1 : (x > y ? 1 : 0);
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (th) {
      th.classList.remove("sorted-asc", "sorted-desc");
      th.removeAttribute("aria-sort");
    });
    headers[index].classList.add(descending ? "sorted-desc" : "sorted-asc");
    headers[index].setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  headers.forEach(function (th, index) {
    if (!th.hasAttribute("data-type")) { return; }
    th.addEventListener("click", function () { sortBy(index, th.classList.contains("sorted-asc")); });
    if (th.hasAttribute("data-default-sort")) { sortBy(index, th.getAttribute("data-default-sort") === "desc"); }
  });
});
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def class_stat(record: dict, class_name: str, field: str):
    """One class statistic of a case ('fraction', 'ml' or 'voxels'), None when the case has none."""
    return ((record.get("classes") or {}).get(class_name) or {}).get(field)


def is_flagged(record: dict, flag_wrong_fraction: float) -> bool:
    """True if a finished case's wrong fraction is above the threshold."""
    wrong = class_stat(record, WRONG, "fraction")
    return record.get("status") == "done" and wrong is not None and wrong > flag_wrong_fraction


def largest_wrong_region(record: dict):
    """The volume (mL) of a case's largest region called wrong: 0 when there is none, None when the case has no map
    or was made before regions were listed."""
    regions = record.get("wrong_regions")
    if regions is None or record.get("status") != "done":
        return None
    return regions[0]["ml"] if regions else 0.0


def summary_rows(records: list, flag_wrong_fraction: float) -> list:
    """One flat dict per case with the SUMMARY_COLUMNS (None where a failed case has no value)."""
    rows = []
    for record in records:
        row = {"case_id": record.get("case_id"), "status": record.get("status"), "error": record.get("error")}
        for field in ("fraction", "ml"):
            row.update({f"{name}_{field}": class_stat(record, name, field) for name in CLASSES})
        row.update(mask_ml=record.get("mask_ml"), mean_confidence=record.get("mean_confidence"),
                   calibrated=record.get("calibrated"),
                   wrong_regions=record.get("wrong_region_count"),
                   largest_wrong_region_ml=largest_wrong_region(record),
                   total_s=(record.get("timings_s") or {}).get("total"), device=record.get("device"),
                   weights_sha256=(record.get("model") or {}).get("weights_sha256"),
                   flagged=is_flagged(record, flag_wrong_fraction), warnings=" | ".join(record.get("warnings") or []))
        rows.append({column: row[column] for column in SUMMARY_COLUMNS})
    return rows


def write_summary_csv(records: list, path, flag_wrong_fraction: float) -> Path:
    """Write summary.csv (one row per case) atomically; returns its path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(records, flag_wrong_fraction))
    write_bytes(buffer.getvalue().encode("utf-8"), path)
    return Path(path)


def _hex(rgb) -> str:
    """CSS hex colour of an RGB triple in 0..1."""
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgb)


def _percent(value) -> str:
    """A fraction as a percentage with one decimal, or an em dash when missing."""
    return "\u2014" if value is None else f"{100 * value:.1f}"


def _number(value, digits: int) -> str:
    """A number with fixed decimals, or an em dash when missing."""
    return "\u2014" if value is None else f"{value:.{digits}f}"


def _thumbnail(record: dict, out_dir: Path, view: str) -> str:
    """An <img> with a thumbnail PNG embedded as a data URI, or a placeholder when it is missing."""
    name = (((record.get("outputs") or {}).get("thumbnails")) or {}).get(view)
    path = out_dir / "cases" / str(record.get("case_id")) / name if name else None
    if path is None or not path.is_file():
        return f'<span class="placeholder">no {view} image</span>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = escape(f"{record.get('case_id')} {view}")
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def _cell(content: str, sort_key, css_class: str = "") -> str:
    """A table cell with its sort key (empty for missing values)."""
    key = "" if sort_key is None else escape(str(sort_key))
    class_attr = f' class="{css_class}"' if css_class else ""
    return f'<td{class_attr} data-sort="{key}">{content}</td>'


def _status_cell(record: dict, flagged: bool) -> str:
    """The status cell: status, the message of a failed or busy case, the marker of a flagged one."""
    status = escape(str(record.get("status")))
    if record.get("status") != "done":
        error = escape(str(record.get("error") or ""))
        return _cell(f'{status}<div class="error">{error}</div>', record.get("status"), "text")
    marker = f' <span class="marker">{FLAG_MARKER}</span>' if flagged else ""
    warnings = "".join(f'<div class="warning">warning: {escape(str(w))}</div>' for w in record.get("warnings") or [])
    return _cell(status + marker + warnings, record.get("status"), "text")


def _table_row(record: dict, out_dir: Path, flag_wrong_fraction: float) -> str:
    """One <tr> of the case table."""
    flagged = is_flagged(record, flag_wrong_fraction)
    css = "failed" if record.get("status") == "failed" else ("flagged" if flagged else "")
    total_s = (record.get("timings_s") or {}).get("total")
    wrong_ml, mask_ml = class_stat(record, WRONG, "ml"), record.get("mask_ml")
    fractions = [class_stat(record, name, "fraction") for name in CLASSES[::-1]]
    cells = [_cell(escape(str(record.get("case_id"))), record.get("case_id"), "text"), _status_cell(record, flagged)]
    cells += [_cell(_percent(f), f) for f in fractions]
    confidence = record.get("mean_confidence")
    largest = largest_wrong_region(record)
    cells += [_cell(_number(mask_ml, 1), mask_ml), _cell(_number(wrong_ml, 1), wrong_ml),
              _cell(_number(largest, 1), largest), _cell(_percent(confidence), confidence),
              _cell(_number(total_s, 1), total_s),
              _cell(escape(str(record.get("device") or "")), record.get("device"), "text"),
              _cell(_thumbnail(record, out_dir, "axial"), None)]
    class_attr = f' class="{css}"' if css else ""
    return f'<tr{class_attr}>{"".join(cells)}</tr>'


def _wrong_fraction_or_minus_one(record: dict) -> float:
    """A case's wrong fraction, -1 when it has none (failed cases)."""
    wrong = class_stat(record, WRONG, "fraction")
    return -1.0 if wrong is None else wrong


def _by_wrong_fraction(records: list) -> list:
    """Records sorted by wrong fraction, highest first; cases without one last."""
    return sorted(records, key=_wrong_fraction_or_minus_one, reverse=True)


def _table(records: list, out_dir: Path, flag_wrong_fraction: float) -> str:
    """The sortable case table, rows pre-ordered by wrong fraction (the script re-sorts on load)."""
    headers = [("case", "text", ""), ("status", "text", ""), ("wrong %", "number", "desc"),
               ("poor %", "number", ""), ("correct %", "number", ""), ("evaluated volume (mL)", "number", ""),
               ("wrong volume (mL)", "number", ""), ("largest wrong region (mL)", "number", ""),
               ("mean confidence %", "number", ""), ("total (s)", "number", ""),
               ("device", "text", "")]
    head = "".join(f'<th class="{kind}" data-type="{kind}"' + (f' data-default-sort="{default}"' if default else "")
                   + f">{escape(label)}</th>" for label, kind, default in headers) + "<th>axial</th>"
    body = "\n".join(_table_row(r, out_dir, flag_wrong_fraction) for r in _by_wrong_fraction(records))
    return f'<table data-sortable id="cases">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def worst_cases(records: list, flag_wrong_fraction: float) -> list:
    """Finished cases by wrong fraction, highest first: all flagged ones, or the top few if none is flagged."""
    done = [r for r in _by_wrong_fraction(records) if class_stat(r, WRONG, "fraction") is not None]
    flagged = [r for r in done if is_flagged(r, flag_wrong_fraction)]
    return flagged or done[:WORST_WHEN_NONE_FLAGGED]


def _worst_section(records: list, out_dir: Path, flag_wrong_fraction: float) -> str:
    """The 'Worst cases' section: three views per case with captions."""
    worst = worst_cases(records, flag_wrong_fraction)
    parts = ['<section class="worst"><h2>Worst cases</h2>'] + ([] if worst else ["<p>No finished cases.</p>"])
    for record in worst:
        case = escape(str(record.get("case_id")))
        parts.append(f"<h3>{case}: {_percent(class_stat(record, WRONG, 'fraction'))} % wrong</h3><div>")
        parts += [f"<figure>{_thumbnail(record, out_dir, view)}<figcaption>{case}, {view} (slice with the most "
                  f"wrong voxels)</figcaption></figure>" for view in THUMBNAIL_VIEWS]
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _header(records: list, flag_wrong_fraction: float) -> str:
    """Title, case counts, model identity and the class colour legend."""
    statuses = Counter(str(r.get("status")) for r in records)
    others = {status: n for status, n in statuses.items() if status not in ("done", "failed")}
    counts = {"cases": len(records), "done": statuses["done"], "failed": statuses["failed"], **others,
              "flagged": sum(is_flagged(r, flag_wrong_fraction) for r in records)}
    models = sorted({(str(m.get("architecture")), str(m.get("weights_sha256") or "")[:12])
                     for m in (r.get("model") for r in records) if m})
    model_text = "; ".join(f"{escape(arch)} (weights sha256 {escape(sha)})" for arch, sha in models) or "unknown"
    legend = "".join(f'<span><span class="swatch" style="background:{_hex(L.CLASS_COLORS[v])}"></span>'
                     f"{escape(L.display_name(v))}</span>" for v in L.CLASS_VALUES)
    count_text = "".join(f'<span id="count-{escape(name)}">{escape(name)}: {n}</span>' for name, n in counts.items())
    return (f"<h1>{TITLE}</h1>\n<p class=\"counts\">{count_text}</p>\n<p>Model: {model_text}. Flagged: wrong "
            f"fraction above {100 * flag_wrong_fraction:g} %.</p>\n{_uncalibrated_note(records)}"
            f"<p class=\"legend\">{legend}</p>")


def _uncalibrated_note(records: list) -> str:
    """A warning paragraph when some finished cases used uncalibrated weights, whose mean confidence is not the share
    of voxels whose class is right; empty otherwise."""
    cases = [str(r.get("case_id")) for r in records if r.get("status") == "done" and r.get("calibrated") is False]
    if not cases:
        return ""
    return (f'<p class="warning">{len(cases)} case(s) used uncalibrated weights: their mean confidence is not the '
            f"share of voxels whose class is right (calibrate the weights with <code>release --calibration-ct</code>"
            f"). {escape(', '.join(cases[:10]))}{' ...' if len(cases) > 10 else ''}</p>\n")


def report_html(records: list, out_dir, flag_wrong_fraction: float) -> str:
    """The self-contained report page (inline CSS and JS, thumbnails embedded from out_dir/cases/<case_id>/)."""
    out_dir = Path(out_dir)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">', f"<title>{TITLE}</title>",
        f"<style>{STYLE}</style></head><body>", _header(records, flag_wrong_fraction),
        _table(records, out_dir, flag_wrong_fraction), _worst_section(records, out_dir, flag_wrong_fraction),
        f"<script>{SCRIPT}</script>", "</body></html>", ""])


def write_report(records: list, out_dir, flag_wrong_fraction: float) -> Path:
    """Write out_dir/report.html atomically; returns its path."""
    path = Path(out_dir) / REPORT_NAME
    write_bytes(report_html(records, out_dir, flag_wrong_fraction).encode("utf-8"), path)
    return path


def written_by_batch(path) -> bool:
    """Whether an existing summary.csv or report.html is one that batch wrote (any version): the summary's header, or
    the report's title near its start; False for another file or one that cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(OWN_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.startswith(SUMMARY_START) if path.name == SUMMARY_NAME else f"<title>{TITLE}</title>" in head
