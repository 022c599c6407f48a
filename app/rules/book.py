"""PlacementBook: the placements and experiments one API process serves with, re-read in the background.

Both tables are small; every `placement_poll_seconds` the book reads them whole and publishes a new snapshot
with one reference assignment (readers never lock). A placement written through this process's admin API is
seen at once; one written through another process within a poll. A request naming a placement the snapshot
lacks reads the store once before it is told 404, so a placement just created elsewhere is never refused.

Resolution: a placement with a running experiment answers each user with the variant the stable hash of
(experiment id, user id) picks (app/experiments/assign.py); a stopped experiment's winner answers everyone.
A variant changes the model version, the strategy, or the whole rule set (another placement's).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db.tables import Experiment, Placement
from app.experiments.assign import assign
from app.rules.spec import PlacementIn, Rules, compile_placement
from app.serving.polling import Poller

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredPlacement:
    """A placement as stored, with its rules compiled."""

    name: str
    config: PlacementIn
    revision: int
    rules: Rules


@dataclass(frozen=True, slots=True)
class Variant:
    """One arm of an experiment."""

    name: str
    share: float
    model_version: str | None = None
    strategy: str | None = None
    placement: str | None = None


@dataclass(frozen=True, slots=True)
class ExperimentView:
    """An experiment as serving needs it."""

    experiment_id: str
    placement: str
    variants: tuple[Variant, ...]
    running: bool
    winner: str | None

    def variant(self, name: str) -> Variant | None:
        """The variant called `name`."""
        return next((v for v in self.variants if v.name == name), None)


@dataclass(frozen=True, slots=True)
class Resolved:
    """What answers one request: the rules, and the experiment arm when one assigned it."""

    placement: str
    rules: Rules
    revision: int
    experiment: str | None = None
    variant: str | None = None
    model_version: str | None = None  # a variant's pinned version (None: the active one)

    @property
    def cache_part(self) -> str:
        """The resolution's part of a cache key."""
        return f"p={self.placement}:{self.revision}:{self.rules.digest}|v={self.variant or ''}:{self.model_version or ''}"


@dataclass(frozen=True)
class _Snapshot:
    placements: dict[str, StoredPlacement] = field(default_factory=dict)
    experiments: dict[str, ExperimentView] = field(default_factory=dict)  # by placement: the one in force


def variants_of(raw: list[Any]) -> tuple[Variant, ...]:
    """Stored variant dicts as Variants."""
    return tuple(
        Variant(
            name=str(v["name"]),
            share=float(v["share"]),
            model_version=v.get("model_version"),
            strategy=v.get("strategy"),
            placement=v.get("placement"),
        )
        for v in raw
    )


def stored_placement(row: Placement) -> StoredPlacement:
    """A placement row, compiled (rows were validated when put)."""
    config = PlacementIn.model_validate(row.config)
    return StoredPlacement(row.name, config, int(row.revision), compile_placement(config, "placement"))


class PlacementBook:
    """The placements and experiments in force, kept current by a poller."""

    def __init__(self, sessions: sessionmaker[Session], poll_seconds: float = 2.0) -> None:
        self.sessions = sessions
        self._poll = poll_seconds
        self._snapshot = _Snapshot()
        self._lock = threading.Lock()
        self._poller: Poller | None = None
        self.loaded = False
        self.pinned_versions: Callable[[set[str]], None] | None = None  # told which versions variants pin

    def start(self, *, background: bool = True) -> None:
        """Read both tables now (a store outage leaves the book empty until the poller reads them)."""
        try:
            self.refresh()
        except SQLAlchemyError as exc:
            log.warning("placements not read at start (%s): the poller retries", type(exc).__name__)
        if background and self._poll > 0:
            self._poller = Poller("reco-placements-poll", self._poll, self.refresh)
            self._poller.start()

    def stop(self) -> None:
        """Stop the poller."""
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def refresh(self) -> None:
        """Read every placement and the experiment in force on each placement; publish them together."""
        with self._lock, self.sessions() as session:
            placements: dict[str, StoredPlacement] = {}
            for row in session.scalars(select(Placement)):
                try:
                    placements[row.name] = stored_placement(row)
                except Exception as exc:
                    log.error("placement %r cannot be compiled, skipped: %s", row.name, exc)
            experiments: dict[str, ExperimentView] = {}
            rows = session.scalars(select(Experiment).order_by(Experiment.started_at))
            for exp in rows:  # the latest started wins: a running one, or a stopped one's winner
                if exp.status == "running" or exp.winner:
                    experiments[exp.placement] = ExperimentView(
                        exp.experiment_id,
                        exp.placement,
                        variants_of(list(exp.variants)),
                        exp.status == "running",
                        exp.winner,
                    )
            self._snapshot = _Snapshot(placements, experiments)
            self.loaded = True
        if self.pinned_versions is not None:
            self.pinned_versions(self.versions_pinned())

    def versions_pinned(self) -> set[str]:
        """Model versions that variants in force name (serving keeps them loaded beside the active one)."""
        out = set()
        for exp in self._snapshot.experiments.values():
            for v in exp.variants:
                if v.model_version and (exp.running or v.name == exp.winner):
                    out.add(v.model_version)
        return out

    def known(self, name: str) -> bool:
        """Whether this snapshot holds the placement (else `resolve` reads the store)."""
        return name in self._snapshot.placements

    def placement(self, name: str) -> StoredPlacement | None:
        """The placement called `name` (read from the store when this snapshot lacks it)."""
        found = self._snapshot.placements.get(name)
        if found is None:
            with self.sessions() as session:
                row = session.get(Placement, name)
                if row is None:
                    return None
                found = stored_placement(row)
        return found

    def experiment_on(self, placement: str) -> ExperimentView | None:
        """The experiment in force on a placement, if any."""
        return self._snapshot.experiments.get(placement)

    def resolve(self, name: str, user_id: str | None) -> Resolved | None:
        """The rules answering `user_id` on placement `name` (None: no such placement)."""
        stored = self.placement(name)
        if stored is None:
            return None
        base = Resolved(name, stored.rules, stored.revision)
        exp = self.experiment_on(name)
        if exp is None:
            return base
        if exp.running:
            if user_id is None:  # anonymous: the first variant (the control) answers, unassigned
                return base
            arm_name = assign(user_id, exp.experiment_id, [(v.name, v.share) for v in exp.variants])
            arm = exp.variant(arm_name)
            experiment: str | None = exp.experiment_id
        else:
            arm = exp.variant(exp.winner or "")
            experiment = None
        if arm is None:
            return base
        resolved = replace(base, experiment=experiment, variant=arm.name if experiment else None)
        if arm.placement and arm.placement != name:
            other = self.placement(arm.placement)
            if other is not None:
                resolved = replace(resolved, rules=other.rules, revision=other.revision)
        if arm.strategy:
            resolved = replace(resolved, rules=replace(resolved.rules, strategy=arm.strategy))  # type: ignore[arg-type]
        if arm.model_version:
            resolved = replace(resolved, model_version=arm.model_version)
        return resolved
