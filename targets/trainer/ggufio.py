"""Write a Hugging Face llama state dict as a llama.cpp-style GGUF.

Follows llama.cpp's `convert_hf_to_gguf.py` (LlamaModel, sentencepiece vocab path):
  * tensor names `token_embd`, `blk.N.attn_q` ... `output_norm` (`output` omitted when tied);
  * the rows of attn_q / attn_k are permuted so that HF's rotate-half rope pairs (i, i+d/2)
    become the adjacent pairs (2i, 2i+1) that ggml's normal rope rotates;
  * 2-D weights quantised (here Q8_0 or Q4_0), 1-D norms F32;
  * tokenizer metadata as llama.cpp writes it for a SentencePiece model: model "llama",
    tokens, scores, token_type (1 normal, 2 unknown, 3 control, 5 unused, 6 byte),
    bos/eos/unk ids, add_bos_token, add_space_prefix.

`write_llama_gguf` returns the HF-layout float32 weights the file actually stores (quantised
and dequantised), so a caller can check that transformers' GGUF loader reads back the same.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter
from gguf.constants import GGMLQuantizationType as QT, LlamaFileType

FILE_TYPE = {QT.Q8_0: LlamaFileType.MOSTLY_Q8_0, QT.Q4_0: LlamaFileType.MOSTLY_Q4_0,
             QT.F32: LlamaFileType.ALL_F32}

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_tensor_name(hf: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")
    if parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in _LAYER_NAMES:
        raise KeyError(f"no GGUF name for {hf}")
    return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:])]}"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF row order -> llama.cpp row order (per head: interleave the two rotary halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def spm_vocab(sp) -> tuple[list[str], list[float], list[int]]:
    """tokens / scores / token types the way llama.cpp's converter derives them."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                     else 6 if sp.is_byte(i) else 1)
    return tokens, scores, types


def write_llama_gguf(path: Path, cfg, state_dict: dict[str, np.ndarray], sp, qtype: QT = QT.Q8_0,
                     name: str = "tiny-base", description: str = "") -> dict[str, np.ndarray]:
    """Write `state_dict` (HF names, float32 numpy) for LlamaConfig `cfg` and tokenizer `sp`."""
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    tokens, scores, types = spm_vocab(sp)
    w = GGUFWriter(path, "llama")
    w.add_name(name)
    if description:
        w.add_description(description)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(float(theta))
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(FILE_TYPE[qtype]))
    if qtype != QT.F32:
        w.add_quantization_version(2)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)

    stored: dict[str, np.ndarray] = {}
    for hf, arr in state_dict.items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        gname = gguf_tensor_name(hf)
        heads = n_head if hf.endswith("q_proj.weight") else n_kv if hf.endswith("k_proj.weight") else 0
        data = np.ascontiguousarray(permute_qk(arr, heads) if heads else arr, dtype=np.float32)
        qt = QT.F32 if data.ndim == 1 else qtype
        if qt == QT.F32:
            w.add_tensor(gname, data)
            deq = data.copy()
        else:
            from gguf.quants import dequantize, quantize
            q = quantize(data, qt)
            w.add_tensor(gname, q, raw_dtype=qt)
            deq = dequantize(q, qt).astype(np.float32)
        stored[hf] = unpermute_qk(deq, heads) if heads else deq
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if cfg.tie_word_embeddings:
        stored["lm_head.weight"] = stored["model.embed_tokens.weight"]
    _check_readback(path, stored, cfg)
    return stored


def _check_readback(path: Path, stored: dict[str, np.ndarray], cfg) -> None:
    """Re-read with gguf's own reader: every tensor must dequantise to what we recorded."""
    from gguf.quants import dequantize
    r = GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}
    for hf, want in stored.items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        t = by_name[gguf_tensor_name(hf)]
        got = dequantize(np.array(t.data), t.tensor_type).astype(np.float32).reshape(want.shape)
        if hf.endswith("q_proj.weight"):
            got = unpermute_qk(got, cfg.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            got = unpermute_qk(got, cfg.num_key_value_heads)
        if not np.array_equal(got, want):
            raise AssertionError(f"{path}: {hf} does not read back")
