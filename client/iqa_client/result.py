"""Typed results: what a score call returns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from iqa_client.contract import MODELSCOPE_LABELS


@dataclass(frozen=True)
class Scores:
    """Degradation strengths in [0, 1]: 0 = clean, 1 = as strong as KADID-10k level 5."""

    noise: float
    blur: float
    compression: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_modelscope(self) -> dict[str, list]:
        """The seed ModelScope pipeline's output shape, for drop-in replacement."""
        return {"scores": [self.noise, self.blur, self.compression], "labels": list(MODELSCOPE_LABELS)}
