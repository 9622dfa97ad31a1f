"""The run report in a real headless Chromium: it renders without console errors and every chart is visible.
Skipped where no Chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser import find_chromium, open_page
from shardflow.config import validate
from shardflow.pipelines.corpus import CorpusConfig, run_corpus
from shardflow.report import CHARTS, PALETTE, write_report
from shardflow.storage import Location
from support import sample_records, write_shard

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="needs chromium, chromium-browser or google-chrome on PATH (Debian/Ubuntu: apt-get install chromium)",
)

# Each chart's drawing: its <svg>'s box, whether the browser shows it, and its bars' boxes.
CHART_BOXES = """Object.fromEntries(%s.map(chart => {
  const svg = document.querySelector(`#chart-${chart} svg`);
  if (!svg) return [chart, null];
  const box = svg.getBoundingClientRect();
  const bars = [...svg.querySelectorAll("rect")].filter(bar => bar.getBoundingClientRect().width > 0).length;
  const shown = svg.checkVisibility({checkOpacity: true, checkVisibilityCSS: true});
  return [chart, {width: box.width, height: box.height, left: box.left, shown: shown, bars: bars}];
}))"""


@pytest.fixture(scope="module")
def report(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run with something in every chart: two languages, a duplicate, a spam document that quality
    drops and two records that cannot be read."""
    folder = tmp_path_factory.mktemp("report-browser")
    records = sample_records()
    articles = [r for lang in ("fin_Latn", "eng_Latn") for r in [r for r in records if r["lang"][0] == lang][:8]]
    spam = {"id": "spam", "text": "buy now buy now buy now\n" * 20}
    write_shard(folder / "in" / "articles.jsonl.zst", [*articles, {**articles[0], "id": "copy"}, spam])
    write_shard(folder / "in" / "bad.jsonl", b'{"text": \n{"id": 3}\n')
    config = validate(
        {
            "input": {"paths": [str(folder / "in")]},
            "output": {"path": str(folder / "out")},
            "stages": [{"op": "langid"}, {"op": "exact_dedup"}, {"op": "quality"}],
            "ray": {"progress": False},
        },
        CorpusConfig,
    )
    run_corpus(config)
    html, _ = write_report(Location(str(folder / "out")))
    return Path(html)


def test_the_report_renders_in_chromium_with_every_chart_visible(report: Path) -> None:
    numbers = json.loads(report.with_name("report.json").read_text())
    assert numbers["counts"]["dropped"] >= 2 and numbers["counts"]["quarantined"] == 2  # content for every chart
    page = open_page(report.as_uri(), CHART_BOXES % json.dumps(CHARTS), width=1200, height=900)
    assert page.errors == []
    for chart, box in page.value.items():
        assert box is not None, f"chart {chart} has no <svg>"
        assert box["shown"] and box["width"] > 0 and box["height"] > 0 and box["left"] >= 0, (chart, box)
        assert box["bars"] > 0, f"chart {chart} draws nothing"
    assert page.screenshot.startswith(b"\x89PNG\r\n\x1a\n")
    assert (page.pixels["width"], page.pixels["height"]) == (1200, 900)
    # not blank: text, and the charts' first colour, take pixels
    assert page.pixels["colours"] > 50 and PALETTE[0] in page.pixels["frequent"], page.pixels
