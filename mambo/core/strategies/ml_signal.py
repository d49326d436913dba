"""``ml_signal``: buy or sell on a learned model's estimate that the price will rise, from a model
artifact written by ``mambo train`` (see :mod:`mambo.ml`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from mambo.core.strategies.base import Bar, BatchDecisions, Decision, Strategy
from mambo.core.strategies.crossing import clamp_confidence
from mambo.schemas.events import SignalSide

if TYPE_CHECKING:
    from mambo.ml.artifact import ModelArtifact

__all__ = ["MlSignal"]


@dataclass(kw_only=True)
class MlSignal(Strategy):
    """Buy when the model's probability that the close rises over its label horizon is above
    ``buy_above``, sell when it is below ``sell_below``, hold in between and while the features warm up.

    ``model`` is the folder ``mambo train --out`` wrote; the strategy reads the indicator specs, the
    feature recipes and the booster from it (:func:`~mambo.ml.artifact.load_artifact`, which refuses
    an artifact of another version or one that was altered). Precisely, the comparisons are on the
    model's log-odds against the thresholds' (``logit(buy_above)``...), the same numbers in
    :meth:`on_bar` and :meth:`decide_batch`. Confidence is how far past its threshold the probability
    went: ``(p - buy_above) / (1 - buy_above)`` for a buy, ``(sell_below - p) / sell_below`` for a sell.

    State: the last closes the features look back over, and the artifact's content hash. A pickle
    carries those and not the model (a Faust changelog stays small); a restored copy reloads the model
    from ``model`` on its first bar and refuses to go on if the artifact there has changed since.

    Values: ``p_up``, the model's probability.
    """

    name: ClassVar[str] = "ml_signal"

    model: str = ""
    buy_above: float = 0.55
    sell_below: float = 0.45
    _model_hash: str = field(default="", init=False)
    _closes: list[float] = field(default_factory=list, init=False)
    _artifact: ModelArtifact | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, Path):
            self.model = str(self.model)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(
                "ml_signal needs model=<folder of a model trained by mambo train> "
                "(e.g. --param ml_signal.model=models/btc)"
            )
        for name in ("buy_above", "sell_below"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int | float) or not 0.0 < x < 1.0:
                raise ValueError(f"{name} must be a probability strictly between 0 and 1, got {x!r}")
        if self.sell_below > self.buy_above:
            raise ValueError(f"sell_below ({self.sell_below}) must not be above buy_above ({self.buy_above})")
        self._artifact = self._load()
        self._model_hash = self._artifact.content_hash

    def _load(self) -> ModelArtifact:
        from mambo.ml.artifact import ModelArtifactError, load_artifact

        artifact = load_artifact(self.model)
        if self._model_hash and artifact.content_hash != self._model_hash:
            raise ModelArtifactError(
                f"model {self.model} changed since this strategy's state was saved (content hash "
                f"{artifact.content_hash[:12]}, the state's {self._model_hash[:12]}); start it afresh"
            )
        return artifact

    @property
    def artifact(self) -> ModelArtifact:
        """The loaded artifact (loaded again after unpickling)."""
        if self._artifact is None:
            self._artifact = self._load()
        return self._artifact

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_artifact": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def indicators(self) -> tuple[str, ...]:
        return self.artifact.features.indicators

    def on_bar(self, bar: Bar) -> Decision:
        features = self.artifact.features
        closes = self._closes
        closes.append(bar.close)
        if len(closes) > features.max_lag + 1:
            del closes[: len(closes) - features.max_lag - 1]
        row = features.row(closes, bar.values)
        if not np.isfinite(row).all():
            return Decision.hold()
        raw = float(self.artifact.booster.predict(row[np.newaxis, :], raw_score=True)[0])
        side, confidence = self._call(raw)
        values = {"p_up": _probability(raw)}
        return Decision("hold", 0.0, values) if side == 0 else Decision(_SIDE[side], confidence, values)

    def decide_batch(
        self, close: npt.NDArray[np.float64], values: Mapping[str, npt.NDArray[np.float64]]
    ) -> BatchDecisions:
        x = self.artifact.features.matrix(close, values)
        ok = np.isfinite(x).all(axis=1)
        sides = np.zeros(len(close), dtype=np.int8)
        confidence = np.zeros(len(close))
        if ok.any():
            raw = np.asarray(self.artifact.booster.predict(x[ok], raw_score=True), dtype=np.float64)
            for i, r in zip(np.flatnonzero(ok).tolist(), raw.tolist(), strict=True):
                sides[i], confidence[i] = self._call(r)
        return sides, confidence

    def _call(self, raw: float) -> tuple[int, float]:
        """The side code and confidence of a model output (log-odds); one function for both paths."""
        if raw > _logit(self.buy_above):
            return 1, clamp_confidence((_probability(raw) - self.buy_above) / (1.0 - self.buy_above))
        if raw < _logit(self.sell_below):
            return -1, clamp_confidence((self.sell_below - _probability(raw)) / self.sell_below)
        return 0, 0.0


_SIDE: dict[int, SignalSide] = {1: "buy", -1: "sell"}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _probability(raw: float) -> float:
    # the logistic function, written so exp never overflows
    if raw >= 0:
        return 1.0 / (1.0 + math.exp(-raw))
    e = math.exp(raw)
    return e / (1.0 + e)
