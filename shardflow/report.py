"""The run report: one self-contained HTML file (inline SVG, no scripts, no network) and the same numbers
as JSON, computed from ``manifest.json``, so a report can be rebuilt for any finished output; beside every
drop and quarantine reason, a few of the records it removed (read from ``removed/`` and ``quarantine/``, a
bounded number of files), so that a threshold can be judged by eye.

    shardflow report OUTPUT      # writes OUTPUT/report.html and OUTPUT/report.json
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from shardflow.inspection import drop_reasons, quarantine_reasons, read_manifest, reason_examples, visible
from shardflow.storage import Location

TOP_LANGUAGES = 20
DEDUP_STAGES = ("exact_dedup", "fuzzy_dedup")
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
CHARTS = ("languages", "drop-reasons", "duplicates", "scores", "timing", "quarantine")
EXAMPLES_PER_REASON = 3


def _report_numbers(manifest: dict[str, Any]) -> dict[str, Any]:
    """Everything the charts show, per language and stage, derived from the manifest."""
    stage_names = [stage["name"] for stage in manifest["stages"][1:]]
    languages = {}
    for lang, counts in manifest["languages"].items():
        entering = counts["kept"] + counts["dropped"]
        after, remaining = {}, entering
        for name in stage_names:
            remaining -= sum(n for reason, n in counts["drop_reasons"].items() if reason.split(":", 1)[0] == name)
            after[name] = remaining
        duplicates = sum(n for r, n in counts["drop_reasons"].items() if r.split(":", 1)[0] in DEDUP_STAGES)
        languages[lang] = {
            "identified": entering,
            "after": after,
            "kept": counts["kept"],
            "dropped": counts["dropped"],
            "drop_reasons": counts["drop_reasons"],
            "duplicate_rate": round(duplicates / entering, 4) if entering else 0.0,
            "score_histogram": counts.get("score_histogram", []),
        }
    return {
        "counts": manifest["counts"],
        "stages": manifest["stages"],
        "timing": manifest.get("timing", {}),
        "drop_reasons": drop_reasons(manifest),
        "quarantine_reasons": quarantine_reasons(manifest),
        "dedup_ran": any(name in DEDUP_STAGES for name in stage_names),
        "languages": languages,
        "created": manifest["created"],
        "seconds": manifest.get("seconds"),
    }


def write_report(output: Location) -> tuple[str, str]:
    """Read ``OUTPUT/manifest.json``, write ``report.html`` and ``report.json`` beside it; return their URIs."""
    manifest = read_manifest(output)
    numbers = _report_numbers(manifest) | {"examples": reason_examples(output, manifest, EXAMPLES_PER_REASON)}
    html, data = output.join("report.html"), output.join("report.json")
    data.put_bytes(json.dumps(numbers, indent=2).encode())
    html.put_bytes(_render_html(numbers, output.uri).encode())
    return html.uri, data.uri


def _render_html(numbers: dict[str, Any], output: str) -> str:
    counts = numbers["counts"]
    ranked = sorted(numbers["languages"].items(), key=lambda item: -item[1]["identified"])[:TOP_LANGUAGES]
    stage_names = [stage["name"] for stage in numbers["stages"][1:]]
    sections = [
        _section(
            "languages",
            "Documents per language through the stages",
            f"The {len(ranked)} largest languages: documents identified, then left after each stage.",
            _bars(
                [
                    (lang, [("identified", n["identified"])] + [(s, n["after"][s]) for s in stage_names])
                    for lang, n in ranked
                ],
                stacked=False,
            ),
        ),
        _section(
            "drop-reasons",
            "Drop reasons per language",
            "Documents each stage removed, by reason (stacked); below, each reason with a few of its documents.",
            _bars(
                [
                    (lang, sorted(n["drop_reasons"].items()))
                    for lang, n in sorted(numbers["languages"].items(), key=lambda item: -item[1]["dropped"])[
                        :TOP_LANGUAGES
                    ]
                    if n["dropped"]
                ],
                stacked=True,
            )
            + _reasons_with_examples(numbers["drop_reasons"], numbers["examples"]),
        ),
        _section(
            "duplicates",
            "Duplicate rate per language",
            "Share of each language's documents removed as duplicates."
            + ("" if numbers["dedup_ran"] else " No dedup stage ran in this job, so every rate is 0."),
            _bars(
                [(lang, [("duplicate %", round(100 * n["duplicate_rate"], 2))]) for lang, n in ranked], stacked=False
            ),
        ),
        _section(
            "scores",
            "Document score per language",
            "How many documents scored 0-1, 1-2, ..., 9-10 (quality.score: higher = more like what people "
            "find fine; docs/quality.md), kept and removed together, per language.",
            _histograms([(lang, n["score_histogram"]) for lang, n in ranked if sum(n["score_histogram"])]),
        ),
        _section(
            "timing",
            "Time per stage",
            "Worker seconds each stage spent (stages overlap while streaming) and documents per worker second.",
            _bars(
                [
                    (f"{name} ({t['docs_per_busy_second']:,.0f} docs/s)", [("seconds", t["busy_seconds"])])
                    for name, t in numbers["timing"].items()
                ],
                stacked=False,
            ),
        ),
        _section(
            "quarantine",
            "Quarantined records by reason",
            "Records that never became documents (see quarantine/ for each one's source and bytes).",
            _bars(
                [(reason, [("records", n)]) for reason, n in sorted(numbers["quarantine_reasons"].items())],
                stacked=False,
            )
            + _reasons_with_examples(numbers["quarantine_reasons"], numbers["examples"]),
        ),
    ]
    stage_rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{s['in']:,}</td><td>{s['out']:,}</td><td>{s['dropped']:,}</td>"
        f"<td>{s['quarantined']:,}</td></tr>"
        for s in numbers["stages"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shardflow report: {html.escape(output)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em auto;max-width:980px;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}section{{margin:2em 0}}.note{{color:#555}}
details{{margin:.4em 0}}summary{{cursor:pointer}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px;
margin:.2em 0 .8em}}</style></head>
<body><h1>shardflow run report</h1>
<p>Output <code>{html.escape(output)}</code>, committed {html.escape(numbers["created"])}.</p>
<p id="summary"><b>read {counts["read"]:,}</b> = kept {counts["kept"]:,} + dropped {counts["dropped"]:,}
+ quarantined {counts["quarantined"]:,} &middot; {len(numbers["languages"])} languages</p>
<table id="stages"><tr><th>stage</th><th>in</th><th>out</th><th>dropped</th><th>quarantined</th></tr>
{stage_rows}</table>
{"".join(sections)}
<p class="note">The numbers behind every chart are in report.json beside this file.</p>
</body></html>
"""


def _top_reasons(reasons: dict[str, int], numbers: dict[str, Any]) -> list[tuple[str, float]]:
    """A language's drop reasons, with the ones outside the run's most frequent folded into ``other``."""
    total: dict[str, int] = {}
    for counts in numbers["languages"].values():
        for reason, n in counts["drop_reasons"].items():
            total[reason] = total.get(reason, 0) + n
    frequent = sorted(total, key=lambda reason: -total[reason])[: len(PALETTE) - 1]
    shown = [(reason, reasons[reason]) for reason in frequent if reason in reasons]
    other = sum(n for reason, n in reasons.items() if reason not in frequent)
    return shown + ([("other", other)] if other else [])


def _reasons_with_examples(reasons: dict[str, int], examples: dict[str, list[dict[str, Any]]]) -> str:
    """A table of ``reasons`` (most frequent first), each linked to its examples in a collapsed ``<details>``."""
    if not reasons:
        return ""
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    rows = "".join(
        f'<tr><td><a href="#{_anchor(reason)}">{html.escape(reason)}</a></td><td>{n:,}</td>'
        f"<td>{len(examples.get(reason, []))}</td></tr>"
        for reason, n in ranked
    )
    shown = "".join(_examples_of(reason, n, examples.get(reason, [])) for reason, n in ranked)
    return f"<table><tr><th>reason</th><th>records</th><th>examples</th></tr>{rows}</table>{shown}"


def _examples_of(reason: str, n: int, found: list[dict[str, Any]]) -> str:
    body = "".join(_example(example) for example in found) or (
        '<p class="note">None found in the files the report reads (a bounded number); '
        f"<code>shardflow inspect OUTPUT --reason {html.escape(reason)}</code> searches them all.</p>"
    )
    return (
        f'<details id="{_anchor(reason)}"><summary>{html.escape(reason)}: {len(found)} of {n:,} records</summary>'
        f"{body}</details>"
    )


def _example(example: dict[str, Any]) -> str:
    """One removed document or quarantined record: where it came from, and the start of its text, escaped."""
    facts = " &middot; ".join(
        f"{name} <code>{html.escape(visible(str(example[name])))}</code>"
        for name in ("doc_id", "lang", "source", "url", "dup_cluster", "detail")
        if example[name] is not None and not (name == "dup_cluster" and example[name] == example["doc_id"])
    )
    text = html.escape(visible(example["excerpt"])) + ("&hellip;" if example["truncated"] else "")
    return f'<p class="note">{facts}</p><pre>{text}</pre>'


def _anchor(reason: str) -> str:
    """The id of a reason's examples: ``reason-quality-c4.too_few_sentences``."""
    return "reason-" + re.sub(r"[^A-Za-z0-9_.]+", "-", reason)


def _section(chart_id: str, title: str, note: str, svg: str) -> str:
    return (
        f'<section id="chart-{chart_id}"><h2>{html.escape(title)}</h2>'
        f'<p class="note">{html.escape(note)}</p>{svg}</section>'
    )


def _histograms(rows: list[tuple[str, list[int]]]) -> str:
    """One small histogram per label (bins left to right, each bar's height its share of the label's
    largest bin), four to a row."""
    if not rows:
        return '<p class="note">No quality stage scored documents in this job.</p>'
    cell_width, cell_height, bar_area, per_row = 240, 110, 80, 4
    shapes = []
    for index, (label, counts) in enumerate(rows):
        x0, y0 = (index % per_row) * cell_width, (index // per_row) * cell_height
        bar = (cell_width - 30) / len(counts)
        shapes.append(f'<text x="{x0 + 4}" y="{y0 + 12}">{html.escape(label)} ({sum(counts):,})</text>')
        for position, count in enumerate(counts):
            height = bar_area * count / (max(counts) or 1)
            x, low, high = x0 + 4 + position * bar, position * 10 // len(counts), (position + 1) * 10 // len(counts)
            shapes.append(
                f'<rect x="{x:.1f}" y="{y0 + 16 + bar_area - height:.1f}" width="{bar - 2:.1f}" '
                f'height="{height:.1f}" fill="{PALETTE[0]}"><title>{html.escape(label)} score {low}-{high}: '
                f"{count:,}</title></rect>"
            )
        shapes.append(f'<text x="{x0 + 4}" y="{y0 + cell_height - 6}" font-size="10">0</text>')
        shapes.append(f'<text x="{x0 + cell_width - 34}" y="{y0 + cell_height - 6}" font-size="10">10</text>')
    height = ((len(rows) + per_row - 1) // per_row) * cell_height
    return f'<svg width="{cell_width * per_row}" height="{height}" font-size="11">{"".join(shapes)}</svg>'


def _bars(rows: list[tuple[str, list[tuple[str, float]]]], stacked: bool) -> str:
    """Horizontal bars, one row per label; series side by side (grouped) or end to end (stacked)."""
    if not rows:
        return '<p class="note">Nothing to show.</p>'
    series = list(dict.fromkeys(name for _, values in rows for name, _ in values))
    color = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    largest = (
        max((sum(v for _, v in values) if stacked else max((v for _, v in values), default=0)) for _, values in rows)
        or 1
    )
    bar, gap, left, width = (14 if stacked else 9), 6, 230, 620
    row_height = bar if stacked else bar * len(series)
    shapes, y = [], 0
    for label, values in rows:
        shapes.append(
            f'<text x="{left - 6}" y="{y + row_height / 2 + 4}" text-anchor="end">{html.escape(label)}</text>'
        )
        x = left
        for position, (name, value) in enumerate(values):
            length = width * value / largest
            top = y if stacked else y + position * bar
            shapes.append(
                f'<rect x="{x:.1f}" y="{top}" width="{length:.1f}" height="{bar - 1}" fill="{color[name]}">'
                f"<title>{html.escape(label)} {html.escape(name)}: {value:,}</title></rect>"
            )
            if stacked:
                x += length
            else:
                shapes.append(f'<text x="{left + length + 4:.1f}" y="{top + bar - 2}" font-size="10">{value:,}</text>')
        y += row_height + gap
    legend = "".join(f'<span style="color:{color[name]}">&#9632;</span> {html.escape(name)} &nbsp;' for name in series)
    return (
        f'<div class="legend">{legend}</div><svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" '
        f'height="{y}" font-size="11">{"".join(shapes)}</svg>'
    )
