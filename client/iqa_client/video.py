"""Video: sample frames with PyAV, score them as images, aggregate into a VideoReport.

Frames are decoded one at a time and handed on lazily, so memory stays bounded by the
client's in-flight window, not by the video's length. Each sampled frame travels as PNG
(lossless): the scores measure the video's own compression, not the client's.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from iqa_client.errors import IQAError
from iqa_client.extras import require
from iqa_client.result import Scores

_FIELDS = ("noise", "blur", "compression")


class FrameSampler:
    """Iterates (time in seconds from the video's start, RGB uint8 [H, W, 3]) over frames chosen from a video.

    frames=N: N frames, one at the centre of each of N equal spans of the video.
    fps=F: one frame every 1/F seconds from the start.

    Times count from the video stream's first timestamp (`start_s`), which is not 0 s in MPEG-TS
    streams, HLS segments and cut recordings: the first frame is at 0.0, as a player shows it.
    `duration_s` runs from that timestamp to the end of the last frame.
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
                rate = float(stream.average_rate) if stream.average_rate else None
                self.frame_interval_s = 1 / rate if rate else 0.0
                start = (float(stream.start_time * stream.time_base) if stream.start_time is not None
                         else container.start_time / 1e6 if container.start_time is not None else 0.0)
                duration = _span(container, stream, start, self.frame_interval_s)
        except (av.error.FFmpegError, IndexError, OSError) as err:
            raise IQAError(f"cannot read a video stream from {self.path}: {err}") from None
        if frames is not None and duration is None:
            raise IQAError(f"{self.path} does not state its duration: sample it with fps= instead of frames=")
        self.start_s, self.duration_s = start, duration
        if frames is not None:
            self.targets = [(i + 0.5) * duration / frames for i in range(frames)]
            self.count: int | None = frames
        else:
            self.targets = None
            self.fps = fps
            self.count = max(1, math.ceil(duration * fps - 1e-9)) if duration else None  # targets before the end

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        av = require("av", "reading a video")
        targets = iter(self.targets) if self.targets is not None else (i / self.fps for i in itertools.count())
        target = next(targets)
        # Take the frame nearest to each target time; at a tie the earlier one (the epsilon absorbs the
        # rounding of timestamps made relative to a start that is not 0).
        slack = self.frame_interval_s / 2 + 1e-6
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                time_s = float(frame.time) - self.start_s
                if time_s + slack < target:
                    continue
                yield time_s, frame.to_ndarray(format="rgb24")
                while target is not None and target <= time_s + slack:
                    target = next(targets, None)
                if target is None:
                    return


def _span(container, stream, start: float, frame_interval: float) -> float | None:
    """Seconds from `start` to the end of the video stream's last frame; None if nothing says.

    Read from the last packets (a seek to shortly before the stated end, then demuxing only, no
    decoding): containers state durations differently when the first timestamp is not 0 (MPEG-TS and
    MP4 give the span, Matroska the end time counted from 0: 14 s for 4 s of video starting at 10 s).
    The stated duration serves where the end cannot be read.
    """
    av = require("av", "reading a video")
    stated = (float(stream.duration * stream.time_base) if stream.duration
              else container.duration / 1e6 if container.duration else None)
    end = None
    try:
        # Far enough before the end for the frame shown last, which with reordered (B-) frames is not
        # the last packet; MPEG-TS seeks land on any packet, not only on keyframes. Past the real end
        # (Matroska's stated end is not a span), the seek goes to the last keyframe.
        target = start + stated - _TAIL_S if stated else 2**62 * stream.time_base
        container.seek(max(int(target / stream.time_base), 0), backward=True, any_frame=False, stream=stream)
        for packet in container.demux(stream):
            if packet.pts is not None and packet.time_base is not None:
                packet_end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                if not packet.duration:
                    packet_end += frame_interval
                end = packet_end if end is None else max(end, packet_end)
    except (av.error.FFmpegError, OSError):
        end = None  # not seekable: what the container states
    return end - start if end is not None and end > start else stated


# How far before the stated end _span starts reading packets: more than any frame-reordering depth.
_TAIL_S = 3.0


def sample_frames(path: str | os.PathLike, *, fps: float | None = None, frames: int | None = None) -> FrameSampler:
    return FrameSampler(path, fps=fps, frames=frames)


@dataclass(frozen=True)
class FrameScore:
    """One sampled frame: its time in seconds from the video's start, and its scores or the error."""

    time_s: float
    scores: Scores | None
    error: str | None = None

    @property
    def no_evidence(self) -> bool:
        """The frame was scored with the no-evidence answer (Scores.no_evidence: a black or flat frame)."""
        return self.scores is not None and self.scores.no_evidence

    def to_dict(self) -> dict:
        """{"time_s", "noise", "blur", "compression", "no_evidence"}, or {"time_s", "error"} for a failed frame."""
        if self.scores is None:
            return {"time_s": self.time_s, "error": self.error}
        return {"time_s": self.time_s, **self.scores.to_dict(), "no_evidence": self.no_evidence}


@dataclass(frozen=True)
class VideoReport:
    """A video's degradation: mean and worst-case percentile over sampled frames, and the series.

    The mean and the percentile are taken over the frames that hold evidence: a frame with no evidence
    (Scores.no_evidence: black, a fade, a plain title card) says nothing about the video's degradation,
    and counting its 0.0 would dilute them (2 s black before 2 s of noise halved the mean noise). Such
    frames stay in the series and are counted in `frames_no_evidence`. With no frame holding evidence,
    mean and worst are None.
    """

    path: str
    duration_s: float | None
    percentile: float
    mean: Scores | None
    worst: Scores | None  # the `percentile`-th percentile of each score: high = strongly degraded frames
    frames: tuple[FrameScore, ...] = field(repr=False)
    start_s: float = 0.0  # the video stream's first timestamp: frame times count from it

    @property
    def frames_failed(self) -> int:
        return sum(f.scores is None for f in self.frames)

    @property
    def frames_no_evidence(self) -> int:
        """Frames scored with the no-evidence answer, left out of the mean and the percentile."""
        return sum(f.no_evidence for f in self.frames)

    def to_dict(self, series: bool = True) -> dict:
        """The report as JSON-ready values; series=False leaves out the per-frame series (the summary that
        `iqa video --json` writes after its frames' rows)."""
        summary = {
            "path": self.path,
            "duration_s": self.duration_s,
            "start_s": self.start_s,
            "frames_scored": len(self.frames) - self.frames_failed,
            "frames_no_evidence": self.frames_no_evidence,
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

        scored = [f for f in self.frames if f.scores and not f.no_evidence]
        figure, axes = plt.subplots(figsize=(10, 3.5))
        for name in _FIELDS:
            axes.plot([f.time_s for f in scored], [getattr(f.scores, name) for f in scored], marker=".", label=name)
        flat = [f.time_s for f in self.frames if f.no_evidence]
        if flat:
            axes.plot(flat, [0.0] * len(flat), "x", color="grey", label="no evidence (flat frame)")
        axes.set(xlabel="time (s)", ylabel="degradation (0 clean, 1 strong)", ylim=(0, 1),
                 title=os.path.basename(self.path))
        axes.legend(loc="upper right")
        figure.tight_layout()
        figure.savefig(output, dpi=100)
        plt.close(figure)


def report(path, duration_s, times: list[float], outcomes: list, percentile: float,
           start_s: float = 0.0) -> VideoReport:
    """The VideoReport of frames at `times` (seconds from the start) with their outcomes (Scores or an
    error): mean and `percentile` over the frames that hold evidence."""
    frames = tuple(FrameScore(t, o, None) if isinstance(o, Scores) else FrameScore(t, None, str(o))
                   for t, o in zip(times, outcomes))
    values = np.array([[getattr(f.scores, n) for n in _FIELDS] for f in frames if f.scores and not f.no_evidence],
                      dtype=np.float64)
    mean = Scores(*map(float, values.mean(axis=0))) if len(values) else None
    worst = Scores(*map(float, np.percentile(values, percentile, axis=0))) if len(values) else None
    return VideoReport(os.fspath(path), duration_s, percentile, mean, worst, frames, start_s)
