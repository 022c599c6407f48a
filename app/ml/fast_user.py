"""The user tower in plain numpy for ONE history (batch 1, no padding, eval mode), reading the last position only.

Serving asks for one user vector per request, where torch's per-op overhead dominates; this path gives the same
numbers as `RecModel.query(RecModel.encode(...)[:, -1])` in plain numpy calls. Members are stacked on a leading
axis K (one batched matmul serves them all) and the weights are rearranged once, in float64:
- Every reader of the residual stream is a LayerNorm, so the stream is kept centred (zero mean per row): the
  centring matrix C = I - 1/d is folded into every Linear that writes to it. LayerNorm is then x / rms(x),
  and its scale and shift fold into the Linear that reads it (LN(x) W = norm(x) (g W) + b W).
- The attention scale 1/sqrt(d/H) is folded into the q columns. Each head's values get an extra constant-1
  column, so `exp(scores) @ values` also yields the softmax denominator, and the normalised output carries a
  1 that adds the projection's bias.
- GELU(h) = h (1 + erf(h/√2)) / 2: the first FFN Linear yields h' = h/√2 and the second absorbs the 1/√2.
- A static bound on the attention scores lets the softmax skip subtracting the row maximum when that is safe.
In the last block only the last query row is computed (keys and values still come from every position).
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
from torch import Tensor

from app.ml.model import Block, RecModel

EPS = 1e-5  # nn.LayerNorm's default

# erf(x) = x P(x²) / Q(x²) on [-4, 4] (±1 to float32 precision beyond): Eigen's / XLA's float32 rational
# approximation. Row 0: P's coefficients of x^0, x^2, .., x^12; row 1: Q's.
_ERF = np.array(
    [
        [-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
         -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10],
        [-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
         -1.45660718464996e-05, 0.0, 0.0],
    ],
    dtype=np.float32,
)  # fmt: skip
_ERF.flags.writeable = False


def erf(x: np.ndarray) -> np.ndarray:
    """erf of a float32 array (any shape; max abs error 5e-7, float32 rounding included)."""
    c = np.clip(x, -4.0, 4.0).reshape(-1)  # [n]
    powers = np.empty((7, c.size), dtype=np.float32)  # [7, n]: x^0, x^2, .., x^12
    powers[0] = 1.0
    np.multiply(c, c, out=powers[1])
    np.multiply(powers[1], powers[1], out=powers[2])
    for i, j in ((1, 2), (2, 2), (1, 4), (2, 4)):  # x^6, x^8, x^10, x^12
        np.multiply(powers[i], powers[j], out=powers[i + j])
    pq = _ERF @ powers  # [2, n]: P(x²), Q(x²)
    c *= pq[0]
    c /= pq[1]
    return c.reshape(x.shape)


def _rms_norm(x: np.ndarray) -> np.ndarray:
    """A centred row over its norm: LayerNorm(x) / sqrt(d) without the affine part (√d is in the weights)."""
    return x / np.sqrt(np.vecdot(x, x) + x.shape[-1] * EPS)[..., None]


def _heads(t: np.ndarray, heads: int) -> np.ndarray:
    """[K, L, H*w] -> [K, H, L, w] (a view)."""
    k, length, width = t.shape
    return t.reshape(k, length, heads, width // heads).transpose(0, 2, 1, 3)


def _f32(parts: list[Tensor]) -> np.ndarray:
    """float64 member tensors -> one read-only float32 array stacked on a leading K axis."""
    array = np.ascontiguousarray(torch.stack(parts).numpy(), dtype=np.float32)
    array.flags.writeable = False
    return array


class _BlockWeights:
    """One block of every member: [K, in, out] matrices for x @ W, [K, 1, out] biases."""

    def __init__(self, blocks: list[Block], centre: Tensor) -> None:
        d = centre.shape[0]
        heads, size = blocks[0].heads, d // blocks[0].heads
        qkv_w, qkv_b, proj_w, ff1_w, ff1_b, ff2_w, ff2_b = [], [], [], [], [], [], []
        for b in blocks:
            p = {name: t.detach().double() for name, t in b.named_parameters()}
            w = math.sqrt(d) * p["ln1.weight"][:, None] * p["qkv.weight"].T  # [d, 3d]
            bias = p["ln1.bias"] @ p["qkv.weight"].T + p["qkv.bias"]  # [3d]
            w[:, :d] /= math.sqrt(size)
            bias[:d] /= math.sqrt(size)
            # Values: H groups of (d/H values, then a constant 1): [d, 2d + H] after q and k.
            ones_w = torch.zeros(d, heads, 1, dtype=torch.float64)
            v_w = torch.cat([w[:, 2 * d :].reshape(d, heads, size), ones_w], dim=2).reshape(d, -1)
            ones_b = torch.ones(heads, 1, dtype=torch.float64)
            v_b = torch.cat([bias[2 * d :].reshape(heads, size), ones_b], dim=1).reshape(-1)
            qkv_w.append(torch.cat([w[:, : 2 * d], v_w], dim=1))
            qkv_b.append(torch.cat([bias[: 2 * d], v_b]))
            # Projection of the H groups (d/H normalised values, 1): the first group's 1 row is the bias.
            proj = (p["proj.weight"].T @ centre).reshape(heads, size, d)  # [H, d/H, d]
            ones_rows = torch.zeros(heads, 1, d, dtype=torch.float64)
            ones_rows[0, 0] = p["proj.bias"] @ centre
            proj_w.append(torch.cat([proj, ones_rows], dim=1).reshape(-1, d))  # [d + H, d]
            ff1_w.append(math.sqrt(d / 2) * p["ln2.weight"][:, None] * p["ffn.0.weight"].T)  # [d, 4d]
            ff1_b.append((p["ln2.bias"] @ p["ffn.0.weight"].T + p["ffn.0.bias"]) / math.sqrt(2))  # [4d]
            ff2_w.append(p["ffn.2.weight"].T @ centre / math.sqrt(2))  # [4d, d]
            ff2_b.append(p["ffn.2.bias"] @ centre)  # [d]
        self.qkv_w, self.qkv_b = _f32(qkv_w), _f32(qkv_b)[:, None]  # [K, d, 3d + H], [K, 1, 3d + H]
        self.proj_w = _f32(proj_w)  # [K, d + H, d]
        self.ff1_w, self.ff1_b = _f32(ff1_w), _f32(ff1_b)[:, None]  # [K, d, 4d], [K, 1, 4d]
        self.ff2_w, self.ff2_b = _f32(ff2_w), _f32(ff2_b)[:, None]  # [K, 4d, d], [K, 1, d]
        # |score| = |ñ_i M ñ_j| <= 2 ||M|| with ñ = (rms-normed row, 1), |ñ| <= √2, M = [Wq; bq] [Wk; bk]ᵀ per head.
        # Within ±70, exp neither overflows nor underflows (e^70 = 2.5e30), so the row maximum need not be
        # subtracted; larger bounds take the usual path (an ml-100k model, 20 epochs, had bounds 26 and 51).
        norms = []
        for w, bias in zip(qkv_w, qkv_b, strict=True):
            qk = torch.cat([w, bias[None]])[:, : 2 * d].reshape(d + 1, 2, heads, size)  # [d+1, 2, H, d/H]
            norms += [torch.linalg.matrix_norm(qk[:, 0, h] @ qk[:, 1, h].T, ord=2) for h in range(heads)]
        self.bound = 2 * float(max(norms))
        self.shift = self.bound > 70.0

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """q [K, H, n, d/H], k [K, H, L, d/H], v [K, H, L, d/H + 1] -> projected attention [K, n, d]."""
        s = q @ k.transpose(0, 1, 3, 2)  # [K, H, n, L]
        if mask is not None:
            s += mask
        if self.shift:
            s -= np.maximum.reduce(s, axis=-1, keepdims=True)
        o = np.exp(s, out=s) @ v  # [K, H, n, d/H + 1]: numerators, denominator
        members, heads, n, _ = o.shape
        a = np.empty((members, n, heads, o.shape[-1]), dtype=np.float32)  # [K, n, H, d/H + 1]
        np.divide(o, o[..., -1:], out=a.transpose(0, 2, 1, 3))
        return a.reshape(members, n, -1) @ self.proj_w  # [K, n, d], bias included

    def ffn(self, x: np.ndarray) -> np.ndarray:
        """x + FFN(ln2(x)) for x [K, n, d]."""
        h = _rms_norm(x) @ self.ff1_w  # [K, n, 4d]
        h += self.ff1_b  # h / √2 of the torch FFN
        act = erf(h)
        act += 1.0
        act *= h  # √2 GELU
        out = act @ self.ff2_w  # [K, n, d]
        out += self.ff2_b
        out += x
        return out


class NumpyUserEncoder:
    """`RecModel.query(model.encode(h[None], t[None], None)[:, -1])[0]` for one history, in numpy.

    Immutable once built (its arrays are read-only); `encode_last` keeps no state, so threads may share it.
    """

    def __init__(self, model: RecModel) -> None:
        cfg = model.cfg
        self.d, self.heads, self.max_len, self.members = cfg.d, cfg.heads, cfg.max_len, cfg.members
        d = cfg.d
        centre = torch.eye(d, dtype=torch.float64) - 1.0 / d  # [d, d]: x @ centre subtracts the row mean
        towers = [m.user for m in model.towers]

        def params(name: str) -> list[Tensor]:
            return [t.get_parameter(name).detach().double() for t in towers]

        self.scale_in = _f32([math.sqrt(d) * centre])[0]  # [d, d]: item vectors -> centred, scaled
        self.positions = _f32([w @ centre for w in params("positions.weight")])  # [K, max_len, d]
        self.type_table = _f32([w @ centre for w in params("type_table.weight")])  # [K, T+1, d]
        in_g, in_b = params("ln_in.weight"), params("ln_in.bias")
        self.in_w = _f32([math.sqrt(d) * g[:, None] * centre for g in in_g])  # [K, d, d]
        self.in_b = _f32([b @ centre for b in in_b])[:, None]  # [K, 1, d]
        self.out_g = _f32([math.sqrt(d) * g for g in params("ln_out.weight")])  # [K, d]
        self.out_b = _f32(params("ln_out.bias"))  # [K, d]
        self.blocks = [
            _BlockWeights([cast(Block, t.blocks[i]) for t in towers], centre) for i in range(cfg.layers)
        ]
        self.mask = np.triu(np.full((cfg.max_len, cfg.max_len), -np.inf, dtype=np.float32), k=1)  # [L, L]
        self.mask.flags.writeable = False

    @classmethod
    def from_model(cls, model: RecModel) -> NumpyUserEncoder:
        """Copy the user towers' weights of `model` (read once: later changes to the model are not seen)."""
        with torch.no_grad():
            return cls(model)

    def encode_last(self, item_vecs: np.ndarray, types: np.ndarray) -> np.ndarray:
        """item_vecs [L, K*d+1] float32 (oldest first, L <= max_len), types [L] int64 -> (u_1..u_K, 1) [K*d+1]."""
        k, d, heads = self.members, self.d, self.heads
        item_vecs = np.asarray(item_vecs, dtype=np.float32)
        length = item_vecs.shape[0]
        if not 1 <= length <= self.max_len:
            raise ValueError(f"encode_last: {length} events, expected 1..{self.max_len}")
        if item_vecs.shape != (length, k * d + 1) or np.shape(types) != (length,):
            raise ValueError(
                f"encode_last: shapes {item_vecs.shape}, {np.shape(types)} for {k * d + 1} columns"
            )
        items = item_vecs[:, : k * d].reshape(length, k, d).transpose(1, 0, 2)  # [K, L, d] (a view)
        x = items @ self.scale_in  # [K, L, d]
        x += self.positions[:, self.max_len - length :]
        x += self.type_table[:, types]
        x = _rms_norm(x) @ self.in_w  # [K, L, d]: the centred output of ln_in
        x += self.in_b
        for block in self.blocks[:-1]:
            qkv = _rms_norm(x) @ block.qkv_w  # [K, L, 3d + H]
            qkv += block.qkv_b
            q, key, v = (_heads(t, heads) for t in (qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]))
            a = block.attend(q, key, v, self.mask[:length, :length])  # [K, L, d]
            a += x
            x = block.ffn(a)  # [K, L, d]
        # The last block: keys and values from every position, the query of the last position only.
        block = self.blocks[-1]
        n = _rms_norm(x)  # [K, L, d]
        kv = n @ block.qkv_w[:, :, d:]  # [K, L, 2d + H]
        kv += block.qkv_b[:, :, d:]
        q = n[:, -1:] @ block.qkv_w[:, :, :d]  # [K, 1, d]
        q += block.qkv_b[:, :, :d]
        last = block.attend(_heads(q, heads), _heads(kv[..., :d], heads), _heads(kv[..., d:], heads), None)
        last += x[:, -1:]  # [K, 1, d]
        out = np.empty(k * d + 1, dtype=np.float32)  # [K*d+1]
        y = out[:-1].reshape(k, d)  # a view of out
        np.multiply(_rms_norm(block.ffn(last)[:, 0]), self.out_g, out=y)
        y += self.out_b
        out[-1] = 1.0
        return out
