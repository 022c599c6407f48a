"""The two towers: items (ID + hashed features -> vector and bias) and users (causal self-attention)."""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.ml.config import ModelConfig


class ItemTower(nn.Module):
    """Item vector = ID embedding + mean of its feature-token embeddings; the last column is the bias."""

    features: Tensor
    id_mask: Tensor

    def __init__(self, n_items: int, features: Tensor, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.id_table = nn.Embedding(n_items, cfg.d + 1)
        self.feature_table = nn.EmbeddingBag(cfg.feature_buckets, cfg.d + 1, mode="mean", padding_idx=0)
        self.register_buffer("features", features.to(torch.long), persistent=True)  # [N, F]
        # 1 for items seen in training, 0 for catalog items without events: those are features-only,
        # exactly as `embed_features` serves items added after training.
        self.register_buffer("id_mask", torch.ones(n_items, 1), persistent=True)  # [N, 1]
        nn.init.normal_(self.id_table.weight, std=cfg.d**-0.5)
        nn.init.normal_(self.feature_table.weight, std=0.02)
        with torch.no_grad():
            self.id_table.weight[:, -1].zero_()
            self.feature_table.weight[:, -1].zero_()
            self.feature_table.weight[0].zero_()

    def forward(self, rows: Tensor | None = None) -> Tensor:
        """Vectors (v, b) of the given item rows, or of the whole catalog when `rows` is None."""
        features: Tensor = self.features if rows is None else self.features[rows]  # [n, F]
        ids = self.id_table.weight if rows is None else self.id_table(rows)  # [n, d+1]
        ids = ids * (self.id_mask if rows is None else self.id_mask[rows])  # [n, d+1]
        if self.training and self.cfg.id_dropout > 0:
            # Randomly hide the ID part so the features alone must carry an item (cold start).
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.cfg.id_dropout  # [n, 1]
            ids = ids * keep
        return ids + self.feature_table(features)  # [n, d+1]

    def embed_features(self, features: Tensor) -> Tensor:
        """Vectors of items known by their features only ([n, F] token ids -> [n, d+1])."""
        return self.feature_table(features)  # [n, d+1]


def dropout_keep(shape: tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """A bool keep-mask with P(keep) = 1 - p, from random int64 words viewed as bytes.

    `bernoulli_` (what F.dropout and SDPA's dropout use on the CPU) draws one float per element and cost 20% of
    an ml-100k epoch; eight random bytes per int64 draw are ~7x cheaper. p is quantised to 1/256.
    """
    n = math.prod(shape)
    words = torch.randint(-(2**62), 2**62, ((n + 7) // 8,), dtype=torch.int64, device=device)
    return (words.view(torch.uint8)[:n] >= round(p * 256)).view(shape)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """Causal attention [B, H, L, d/H]; mask [B, 1, L, L] bool (True = may attend) or None for plain causal.

    Without dropout (evaluation, serving) this is the fused SDPA kernel. Training with dropout on the CPU
    spells it out with a cheap keep-mask; on CUDA SDPA's own dropout is fast and is used.
    """
    if p == 0.0 or q.device.type != "cpu":
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    length = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # [B, H, L, L]
    allowed = torch.ones(length, length, dtype=torch.bool, device=q.device).tril() if mask is None else mask
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)  # [B, H, L, L]
    keep = dropout_keep(tuple(weights.shape), p, q.device)
    return (weights * keep) @ v * (1.0 / (1.0 - p))  # [B, H, L, d/H]


class Dropout(nn.Module):
    """nn.Dropout with the cheap keep-mask on the CPU (same semantics: scale by 1/(1-p) while training)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return x * dropout_keep(tuple(x.shape), self.p, x.device) * (1.0 / (1.0 - self.p))


class Block(nn.Module):
    """Pre-norm transformer block: causal multi-head self-attention, then a GELU feed-forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.attn_dropout = cfg.attn_dropout
        self.ln1 = nn.LayerNorm(cfg.d)
        self.qkv = nn.Linear(cfg.d, 3 * cfg.d)
        self.proj = nn.Linear(cfg.d, cfg.d)
        self.ln2 = nn.LayerNorm(cfg.d)
        self.ffn = nn.Sequential(nn.Linear(cfg.d, 4 * cfg.d), nn.GELU(), nn.Linear(4 * cfg.d, cfg.d))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: [B, L, d]; mask: [B, 1, L, L] bool (True = may attend) or None for plain causal."""
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, d/H]
        p = self.attn_dropout if self.training else 0.0
        a = attention(q, k, v, mask, p)  # [B, H, L, d/H]
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, length, d)))  # [B, L, d]
        return x + self.drop(self.ffn(self.ln2(x)))  # [B, L, d]


class UserTower(nn.Module):
    """Causal self-attention over (item vector + event type + position) of the latest L interactions."""

    def __init__(self, n_types: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.positions = nn.Embedding(cfg.max_len, cfg.d)
        self.type_table = nn.Embedding(n_types + 1, cfg.d)  # the last row: unknown type
        self.ln_in = nn.LayerNorm(cfg.d)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.ln_out = nn.LayerNorm(cfg.d)
        nn.init.normal_(self.positions.weight, std=0.02)
        nn.init.normal_(self.type_table.weight, std=0.02)

    def forward(self, item_vecs: Tensor, types: Tensor, valid: Tensor | None) -> Tensor:
        """item_vecs [B, L, d], types [B, L], valid [B, L] bool (None: no padding) -> states [B, L, d]."""
        length = item_vecs.shape[1]
        pos = torch.arange(self.cfg.max_len - length, self.cfg.max_len, device=item_vecs.device)  # [L]
        x = self.ln_in(item_vecs * math.sqrt(self.cfg.d) + self.positions(pos) + self.type_table(types))
        x = self.drop(x)  # [B, L, d]
        mask = None
        if valid is not None:
            x = x * valid.unsqueeze(-1)
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()  # [L, L]
            eye = torch.eye(length, dtype=torch.bool, device=x.device)  # [L, L]
            # A padded key is hidden except from itself, so no row of the mask is empty.
            mask = (causal & (valid.unsqueeze(1) | eye)).unsqueeze(1)  # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_out(x)  # [B, L, d]


class TwoTower(nn.Module):
    """One member: score(user, item) = u · v + b with u from the user tower and (v, b) from the item tower."""

    def __init__(self, n_items: int, n_types: int, features: Tensor, cfg: ModelConfig) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError("TwoTower: the catalog is empty")
        self.cfg = cfg
        self.n_types = n_types
        self.dim = cfg.d + 1
        self.items = ItemTower(n_items, features, cfg)
        self.user = UserTower(n_types, cfg)
        if cfg.user_buckets > 0:
            # Long-term taste: a hashed user-ID table (its size does not grow with the user count).
            self.user_table = nn.Embedding(cfg.user_buckets, cfg.d)
            nn.init.normal_(self.user_table.weight, std=0.02)

    def encode(
        self, item_vecs: Tensor, types: Tensor, valid: Tensor | None, users: Tensor | None = None
    ) -> Tensor:
        """Sequence states from the input items' (v, b) vectors: [B, L, d+1] -> [B, L, d].

        With a user-ID table and `users` ([B] hashed rows) the user's long-term vector is added to every state.
        """
        states = self.user(item_vecs[..., :-1], types, valid)  # [B, L, d]
        if users is not None and self.cfg.user_buckets > 0:
            long_term = self.user_table(users)  # [B, d]
            if self.training and self.cfg.id_dropout > 0:
                long_term = long_term * (
                    torch.rand(users.shape[0], 1, device=users.device) >= self.cfg.id_dropout
                )
            states = states + long_term.unsqueeze(1)
        return states

    def item_vectors(self, rows: Tensor | None = None) -> Tensor:
        """(v, b) of the given rows or of the whole catalog ([n, d+1])."""
        return self.items(rows)

    def embed_features(self, features: Tensor) -> Tensor:
        """(v, b) of items known by their features only ([n, F] -> [n, d+1])."""
        return self.items.embed_features(features)

    @staticmethod
    def query(states: Tensor) -> Tensor:
        """Append the constant 1 that multiplies the item bias: [..., d] -> [..., d+1]."""
        return torch.cat([states, torch.ones_like(states[..., :1])], dim=-1)


class RecModel(nn.Module):
    """K independently trained members served as one inner product: u = (u_1..u_K), v = (v_1..v_K), b = sum b_k.

    u · v + b is then the sum of the members' scores, so an ensemble costs nothing extra in the index.
    """

    def __init__(self, n_items: int, n_types: int, features: Tensor, cfg: ModelConfig) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError("RecModel: the catalog is empty")
        self.cfg = cfg
        self.n_types = n_types
        self.dim = cfg.members * cfg.d + 1
        self.members = nn.ModuleList([TwoTower(n_items, n_types, features, cfg) for _ in range(cfg.members)])

    @classmethod
    def of(cls, members: list[TwoTower]) -> RecModel:
        """Assemble trained members (same catalog and config) into one model."""
        first = members[0]
        model = cls(first.items.features.shape[0], first.n_types, first.items.features, first.cfg)
        model.members = nn.ModuleList(members)
        return model

    @property
    def towers(self) -> list[TwoTower]:
        """The members, typed."""
        return [cast(TwoTower, m) for m in self.members]

    def _fold(self, parts: list[Tensor]) -> Tensor:
        vectors = [p[..., :-1] for p in parts]
        bias = torch.stack([p[..., -1] for p in parts]).sum(0).unsqueeze(-1)
        return torch.cat([*vectors, bias], dim=-1)  # [..., K*d+1]

    def item_vectors(self, rows: Tensor | None = None) -> Tensor:
        """(v_1..v_K, sum b) of the given rows or of the whole catalog ([n, K*d+1])."""
        return self._fold([m.items(rows) for m in self.towers])

    def embed_features(self, features: Tensor) -> Tensor:
        """Vectors of items known by their features only ([n, F] -> [n, K*d+1])."""
        return self._fold([m.items.embed_features(features) for m in self.towers])

    def encode(
        self, item_vecs: Tensor, types: Tensor, valid: Tensor | None, users: Tensor | None = None
    ) -> Tensor:
        """States from served item vectors: [B, L, K*d+1] -> [B, L, K*d] (member k reads its own slice)."""
        d = self.cfg.d
        parts = []
        for k, m in enumerate(self.towers):
            vecs = torch.cat([item_vecs[..., k * d : (k + 1) * d], item_vecs[..., -1:]], dim=-1)
            parts.append(m.encode(vecs, types, valid, users))
        return torch.cat(parts, dim=-1)

    @staticmethod
    def query(states: Tensor) -> Tensor:
        """Append the constant 1 that multiplies the item bias: [..., D] -> [..., D+1]."""
        return torch.cat([states, torch.ones_like(states[..., :1])], dim=-1)
