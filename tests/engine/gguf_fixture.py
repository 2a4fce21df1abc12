"""GGUF files made for the tests from the embedded model's weights (nothing is downloaded).

The ``gguf`` package quantizes Q4_0, Q4_1 and Q8_0 but not the K-quants, so this module has
small reference encoders for Q4_K and Q6_K (round to nearest, llama.cpp's block layouts; the
decoders they are checked against are ``gguf.quants.dequantize``).  ``write_gguf`` copies every
metadata field of a source GGUF and re-encodes its tensors, e.g. as llama.cpp's Q4_K_M mix
(:func:`q4_k_m`).  SmolLM2-135M's rows of 576 values do not fit K-quant super-blocks, so on this
model llama.cpp's Q4_K_M is mostly Q5_0 and Q8_0 with Q4_K / Q6_K only for ``ffn_down`` (rows of
1536): the fixture does the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

QK = 256


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(*x.shape, 2)


def encode_q4_k(w: np.ndarray) -> np.ndarray:
    """[rows, cols] float32 (cols % 256 == 0) -> Q4_K bytes [rows, cols / 256 * 144]."""
    rows, cols = w.shape
    x = w.reshape(-1, 8, 32).astype(np.float32)  # super-blocks x sub-blocks x values
    lo = np.minimum(x.min(-1), 0.0)
    hi = np.maximum(x.max(-1), lo + 1e-12)
    scale, mins = (hi - lo) / 15.0, -lo
    d = (scale.max(-1) / 63.0).astype(np.float16).astype(np.float32)
    dmin = (mins.max(-1) / 63.0).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(scale / np.where(d > 0, d, 1)[:, None]), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(mins / np.where(dmin > 0, dmin, 1)[:, None]), 0, 63).astype(np.uint8)
    eff = (d[:, None] * sc)[..., None]
    q = np.clip(np.rint((x + (dmin[:, None] * mn)[..., None]) / np.where(eff > 0, eff, 1)), 0, 15).astype(np.uint8)
    scales = np.empty((x.shape[0], 12), np.uint8)
    scales[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)  # 32 bytes per pair of sub-blocks
    out = np.concatenate([_f16(d), _f16(dmin), scales, qs], 1)
    return out.reshape(rows, -1)


def encode_q6_k(w: np.ndarray) -> np.ndarray:
    """[rows, cols] float32 (cols % 256 == 0) -> Q6_K bytes [rows, cols / 256 * 210]."""
    rows, cols = w.shape
    x = w.reshape(-1, 16, 16).astype(np.float32)
    amax = np.abs(x).max(-1)
    sub = amax / 31.0
    d = (sub.max(-1) / 127.0).astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(sub / np.where(d > 0, d, 1)[:, None]), -128, 127).astype(np.int8)
    eff = (d[:, None] * sc.astype(np.float32))[..., None]
    q = (np.clip(np.rint(x / np.where(eff > 0, eff, 1)), -32, 31) + 32).astype(np.uint8).reshape(-1, 8, 32)
    ql = np.empty((x.shape[0], 128), np.uint8)
    qh = np.zeros((x.shape[0], 64), np.uint8)
    for c in range(8):  # chunk c of 32 values: see gguf.quants.Q6_K.dequantize_blocks
        half, nib = c // 4, (c // 2) % 2
        at = half * 64 + (c % 2) * 32
        low = q[:, c] & 15
        ql[:, at:at + 32] = low if nib == 0 else ql[:, at:at + 32] | (low << 4)
        qh[:, half * 32:half * 32 + 32] |= (q[:, c] >> 4) << (2 * (c % 4))
    out = np.concatenate([ql, qh, sc.view(np.uint8), _f16(d)], 1)
    return out.reshape(rows, -1)


# llama.cpp's fallbacks for a K-quant whose rows are not a multiple of 256 values (llama_tensor_get_type)
FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}


def q4_k_m(name: str, layers: int) -> str:
    """llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the embedding and for attn_v / ffn_down in the
    first and last eighth of the layers and every third layer between (``use_more_bits``)."""
    part = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
    if part == "token_embd" or part == "output":
        return "Q6_K"
    if part in ("attn_v", "ffn_down"):
        i = int(name.split(".")[1])
        more = i < layers // 8 or i >= 7 * layers // 8 or (i - layers // 8) % 3 == 2
        return "Q6_K" if more else "Q4_K"
    return "Q4_K"


def write_gguf(src: Path, dest: Path, formats) -> Path:
    """Copy ``src``'s metadata and its tensors re-encoded: ``formats(name, layers)`` gives each 2-D
    tensor's GGUF type name (a K-quant that does not fit the row length falls back as llama.cpp's
    does, :data:`FALLBACK`); 1-D tensors stay F32."""
    import gguf
    from gguf.quants import dequantize, quantize

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dest), arch=reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub)
    T = gguf.GGMLQuantizationType
    layers = int(reader.fields["llama.block_count"].contents())
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        fmt = formats(t.name, layers) if w.ndim == 2 else "F32"
        if fmt in FALLBACK and w.shape[1] % QK:
            fmt = FALLBACK[fmt]
        if fmt == "F32":
            writer.add_tensor(t.name, w)
        elif fmt in ("Q4_K", "Q6_K"):
            enc = encode_q4_k(w) if fmt == "Q4_K" else encode_q6_k(w)
            writer.add_tensor(t.name, enc, raw_shape=enc.shape, raw_dtype=T[fmt])
        else:
            enc = quantize(w, T[fmt])
            writer.add_tensor(t.name, enc, raw_shape=enc.shape, raw_dtype=T[fmt])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest

