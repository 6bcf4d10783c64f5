"""Video: sample frames with PyAV, score them as images, aggregate into a VideoReport.

Frames are decoded one at a time and handed on lazily, so memory stays bounded by the
client's in-flight window, not by the video's length. Each sampled frame travels as PNG
(lossless): the scores measure the video's own compression, not the client's.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from iqa_client.errors import IQAError
from iqa_client.extras import require
from iqa_client.result import Scores

_FIELDS = ("noise", "blur", "compression")


class FrameSampler:
    """Iterates (time in seconds, RGB uint8 [H, W, 3]) over frames chosen from a video.

    frames=N: N frames, one at the centre of each of N equal spans of the video.
    fps=F: one frame every 1/F seconds from the start.
    """

    def __init__(self, path: str | os.PathLike, *, fps: float | None = None, frames: int | None = None) -> None:
        av = require("av", "reading a video")

        if (fps is None) == (frames is None):
            raise ValueError("give exactly one of fps= or frames=")
        if (fps is not None and fps <= 0) or (frames is not None and frames < 1):
            raise ValueError("fps must be > 0 and frames >= 1")
        self.path = os.fspath(path)
        try:
            with av.open(self.path) as container:
                if container.format.name == "image2" or container.format.name.endswith("_pipe"):
                    # FFmpeg opens a still picture as a one-frame video (jpeg_pipe, png_pipe, ...).
                    raise IQAError(f"{self.path} is a still image ({container.format.name}), not a video: "
                                   "score it as an image (`iqa score`, IQAClient.score)")
                stream = container.streams.video[0]
                duration = (float(stream.duration * stream.time_base) if stream.duration
                            else container.duration / 1e6 if container.duration else None)
                rate = float(stream.average_rate) if stream.average_rate else None
        except (av.error.FFmpegError, IndexError, OSError) as err:
            raise IQAError(f"cannot read a video stream from {self.path}: {err}") from None
        if frames is not None and duration is None:
            raise IQAError(f"{self.path} does not state its duration: sample it with fps= instead of frames=")
        self.duration_s = duration
        self.frame_interval_s = 1 / rate if rate else 0.0
        if frames is not None:
            self.targets = [(i + 0.5) * duration / frames for i in range(frames)]
            self.count: int | None = frames
        else:
            self.targets = None
            self.fps = fps
            self.count = int(duration * fps) + 1 if duration else None

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        av = require("av", "reading a video")
        targets = iter(self.targets) if self.targets is not None else (i / self.fps for i in itertools.count())
        target = next(targets)
        slack = self.frame_interval_s / 2  # take the frame nearest to each target time
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if frame.time is None or frame.time + slack < target:
                    continue
                yield float(frame.time), frame.to_ndarray(format="rgb24")
                while target is not None and target <= frame.time + slack:
                    target = next(targets, None)
                if target is None:
                    return


def sample_frames(path: str | os.PathLike, *, fps: float | None = None, frames: int | None = None) -> FrameSampler:
    return FrameSampler(path, fps=fps, frames=frames)


@dataclass(frozen=True)
class FrameScore:
    time_s: float
    scores: Scores | None
    error: str | None = None

    def to_dict(self) -> dict:
        """{"time_s", "noise", "blur", "compression"}, or {"time_s", "error"} for a failed frame."""
        return {"time_s": self.time_s, **(self.scores.to_dict() if self.scores else {"error": self.error})}


@dataclass(frozen=True)
class VideoReport:
    """A video's degradation: mean and worst-case percentile over sampled frames, and the series."""

    path: str
    duration_s: float | None
    percentile: float
    mean: Scores | None
    worst: Scores | None  # the `percentile`-th percentile of each score: high = strongly degraded frames
    frames: tuple[FrameScore, ...] = field(repr=False)

    @property
    def frames_failed(self) -> int:
        return sum(f.scores is None for f in self.frames)

    def to_dict(self, series: bool = True) -> dict:
        """The report as JSON-ready values; series=False leaves out the per-frame series (the summary that
        `iqa video --json` writes after its frames' rows)."""
        summary = {
            "path": self.path,
            "duration_s": self.duration_s,
            "frames_scored": len(self.frames) - self.frames_failed,
            "frames_failed": self.frames_failed,
            "mean": self.mean.to_dict() if self.mean else None,
            f"p{self.percentile:g}": self.worst.to_dict() if self.worst else None,
        }
        return {**summary, "series": [f.to_dict() for f in self.frames]} if series else summary

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def plot(self, output: str | os.PathLike) -> None:
        """A PNG timeline of the three scores over time. Needs matplotlib (the `video` extra), else
        MissingExtraError."""
        matplotlib = require("matplotlib", "VideoReport.plot")
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scored = [f for f in self.frames if f.scores]
        figure, axes = plt.subplots(figsize=(10, 3.5))
        for name in _FIELDS:
            axes.plot([f.time_s for f in scored], [getattr(f.scores, name) for f in scored], marker=".", label=name)
        axes.set(xlabel="time (s)", ylabel="degradation (0 clean, 1 strong)", ylim=(0, 1),
                 title=os.path.basename(self.path))
        axes.legend(loc="upper right")
        figure.tight_layout()
        figure.savefig(output, dpi=100)
        plt.close(figure)


def report(path, duration_s, times: list[float], outcomes: list, percentile: float) -> VideoReport:
    frames = tuple(FrameScore(t, o, None) if isinstance(o, Scores) else FrameScore(t, None, str(o))
                   for t, o in zip(times, outcomes))
    values = np.array([[getattr(f.scores, n) for n in _FIELDS] for f in frames if f.scores], dtype=np.float64)
    mean = Scores(*map(float, values.mean(axis=0))) if len(values) else None
    worst = Scores(*map(float, np.percentile(values, percentile, axis=0))) if len(values) else None
    return VideoReport(os.fspath(path), duration_s, percentile, mean, worst, frames)
