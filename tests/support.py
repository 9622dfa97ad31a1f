"""Test helpers: shard writers in every layout and compression, tiny real models, a real multi-node Ray on
this machine and ways to hurt it."""

from __future__ import annotations

import gzip
import json
import os
import random
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import regex
import zstandard

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "configs" / "sample" / "hplt-v2"
SHARED_DATA = REPO.parent / "shared" / "data"


# One record of each HPLT release's layout, and a plain one: what the readers and the HPLT output are tested on.
TEXT = "Kaikki ihmiset syntyvät vapaina ja tasavertaisina arvoltaan ja oikeuksiltaan."

V12 = {
    "id": 7,
    "document_lang": "fi",
    "scores": [0.9],
    "langs": ["fi"],
    "text": TEXT,
    "url": "https://a.example/1",
    "collection": "wide5",
}
V2 = {
    "f": "x.warc.gz",
    "o": 1,
    "s": 2,
    "rs": 3,
    "u": "https://b.example/2",
    "c": "text/html",
    "ts": "2021-05-09T10:26:25Z",
    "collection": "wide17",
    "lang": ["fin_Latn", "est_Latn", "eng_Latn"],
    "prob": [0.9, 0.05, 0.01],
    "text": TEXT,
    "seg_langs": ["fin_Latn"],
    "id": "b8ff3519",
    "filter": "keep",
    "pii": [[1, 3]],
    "doc_scores": [7.7],
    "robots": "allowed",
}
V3 = {
    **{k: v for k, v in V2.items() if k not in ("collection", "robots")},
    "id": "c3",
    "crawl_id": "cc40",
    "robotstxt": "allowed",
    "de": "x",
    "xml": "<p/>",
    "html_lang": ["fi"],
    "cluster_size": 2,
    "web-register": {"IN": 0.8},
}
V4 = {
    "id": "d4",
    "u": "https://d.example/4",
    "ts": "2024-01-01T00:00:00Z",
    "text": TEXT,
    "openlid_v2": {"lang": "fin_Latn", "prob": 0.97},
    "glotlid_v3": {"lang": ["fin_Latn"], "prob": [0.99]},
    "openlid_v3": {"lang": ["fin_Latn", "est_Latn"], "prob": [0.95, 0.03]},
    "md": "# t",
    "allowed": True,
}
PLAIN = {"text": TEXT, "id": 42, "extra": {"k": [1, 2]}}


def fail_third_staged_move(monkeypatch: Any, suffix: str) -> list[str]:
    """Make the commit's third move of a staged ``suffix`` file into place fail (as if the disk went away);
    returns the targets of the moves that succeeded."""
    from fsspec.implementations.local import LocalFileSystem

    real_mv, moved = LocalFileSystem.mv, []

    def failing_mv(self: LocalFileSystem, source: str, target: str, **kwargs: Any) -> None:
        if "/_staging/" in str(source) and str(source).endswith(suffix):
            if len(moved) == 2:
                raise OSError("disk went away")
            moved.append(target)
        return real_mv(self, source, target, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "mv", failing_mv)
    return moved


def jsonl_bytes(records: list[Any]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def write_shard(path: Path, records: list[Any] | bytes, frames: int = 1) -> Path:
    """Write records as JSON lines, compressed by the suffix (.zst in ``frames`` frames, .gz, or plain)."""
    body = records if isinstance(records, bytes) else jsonl_bytes(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zst":
        step = max(1, len(body) // frames + 1)
        path.write_bytes(
            b"".join(zstandard.ZstdCompressor().compress(body[i : i + step]) for i in range(0, len(body), step))
        )
    elif path.suffix == ".gz":
        path.write_bytes(gzip.compress(body))
    else:
        path.write_bytes(body)
    return path


def sample_records(limit: int | None = None, recrawl: bool = False) -> list[dict[str, Any]]:
    """The bundled sample's HPLT v2 records (true language in ``lang[0]``): each UDHR article once, or with
    ``recrawl`` also the shard of duplicates (``eng_Latn/2.jsonl.zst``), as a run over the sample reads it."""
    records = []
    for shard in sorted(SAMPLE.glob("*/*.jsonl.zst" if recrawl else "*/1.jsonl.zst")):
        body = zstandard.ZstdDecompressor().stream_reader(shard.open("rb")).read()
        records += [json.loads(line) for line in body.decode("utf-8").splitlines()]
    return records[:limit]


def write_fasttext_model(path: Path, labels: list[str], words: dict[str, list[float]]) -> Path:
    """Write a supervised fastText model (binary format, version 12) with softmax loss, no subwords.

    ``words`` maps each word to its input vector; the output matrix is the identity, so a word's vector
    is its score per label (in the order of ``labels``) before the softmax. Small enough to reason about,
    real enough that fastText's own loader and predictor run on it.
    """
    dim = len(labels)
    out = bytearray()
    out += struct.pack("<ii", 793712314, 12)
    # args: dim ws epoch minCount neg wordNgrams loss(softmax=3) model(sup=3) bucket minn maxn lrUpdateRate, t
    out += struct.pack("<12i", dim, 5, 1, 1, 5, 1, 3, 3, 0, 0, 0, 100) + struct.pack("<d", 1e-4)
    entries = [(word, 0) for word in words] + [(label, 1) for label in labels]
    out += struct.pack("<iiiqq", len(entries), len(words), len(labels), 1000, -1)
    for name, kind in entries:
        out += name.encode("utf-8") + b"\0" + struct.pack("<qb", 10, kind)
    input_matrix = np.array([words[w] for w in words], dtype=np.float32)
    out += struct.pack("<?qq", False, *input_matrix.shape) + input_matrix.tobytes()
    output_matrix = np.eye(dim, dtype=np.float32)
    out += struct.pack("<?qq", False, *output_matrix.shape) + output_matrix.tobytes()
    path.write_bytes(bytes(out))
    return path


def reference_normalise(text: str) -> str:
    """Fuzzy dedup's normal form, written plainly: NFKC, lower case, words split at punctuation, symbols,
    spaces and controls, each run of digits read as 0."""
    import unicodedata

    text = regex.sub(r"\p{Nd}+", "0", unicodedata.normalize("NFKC", text).lower())
    return " ".join(regex.split(r"[\p{P}\p{S}\p{Z}\p{Cc}]+", text)).strip(" ")


def reference_shingles(text: str, n: int, chars: bool = False) -> set[str]:
    """n consecutive words of a normal form; or n consecutive characters, spaces left out."""
    units = list(text.replace(" ", "")) if chars else text.split()
    grams = {" ".join(units[i : i + n]) for i in range(len(units) - n + 1)}
    return grams or ({" ".join(units)} if units else set())


def jaccard(left: str, right: str, n: int = 5) -> float:
    """True Jaccard similarity of two texts' word n-gram sets, after normalisation."""
    a, b = reference_shingles(reference_normalise(left), n), reference_shingles(reference_normalise(right), n)
    return len(a & b) / len(a | b)


def write_tiny_encoder(folder: Path, kind: str, texts: list[str], lowercase: bool = True) -> Path:
    """A tiny random model saved as a Hugging Face folder, with a word-level tokenizer trained on ``texts``
    (plus the e5 prompt words): ``bert`` (encoder), ``bert-1``/``bert-2`` (cross-encoders with one or two
    labels), ``qwen3`` (decoder) or ``qwen3-lm`` (decoder with its language-model head)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        PreTrainedTokenizerFast,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3Model,
    )

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tokenizer.train_from_iterator([*texts, "query: passage:"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    shape = {"vocab_size": fast.vocab_size, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}
    if kind.startswith("bert"):
        config = BertConfig(**shape, num_attention_heads=4, max_position_embeddings=256)
        if kind == "bert":
            model = BertModel(config)
        else:
            config.num_labels = int(kind.split("-")[1])
            model = BertForSequenceClassification(config)
    else:
        config = Qwen3Config(
            **shape, num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256
        )
        model = Qwen3ForCausalLM(config) if kind == "qwen3-lm" else Qwen3Model(config)
    model.save_pretrained(folder)
    return folder


RERANK_LANGS = ("fra_Latn", "deu_Latn", "rus_Cyrl")


def write_rerank_task(folder: Path, articles: int = 30) -> dict[str, str]:
    """English UDHR articles as queries; the same articles in French, German and Russian as the corpus
    (relevant = same article); a run listing every candidate in a shuffled order, plus one docid per query
    that the corpus does not hold."""
    texts: dict[str, list[str]] = {}
    for record in sample_records():
        texts.setdefault(record["lang"][0], []).append(record["text"].split("\n", 1)[-1])
    folder.mkdir(parents=True, exist_ok=True)
    queries = [{"qid": f"a{n}", "text": texts["eng_Latn"][n]} for n in range(1, articles + 1)]
    corpus = [
        {"doc_id": f"{lang}-{n}", "text": texts[lang][n]} for lang in RERANK_LANGS for n in range(1, articles + 1)
    ]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    rng = random.Random(7)
    run, qrels = [], []
    for query in queries:
        candidates = [d["doc_id"] for d in corpus] + [f"ghost-{query['qid']}"]
        rng.shuffle(candidates)
        run += [
            f"{query['qid']} Q0 {doc} {rank} {100 - rank / 10:.2f} bm25\n" for rank, doc in enumerate(candidates, 1)
        ]
        qrels += [f"{query['qid']} 0 {lang}-{query['qid'][1:]} 1\n" for lang in RERANK_LANGS]
    (folder / "shuffled.run").write_text("".join(run))
    (folder / "qrels.txt").write_text("".join(qrels))
    return {
        "runs": [str(folder / "shuffled.run")],
        "queries": str(folder / "queries.jsonl"),
        "corpus": {"path": str(folder / "corpus.jsonl")},
        "qrels": str(folder / "qrels.txt"),
    }


def verdicts(output: str, manifest: dict[str, Any], storage: Any = None) -> dict[tuple[str, int], str]:
    """Every input record - (shard file name, line), wherever the shards lay - -> where it ended: corpus,
    removed or quarantine. A record written twice fails the assertion here."""
    import pyarrow.parquet as pq

    from shardflow.schema import split_source
    from shardflow.storage import Location, StorageConfig

    found = {}
    for entry in manifest["files"]:
        fs, path = Location(output, storage or StorageConfig()).join(entry["path"]).filesystem()
        with fs.open(path, "rb") as handle:
            sources = pq.read_table(handle, columns=["source"])["source"]
        uris, lines = split_source(sources)
        for uri, line in zip(uris, lines, strict=True):
            key = (uri.rsplit("/", 1)[-1], line)
            assert key not in found, f"{key} was written twice"
            found[key] = entry["kind"]
    return found


def kill_worker_when(title: str, ready: Callable[[], bool] = lambda: True, timeout: float = 120) -> str | None:
    """SIGKILL the first worker process of this test's Ray whose title starts with ``title`` (Ray titles its
    workers ``ray::<what runs>``; an actor busy with a call ends in ``.<method>``) once ``ready()`` holds;
    return its title, or None if none showed up in time. Only this Ray's processes: the raylet's children."""
    import psutil
    import ray

    @ray.remote
    def raylet_pid() -> int:
        return os.getppid()  # a worker's parent is its node's raylet

    raylet = psutil.Process(ray.get(raylet_pid.remote()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in raylet.children(recursive=True) if ready() else []:
            try:
                command = " ".join(process.cmdline())
            except psutil.Error:
                continue
            if command.startswith(title):
                process.send_signal(signal.SIGKILL)
                return command
        time.sleep(0.01)
    return None


# Nodes of the fixture's cluster, by number: the head (2 CPUs), a CPU worker (1 CPU) and a GPU worker
# (2 CPUs, 2 logical GPUs).
HEAD, CPU_WORKER, GPU_WORKER = 0, 1, 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


class LocalCluster:
    """The nodes as processes: each node keeps its own temp dir, as on separate machines (nodes sharing one
    would unpack a job's working directory over each other and pull it from under the running driver), so
    a node can be removed - every process of it SIGKILLed, as when a machine vanishes - and started again."""

    def __init__(self, temp: Path) -> None:
        self.temp = temp
        home = temp / "home"
        home.mkdir()
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        env.update(HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        # a lost node is noticed in ~3 s instead of ~30 s
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000")
        env.update(RAY_health_check_failure_threshold="3")
        self.env = env
        self.port, self.dashboard = free_port(), free_port()
        self.nodes = [
            ["--head", "--port", str(self.port), "--dashboard-port", str(self.dashboard), "--num-cpus", "2"],
            ["--address", self.gcs, "--num-cpus", "1"],
            ["--address", self.gcs, "--num-cpus", "2", "--num-gpus", "2"],
        ]

    @property
    def gcs(self) -> str:
        """The address a driver joins with (``ray.address`` / ``--address``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """The job API's address (``shardflow submit --address``)."""
        return f"http://127.0.0.1:{self.dashboard}"

    def start(self, number: int) -> None:
        agent = ["--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(self.temp / str(number))]
        started = subprocess.run(
            [ray_cli(), "start", *self.nodes[number], *agent, "--disable-usage-stats"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stderr[-3000:]

    def remove(self, number: int) -> None:
        """SIGKILL every process of node ``number`` (its raylet, agents and workers)."""
        stop_processes_under(self.temp / str(number))

    def alive_nodes(self) -> int:
        listed = subprocess.run(
            [ray_cli(), "list", "nodes", "--address", self.gcs, "--filter", "state=ALIVE", "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return listed.stdout.count('"node_id"')

    def wait_for_nodes(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != count:
            assert time.monotonic() < deadline, f"the cluster did not reach {count} live nodes"
            time.sleep(0.5)


def stop_processes_under(temp: Path) -> None:
    """Kill every process whose command line names ``temp``, with its children (not `ray stop`, which would
    kill every Ray on this machine)."""
    import psutil

    mine = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
    for process in mine:
        for child in process.children(recursive=True):
            child.send_signal(signal.SIGKILL)
        process.send_signal(signal.SIGKILL)
