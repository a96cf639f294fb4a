"""Triton kernels of decode attention straight from a quantised KV cache (flash-decoding), and the
per-token quantise + pack kernel a CUDA cache appends with.

A few new queries (Lq, 1 when decoding) attend every one of ``n`` cached tokens whose keys and values
are asymmetric integer codes (x = code * scale + zero, 8 / 4 / 2 bits packed little end first along the
head dim, fp16 scale and zero point). Decoding is memory bound: the kernels read each packed tile once
and never build dequantised keys or values, not even in registers, where the algebra allows:

- per-token keys (scale s_n, zero z_n):       q.k_n = s_n (q.c_n) + z_n sum(q)
- per-channel keys of group g (s_g, z_g):     q.k_n = (q * s_g).c_n + q.z_g
- per-token values:                            sum_n p_n (c_n s_n + z_n) = (p * s) @ C + sum(p * z)

Per-channel keys: a token block lies inside one group, or is made of GROUPS whole groups (one product
per group, its columns kept); other group sizes dequantise the key tile in registers (``KEY_MODE`` 2).
Packed codes are never interleaved: with b bits, byte j of a token holds channels j * R + i
(R = 8 / b codes per byte, phase i = 0..R-1), so the queries are split into R channel phases (keys)
and the output into R column phases (values), each phase one ``tl.dot`` against the shifted and
masked bytes.

Work split (flash-decoding): one program per (token split, batch x key/value head) takes all H / Hkv
query heads of that key/value head times Lq queries as its query tile (padded to >= 16 rows for
``tl.dot``), walks its split's tokens in blocks of BLOCK_N with an online softmax (base 2), and writes
an fp32 partial output and log-sum-exp; one more program per (batch x kv head) attends the r
full-precision keys of a per-channel cache's open group (values still codes); a second kernel merges
them all by log-sum-exp. Forward only.

Legend: B batch, H query heads, Hkv key/value heads, Lq queries, T capacity, n quantised tokens read,
r residual tokens, D key dim, Dv value dim, Pk / Pv packed bytes per token (D * bits / 8), G tokens per
key group, S splits, M = (H / Hkv) * Lq query rows per program.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = math.log2(math.e)
KEY_TOKEN, KEY_CHANNEL_ALIGNED, KEY_CHANNEL_GATHER = 0, 1, 2


@triton.jit
def _phase(codes, PHASE: tl.constexpr, BITS: tl.constexpr):
    """Codes of channel phase PHASE from a tile of packed bytes (int32): ``(byte >> PHASE * BITS) & mask``."""
    return (codes >> (PHASE * BITS)) & ((1 << BITS) - 1)


@triton.jit
def _key_phase_scores(raw, bias, q_i, codes, PHASE: tl.constexpr, BITS: tl.constexpr, R: tl.constexpr,
                      ks_ptr, kz_ptr, stat_rows, sks_t, tile_tokens, offs_n, offs_pk, pk_mask, n_mask,
                      KEY_MODE: tl.constexpr, GROUPS: tl.constexpr, GROUP_TOKENS: tl.constexpr,
                      PRECISION: tl.constexpr):
    """Adds phase PHASE of the key scores to ``raw`` (M, N) (and, per channel, of q.z_g to ``bias`` (M, N)).

    KEY_MODE 1: ``stat_rows`` is the scalar offset of the tile's first group row in the scale / zero
    tensors, and the tile spans GROUPS whole groups (or lies inside one: GROUPS = 1); ``tile_tokens``
    valid tokens. KEY_MODE 2: ``stat_rows`` are the (N,) offsets of each token's group row."""
    c = _phase(codes, PHASE, BITS)
    channels = offs_pk * R + PHASE
    if KEY_MODE == 0:  # per token: q.c_n here, the scale and zero point afterwards
        raw = tl.dot(q_i, tl.trans(c.to(q_i.dtype)), raw, input_precision=PRECISION)
    elif KEY_MODE == 1:  # per group g: (q * s_g).c_n + q.z_g
        qf = q_i.to(tl.float32)
        ct = tl.trans(c.to(q_i.dtype))
        for j in tl.static_range(GROUPS):
            live = pk_mask & (j * GROUP_TOKENS < tile_tokens)  # a tail tile may end before group j
            row = stat_rows + j * sks_t
            s = tl.load(ks_ptr + row + channels, mask=live, other=0.0).to(tl.float32)
            z = tl.load(kz_ptr + row + channels, mask=live, other=0.0).to(tl.float32)
            qz = tl.sum(qf * z[None, :], axis=1)
            qs = (qf * s[None, :]).to(q_i.dtype)
            if GROUPS == 1:
                bias += qz[:, None]
                raw = tl.dot(qs, ct, raw, input_precision=PRECISION)
            else:  # the tile's tokens of group j only
                in_group = (offs_n // GROUP_TOKENS == j)[None, :]
                bias += tl.where(in_group, qz[:, None], 0.0)
                raw += tl.where(in_group, tl.dot(qs, ct, input_precision=PRECISION), 0.0)
    else:  # groups not aligned with the tile: dequantise the key tile in registers
        stat_mask = n_mask[:, None] & pk_mask[None, :]
        offs = stat_rows[:, None] + channels[None, :]
        s = tl.load(ks_ptr + offs, mask=stat_mask, other=0.0).to(tl.float32)
        z = tl.load(kz_ptr + offs, mask=stat_mask, other=0.0).to(tl.float32)
        k = c.to(tl.float32) * s + z
        raw = tl.dot(q_i, tl.trans(k.to(q_i.dtype)), raw, input_precision=PRECISION)
    return raw, bias


@triton.jit
def _value_phase(acc, ps, codes, PHASE: tl.constexpr, BITS: tl.constexpr, PRECISION: tl.constexpr):
    """acc (M, BLOCK_PV) += (p * s) @ C_phase."""
    c = _phase(codes, PHASE, BITS).to(ps.dtype)
    return tl.dot(ps, c, acc, input_precision=PRECISION)


@triton.jit
def _load_values(vc_base, vs_base, vz_base, tokens, n_mask, offs_pv, pv_mask, svc_t, svs_t):
    """A block's packed value bytes (N, BLOCK_PV) int32 and per-token scale and zero point (N,) fp32."""
    vbytes = tl.load(vc_base + tokens[:, None] * svc_t + offs_pv[None, :],
                     mask=n_mask[:, None] & pv_mask[None, :], other=0).to(tl.int32)
    s_v = tl.load(vs_base + tokens * svs_t, mask=n_mask, other=0.0).to(tl.float32)
    z_v = tl.load(vz_base + tokens * svs_t, mask=n_mask, other=0.0).to(tl.float32)
    return vbytes, s_v, z_v


@triton.jit
def _softmax_value_step(scores, m_i, l_i, z_acc, acc0, acc1, acc2, acc3, vbytes, s_v, z_v, like,
                        VALUE_BITS: tl.constexpr, PRECISION: tl.constexpr):
    """One block of tokens: online softmax (base 2) of ``scores`` (M, N) (masked ones -inf), then the
    values as (p * s) @ C per column phase (``like``'s dtype into tl.dot) and sum(p * z) once."""
    VR: tl.constexpr = 8 // VALUE_BITS
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    p = tl.math.exp2(scores - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    z_acc = z_acc * alpha + tl.sum(p * z_v[None, :], axis=1)
    ps = (p * s_v[None, :]).to(like.dtype)
    acc0 = _value_phase(acc0 * alpha[:, None], ps, vbytes, 0, VALUE_BITS, PRECISION)
    if VR >= 2:
        acc1 = _value_phase(acc1 * alpha[:, None], ps, vbytes, 1, VALUE_BITS, PRECISION)
    if VR == 4:
        acc2 = _value_phase(acc2 * alpha[:, None], ps, vbytes, 2, VALUE_BITS, PRECISION)
        acc3 = _value_phase(acc3 * alpha[:, None], ps, vbytes, 3, VALUE_BITS, PRECISION)
    return m_new, l_i, z_acc, acc0, acc1, acc2, acc3


@triton.jit
def _store_phase(out_rows, acc, z_acc, inv_l, offs_pv, out_mask, PHASE: tl.constexpr, VR: tl.constexpr):
    tl.store(out_rows[:, None] + (offs_pv * VR + PHASE)[None, :], (acc + z_acc[:, None]) * inv_l[:, None],
             mask=out_mask)


@triton.jit(do_not_specialize=["n_tokens", "chunk", "n_residual"])
def _decode_kernel(
    q_ptr, kc_ptr, ks_ptr, kz_ptr, kr_ptr, vc_ptr, vs_ptr, vz_ptr, po_ptr, plse_ptr,
    sq_b, sq_h, sq_l,
    skc_b, skc_h, skc_t, sks_b, sks_h, sks_t, skr_b, skr_h, skr_t,
    svc_b, svc_h, svc_t, svs_b, svs_h, svs_t,
    kv_heads, q_len, n_tokens, chunk, n_residual, group_size, qk_scale,
    ROWS: tl.constexpr, DIM_PK: tl.constexpr, DIM_PV: tl.constexpr,
    KEY_BITS: tl.constexpr, VALUE_BITS: tl.constexpr, KEY_MODE: tl.constexpr, GROUPS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_PK: tl.constexpr, BLOCK_PV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One (split, batch x kv head): partial output (ROWS, Dv) and lse over its tokens. Splits 0..S-1 take
    chunks of the n quantised tokens; with HAS_RESIDUAL the last program takes the residual tokens
    n..n+r instead (full-precision keys, values still from the codes)."""
    KR: tl.constexpr = 8 // KEY_BITS
    VR: tl.constexpr = 8 // VALUE_BITS
    GROUP_TOKENS: tl.constexpr = BLOCK_N // GROUPS
    split, bh = tl.program_id(0), tl.program_id(1)
    num_splits = tl.num_programs(0)
    b, hkv = (bh // kv_heads).to(tl.int64), bh % kv_heads  # int64: a batch of long caches passes 2**31 bytes
    group = ROWS // q_len

    # Query tile: row r is query head hkv * group + r // Lq, query r % Lq; one tile per channel phase.
    offs_m = tl.arange(0, BLOCK_M)
    row_ok = offs_m < ROWS
    q_rows = q_ptr + b * sq_b + (hkv * group + offs_m // q_len) * sq_h + (offs_m % q_len) * sq_l
    offs_pk = tl.arange(0, BLOCK_PK)
    pk_mask = offs_pk < DIM_PK
    q_mask = row_ok[:, None] & pk_mask[None, :]
    q0 = tl.load(q_rows[:, None] + (offs_pk * KR)[None, :], mask=q_mask, other=0.0)
    q1, q2, q3 = q0, q0, q0
    if KR >= 2:
        q1 = tl.load(q_rows[:, None] + (offs_pk * KR + 1)[None, :], mask=q_mask, other=0.0)
    if KR == 4:
        q2 = tl.load(q_rows[:, None] + (offs_pk * KR + 2)[None, :], mask=q_mask, other=0.0)
        q3 = tl.load(q_rows[:, None] + (offs_pk * KR + 3)[None, :], mask=q_mask, other=0.0)
    q_sum = tl.sum(q0.to(tl.float32), axis=1)  # per-token keys: z_n sum(q)
    if KR >= 2:
        q_sum += tl.sum(q1.to(tl.float32), axis=1)
    if KR == 4:
        q_sum += tl.sum(q2.to(tl.float32) + q3.to(tl.float32), axis=1)

    offs_pv = tl.arange(0, BLOCK_PV)
    pv_mask = offs_pv < DIM_PV
    offs_n = tl.arange(0, BLOCK_N)
    kc_base = kc_ptr + b * skc_b + hkv * skc_h
    ks_base, kz_base = ks_ptr + b * sks_b + hkv * sks_h, kz_ptr + b * sks_b + hkv * sks_h
    vc_base = vc_ptr + b * svc_b + hkv * svc_h
    vs_base, vz_base = vs_ptr + b * svs_b + hkv * svs_h, vz_ptr + b * svs_b + hkv * svs_h

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    z_acc = tl.zeros([BLOCK_M], tl.float32)  # sum_n p_n z_n: added to every output column
    acc0 = tl.zeros([BLOCK_M, BLOCK_PV], tl.float32)
    acc1, acc2, acc3 = acc0, acc0, acc0

    # The quantised tokens of this split (none for the residual program: lo >= n there).
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n_tokens)
    for start in range(lo, hi, BLOCK_N):
        tokens = start + offs_n
        n_mask = tokens < hi
        # Each packed tile is read once.
        kbytes = tl.load(kc_base + tokens[:, None] * skc_t + offs_pk[None, :],
                         mask=n_mask[:, None] & pk_mask[None, :], other=0).to(tl.int32)
        vbytes, s_v, z_v = _load_values(vc_base, vs_base, vz_base, tokens, n_mask, offs_pv, pv_mask, svc_t, svs_t)

        raw = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        bias = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        # Row offsets of the scale / zero point: the tile's first group (KEY_MODE 1), each token's (2).
        stat_rows = (start // group_size) * sks_t if KEY_MODE == 1 else (tokens // group_size) * sks_t
        tile_tokens = hi - start
        raw, bias = _key_phase_scores(raw, bias, q0, kbytes, 0, KEY_BITS, KR, ks_base, kz_base, stat_rows, sks_t,
                                      tile_tokens, offs_n, offs_pk, pk_mask, n_mask, KEY_MODE, GROUPS,
                                      GROUP_TOKENS, PRECISION)
        if KR >= 2:
            raw, bias = _key_phase_scores(raw, bias, q1, kbytes, 1, KEY_BITS, KR, ks_base, kz_base, stat_rows, sks_t,
                                          tile_tokens, offs_n, offs_pk, pk_mask, n_mask, KEY_MODE, GROUPS,
                                          GROUP_TOKENS, PRECISION)
        if KR == 4:
            raw, bias = _key_phase_scores(raw, bias, q2, kbytes, 2, KEY_BITS, KR, ks_base, kz_base, stat_rows, sks_t,
                                          tile_tokens, offs_n, offs_pk, pk_mask, n_mask, KEY_MODE, GROUPS,
                                          GROUP_TOKENS, PRECISION)
            raw, bias = _key_phase_scores(raw, bias, q3, kbytes, 3, KEY_BITS, KR, ks_base, kz_base, stat_rows, sks_t,
                                          tile_tokens, offs_n, offs_pk, pk_mask, n_mask, KEY_MODE, GROUPS,
                                          GROUP_TOKENS, PRECISION)
        if KEY_MODE == 0:
            s_k = tl.load(ks_base + tokens * sks_t, mask=n_mask, other=0.0).to(tl.float32)
            z_k = tl.load(kz_base + tokens * sks_t, mask=n_mask, other=0.0).to(tl.float32)
            scores = raw * s_k[None, :] + q_sum[:, None] * z_k[None, :]
        else:
            scores = raw + bias
        scores = tl.where(n_mask[None, :], scores * qk_scale, float("-inf"))
        m_i, l_i, z_acc, acc0, acc1, acc2, acc3 = _softmax_value_step(
            scores, m_i, l_i, z_acc, acc0, acc1, acc2, acc3, vbytes, s_v, z_v, q0, VALUE_BITS, PRECISION)

    if HAS_RESIDUAL:
        # The open key group: keys (B, Hkv, G, D) in full precision, read per channel phase like q;
        # its values are codes at tokens n..n+r. Only the last program has any (r_len = 0 elsewhere).
        kr_base = kr_ptr + b * skr_b + hkv * skr_h
        r_len = tl.where(split == num_splits - 1, n_residual, 0)
        for start in range(0, r_len, BLOCK_N):
            rows = start + offs_n
            n_mask = rows < r_len
            k_mask = n_mask[:, None] & pk_mask[None, :]
            k_rows = kr_base + rows[:, None] * skr_t + (offs_pk * KR)[None, :]
            raw = tl.dot(q0, tl.trans(tl.load(k_rows, mask=k_mask, other=0.0).to(q0.dtype)),
                         input_precision=PRECISION)
            if KR >= 2:
                raw = tl.dot(q1, tl.trans(tl.load(k_rows + 1, mask=k_mask, other=0.0).to(q0.dtype)), raw,
                             input_precision=PRECISION)
            if KR == 4:
                raw = tl.dot(q2, tl.trans(tl.load(k_rows + 2, mask=k_mask, other=0.0).to(q0.dtype)), raw,
                             input_precision=PRECISION)
                raw = tl.dot(q3, tl.trans(tl.load(k_rows + 3, mask=k_mask, other=0.0).to(q0.dtype)), raw,
                             input_precision=PRECISION)
            scores = tl.where(n_mask[None, :], raw * qk_scale, float("-inf"))
            vbytes, s_v, z_v = _load_values(vc_base, vs_base, vz_base, n_tokens + rows, n_mask, offs_pv, pv_mask,
                                            svc_t, svs_t)
            m_i, l_i, z_acc, acc0, acc1, acc2, acc3 = _softmax_value_step(
                scores, m_i, l_i, z_acc, acc0, acc1, acc2, acc3, vbytes, s_v, z_v, q0, VALUE_BITS, PRECISION)

    # Partial results of this program: po (B * Hkv, S, ROWS, Dv), plse (B * Hkv, S, ROWS), natural log.
    inv_l = tl.where(l_i > 0, 1.0 / l_i, 0.0)  # a program without tokens (never launched) would give 0
    row_base = (bh * num_splits + split) * ROWS + offs_m
    out_rows = po_ptr + row_base * (DIM_PV * VR)
    out_mask = row_ok[:, None] & pv_mask[None, :]
    _store_phase(out_rows, acc0, z_acc, inv_l, offs_pv, out_mask, 0, VR)
    if VR >= 2:
        _store_phase(out_rows, acc1, z_acc, inv_l, offs_pv, out_mask, 1, VR)
    if VR == 4:
        _store_phase(out_rows, acc2, z_acc, inv_l, offs_pv, out_mask, 2, VR)
        _store_phase(out_rows, acc3, z_acc, inv_l, offs_pv, out_mask, 3, VR)
    tl.store(plse_ptr + row_base, (m_i + tl.math.log2(l_i)) / 1.4426950408889634, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    po_ptr, plse_ptr, out_ptr, lse_ptr, num_splits, rows, dim_v,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One (batch x kv head, row): merges the S partial outputs by their log-sum-exps.

    Writes out (B * Hkv, ROWS, Dv) in the output dtype and lse (B * Hkv, ROWS) fp32."""
    bh, row = tl.program_id(0), tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_DV)
    s_mask = offs_s < num_splits
    lse = tl.load(plse_ptr + (bh * num_splits + offs_s) * rows + row, mask=s_mask, other=float("-inf"))
    top = tl.max(lse, axis=0)
    w = tl.exp(lse - top)
    total = tl.sum(w, axis=0)
    parts = tl.load(po_ptr + ((bh * num_splits + offs_s) * rows + row)[:, None] * dim_v + offs_d[None, :],
                    mask=s_mask[:, None] & (offs_d < dim_v)[None, :], other=0.0)
    out = tl.sum(parts * w[:, None], axis=0) / total
    tl.store(out_ptr + (bh * rows + row) * dim_v + offs_d, out.to(out_ptr.dtype.element_ty), mask=offs_d < dim_v)
    tl.store(lse_ptr + bh * rows + row, top + tl.log(total))


@triton.jit
def _round_half_even(y):
    """torch.round's rounding of fp32 y (ties to even); y - floor(y) is exact, where y + 0.5 may round."""
    low = tl.floor(y)
    frac = y - low
    odd = (low - 2.0 * tl.floor(low * 0.5)) == 1.0
    return tl.where((frac > 0.5) | ((frac == 0.5) & odd), low + 1.0, low)


@triton.jit
def _quantize_tokens_kernel(
    x_ptr, codes_ptr, scale_ptr, zero_ptr, sx_b, sx_h, sx_l, sc_b, sc_h, sc_t, ss_b, ss_h, ss_t,
    kv_heads, length, start, tiny,
    DIM_P: tl.constexpr, BITS: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One token of x (B, Hkv, L, D): min/max asymmetric codes over D, packed little end first, written at
    cache position start + l with its scale and zero point (their dtype: the pointers')."""
    R: tl.constexpr = 8 // BITS
    levels: tl.constexpr = (1 << BITS) - 1
    row = tl.program_id(0)
    b, h, pos = (row // (kv_heads * length)).to(tl.int64), row // length % kv_heads, row % length
    offs = tl.arange(0, BLOCK_P)
    mask = offs < DIM_P
    x_row = x_ptr + b * sx_b + h * sx_h + pos * sx_l + offs * R
    # Channel phases (byte j holds channels j * R + i): x0 .. x3, unused ones repeat x0.
    x0 = tl.load(x_row, mask=mask, other=0.0).to(tl.float32)
    x1, x2, x3 = x0, x0, x0
    if R >= 2:
        x1 = tl.load(x_row + 1, mask=mask, other=0.0).to(tl.float32)
    if R == 4:
        x2 = tl.load(x_row + 2, mask=mask, other=0.0).to(tl.float32)
        x3 = tl.load(x_row + 3, mask=mask, other=0.0).to(tl.float32)
    both = tl.minimum(tl.minimum(x0, x1), tl.minimum(x2, x3))
    low = tl.min(tl.where(mask, both, float("inf")), axis=0)
    both = tl.maximum(tl.maximum(x0, x1), tl.maximum(x2, x3))
    high = tl.max(tl.where(mask, both, float("-inf")), axis=0)
    # As quantized_cache.quantize: the stored (rounded) scale and zero point make the codes.
    scale = tl.maximum(tl.math.div_rn(high - low, levels * 1.0), tiny).to(scale_ptr.dtype.element_ty)
    zero = low.to(zero_ptr.dtype.element_ty)
    scale_f, zero_f = scale.to(tl.float32), zero.to(tl.float32)
    packed = _code(x0, zero_f, scale_f, levels)
    if R >= 2:
        packed = packed | (_code(x1, zero_f, scale_f, levels) << BITS)
    if R == 4:
        packed = packed | (_code(x2, zero_f, scale_f, levels) << 2 * BITS)
        packed = packed | (_code(x3, zero_f, scale_f, levels) << 3 * BITS)
    cell = b * sc_b + h * sc_h + (start + pos) * sc_t
    tl.store(codes_ptr + cell + offs, packed.to(tl.uint8), mask=mask)
    stat = b * ss_b + h * ss_h + (start + pos) * ss_t
    tl.store(scale_ptr + stat, scale)
    tl.store(zero_ptr + stat, zero)


@triton.jit
def _code(x, zero, scale, levels: tl.constexpr):
    y = _round_half_even(tl.math.div_rn(x - zero, scale))
    return tl.minimum(tl.maximum(y, 0.0), levels * 1.0).to(tl.int32)


def quantize_tokens_into(x: Tensor, codes: Tensor, scale: Tensor, zero: Tensor, *, bits: int, start: int) -> None:
    """Per-token quantisation of x (B, Hkv, L, D) (D a multiple of 8 / bits) into cache buffers at positions
    start..start+L: codes (B, Hkv, T, D * bits / 8) uint8, scale and zero (B, Hkv, T, 1). The same codes,
    scales and zero points as ``shared_attention.quantized_cache.quantize`` + ``pack_codes``, one launch."""
    batch, kv_heads, length, dim = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    dim_p = dim * bits // 8
    _quantize_tokens_kernel[(batch * kv_heads * length,)](
        x, codes, scale, zero, *x.stride()[:3], *codes.stride()[:3], *scale.stride()[:3],
        kv_heads, length, start, torch.finfo(scale.dtype).tiny,
        DIM_P=dim_p, BITS=bits, BLOCK_P=triton.next_power_of_2(dim_p), num_warps=1,
    )


# --------------------------------------------------------------------------------------------
# Launcher


def key_mode(key_axis: str, group_size: int, block_n: int) -> int:
    """KEY_TOKEN, KEY_CHANNEL_ALIGNED (every token block inside one key group, or made of whole groups)
    or KEY_CHANNEL_GATHER (the key tile dequantised in registers)."""
    if key_axis == "token":
        return KEY_TOKEN
    aligned = group_size % block_n == 0 or (block_n % group_size == 0 and block_n // group_size <= 8)
    return KEY_CHANNEL_ALIGNED if aligned else KEY_CHANNEL_GATHER


def default_config(*, tokens: int, programs_per_split: int, key_axis: str, group_size: int) -> dict:
    """Token block, splits, warps and stages: 64-token blocks, enough splits for ~16 waves of the 132 SMs of
    an H200 (``apps/bench/kv_decode.py --sweep`` on one: 12-15% faster than 4 waves at B=1, T=131072; block
    size, warps and stages within 7% of each other)."""
    block_n = 64
    blocks = max(1, -(-tokens // block_n))
    splits = max(1, min(blocks, -(-16 * 132 // max(programs_per_split, 1))))
    return dict(block_n=block_n, splits=splits, num_warps=4, num_stages=2)


def quantized_decode_forward(
    q: Tensor, k_codes: Tensor, k_scale: Tensor, k_zero: Tensor, v_codes: Tensor, v_scale: Tensor, v_zero: Tensor,
    *, n: int, key_bits: int, key_axis: str, group_size: int, value_bits: int, v_dim: int, scale: float,
    k_residual: Tensor | None = None, n_residual: int = 0, config: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """q (B, H, Lq, D); codes (B, Hkv, T, P) uint8 with unit stride on P; scale / zero as the op's;
    k_residual (B, Hkv, >= r, D): full-precision keys of the ``n_residual`` = r tokens after the n
    quantised ones (their values are codes n..n+r). n + r >= 1.

    Returns out (B, H, Lq, Dv) in q's dtype and lse (B, H, Lq) fp32 over those n + r tokens."""
    batch, heads, q_len, dim = q.shape
    kv_heads = k_codes.shape[1]
    rows = heads // kv_heads * q_len
    config = config or default_config(tokens=n, programs_per_split=batch * kv_heads, key_axis=key_axis,
                                      group_size=group_size)
    block_n = config["block_n"]
    per_split = -(-n // config["splits"])
    chunk = max(1, -(-per_split // block_n)) * block_n  # tokens per split, whole blocks
    has_residual = n_residual > 0 and k_residual is not None
    programs = -(-n // chunk) + int(has_residual)  # the residual tokens get a program of their own
    q = q if q.stride(-1) == 1 else q.contiguous()
    if k_scale.stride() != k_zero.stride() or v_scale.stride() != v_zero.stride():
        k_scale, k_zero, v_scale, v_zero = (t.contiguous() for t in (k_scale, k_zero, v_scale, v_zero))
    if not has_residual:
        k_residual = k_codes  # any pointer: never read
    elif k_residual.stride(-1) != 1:
        k_residual = k_residual.contiguous()
    po = torch.empty(batch * kv_heads, programs, rows, v_dim, dtype=torch.float32, device=q.device)
    plse = torch.empty(batch * kv_heads, programs, rows, dtype=torch.float32, device=q.device)
    dim_pk, dim_pv = dim * key_bits // 8, v_dim * value_bits // 8
    mode = key_mode(key_axis, group_size, block_n)
    _decode_kernel[(programs, batch * kv_heads)](
        q, k_codes, k_scale, k_zero, k_residual, v_codes, v_scale, v_zero, po, plse,
        *q.stride()[:3], *k_codes.stride()[:3], *k_scale.stride()[:3], *k_residual.stride()[:3],
        *v_codes.stride()[:3], *v_scale.stride()[:3],
        kv_heads, q_len, n, chunk, n_residual if has_residual else 0, group_size, scale * LOG2E,
        ROWS=rows, DIM_PK=dim_pk, DIM_PV=dim_pv, KEY_BITS=key_bits, VALUE_BITS=value_bits,
        KEY_MODE=mode, GROUPS=max(1, block_n // group_size) if mode == KEY_CHANNEL_ALIGNED else 1,
        HAS_RESIDUAL=has_residual,
        BLOCK_M=max(16, triton.next_power_of_2(rows)), BLOCK_N=block_n,
        BLOCK_PK=max(16, triton.next_power_of_2(dim_pk)), BLOCK_PV=max(16, triton.next_power_of_2(dim_pv)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
    out = torch.empty(batch * kv_heads, rows, v_dim, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch * kv_heads, rows, dtype=torch.float32, device=q.device)
    _merge_splits_kernel[(batch * kv_heads, rows)](
        po, plse, out, lse, programs, rows, v_dim,
        BLOCK_S=max(2, triton.next_power_of_2(programs)), BLOCK_DV=triton.next_power_of_2(v_dim),
    )
    # Rows of a kv head are (query head in the group, query): (B * Hkv, G * Lq, .) -> (B, H, Lq, .).
    return out.view(batch, heads, q_len, v_dim), lse.view(batch, heads, q_len)
