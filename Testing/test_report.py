"""Batch QC report: thumbnails, summary.csv, report.html content and escaping, the page as Chromium shows it."""
import csv
import io
import shutil
import subprocess
import tempfile
import time
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from RegistrationMisalignmentLib import labels as L
from RegistrationMisalignmentLib.figures import VIEWS, overlay_rgb, thumbnail_pngs, worst_slice_indices
from RegistrationMisalignmentLib.report import (FLAG_MARKER, report_html, summary_rows, worst_cases, write_report,
                                                write_summary_csv)

THRESHOLD = 0.2
CT_VALUE = -600.0
SPACING = (2.5, 1.0, 1.0)
ERROR = 'cannot read <fixed> & "moving"'
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--virtual-time-budget=2000")


def _labels() -> np.ndarray:
    """A small label map: wrong on the left, a poor strip, correct on the right."""
    labels = np.zeros((20, 40, 48), dtype=np.uint8)
    labels[4:16, 8:32, 6:22] = L.WRONG
    labels[4:16, 8:32, 22:26] = L.POOR
    labels[4:16, 8:32, 26:42] = L.CORRECT
    return labels


def _thumbnails() -> dict:
    """Thumbnail PNGs of the small label map over a flat CT."""
    labels = _labels()
    return thumbnail_pngs(np.full(labels.shape, CT_VALUE, dtype=np.float32), labels, SPACING)


WARNINGS = ["moving image is on another grid than the fixed image: resampling it onto the fixed grid",
            "intensities <unusual>"]


def _record(case_id: str, fractions=None, total_s=None, confidence=None) -> dict:
    """A case.json record: finished with (correct, poor, wrong) fractions, or failed when fractions is None."""
    record = {"case_id": case_id, "status": "failed", "error": ERROR,
              "inputs": {"fixed": f"/data/{case_id}/f.nii.gz", "moving": f"/data/{case_id}/m.nii.gz",
                         "mask": None, "transform": None},
              "model": {"weights_sha256": "ab" * 32, "architecture": "hierarchical_lstm", "package_version": "0.1.0"},
              "device": "cpu"}
    if fractions is None:
        return record
    record.update(status="done", error=None, mask_ml=1000.0, mask_voxels=1000000, mean_confidence=confidence,
                  outputs={"labels": "labels.nrrd", "probabilities": None,
                           "thumbnails": {view: f"{view}.png" for view in VIEWS}},
                  classes={name: {"voxels": int(f * 1e6), "ml": 1000.0 * f, "fraction": f}
                           for name, f in zip(("correct", "poor", "wrong"), fractions)},
                  timings_s={"preprocessing": 1.0, "network": 2.0, "resampling": 0.5, "total": total_s})
    return record


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A batch output folder: 'p&1' flagged (50 % wrong), 'p002' not (10 %, coronal thumbnail lost), 'p003' failed."""
    out_dir = tmp_path_factory.mktemp("batch")
    records = [_record("p003"), _record("p002", (0.1, 0.8, 0.1), 9.5, 0.91),
               _record("p&1", (0.3, 0.2, 0.5), 12.0, 0.62)]
    records[1]["warnings"] = WARNINGS
    records[1].update(wrong_region_count=0, wrong_regions=[], calibrated=True)
    records[2]["calibrated"] = True
    records[2].update(wrong_region_count=7, wrong_regions=[{"ml": 123.4, "voxels": 123400,
                                                            "centre_lps_mm": [1.0, 2.0, 3.0], "extent_mm": [9, 9, 9]}])
    pngs = _thumbnails()
    for record in records[1:]:
        case_dir = out_dir / "cases" / record["case_id"]
        case_dir.mkdir(parents=True)
        for view, png in pngs.items():
            (case_dir / f"{view}.png").write_bytes(png)
    (out_dir / "cases" / "p002" / "coronal.png").unlink()
    return out_dir, records


class Page(HTMLParser):
    """What the tests read from a report page: header cells, body rows (class and cell texts), image sources."""

    def __init__(self, text: str):
        super().__init__()
        self.headers, self.rows, self.images = [], [], []
        self._in_header = self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        """Open a header cell, a body row or cell; note image sources."""
        attrs = dict(attrs)
        self._in_header = tag == "th"
        if tag == "th":
            self.headers.append({"attrs": attrs, "text": ""})
        elif tag in ("tbody", "tr", "td") and (tag == "tbody" or self._in_body):
            self._in_body = True
            if tag == "tr":
                self.rows.append({"class": attrs.get("class") or "", "cells": []})
            elif tag == "td":
                self.rows[-1]["cells"].append("")
        elif tag == "img":
            self.images.append(attrs.get("src") or "")

    def handle_endtag(self, tag):
        """Close the table body or a header cell."""
        self._in_body = self._in_body and tag != "tbody"
        self._in_header = self._in_header and tag != "th"

    def handle_data(self, data):
        """Collect header and body cell texts."""
        if self._in_header:
            self.headers[-1]["text"] += data
        elif self._in_body and self.rows and self.rows[-1]["cells"]:
            self.rows[-1]["cells"][-1] += data

    def case_ids(self) -> list:
        """Case ids of the body rows, in page order."""
        return [row["cells"][0] for row in self.rows]

    def header(self, label: str) -> dict:
        """The header cell with a label."""
        return next(h for h in self.headers if h["text"] == label)


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a fresh profile; returns its stdout. Fails (never skips) when it is missing."""
    executable = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if executable is None:
        pytest.fail("Chromium is not installed: apt-get install -y --no-install-recommends chromium (.ci/run does)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    result = subprocess.run([executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


def test_worst_slices_prefer_wrong_then_evaluated_then_middle():
    labels = np.zeros((10, 12, 14), dtype=np.uint8)
    assert worst_slice_indices(labels) == {"axial": 5, "coronal": 6, "sagittal": 7}
    labels[3, 4, 5:9] = L.POOR
    labels[3:6, 4, 6] = L.CORRECT
    assert worst_slice_indices(labels) == {"axial": 3, "coronal": 4, "sagittal": 6}
    labels[1:9, 1:11, 1:4] = L.CORRECT
    labels[7, 9, 10:12] = L.WRONG
    labels[6, 9, 11] = L.WRONG
    assert worst_slice_indices(labels) == {"axial": 7, "coronal": 9, "sagittal": 11}


def test_thumbnails_have_true_aspect_and_class_colours():
    expected_shapes = {"axial": (213, 256), "coronal": (256, 246), "sagittal": (256, 205)}
    wrong = overlay_rgb(np.array([[CT_VALUE]]), np.array([[L.WRONG]]))[0, 0]
    for view, png in _thumbnails().items():
        image = mpimg.imread(io.BytesIO(png))[..., :3]
        assert image.shape[:2] == expected_shapes[view], view
        assert (np.abs(image - wrong).max(axis=-1) < 2 / 255).sum() > 1000, f"{view}: no wrong-coloured pixels"


def test_thumbnails_of_a_full_size_volume_are_fast():
    ct = np.full((150, 512, 512), -800, dtype=np.int16)
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[30:120, 100:400, 80:430] = L.CORRECT
    labels[60:70, 200:260, 300:340] = L.WRONG
    start = time.perf_counter()
    pngs = thumbnail_pngs(ct, labels, (2.0, 0.7, 0.7))
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"thumbnails took {elapsed:.2f} s (aim: < 0.5 s)"
    assert max(mpimg.imread(io.BytesIO(pngs["axial"])).shape[:2]) == 256


def test_summary_csv_rows_and_flags(cohort, tmp_path):
    out_dir, records = cohort
    path = write_summary_csv(records, tmp_path / "summary.csv", THRESHOLD)
    with open(path, newline="") as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["p003", "p002", "p&1"]
    assert list(rows["p&1"]) == ["case_id", "status", "error", "correct_fraction", "poor_fraction", "wrong_fraction",
                                 "correct_ml", "poor_ml", "wrong_ml", "mask_ml", "mean_confidence", "calibrated",
                                 "wrong_regions", "largest_wrong_region_ml", "total_s", "device", "weights_sha256",
                                 "flagged", "warnings"]
    assert [row["calibrated"] for row in rows.values()] == ["", "True", "True"]
    assert [(row["wrong_regions"], row["largest_wrong_region_ml"]) for row in rows.values()] == [
        ("", ""), ("0", "0.0"), ("7", "123.4")]
    assert rows["p002"]["warnings"] == " | ".join(WARNINGS) and rows["p&1"]["warnings"] == ""
    assert {case: row["flagged"] for case, row in rows.items()} == {"p003": "False", "p002": "False", "p&1": "True"}
    assert rows["p&1"]["wrong_fraction"] == "0.5" and float(rows["p&1"]["wrong_ml"]) == 500.0
    assert rows["p002"]["total_s"] == "9.5" and rows["p002"]["weights_sha256"] == "ab" * 32
    assert rows["p003"]["status"] == "failed" and rows["p003"]["error"] == ERROR
    assert rows["p003"]["wrong_fraction"] == "" and rows["p003"]["mask_ml"] == ""
    assert rows["p002"]["mean_confidence"] == "0.91" and rows["p003"]["mean_confidence"] == ""
    assert [row["flagged"] for row in summary_rows(records, 0.05)] == [False, True, True]


def test_report_is_escaped_self_contained_and_flags_the_right_rows(cohort):
    out_dir, records = cohort
    html = report_html(records, out_dir, THRESHOLD)
    page = Page(html)
    assert "<title>Registration misalignment report</title>" in html
    assert "p&1" not in html and "p&amp;1" in html
    assert ERROR not in html and "cannot read &lt;fixed&gt; &amp; &quot;moving&quot;" in html
    assert "http:" not in html and "https:" not in html and "url(" not in html and "<link" not in html
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.case_ids() == ["p&1", "p002", "p003"]
    assert [row["class"] for row in page.rows] == ["flagged", "", "failed"]
    assert FLAG_MARKER in page.rows[0]["cells"][1] and FLAG_MARKER not in "".join(page.rows[1]["cells"])
    assert ERROR in page.rows[2]["cells"][1]
    assert "warning: moving image is on another grid" in page.rows[1]["cells"][1]
    assert "warning: intensities &lt;unusual&gt;" in html
    confidence = [h["text"] for h in page.headers].index("mean confidence %")
    assert [row["cells"][confidence] for row in page.rows] == ["62.0", "91.0", "\u2014"]
    largest = [h["text"] for h in page.headers].index("largest wrong region (mL)")
    assert [row["cells"][largest] for row in page.rows] == ["123.4", "0.0", "\u2014"]
    assert html.count("no coronal image") == 0, "p002 is not among the worst cases when one case is flagged"
    assert [r["case_id"] for r in worst_cases(records, THRESHOLD)] == ["p&1"]
    for view in VIEWS:
        assert f"p&amp;1, {view} (slice with the most wrong voxels)" in html
    for label in ("cases: 3", "done: 2", "failed: 1", "flagged: 1", "hierarchical_lstm", "ab" * 6):
        assert label in html
    assert all(escape(L.display_name(v)) in html for v in L.CLASS_VALUES)


def test_without_flagged_cases_the_worst_section_shows_the_top_cases_and_placeholders(cohort):
    out_dir, records = cohort
    html = report_html(records, out_dir, 0.9)
    assert [r["case_id"] for r in worst_cases(records, 0.9)] == ["p&1", "p002"]
    assert FLAG_MARKER not in html and "flagged: 0" in html
    assert "no coronal image" in html and "p002, sagittal" in html


def test_a_case_held_by_another_run_is_counted_as_busy_not_failed(tmp_path):
    busy = {"case_id": "p004", "status": "busy", "error": "being processed by another run"}
    html = report_html([busy, _record("p005", (1.0, 0.0, 0.0), 3.0)], tmp_path, THRESHOLD)
    page = Page(html)
    assert "busy: 1" in html and "failed: 0" in html and "done: 1" in html
    assert page.case_ids() == ["p005", "p004"] and [row["class"] for row in page.rows] == ["", ""]
    assert "being processed by another run" in page.rows[1]["cells"][1]
    assert "no axial image" in html and "no sagittal image" in html


def test_write_report_writes_the_page(cohort, tmp_path):
    out_dir, records = cohort
    path = write_report(records, tmp_path, THRESHOLD)
    assert path == tmp_path / "report.html"
    assert path.read_text(encoding="utf-8") == report_html(records, tmp_path, THRESHOLD)


def test_chromium_runs_the_sort_script(cohort, tmp_path):
    out_dir, records = cohort
    page = Page(chromium(tmp_path, "--dump-dom", write_report(records, out_dir, THRESHOLD).as_uri()))
    assert "sorted-desc" in page.header("wrong %")["attrs"]["class"], "the sort script did not run"
    assert page.header("wrong %")["attrs"].get("aria-sort") == "descending"
    assert page.case_ids() == ["p&1", "p002", "p003"]
    assert [row["class"] for row in page.rows] == ["flagged", "", "failed"]
    assert FLAG_MARKER in page.rows[0]["cells"][1]
    assert len(page.images) == 2 + 3 and all(src.startswith("data:image/png;base64,") for src in page.images)


@pytest.mark.parametrize("clicks, direction, order", [(1, "asc", ["p002", "p&1", "p003"]),
                                                       (2, "desc", ["p&1", "p002", "p003"])])
def test_clicking_a_header_sorts_numerically(cohort, tmp_path, clicks, direction, order):
    out_dir, records = cohort
    click = "<script>var th = document.querySelectorAll('th')[9];" + " th.click();" * clicks + "</script>"
    page_path = out_dir / f"clicked-{clicks}.html"
    page_path.write_text(report_html(records, out_dir, THRESHOLD).replace("</body>", click + "</body>"), "utf-8")
    page = Page(chromium(tmp_path, "--dump-dom", page_path.as_uri()))
    assert page.headers[9]["text"] == "total (s)"
    assert f"sorted-{direction}" in page.header("total (s)")["attrs"]["class"]
    assert "sorted" not in page.header("wrong %")["attrs"]["class"]
    assert page.case_ids() == order, "12.0 s must sort after 9.5 s (numeric, not text); failed cases last"


def test_chromium_screenshot_shows_the_thumbnails(cohort, tmp_path):
    out_dir, records = cohort
    screenshot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,2000",
             write_report(records, out_dir, THRESHOLD).as_uri())
    pixels = mpimg.imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    for value in (L.WRONG, L.CORRECT):
        colour = overlay_rgb(np.array([[CT_VALUE]]), np.array([[value]]))[0, 0]
        matching = (np.abs(pixels - colour).max(axis=-1) < 6 / 255).sum()
        assert matching > 2000, f"{L.CLASS_NAMES[value]} overlay colour not rendered ({matching} pixels)"


def test_the_report_says_which_cases_used_uncalibrated_weights(cohort):
    out_dir, records = cohort
    assert "uncalibrated" not in report_html(records, out_dir, THRESHOLD)
    uncalibrated = [dict(record, calibrated=False) for record in records]  # the failed one has no map to calibrate
    html = report_html(uncalibrated, out_dir, THRESHOLD)
    assert "2 case(s) used uncalibrated weights" in html and "p002, p&amp;1" in html
