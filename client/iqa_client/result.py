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

    @property
    def no_evidence(self) -> bool:
        """The service's answer for a picture that holds no evidence of any degradation: exactly 0.0 on all
        three scores. The server gives it when none of the picture's sampled patches holds detail (a black
        frame, a plain fill: iqa/network.py NO_EVIDENCE_LOGIT); a picture with content never scores exactly
        0.0 on all three (each is an FP32 sigmoid, exactly 0.0 only below a logit of about -88: docs/model.md,
        "The model")."""
        return self.noise == 0.0 and self.blur == 0.0 and self.compression == 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_modelscope(self) -> dict[str, list]:
        """The seed ModelScope pipeline's output shape, for drop-in replacement."""
        return {"scores": [self.noise, self.blur, self.compression], "labels": list(MODELSCOPE_LABELS)}
