"""The ``shardflow`` command.

    shardflow run CONFIG [--set a.b=value ...] [--address ADDR]
    shardflow validate CONFIG [--set a.b=value ...] [--address ADDR]
    shardflow search INDEX --queries FILE --out RUN [--k 100]
    shardflow refresh CONFIG [--set a.b=value ...] [--rebuild] [--drop-missing] [--address ADDR]
    shardflow rerank CONFIG [--set a.b=value ...] [--top-k N] [--address ADDR] [--restart]
    shardflow submit --address http://HEAD:8265 run|refresh|rerank CONFIG [--set ...] [--follow]
    shardflow jobs list|status|logs|stop [JOB] --address http://HEAD:8265
    shardflow report OUTPUT

Errors that are the user's to fix (config, inputs, output state) print as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shardflow import __version__, inspection
from shardflow.errors import ShardflowError
from shardflow.pipelines.jobs import JOBS
from shardflow.report import write_report
from shardflow.storage import Location, StorageConfig
from shardflow.terminal import terminal

TOP_LANGUAGES = 15
TOP_LANGUAGES_IN_LOG = 10


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except ShardflowError as err:
        print(f"shardflow: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shardflow: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="shardflow", description=__doc__.split("\n\n")[0])
    root.add_argument("--version", action="version", version=f"shardflow {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="build a corpus from shards, as CONFIG says",
        description="Build a corpus: read shards, run the config's stages, write parquet and manifest.json. "
        "Running the same command again resumes an interrupted run and does nothing after a finished one.",
    )
    run.add_argument("config", help="YAML config (see configs/sample.yaml)")
    _add_overrides(run)
    _add_ray_options(run)
    run.set_defaults(handler=_run_command)
    validate = commands.add_parser(
        "validate",
        help="check a run config and what it names, without running it",
        description="Everything `shardflow run` checks before work starts, without starting it: the config, the "
        "inputs (listed, heads sniffed), each stage's model, the actor pools planned on the cluster, the output's "
        "state and a rough cost. Writes nothing and starts no Ray. Exit 0 when no check fails, 2 otherwise.",
    )
    validate.add_argument("config", help="YAML config (see configs/sample.yaml)")
    _add_overrides(validate)
    validate.add_argument("--address", help="plan the pools on this running Ray cluster (default: this machine)")
    validate.set_defaults(handler=_validate_command, verbose=False)
    refresh = commands.add_parser(
        "refresh",
        help="add the new shards to a published corpus and publish its next version",
        description="List the inputs, process only the shards not yet in the published corpus (deduplicated "
        "against it), add their vectors to the index and publish version N+1 by flipping CURRENT.json. Nothing "
        "new: nothing published. Run it again after a crash: it resumes.",
    )
    refresh.add_argument("config", help="YAML config (see configs/refresh.yaml)")
    _add_overrides(refresh)
    refresh.add_argument("--rebuild", action="store_true", help="publish a full rebuild over every input")
    refresh.add_argument(
        "--drop-missing",
        action="store_true",
        help="let a full rebuild leave out published shards that are no longer in the inputs (their documents)",
    )
    _add_ray_options(refresh)
    refresh.set_defaults(handler=_refresh_command)
    report = commands.add_parser(
        "report",
        help="write report.html and report.json for a finished output",
        description="Render the run report (self-contained HTML with charts, and the same numbers as JSON) "
        "from OUTPUT/manifest.json. `shardflow run` writes it too, at the end of every run.",
    )
    report.add_argument("output", help="a finished output folder (local or s3://)")
    report.add_argument("--config", help="a run config whose storage: section reaches the output (for s3://)")
    report.set_defaults(handler=_report_command)
    inspect = commands.add_parser(
        "inspect",
        help="counts, examples of what each reason removed, and where a document went",
        description="Without options: the counts per stage and language. --reason (and/or --lang): N documents "
        "that reason removed, with their source and the start of their text. --doc: where that document went "
        "(kept, dropped by which stage, quarantined) and its duplicate cluster.",
    )
    inspect.add_argument("output", help="a finished output folder (local or s3://)")
    asked = inspect.add_mutually_exclusive_group()
    asked.add_argument("--reason", help="a drop reason (quality:c4.too_few_sentences) or a quarantine reason")
    asked.add_argument("--doc", help="a doc_id: where it went and why")
    inspect.add_argument("--lang", help="examples of this language only (fin_Latn)")
    inspect.add_argument("-n", type=_positive, default=5, help="examples to print (default 5)")
    inspect.add_argument("--config", help="a run config whose storage: section reaches the output (for s3://)")
    inspect.set_defaults(handler=_inspect_command)
    rerank = commands.add_parser(
        "rerank",
        help="rerank TREC run files with a model, as CONFIG says",
        description="Rerank each run's top_k per query with the config's scorer on a pool of model actors (one "
        "per GPU); write <run>.run per input run, and metrics before and after when qrels are given. Running the "
        "same command again after a crash scores only what is missing.",
    )
    rerank.add_argument("config", help="YAML config (see configs/rerank.yaml)")
    _add_overrides(rerank)
    rerank.add_argument("--top-k", type=_positive, help="candidates per query to rerank (overrides top_k)")
    _add_ray_options(rerank)
    rerank.add_argument(
        "--restart",
        action="store_true",
        help="discard the output's staged pairs and scores and start over (needed after changing the scorer, "
        "the queries or what the pairs are made of)",
    )
    rerank.set_defaults(handler=_rerank_command)
    submit = commands.add_parser(
        "submit",
        help="submit a run or rerank job to a Ray cluster (Jobs API, token auth)",
        description="Upload the working directory and this package to the cluster and run the command there. "
        "The cluster token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, never from "
        "the command line.",
    )
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    submit.add_argument("job_command", choices=list(JOBS), metavar="|".join(JOBS), help="what to run")
    submit.add_argument("config", help="YAML config, inside the working directory")
    _add_overrides(submit)
    submit.add_argument("--working-dir", default=".", help="uploaded with the job (default: the current directory)")
    submit.add_argument("--follow", action="store_true", help="print the job's log until it ends; exit 1 if it fails")
    submit.set_defaults(handler=_submit_command)
    jobs = commands.add_parser(
        "jobs",
        help="list, inspect, read the logs of, or stop jobs on a Ray cluster",
        description="The cluster's jobs through its Jobs API (token as for submit).",
    )
    jobs.add_argument("action", choices=["list", "status", "logs", "stop"])
    jobs.add_argument("job", nargs="?", help="the job id (for status, logs, stop)")
    jobs.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    jobs.set_defaults(handler=_jobs_command)
    search = commands.add_parser(
        "search",
        help="search a corpus's dense index with queries; write a TREC run",
        description="Embed each query with the encoder the index was built with (query prompt included), "
        "search the index and write `qid Q0 docid rank score tag` lines.",
    )
    search.add_argument("index", help="an output's index/ folder, or the output folder itself (local or s3://)")
    search.add_argument("--queries", required=True, help="`qid<TAB>text` lines, or JSON lines with qid and text")
    search.add_argument("--out", required=True, help="where the run goes (local or s3://)")
    search.add_argument("--k", type=_positive, default=100, help="documents per query (default 100)")
    search.add_argument("--nprobe", type=_positive, help="inverted lists searched per query (default: the index's)")
    search.add_argument("--model", help="load the encoder from here instead (same model, another location)")
    search.add_argument("--tag", default="shardflow", help="the run's tag column (default shardflow)")
    search.add_argument("--config", help="a config whose storage: section reaches s3:// paths")
    search.set_defaults(handler=_search_command)
    return root


def _add_overrides(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set output.path=/tmp/out --set stages.0.keep=[fin_Latn]",
    )


def _add_ray_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--address", help="Ray cluster address (default: start an embedded local Ray)")
    command.add_argument(
        "--verbose", action="store_true", help="show Ray's own logs and block counters beside shardflow's progress"
    )


def _ray_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides, then what ``--address`` and ``--verbose`` ask for."""
    return (
        args.overrides
        + ([f"ray.address={args.address}"] if args.address else [])
        + (["ray.verbose=true"] if args.verbose else [])
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_command(args: argparse.Namespace) -> int:
    from shardflow.config import load_config
    from shardflow.pipelines.corpus import CorpusConfig, run_corpus

    config = load_config(args.config, CorpusConfig, _ray_overrides(args))
    with terminal(config.ray.verbose) as console:
        result = run_corpus(config, console)
        if result.already_done:
            done = f"{escape(config.output.path)} is already complete for this config; nothing to do."
            console.print(f"[yellow]{done}[/]")
        _print_summary(console, result.manifest, config.output.path)
        console.print(f"report: {escape(write_report(Location(config.output.path, config.storage))[0])}")
    return 0


def _validate_command(args: argparse.Namespace) -> int:
    from shardflow.pipelines.validate import validate_run

    failed = False
    for check in validate_run(args.config, _ray_overrides(args)):
        print(check, flush=True)
        failed |= check.status == "FAIL"
    return 2 if failed else 0


def _refresh_command(args: argparse.Namespace) -> int:
    from shardflow.config import load_config
    from shardflow.pipelines.refresh import RefreshConfig, refresh

    config = load_config(args.config, RefreshConfig, _ray_overrides(args))
    with terminal(config.ray.verbose) as console:
        result = refresh(config, rebuild=args.rebuild, drop_missing=args.drop_missing, console=console)
    record, root = result.record, config.output.path
    if not result.published:
        shown = f"version {result.version}" if result.version else "nothing published yet"
        print(f"{root}: no new or changed shards; {shown} stays current ({result.seconds:.1f} s)", file=sys.stderr)
        return 0
    night, counts = record["this_version"]["counts"], record["counts"]
    index = record.get("index")
    print(
        f"published version {record['version']} of {root} ({record['mode']}: {record['reason']}) in "
        f"{result.seconds:.1f} s\n  this version: read {night['read']:,} = kept {night['kept']:,} + dropped "
        f"{night['dropped']:,} + quarantined {night['quarantined']:,}\n  corpus: {counts['kept']:,} documents "
        f"in {len(record['segments'])} segment(s)"
        + (f", index {index['factory']} with {index['vectors']:,} vectors" if index else ""),
        file=sys.stderr,
    )
    segment = f"{root.rstrip('/')}/{record['this_version']['segment']}"
    print(f"  this version's report: {write_report(Location(segment, config.storage))[0]}", file=sys.stderr)
    return 0


def _report_command(args: argparse.Namespace) -> int:
    html_uri, json_uri = write_report(Location(args.output, _storage_of(args.config)))
    print(f"{html_uri}\n{json_uri}")
    return 0


def _submit_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shardflow.cluster.submit import submit

    job_id, status = submit(
        args.address, args.job_command, Path(args.config), args.overrides, Path(args.working_dir), args.follow
    )
    print(f"submitted {job_id} to {args.address}" + (f": {status}" if args.follow else ""), file=sys.stderr)
    if not args.follow:
        print(f"follow it: shardflow jobs logs {job_id} --address {args.address}", file=sys.stderr)
    return 0 if status in ("SUCCEEDED", "PENDING") else 1


def _jobs_command(args: argparse.Namespace) -> int:
    import json

    from shardflow.cluster import submit
    from shardflow.errors import ConfigError

    if args.action == "list":
        print(json.dumps(submit.list_jobs(args.address), indent=2))
        return 0
    if not args.job:
        raise ConfigError(f"shardflow jobs {args.action}: give the job id")
    if args.action == "status":
        print(json.dumps(submit.job_status(args.address, args.job), indent=2))
    elif args.action == "logs":
        print(submit.job_logs(args.address, args.job), end="")
    else:
        print(f"stop requested: {submit.stop_job(args.address, args.job)}")
    return 0


def _rerank_command(args: argparse.Namespace) -> int:
    from shardflow.config import load_config
    from shardflow.pipelines.rerank import RerankConfig, rerank

    overrides = _ray_overrides(args) + ([f"top_k={args.top_k}"] if args.top_k else [])
    config = load_config(args.config, RerankConfig, overrides)
    with terminal(config.ray.verbose) as console:
        summary = rerank(config, progress=config.ray.progress, restart=args.restart, console=console)
    pairs = summary["pairs"]
    print(
        f"{pairs['pairs']:,} pairs ({pairs['missing_docids']:,} with a docid the corpus lacks), "
        f"{summary['scored_this_attempt']['chunks']} chunks scored now, {summary['seconds']:.1f} s",
        file=sys.stderr,
    )
    for name, run in summary["runs"].items():
        scores = run.get("metrics", {})
        shown = "  ".join(
            f"{measure} {scores['before'][measure]:.4f} -> {scores['after'][measure]:.4f}"
            for measure in scores.get("after", {})
        )
        print(f"{name}: {run['lines']:,} lines -> {run['path']}  {shown}", file=sys.stderr)
    return 0


def _search_command(args: argparse.Namespace) -> int:
    from shardflow.pipelines.search import SearchRequest, search

    request = SearchRequest(args.index, args.queries, args.out, args.k, args.nprobe, args.model, args.tag)
    done = search(request, _storage_of(args.config))
    print(
        f"{done['queries']:,} queries x top {done['k']} from {done['index']} ({done['factory']}): "
        f"{done['lines']:,} lines -> {args.out}",
        file=sys.stderr,
    )
    return 0


def _inspect_command(args: argparse.Namespace) -> int:
    output = Location(args.output, _storage_of(args.config))
    console = Console(emoji=False, highlight=False, soft_wrap=True)  # document text is data, never markup
    if args.doc is not None:
        _print_location(console, inspection.locate(output, args.doc))
    elif args.reason is not None or args.lang is not None:
        found = inspection.examples(output, args.reason, args.lang, args.n)
        asked = " in ".join(escape(part) for part in (args.reason or "any drop reason", args.lang) if part)
        console.print(f"[bold]{len(found)} example(s) of {asked}[/]")
        for example in found:
            _print_record(console, example)
    else:
        _print_counts(console, inspection.counts(output), output.uri)
    return 0


def _print_counts(console: Console, found: dict[str, Any], output: str) -> None:
    """Every stage with every reason, every language with its top drop reasons, and how to see examples."""
    stages = Table(title="Stages", title_justify="left")
    for column in ("stage", "in", "out", "dropped", "quarantined", "reasons"):
        stages.add_column(column, justify="left" if column in ("stage", "reasons") else "right", overflow="fold")
    for stage in found["stages"]:
        reasons = "\n".join(f"{reason}={n:,}" for reason, n in sorted(stage["reasons"].items(), key=lambda r: -r[1]))
        numbers = (f"{stage[k]:,}" for k in ("in", "out", "dropped", "quarantined"))
        stages.add_row(escape(stage["name"]), *numbers, escape(reasons))
    console.print(stages)
    languages = Table(title="Languages", title_justify="left")
    for column in ("lang", "kept", "dropped", "top drop reasons"):
        languages.add_column(column, justify="right" if column in ("kept", "dropped") else "left", overflow="fold")
    for lang, counts in found["languages"].items():
        ranked = sorted(counts["drop_reasons"].items(), key=lambda r: -r[1])
        top = escape(", ".join(f"{reason}={n:,}" for reason, n in ranked[:3]) + (", ..." if len(ranked) > 3 else ""))
        languages.add_row(escape(lang), f"{counts['kept']:,}", f"{counts['dropped']:,}", top)
    console.print(languages)
    total = found["counts"]
    console.print(
        f"read {total['read']:,} = kept {total['kept']:,} + dropped {total['dropped']:,} + quarantined "
        f"{total['quarantined']:,}\nexamples: shardflow inspect {escape(output)} --reason REASON [--lang LANG] "
        "[-n N]; one document: --doc ID"
    )


def _print_location(console: Console, found: dict[str, Any]) -> None:
    """Every place the id is, then its duplicate cluster: the kept representative's id and the members."""
    for place in found["places"]:
        _print_record(console, place)
    if found["dup_cluster"] is None:
        return
    members, shown = found["members"], found["members"][: inspection.MAX_MEMBERS]
    first = "the first " if len(members) > len(shown) else ""
    console.print(
        f"[bold]duplicate cluster {escape(inspection.visible(found['dup_cluster']))}[/] (the id of the document "
        f"kept for it), {first}{len(shown)} member(s) in corpus/ and removed/:"
    )
    for member in shown:
        where = f"{member['kind']} {member['lang']}" + (f" {member['reason']}" if member["reason"] else "")
        console.print(f"  {escape(inspection.visible(member['doc_id']))}  {escape(where)}")


def _print_record(console: Console, record: dict[str, Any]) -> None:
    """One document, or quarantined record, as a block: where it is, why, and the start of its text with its
    control characters visible."""
    why = {
        "corpus": "kept",
        "removed": f"dropped: {record['reason']}",
        "quarantine": f"quarantined: {record['detail']}",
    }
    console.print(f"[bold]-- {escape(inspection.visible(why[record['kind']]))}[/]")
    for name in ("doc_id", "lang", "source", "url", "dup_cluster", "file"):
        if record[name] is not None and not (name == "dup_cluster" and record[name] == record["doc_id"]):
            console.print(f"  {name:<11} {escape(inspection.visible(str(record[name])))}")
    text = inspection.visible(record["excerpt"]) + ("..." if record["truncated"] else "")
    console.print(escape("\n".join(f"  | {line}" for line in text.split("\n"))))


def _storage_of(config_path: str | None) -> StorageConfig:
    """The ``storage:`` section of a run config, or the default (AWS_* environment variables)."""
    from shardflow.config import load_config
    from shardflow.pipelines.corpus import CorpusConfig

    return load_config(config_path, CorpusConfig).storage if config_path else StorageConfig()


def _print_summary(console: Console, manifest: dict[str, Any], output: str) -> None:
    """Stages, languages and where the output is: what a person checks after a run. Every name is escaped:
    labels come from models and paths from users, and Rich would read ``[/x]`` in them as markup. In a log
    (no terminal) the tables are drawn without frames and the reasons cut to one line: every line counts."""
    output = escape(output)
    log = not console.is_terminal
    frame = {"box": box.SIMPLE_HEAD, "show_edge": False} if log else {}
    stages = Table(title="Stages", title_justify="left", **frame)
    for column in ("stage", "in", "out", "dropped", "quarantined", "reasons"):
        stages.add_column(column, justify="left" if column in ("stage", "reasons") else "right", overflow="fold")
    for stage in manifest["stages"]:
        reasons = _top_reasons(stage["reasons"])
        counts = (f"{stage[k]:,}" for k in ("in", "out", "dropped", "quarantined"))
        stages.add_row(escape(stage["name"]), *counts, escape(reasons))
    console.print(stages)

    shown = TOP_LANGUAGES_IN_LOG if log else TOP_LANGUAGES
    languages = Table(title=f"Languages (top {shown} by kept documents)", title_justify="left", **frame)
    for column in ("lang", "kept", "dropped"):
        languages.add_column(column, justify="left" if column == "lang" else "right")
    ranked = sorted(manifest["languages"].items(), key=lambda item: -item[1]["kept"])
    for lang, counts in ranked[:shown]:
        languages.add_row(escape(lang), f"{counts['kept']:,}", f"{counts['dropped']:,}")
    console.print(languages)

    if "index" in manifest:
        index = manifest["index"]
        console.print(
            f"index: {escape(str(index.get('factory', 'none')))}, {index['vectors']:,} vectors in {output}/index "
            f"(shardflow search {output} --queries FILE --out RUN)"
        )
    counts = manifest["counts"]
    seconds = manifest["seconds"]
    rate = counts["read"] / seconds if seconds > 0 else 0.0
    console.print(
        f"read {counts['read']:,} = kept {counts['kept']:,} + dropped {counts['dropped']:,} "
        f"+ quarantined {counts['quarantined']:,}  |  {len(manifest['languages'])} languages  |  "
        f"{seconds:.1f} s, {rate:,.0f} docs/s\noutput: {output} (manifest.json, corpus/, removed/, quarantine/)"
    )


def _top_reasons(reasons: dict[str, int], shown: int = 3) -> str:
    """The most frequent reasons, ``name=count``, stage prefix dropped; the rest as ``+N more``."""
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    text = ", ".join(f"{reason.split(':', 1)[-1]}={n:,}" for reason, n in ranked[:shown])
    return text + (f", +{len(ranked) - shown} more" if len(ranked) > shown else "")


if __name__ == "__main__":
    sys.exit(main())
