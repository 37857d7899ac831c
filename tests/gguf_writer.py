"""A GGUF writer for tests: tiny-llama's weights and byte tokenizer in llama.cpp's layout
(tensor names from gguf-py's map, q/k rows permuted as llama.cpp's converter does), so that
zoft's GGUF path can be tested on a file the test suite writes itself."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from zoft.models import load_model


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout of q/k rows (transformers' GGUF loader undoes it)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_llama_gguf(path: Path, q4_1: bool = False):
    """Write tiny-llama (fp32) to ``path``; returns the model and tokenizer it came from. With
    ``q4_1`` the blocks' linear weights are stored as Q4_1 (as the bundled SmolLM2's are)."""
    model, tok = load_model("tiny-llama")
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_vocab_size(c.vocab_size)
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([1] * 256 + [3] * (len(vocab) - 256))  # normal bytes, then control tokens
    w.add_token_scores([0.0] * len(vocab))
    w.add_token_merges([])
    w.add_bos_token_id(256)
    w.add_eos_token_id(256)
    w.add_pad_token_id(257)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for hf_name, p in model.state_dict().items():
        if hf_name == "lm_head.weight":  # tied to the embedding: GGUF leaves it out
            continue
        base, suffix = hf_name.rsplit(".", 1)
        name = f"{names.get_name(base)}.{suffix}"
        a = p.detach().float().numpy()
        if ".attn_q." in name:
            a = _permute(a, c.num_attention_heads)
        elif ".attn_k." in name:
            a = _permute(a, c.num_key_value_heads)
        if q4_1 and name.startswith("blk.") and a.ndim == 2 and a.shape[1] % 32 == 0:
            q = gguf.quants.quantize(np.ascontiguousarray(a), gguf.GGMLQuantizationType.Q4_1)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            w.add_tensor(name, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, tok
