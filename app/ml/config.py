"""Hyper-parameters of the model and of its training, as frozen dataclasses (JSON-able via `to_dict`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "purchase": 4.0,
    "add_to_cart": 2.5,
    "click": 1.5,
    "view": 1.0,
    "rating": 1.0,
}


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the two towers: item features -> vectors, recent events -> a user vector."""

    d: int = 64
    max_len: int = 200
    layers: int = 2
    heads: int = 2
    dropout: float = 0.3
    attn_dropout: float = 0.3
    feature_buckets: int = 1 << 14
    max_features: int = 32
    id_dropout: float = 0.1
    members: int = 1
    user_buckets: int = 0  # hashed user-ID rows added to the sequence state; 0 = the user is their sequence

    def __post_init__(self) -> None:
        if self.d <= 0 or self.d % self.heads != 0:
            raise ValueError(f"ModelConfig.d: {self.d} must be positive and divisible by heads={self.heads}")
        if self.members < 1:
            raise ValueError(f"ModelConfig.members: {self.members} must be >= 1")
        if self.max_len < 1 or self.layers < 1:
            raise ValueError(f"ModelConfig: max_len={self.max_len} and layers={self.layers} must be >= 1")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(
                f"ModelConfig: dropout={self.dropout}, id_dropout={self.id_dropout} must be in [0, 1)"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, loss, data and device settings of one training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    epochs: int = 20
    batch_size: int = 32
    batch_positions: int = 2048  # a batch grows past batch_size windows until it holds this many positions
    patience: int = 8
    eval_every: int = 1
    min_epochs: int = 1
    full_softmax_max_items: int = 50_000
    sampled_negatives: int = 2048
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0
    refit_on_all: bool = True
    ema_decay: float = 0.99
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    bucket_by_length: bool = True
    mask_seen: bool = True
    time_budget_s: float | None = None
    amp: Literal["auto", "bf16", "off"] = "auto"
    # Refit on train + valid: N > 0 continues N epochs from the early-stopped weights; 0 retrains from scratch
    # for the epoch count validation chose (twice the cost). Ignored when refit_on_all is False.
    refit_epochs: int = 2
    valid_max_users: int = 20_000  # validate on a fixed sample of this many users when there are more
    # Warm-started (incremental) retrains: passes over (users with new events + a replay sample of the rest).
    incremental_epochs: int = 4
    replay_ratio: float = 1.0  # replayed older windows per window with new events
    incremental_lr_scale: float = 0.5
    # Explicit negatives (not_interested, unclicked impressions): weight of their pairwise term; 0 = unused.
    negative_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError(
                f"TrainConfig: lr={self.lr}, epochs={self.epochs}, batch_size={self.batch_size}, "
                f"patience={self.patience} must all be positive"
            )
        if self.refit_epochs < 0 or self.incremental_epochs < 1 or self.replay_ratio < 0:
            raise ValueError(
                f"TrainConfig: refit_epochs={self.refit_epochs} must be >= 0, incremental_epochs="
                f"{self.incremental_epochs} >= 1 and replay_ratio={self.replay_ratio} >= 0"
            )
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"TrainConfig.time_budget_s: {self.time_budget_s} must be positive (or None)")
        if not 0 <= self.negative_weight < float("inf"):
            raise ValueError(
                f"TrainConfig.negative_weight: {self.negative_weight} must be a finite number >= 0"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"TrainConfig.device: {self.device!r} is not one of 'auto', 'cpu', 'cuda'")
        for name, weight in self.event_weights.items():
            if weight <= 0:
                raise ValueError(f"TrainConfig.event_weights[{name!r}]: {weight} must be positive")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config from `to_dict` output; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"TrainConfig: unknown keys {sorted(unknown)}")
        values = dict(data)
        if isinstance(values.get("model"), dict):
            model_known = {f.name for f in fields(ModelConfig)}
            bad = set(values["model"]) - model_known
            if bad:
                raise ValueError(f"ModelConfig: unknown keys {sorted(bad)}")
            values["model"] = ModelConfig(**values["model"])
        return cls(**values)
