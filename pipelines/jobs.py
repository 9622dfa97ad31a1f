"""The jobs a user runs by name (``shardflow run|refresh|rerank``, and the same through ``shardflow submit``):
each name and the config model it reads. A model is imported when asked for, since a pipeline imports Ray."""

from __future__ import annotations

from collections.abc import Callable

from shardflow.config import StrictModel

__all__ = ["JOBS", "config_model"]


def _corpus() -> type[StrictModel]:
    from shardflow.pipelines.corpus import CorpusConfig

    return CorpusConfig


def _refresh() -> type[StrictModel]:
    from shardflow.pipelines.refresh import RefreshConfig

    return RefreshConfig


def _rerank() -> type[StrictModel]:
    from shardflow.pipelines.rerank import RerankConfig

    return RerankConfig


JOBS: dict[str, Callable[[], type[StrictModel]]] = {"run": _corpus, "refresh": _refresh, "rerank": _rerank}


def config_model(job: str) -> type[StrictModel]:
    """The config model of the job ``job``."""
    return JOBS[job]()
