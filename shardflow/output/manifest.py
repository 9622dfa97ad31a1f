"""The manifest of a corpus output: counts per stage, language and reason, inputs and files, and where the
worker time went; ``read = kept + dropped + quarantined`` or it is not written."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any

from shardflow.errors import OutputStateError
from shardflow.schema import STAGE_ERROR
from shardflow.shards import Shard

__all__ = ["CORPUS", "KINDS", "QUARANTINE", "REMOVED", "artifact_names", "build_manifest", "stage_errors"]

CORPUS, REMOVED, QUARANTINE = "corpus", "removed", "quarantine"
KINDS = (CORPUS, REMOVED, QUARANTINE)
FORMAT = "shardflow-corpus/1"


def build_manifest(
    entries: dict[str, dict[str, Any]],
    shards: list[Shard],
    marked: dict[str, dict[str, Any]],
    stage_names: list[str],
    fingerprint: str,
) -> dict[str, Any]:
    """Counts per stage, language and reason, the inputs and the files; read = kept + dropped + quarantined."""
    by_kind: Counter[str] = Counter()
    quarantine_reasons: Counter[str] = Counter()
    drop_reasons: Counter[str] = Counter()
    languages: dict[str, Counter[str]] = defaultdict(Counter)
    busy: Counter[str] = Counter()
    histograms: dict[str, list[int]] = {}
    for entry in entries.values():
        busy.update(entry.get("seconds", {}))
        if entry.get("scores"):
            found = histograms.setdefault(entry["lang"], [0] * len(entry["scores"]))
            histograms[entry["lang"]] = [a + b for a, b in zip(found, entry["scores"], strict=True)]
        by_kind[entry["kind"]] += entry["rows"]
        if entry["kind"] == QUARANTINE:
            quarantine_reasons.update(entry["reasons"])
        else:
            languages[entry["lang"]][entry["kind"]] += entry["rows"]
            drop_reasons.update(entry["reasons"])
            languages[entry["lang"]].update({f"{REMOVED}:{r}": n for r, n in entry["reasons"].items()})
    read = sum(marked[shard.uri]["rows"] for shard in shards)
    if read != by_kind[CORPUS] + by_kind[REMOVED] + by_kind[QUARANTINE]:
        raise OutputStateError(f"counts do not reconcile: read {read} != written {dict(by_kind)}; rerun to redo")
    stages = _stage_counts(read, quarantine_reasons, drop_reasons, stage_names)
    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": {
            "read": read,
            "kept": by_kind[CORPUS],
            "dropped": by_kind[REMOVED],
            "quarantined": by_kind[QUARANTINE],
        },
        "stages": stages,
        "timing": _timing(stages, busy, read),
        "languages": {
            lang: _language_counts(counts) | ({"score_histogram": histograms[lang]} if lang in histograms else {})
            for lang, counts in sorted(languages.items())
        },
        "inputs": [{"uri": s.uri, "size": s.size, "version": s.version, "rows": marked[s.uri]["rows"]} for s in shards],
        "files": sorted(
            ({k: e[k] for k in ("path", "kind", "lang", "rows")} for e in entries.values()), key=lambda e: e["path"]
        ),
    }


def artifact_names(manifest: dict[str, Any]) -> list[str]:
    """The folders built beside the corpus (dedup indexes, the dense index): the manifest's entries that list
    ``files``."""
    return [name for name, value in manifest.items() if isinstance(value, dict) and "files" in value]


def stage_errors(quarantine_reasons: dict[str, int]) -> int:
    """How many records made a stage raise (``stage_error:<stage>`` quarantine reasons)."""
    return sum(n for reason, n in quarantine_reasons.items() if reason.startswith(f"{STAGE_ERROR}:"))


def _stage_counts(
    read: int, quarantine_reasons: Counter[str], drop_reasons: Counter[str], stage_names: list[str]
) -> list[dict[str, Any]]:
    """In, out, dropped and quarantined per stage: a record that made a configured stage raise counts at that
    stage (``stage_error:<stage>``); every other quarantine at the read."""
    quarantined_at: dict[str, dict[str, int]] = defaultdict(dict)
    for reason, n in quarantine_reasons.items():
        stage = reason.split(":")[1] if reason.startswith(f"{STAGE_ERROR}:") else "read"
        quarantined_at[stage if stage in stage_names else "read"][reason] = n
    at_read = sum(quarantined_at["read"].values())
    stages = [
        {
            "name": "read",
            "in": read,
            "out": read - at_read,
            "dropped": 0,
            "quarantined": at_read,
            "reasons": quarantined_at["read"],
        }
    ]
    flowing = read - at_read
    for name in stage_names:
        reasons = {r: n for r, n in drop_reasons.items() if r.split(":", 1)[0] == name} | quarantined_at[name]
        dropped = sum(n for r, n in reasons.items() if not r.startswith(STAGE_ERROR))
        quarantined = sum(quarantined_at[name].values())
        stages.append(
            {
                "name": name,
                "in": flowing,
                "out": flowing - dropped - quarantined,
                "dropped": dropped,
                "quarantined": quarantined,
                "reasons": reasons,
            }
        )
        flowing -= dropped + quarantined
    return stages


def _timing(stages: list[dict[str, Any]], busy: Counter[str], read: int) -> dict[str, dict[str, float]]:
    """Worker seconds each stage spent (summed over its tasks or actors) and documents per such second.

    Stages overlap in a streaming run, so these add up to more than the wall time; they say where the
    work went. A resumed run counts the finished shards' time from their first attempt.
    """
    docs = {stage["name"]: stage["in"] for stage in stages} | {"write": read}  # the input's own stages: all read
    return {
        name: {
            "busy_seconds": round(seconds, 3),
            "docs": docs.get(name, read),
            "docs_per_busy_second": round(docs.get(name, read) / seconds, 1) if seconds > 0 else 0.0,
        }
        for name, seconds in busy.items()
    }


def _language_counts(counts: Counter[str]) -> dict[str, Any]:
    return {
        "kept": counts[CORPUS],
        "dropped": counts[REMOVED],
        "drop_reasons": {k.split(":", 1)[1]: n for k, n in counts.items() if k.startswith(f"{REMOVED}:")},
    }
