"""`iqa`: score images and videos from a shell against a running iqa_degradation server.

    iqa score photo.jpg shots/ --recursive --csv > scores.csv
    iqa video clip.mp4 --frames 64 --plot timeline.png
    iqa map photo.jpg --plot map.png
    iqa health

Exit status: 0 when everything was scored, 1 when any item failed (listed on stderr),
2 for usage errors or when the server cannot be used at all.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from iqa_client.client import DEFAULT_URL, IQAClient
from iqa_client.contract import MAP_MODEL
from iqa_client.errors import BadImageError, IQAError
from iqa_client.result import Scores

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def expand(paths: list[str], recursive: bool) -> list[Path]:
    """Files as given; folders become the images in them (and in sub-folders with --recursive)."""
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = given.rglob("*") if recursive else given.iterdir()
            files.extend(sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(given)  # a missing file is reported as that item's failure
    return files


class ProgressBar:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label, self.enabled = label, sys.stderr.isatty() if enabled is None else enabled

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if total:
            filled = int(30 * done / total)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        else:
            sys.stderr.write(f"\r{self.label} {done}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def write_scores(rows: list[tuple[str, object]], fmt: str, out) -> None:
    if fmt == "json":
        json.dump([{"path": path, **outcome.to_dict()} if isinstance(outcome, Scores)
                   else {"path": path, "error": str(outcome)} for path, outcome in rows], out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["path", "noise", "blur", "compression", "error"])
        for path, outcome in rows:
            if isinstance(outcome, Scores):
                writer.writerow([path, outcome.noise, outcome.blur, outcome.compression, ""])
            else:
                writer.writerow([path, "", "", "", str(outcome)])
    else:
        width = max([len(p) for p, _ in rows] + [4])
        out.write(f"{'path':<{width}}  {'noise':>6}  {'blur':>6}  {'compression':>11}\n")
        for path, outcome in rows:
            if isinstance(outcome, Scores):
                out.write(f"{path:<{width}}  {outcome.noise:>6.3f}  {outcome.blur:>6.3f}  {outcome.compression:>11.3f}\n")
            else:
                out.write(f"{path:<{width}}  failed: {outcome}\n")


def cmd_score(client: IQAClient, args) -> int:
    files = expand(args.paths, args.recursive)
    if not files:
        print("iqa: no images found", file=sys.stderr)
        return 2
    bar = ProgressBar("scoring")
    outcomes = client.score_many(files, concurrency=args.concurrency, progress=bar)
    bar.close()
    rows = [(str(path), outcome) for path, outcome in zip(files, outcomes)]
    write_scores(rows, args.format, sys.stdout)
    failures = [(path, outcome) for path, outcome in rows if not isinstance(outcome, Scores)]
    for path, error in failures:
        print(f"iqa: failed: {path}: {error}", file=sys.stderr)
    if failures:
        print(f"iqa: {len(failures)} of {len(rows)} failed", file=sys.stderr)
    return 1 if failures else 0


def cmd_video(client: IQAClient, args) -> int:
    bar = ProgressBar("frames")
    report = client.score_video(args.file, fps=args.fps, frames=None if args.fps else args.frames,
                                percentile=args.percentile, concurrency=args.concurrency, progress=bar)
    bar.close()
    if args.format == "json":
        print(report.to_json(indent=2))
    else:
        print(f"{report.path}: {len(report.frames)} frames over {report.duration_s or 0:.1f} s, "
              f"{report.frames_failed} failed")
        if report.mean:
            for label, scores in (("mean", report.mean), (f"p{report.percentile:g}", report.worst)):
                print(f"  {label:<5} noise {scores.noise:.3f}  blur {scores.blur:.3f}  "
                      f"compression {scores.compression:.3f}")
    if args.plot:
        report.plot(args.plot)
        print(f"iqa: timeline written to {args.plot}", file=sys.stderr)
    for frame in report.frames:
        if frame.error:
            print(f"iqa: failed: frame at {frame.time_s:.3f} s: {frame.error}", file=sys.stderr)
    return 1 if report.frames_failed or not report.frames else 0


def cmd_map(client: IQAClient, args) -> int:
    try:
        scored = client.score_map(args.file)
    except BadImageError as err:
        print(f"iqa: failed: {args.file}: {err}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(scored.to_json(indent=2))
    else:
        pooled = scored.pooled
        print(f"{args.file}: {scored.width}x{scored.height}, {scored.rows} x {scored.columns} cells")
        print(f"  pooled  noise {pooled.noise:.3f}  blur {pooled.blur:.3f}  compression {pooled.compression:.3f}")
        for name in ("noise", "blur", "compression"):
            print(f"  {name} per cell, top row first:")
            for row in scored.array(name):
                print("    " + " ".join(f"{value:.2f}" for value in row))
    if args.plot:
        scored.plot(args.plot)
        print(f"iqa: map written to {args.plot}", file=sys.stderr)
    return 0


def cmd_health(client: IQAClient, args) -> int:
    health = client.health()
    print(json.dumps(health.__dict__))
    return 0 if health.live and health.ready and health.model_ready else 1


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=DEFAULT_URL, help=f"Triton gRPC host:port (default {DEFAULT_URL}; $IQA_URL)")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per request, retries included")
    common.add_argument("--model", default="iqa_degradation")
    common.add_argument("--tls", action="store_true", help="connect with TLS")
    common.add_argument("--ca-cert", help="PEM file of root certificates for --tls")
    common.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                        help="gRPC metadata sent with every call (repeatable)")
    top = argparse.ArgumentParser(prog="iqa", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", parents=[common], help="score image files and folders")
    score.add_argument("paths", nargs="+")
    score.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    score.add_argument("--concurrency", type=int, default=8)
    formats = score.add_mutually_exclusive_group()
    formats.add_argument("--json", dest="format", action="store_const", const="json")
    formats.add_argument("--csv", dest="format", action="store_const", const="csv")

    video = commands.add_parser("video", parents=[common], help="score frames sampled from a video")
    video.add_argument("file")
    sampling = video.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, help="frames per second to sample")
    sampling.add_argument("--frames", type=int, default=32, help="frames sampled uniformly (default 32)")
    video.add_argument("--percentile", type=float, default=95.0, help="worst-case percentile reported")
    video.add_argument("--plot", help="write a PNG timeline of the scores here")
    video.add_argument("--json", dest="format", action="store_const", const="json")
    video.add_argument("--concurrency", type=int, default=8)

    mapping = commands.add_parser("map", parents=[common], help="scores per region of one image (degradation map)")
    mapping.add_argument("file")
    mapping.add_argument("--plot", help="write the picture under a heat map of each score here (PNG, JPEG, PDF, SVG)")
    mapping.add_argument("--json", dest="format", action="store_const", const="json")
    mapping.add_argument("--map-model", default=MAP_MODEL, help=f"the map ensemble (default {MAP_MODEL})")

    commands.add_parser("health", parents=[common], help="is the server live and the model ready?")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    headers = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"iqa: --header wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        headers[key] = value
    try:
        with IQAClient(args.url, model=args.model, timeout=args.timeout, ssl=args.tls,
                       root_certificates=args.ca_cert, headers=headers, connect=args.command != "health",
                       map_model=getattr(args, "map_model", MAP_MODEL)) as client:
            return {"score": cmd_score, "video": cmd_video, "map": cmd_map,
                    "health": cmd_health}[args.command](client, args)
    except IQAError as err:
        print(f"iqa: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:  # e.g. a video that cannot be opened
        print(f"iqa: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
