"""``shardflow validate``: what a corpus run would check and plan before work starts, without starting it.

A run finds a bad config, a missing input or model, a pool plan that would hang or an output it must not
touch only once it is started (on a cluster: once the job is scheduled). Validate asks the same questions
with the run's own code, so its answers and messages are the run's, and adds what a run does not say up
front: what the inputs hold (listed, and a few shard heads sniffed), how the actor pools would be sized on
the cluster, and a rough cost. It only reads (shard heads, the output's manifest and staging books): it
writes nothing, starts no Ray (a cluster's address is joined as a client, to read its resources) and loads
no model beyond what a stage's preflight reads.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Literal

import ray
import yaml

from shardflow.cluster.pools import Pool, actors_that_fit, block_rows, plan_pools
from shardflow.cluster.runtime import ray_session
from shardflow.config import Resources, load_config
from shardflow.errors import ConfigError, InputError, OutputStateError
from shardflow.operators.base import RunContext
from shardflow.operators.registry import STAGES, PlannedStage
from shardflow.operators.sniff import ShardSniff, estimate_records, sniff_shard
from shardflow.output.corpus import OutputLayout
from shardflow.pipelines.corpus import CorpusConfig
from shardflow.shards import Shard, list_shards
from shardflow.storage import Location

__all__ = ["Check", "validate_run"]

SNIFFED_SHARDS = 20  # shard heads read to describe the inputs: one ranged read each, spread over the list
NOT_RECORDS = ("invalid_json", "not_an_object")  # the sniffer's names for lines a run quarantines
BLANK = "empty_line"  # a run skips blank lines
PROBE_SECONDS = 10  # to connect to a cluster's address before Ray is asked to
# Throughput per core (and per GPU) by stage op, from docs/cost-model.md: data beside the code, to be replaced.
RATES: dict[str, dict[str, Any]] = yaml.safe_load(files("shardflow.pipelines").joinpath("cost_rates.yaml").read_text())
HELD = {  # what an output that overwrite will clear holds, by what a resuming run would make of it
    "done": "this config's finished corpus",
    "resume": "an unfinished run of this config",
    "other": "another config's corpus or staged run",
}

Status = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True)
class Check:
    """One line of the checklist: whether a run could go ahead (``FAIL``: it would refuse or hang), what was
    checked, and a sentence."""

    status: Status
    topic: str
    sentence: str

    def __str__(self) -> str:
        return f"{self.status:<4}  {self.topic:<7}  {self.sentence}"


@dataclass(frozen=True)
class Inputs:
    """The run's inputs as listing them and reading a few heads tell."""

    shards: list[Shard]
    records: int  # the run's own estimate: it sizes the blocks handed to the pools from it
    # Decompressed bytes, extrapolated from the sniffed heads: the stages' rates are per byte of text, and a
    # record's other fields make this more (1.7x on the bundled HPLT v2 sample): a cost from it errs high.
    decompressed_bytes: int


@dataclass(frozen=True)
class Cluster:
    """What the pools are planned against: the CPUs and GPUs a run's Ray would have, and its nodes as
    ``ray.nodes()`` lists them (a pool must fit on them, not only in the totals)."""

    cpus: float
    gpus: float
    nodes: list[dict[str, Any]]
    described: str


def validate_run(config_path: str, overrides: list[str]) -> Iterator[Check]:
    """The checklist for the run ``shardflow run CONFIG --set ...`` would start, a line as soon as it is known
    (joining a cluster or reading shard heads takes a moment). An invalid config ends it."""
    try:
        config = load_config(config_path, CorpusConfig, overrides)
    except ConfigError as err:
        yield from (Check("FAIL", "config", line) for line in str(err).splitlines())
        return
    planned = STAGES.planned(config.input, config.stages)
    ops = ", ".join(stage.config.op for stage in planned) or "none"
    yield Check("OK", "config", f"{config_path}: valid; stages {ops}; fingerprint {config.fingerprint()}")
    inputs = yield from _inputs(config)
    yield from _stages(config, planned, inputs)
    cluster = yield from _cluster(config, planned)
    pools = (yield from _pools(planned, cluster, inputs)) if cluster else {}
    yield from _output(config, inputs)
    if inputs and cluster:
        yield _cost(planned, pools, inputs, cluster)


def _inputs(config: CorpusConfig) -> Generator[Check, None, Inputs | None]:
    """The shards a run would list, the formats of a sample of their heads, and about how many records."""
    try:
        shards = list_shards([Location(path, config.storage) for path in config.input.paths])
    except InputError as err:
        yield Check("FAIL", "inputs", str(err))
        return None
    total = sum(shard.size for shard in shards)
    largest = max(shards, key=lambda shard: shard.size)
    yield Check(
        "OK",
        "inputs",
        f"{len(shards):,} shard(s), {_size(total)} in all; the largest {_size(largest.size)} ({largest.uri})",
    )
    sniffs = [sniff_shard(shards[position]) for position in _spread(len(shards), SNIFFED_SHARDS)]
    yield from _formats(sniffs, len(shards))
    inputs = Inputs(shards, estimate_records(shards), _decompressed_bytes(sniffs, total))
    yield Check(
        "OK",
        "records",
        f"about {inputs.records:,} records, {_size(inputs.decompressed_bytes)} decompressed (estimated from shard "
        "heads, as a run sizes its blocks)",
    )
    return inputs


def _formats(sniffs: list[ShardSniff], shard_count: int) -> Iterator[Check]:
    """Compressions and record layouts of the sniffed heads, and a warning for each head a run would
    quarantine records of: the run goes on, but its owner may want to know before it does."""
    layouts: Counter[str] = Counter()
    for sniff in sniffs:
        layouts.update({layout: n for layout, n in sniff.layouts.items() if layout not in (*NOT_RECORDS, BLANK)})
    compressions = Counter(sniff.compression for sniff in sniffs)
    yield Check(
        "OK",
        "formats",
        f"{len(sniffs)} of {shard_count} shard(s) sniffed (the first MiB of each): {_counted(compressions)}; "
        f"record layouts of their first lines: {_counted(layouts) or 'none'}",
    )
    for sniff in sniffs:
        problem = _head_problem(sniff)
        if problem:
            yield Check("WARN", "formats", f"{sniff.uri}: {problem}")


def _head_problem(sniff: ShardSniff) -> str | None:
    """What in a shard's head a run would quarantine, in words, or None."""
    if sniff.error:
        return f"its head cannot be read ({sniff.error}); a run quarantines the shard from there"
    bad = Counter({layout: n for layout, n in sniff.layouts.items() if layout in NOT_RECORDS})
    if bad:
        looked = sum(sniff.layouts.values())
        return f"{bad.total()} of its first {looked} lines are not records ({_counted(bad)}); a run quarantines them"
    if not sniff.records and sniff.size and sniff.compression != "parquet":
        return (
            f"no complete line in its first {_size(sniff.consumed)}: a truncated stream, or a line longer than the "
            "head; a run quarantines what it cannot read"
        )
    return None


def _decompressed_bytes(sniffs: list[ShardSniff], total_bytes: int) -> int:
    """The inputs' size decompressed: their size times the ratio of the heads read as text (a parquet head is
    not: an input of parquet only counts as its size)."""
    read = [sniff for sniff in sniffs if sniff.text_bytes]
    consumed = sum(sniff.consumed for sniff in read)
    return round(total_bytes * sum(sniff.text_bytes for sniff in read) / consumed) if consumed else total_bytes


def _spread(count: int, most: int) -> list[int]:
    """Up to ``most`` positions spread evenly over ``count`` items, the first and the last included."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def _stages(config: CorpusConfig, planned: list[PlannedStage], inputs: Inputs | None) -> Iterator[Check]:
    """Every stage's own check, as a run makes it before Ray starts (a row-local stage's preflight: its model
    file is there; a global stage's check: its index_from, against the inputs), and the model it names."""
    run = RunContext(inputs.shards, _layout(config), attempt="validate") if inputs else None
    for stage in planned:
        named = f"{stage.key} ({stage.config.op})"
        try:
            if not stage.is_global:
                stage.implementation.preflight(stage.config, config.storage, stage.key)
            elif run is None:
                yield Check("WARN", "stages", f"{named}: not checked: it is checked against the inputs")
                continue
            else:
                stage.implementation(stage.config, run, stage.key).check()
        except ConfigError as err:
            yield Check("FAIL", "stages", str(err))
            continue
        model = _model_of(stage.config)
        yield Check("OK", "stages", f"{named}: " + (f"model {model}" if model else "checked"))


def _model_of(stage_config: Any) -> str | None:
    """The model a stage's settings name (a file it resolves to where it has a default), if any."""
    if hasattr(stage_config, "model_uri"):
        return stage_config.model_uri()
    return getattr(stage_config, "model", None)


def _actor_stages(planned: list[PlannedStage]) -> list[PlannedStage]:
    """The stages a run gives actor pools: those that hold a model (the others run in the read tasks)."""
    return [stage for stage in planned if not stage.is_global and not stage.implementation.stateless]


def _cluster(config: CorpusConfig, planned: list[PlannedStage]) -> Generator[Check, None, Cluster | None]:
    """The Ray a run would use: the cluster at ``ray.address`` (or ``RAY_ADDRESS``), joined only to read its
    resources, or the Ray this process already holds (a notebook); else this machine as the embedded Ray
    would see it, without starting it."""
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if not address and not ray.is_initialized():
        return _this_machine(config.ray.num_cpus, planned)
    try:
        if not ray.is_initialized():
            _probe(address)
        with ray_session(address):
            resources, nodes = ray.cluster_resources(), ray.nodes()
    except Exception as err:  # noqa: BLE001 - Ray's errors for a cluster it cannot reach vary with the address
        yield Check("FAIL", "pools", f"cannot reach the Ray cluster at {address}: {type(err).__name__}: {err}")
        return None
    alive = sum(1 for node in nodes if node.get("Alive"))
    where = f"the Ray cluster at {address}" if address else "the Ray this process is connected to"
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)  # as a run reads them
    return Cluster(cpus, gpus, nodes, f"{where}: {cpus:g} CPUs, {gpus:g} GPUs on {alive} node(s)")


def _probe(address: str) -> None:
    """Raise ``OSError`` where nothing listens at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address, which Ray
    would retry for minutes; ``auto`` is left to Ray, which finds no cluster at once."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()


def _this_machine(num_cpus: int | None, planned: list[PlannedStage]) -> Cluster:
    """This machine as the embedded Ray would see it; its GPUs are counted (by torch, which takes seconds
    to import) only where a stage asks for one."""
    cpus = float(num_cpus or os.cpu_count() or 1)
    gpus = 0.0
    if any(stage.config.resources.num_gpus > 0 for stage in _actor_stages(planned)):
        import torch

        gpus = float(torch.cuda.device_count())
    node = {"Alive": True, "Resources": {"CPU": cpus, "GPU": gpus}}
    return Cluster(cpus, gpus, [node], f"this machine (the embedded Ray a run starts): {cpus:g} CPUs, {gpus:g} GPUs")


def _pools(
    planned: list[PlannedStage], cluster: Cluster, inputs: Inputs | None
) -> Generator[Check, None, dict[str, Pool]]:
    """The actor pools a run would plan, by stage key; a plan that would hang fails, as it fails a run."""
    actors = _actor_stages(planned)
    try:
        pools = plan_pools([(stage.key, stage.config.resources) for stage in actors], cluster.cpus, cluster.gpus)
    except ConfigError as err:
        yield Check("FAIL", "pools", str(err))
        return {}
    yield Check("OK", "pools", f"planned on {cluster.described}")
    for stage, pool in zip(actors, pools, strict=True):
        yield _pool_check(stage, pool, cluster, inputs.records if inputs else None)
    return {stage.key: pool for stage, pool in zip(actors, pools, strict=True)}


def _pool_check(stage: PlannedStage, pool: Pool, cluster: Cluster, records: int | None) -> Check:
    """One pool: its actors, what each asks for and the rows per block; a fixed pool whose actors the nodes
    cannot all hold fails (Ray Data would wait for the last ones forever)."""
    asked = stage.config.resources
    actors = f"{pool.min_size}" if pool.min_size == pool.max_size else f"{pool.min_size}-{pool.max_size}"
    each = f"{pool.num_cpus:.3g} CPU" + (f" + {pool.num_gpus:.3g} GPU" if pool.num_gpus else "")
    rows = block_rows(records or 0, pool.max_size, asked.batch_size)
    blocks = f"blocks of {rows:,} rows" if rows else f"blocks as they come, batches of {asked.batch_size:,} rows"
    sizing = f"{stage.key} ({stage.config.op}): {actors} actor(s) of {each}, {blocks}"
    fit = actors_that_fit(Resources(num_cpus=pool.num_cpus, num_gpus=pool.num_gpus), cluster.nodes)
    if fit < pool.min_size:
        return Check(
            "FAIL",
            "pools",
            f"config error: {sizing}, but the nodes hold only {fit} such actor(s) at once and a run would wait for "
            "the rest forever; lower concurrency or num_cpus",
        )
    if asked.num_gpus and not pool.num_gpus:
        return Check("WARN", "pools", f"{sizing}: it asks for {asked.num_gpus:g} GPU, there is none: CPU actors")
    return Check("OK", "pools", sizing)


def _layout(config: CorpusConfig) -> OutputLayout:
    return OutputLayout(Location(config.output.path, config.storage), config.fingerprint())


def _output(config: CorpusConfig, inputs: Inputs | None) -> Iterator[Check]:
    """What a run would make of the output (``OutputLayout.state``, read only): start fresh, resume, do nothing,
    or refuse. Under overwrite, what is there is asked as a resuming run would see it, since it goes."""
    layout, if_exists = _layout(config), config.output.if_exists
    root = layout.root.uri
    try:
        state = layout.state("resume" if if_exists == "overwrite" else if_exists)
    except OutputStateError as err:
        if if_exists != "overwrite":
            yield Check("FAIL", "output", str(err))
            return
        state = "other"
    if if_exists == "overwrite" and state != "fresh":
        yield Check("WARN", "output", f"{root} holds {HELD[state]}; output.if_exists is overwrite: a run removes it")
    elif state == "done":
        yield Check("OK", "output", f"{root} is finished for this config (manifest.json): a run would do nothing")
    elif state == "resume":
        yield Check(
            "OK", "output", f"{root} holds an unfinished run of this config: a run resumes it{_done(layout, inputs)}"
        )
    else:
        yield Check("OK", "output", f"{root} is new: a run starts fresh")


def _done(layout: OutputLayout, inputs: Inputs | None) -> str:
    """How far the staged run got, from its ledger's books (read, not cleared as resuming would)."""
    if inputs is None:
        return ""
    ledger = layout.ledger
    finished = ledger.finished(inputs.shards, ledger.entries(), ledger.marked())
    return f" ({len(finished):,} of {len(inputs.shards):,} shards written whole)"


def _cost(planned: list[PlannedStage], pools: dict[str, Pool], inputs: Inputs, cluster: Cluster) -> Check:
    """Worker time at the rates of ``cost_rates.yaml`` (docs/cost-model.md) for the estimated bytes, and the
    wall time on the cluster's CPUs and GPUs with no overlap between stages: rough, and said to be."""
    megabytes = inputs.decompressed_bytes / 1e6
    core_seconds = megabytes / RATES["read"]["mb_per_core_second"]
    gpu_seconds, unrated = 0.0, []
    for stage in planned:
        rate = _rate(stage.config)
        if rate is None:
            unrated.append(stage.key)
        elif "mb_per_gpu_second" in rate and stage.key in pools and pools[stage.key].num_gpus:
            gpu_seconds += megabytes / rate["mb_per_gpu_second"]
        else:
            core_seconds += megabytes / rate["mb_per_core_second"]
    wall = core_seconds / cluster.cpus + (gpu_seconds / cluster.gpus if gpu_seconds else 0.0)
    gpu_work = f" + {_hours(gpu_seconds)} GPU-hours" if gpu_seconds else ""
    left_out = f"; no rate for {', '.join(unrated)}" if unrated else ""
    return Check(
        "OK",
        "cost",
        f"rough: {_hours(core_seconds)} core-hours{gpu_work} for {_size(inputs.decompressed_bytes)}, about "
        f"{_duration(wall)} on {cluster.cpus:g} CPUs{f' and {cluster.gpus:g} GPUs' if gpu_seconds else ''} "
        f"(rates of docs/cost-model.md; starting Ray and loading models come on top){left_out}",
    )


def _rate(stage_config: Any) -> dict[str, Any] | None:
    """The rates of a stage's op, or of the variant its settings choose where one changes them (an engine)."""
    rate = RATES.get(stage_config.op)
    for setting, variants in (rate or {}).get("when", {}).items():
        rate = variants.get(str(getattr(stage_config, setting)), rate)
    return rate


def _counted(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.most_common())


def _size(n: float) -> str:
    """Bytes in binary units, as the README writes them (64 MiB)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while n >= 1024 and power < len(units) - 1:
        n, power = n / 1024, power + 1
    return f"{n:,.0f} B" if power == 0 else f"{n:,.1f} {units[power]}"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return "under 0.01" if hours < 0.01 else f"{hours:.2g}" if hours < 10 else f"{hours:,.0f}"


def _duration(seconds: float) -> str:
    for unit, length in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 1.5 * length:
            return f"{seconds / length:,.1f} {unit}"
    return "under a second" if seconds < 1 else f"{seconds:.0f} s"
