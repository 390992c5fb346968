"""The published results: docs/results.md's block and the README's headline are exactly what `release.evaluate`
renders from docs/results/results.json, that file describes the shipped model, and a few of its per-image figures
are re-measured here within 0.05 dB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from evaluate.harness import evaluate
from model import SHIPPED_MODEL, load_model
from release.evaluate import CHECK_IMAGES, load_set, sha256
from release.report import BEGIN, END, HEADLINE_BEGIN, HEADLINE_END, bars, render, render_headline, replace_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "results.json"
TOLERANCE_DB = 0.05


@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads(RESULTS.read_text())


def test_results_describe_the_shipped_model(summary):
    assert summary["model_sha256"] == sha256(SHIPPED_MODEL), "re-run python -m release.evaluate for the new model"
    assert (ROOT / summary["model"]).resolve() == SHIPPED_MODEL.resolve()


def block_of(text: str, begin: str, end: str) -> str:
    return begin + text.split(begin, 1)[1].split(end, 1)[0] + end


def test_results_page_and_readme_headline_are_generated_not_typed(summary):
    page = ROOT / "docs" / "results.md"
    assert block_of(page.read_text(), BEGIN, END) == render(summary, page.parent, RESULTS.parent)
    readme = (ROOT / "README.md").read_text()
    assert block_of(readme, HEADLINE_BEGIN, HEADLINE_END) == render_headline(summary, ROOT, page)
    for crop in summary["crops"]:
        assert (RESULTS.parent / crop["file"]).is_file()
    assert BEGIN not in (ROOT / "weights" / "README.md").read_text()  # the card links to the page instead
    assert "docs/results.md" in (ROOT / "weights" / "README.md").read_text()


def test_release_evaluate_writes_both_blocks(summary, tmp_path):
    """The command's last step, on the stored results: the page gets the full block, the README the headline."""
    from release.evaluate import write_pages

    page, readme = tmp_path / "docs" / "results.md", tmp_path / "README.md"
    page.parent.mkdir()
    page.write_text("# Results\n")
    readme.write_text(f"# x\n{HEADLINE_BEGIN}\nold\n{HEADLINE_END}\n## next\n")
    write_pages(summary, [page], [readme], RESULTS.parent)
    assert block_of(page.read_text(), BEGIN, END) == render(summary, page.parent, RESULTS.parent)
    assert readme.read_text().endswith(f"{HEADLINE_END}\n## next\n") and "](docs/results.md)" in readme.read_text()


def test_bars_notice_a_cell_that_fails(summary):
    broken = json.loads(json.dumps(summary))
    cell = broken["real"]["Kodak24"][3]
    cell["psnr_model"], cell["psnr_gain"] = cell["psnr_input"] - 0.1, -0.1
    clean_cell = next(c for c in broken["real"]["CBSD68"] if c["sigma"] == 0 and c["quality"] is None)
    clean_cell["psnr_model"] = 44.9
    met = {what: ok for what, ok, _ in bars(broken)}
    assert not met["gains in every degraded real-protocol cell"]
    assert not met["leaves clean images alone (45 dB or more)"]


def test_replace_block_keeps_the_rest(tmp_path):
    path = tmp_path / "R.md"
    path.write_text(f"head\n{BEGIN}\nold\n{END}\ntail\n")
    replace_block(path, f"{BEGIN}\nnew\n{END}")
    assert path.read_text() == f"head\n{BEGIN}\nnew\n{END}\ntail\n"


@pytest.mark.shared
def test_stored_per_image_figures_are_reproduced(summary):
    if not (SHARED_DATA / "test").is_dir():
        pytest.skip(f"{SHARED_DATA / 'test'} is absent (the shared data set is optional)")
    model = load_model(SHIPPED_MODEL)
    for name in sorted({row["set"] for row in summary["check"]}):
        images, names = load_set(SHARED_DATA / "test", name, CHECK_IMAGES)
        for protocol in ("anchor", "real"):
            rows = [r for r in summary["check"] if (r["set"], r["protocol"]) == (name, protocol)]
            cells = sorted({(r["sigma"], r["quality"]) for r in rows}, key=str)
            told = all("psnr_told" in r for r in rows)
            for sigma, quality in cells:
                result = evaluate(
                    model, images, [sigma], [quality], protocol, "cpu", names=names, told=told, progress=False
                )
                measured = {r["index"]: r for r in result["per_image"]}
                for row in (r for r in rows if (r["sigma"], r["quality"]) == (sigma, quality)):
                    for key in ("psnr_model", "psnr_told") if told else ("psnr_model",):
                        assert abs(measured[row["index"]][key] - row[key]) <= TOLERANCE_DB, (key, row, measured)
