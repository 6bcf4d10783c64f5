"""`iqa`: score images and videos from a shell against a running iqa_degradation server.

    iqa score photo.heic shots/ --recursive --csv > scores.csv
    iqa video clip.mp4 --frames 64 --plot timeline.png
    iqa map photo.jpg --plot map.png        # scores per region of the picture (degradation map)
    iqa health
    iqa --url host:8001 score photo.jpg     # the common options go before or after the command

Exit status, the same rule for every command:
  0  everything asked for was scored (health: the server is live and the model ready)
  1  some input could not be scored: each is named once, with its reason, in the output
  2  usage error: a bad option or argument (named), a path that does not exist, nothing to
     score in the folders given, or an optional extra the command needs is not installed
  3  the server cannot be used: unreachable, not ready, or not serving this model
Errors go to stderr as one line, "iqa: ..."; usage errors as argparse prints them.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

from iqa_client.client import DEFAULT_URL, IQAClient
from iqa_client.contract import ENSEMBLE_MODEL, IMAGE_SUFFIXES, MAP_MODEL
from iqa_client.errors import (
    BadImageError,
    IQAError,
    IQATimeoutError,
    MissingExtraError,
    ModelError,
    ServerBusyError,
    ServerError,
    ServerUnreachableError,
)
from iqa_client.extras import require_all
from iqa_client.result import Scores

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3
# Raised while the server cannot be used at all (connect, health): exit 3.
SERVER_ERRORS = (ServerUnreachableError, ModelError, ServerBusyError, IQATimeoutError, ServerError)
DEFAULT_TIMEOUT_S = 30.0


# --- argument types: a bad value is a usage error naming the argument ------------------------------


def positive(kind: type) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} > 0, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 100], got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {text!r}")
    return value


def existing(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text}")
    return path


def existing_file(text: str) -> Path:
    path = existing(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {text}")
    return path


def writable_file(text: str) -> Path:
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder to write into: {path.parent}")
    return path


# What matplotlib's savefig writes by itself (the format follows the suffix; without one it would
# write PNG to another name than the one given).
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".tif", ".tiff", ".webp")


def plot_file(text: str) -> Path:
    path = writable_file(text)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise argparse.ArgumentTypeError(f"name a plot format by its suffix ({' '.join(PLOT_SUFFIXES)}), got {text!r}")
    return path


def header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


# --- the parser: common options before or after the command, defaults in --help ----------------------

COMMON_OPTIONS = (
    (("--url",), dict(default=DEFAULT_URL, metavar="HOST:PORT", help="Triton's gRPC endpoint ($IQA_URL sets the default)")),
    (("--timeout",), dict(type=positive(float), default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                          help="per request, retries included")),
    (("--model",), dict(default=ENSEMBLE_MODEL, help="the model to call (an iqa_degradation ensemble)")),
    (("--tls",), dict(action="store_true", default=False, help="connect with TLS")),
    (("--ca-cert",), dict(type=existing_file, default=None, metavar="PEM", help="root certificates for --tls")),
    (("--header",), dict(type=header, action="append", default=[], metavar="KEY=VALUE",
                         help="gRPC metadata sent with every call (repeatable)")),
)

COMMON_DEFAULTS = {flags[0].removeprefix("--").replace("-", "_"): settings["default"] for flags, settings in COMMON_OPTIONS}


def worth_showing(default) -> bool:
    """A default --help names: not an unset option, an off flag or an empty list."""
    return default not in (None, False, [], argparse.SUPPRESS)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default where there is one worth showing."""

    def _get_help_string(self, action):
        shown = action.help and worth_showing(action.default) and "%(default)" not in action.help
        return f"{action.help} (default: %(default)s)" if shown else action.help


def add_common_options(parser: argparse.ArgumentParser, *, with_defaults: bool) -> None:
    """The options every command takes. The top-level parser holds their defaults; a command's parser
    holds them without (SUPPRESS), so a value given after the command wins and one given before it
    is not reset. The help text still names the default."""
    group = parser.add_argument_group("common options (before or after the command)")
    for flags, settings in COMMON_OPTIONS:
        settings = dict(settings)
        if not with_defaults:
            default = settings["default"]
            settings.update(default=argparse.SUPPRESS, help=f"{settings['help']} (default: {default})"
                            if worth_showing(default) else settings["help"])
        group.add_argument(*flags, **settings)


def add_command(commands, name: str, summary: str, run: Callable[[object, argparse.Namespace], int], *,
                connect: bool | str = True, extras: Callable[[argparse.Namespace], list[str]] = lambda args: []
                ) -> argparse.ArgumentParser:
    """A subcommand: `run(client, args) -> exit status` once the client is connected to --model (or to
    --map-model, for connect="map"; not at all for connect=False); `extras(args)` names the optional
    modules it needs, checked before anything runs."""
    sub = commands.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
    add_common_options(sub, with_defaults=False)
    sub.set_defaults(run=run, connect=connect, extras=extras)
    return sub


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="iqa", description=__doc__.split("\n\n")[0],
                                  epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=HelpFormatter)
    add_common_options(top, with_defaults=True)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = add_command(commands, "score", "score image files and the images in folders", cmd_score)
    score.add_argument("paths", nargs="+", type=existing, metavar="PATH",
                       help="image files (sent whatever their name) and folders (their files named like images: "
                            + " ".join(IMAGE_SUFFIXES) + ")")
    score.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    score.add_argument("--concurrency", type=positive(int), default=8, metavar="N", help="requests in flight")
    formats = score.add_mutually_exclusive_group()
    formats.add_argument("--json", dest="format", action="store_const", const="json",
                         help="a JSON list: one object per file, scored, failed or skipped")
    formats.add_argument("--csv", dest="format", action="store_const", const="csv",
                         help="CSV: one row per file scored or failed")

    video = add_command(commands, "video", "score frames sampled from a video (needs the client's video extra)",
                        cmd_video, extras=lambda args: ["av"] + (["matplotlib"] if args.plot else []))
    video.add_argument("file", type=existing_file, help="a video file PyAV (FFmpeg) can read")
    sampling = video.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=positive(float), help="frames per second to sample, instead of --frames")
    sampling.add_argument("--frames", type=positive(int), default=32, help="frames sampled uniformly over the video")
    video.add_argument("--percentile", type=percentile, default=95.0, help="the worst-case percentile reported")
    video.add_argument("--plot", type=plot_file, metavar="PNG", help="write a timeline of the scores here")
    video.add_argument("--json", dest="format", action="store_const", const="json",
                       help="the report as JSON, with every frame's scores")
    video.add_argument("--concurrency", type=positive(int), default=8, metavar="N", help="requests in flight")

    mapping = add_command(commands, "map", "scores per region of one image: a degradation map over the whole picture",
                          cmd_map, connect="map", extras=lambda args: ["matplotlib"] if args.plot else [])
    mapping.add_argument("file", type=existing_file, help="an image file")
    mapping.add_argument("--plot", type=plot_file, metavar="IMAGE",
                         help="write the picture under a heat map of each score here (PNG, JPEG, PDF, SVG)")
    mapping.add_argument("--json", dest="format", action="store_const", const="json",
                         help="the map as JSON: grid, every cell's box and scores, the pooled scores")
    mapping.add_argument("--map-model", default=MAP_MODEL, help="the map ensemble to call")

    add_command(commands, "health", "is the server live and the model ready? (exit 0 if so, else 3)", cmd_health,
                connect=False)
    return top


# --- the commands ---------------------------------------------------------------------------------


def expand(paths: list[Path], recursive: bool) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to score, (path, reason) for what a folder held that is not scored).

    Files named on the command line are scored whatever their name; in folders, the files named
    like an accepted image format (any case), and sub-folders only with --recursive.
    """
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for given in paths:
        if not given.is_dir():
            files.append(given)
            continue
        found = sorted(given.rglob("*") if recursive else given.iterdir())
        for path in found:
            if path.is_dir():
                if not recursive:
                    skipped.append((path, "a folder: give --recursive to score what it holds"))
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
            else:
                skipped.append((path, f"not named like an accepted image ({path.suffix or 'no extension'})"))
    return files, skipped


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


def reason(error: IQAError) -> str:
    """An item's failure without the path its row already names."""
    return f"bad image: {error.reason}" if isinstance(error, BadImageError) else str(error)


def write_scores(rows: list[tuple[str, object]], fmt: str | None, out, skipped=()) -> None:
    """Each scored or failed file once, in the chosen format; JSON also lists the skipped ones."""
    if fmt == "json":
        records = [{"path": path, **outcome.to_dict()} if isinstance(outcome, Scores)
                   else {"path": path, "error": reason(outcome)} for path, outcome in rows]
        records += [{"path": str(path), "skipped": reason} for path, reason in skipped]
        json.dump(records, out, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(["path", "noise", "blur", "compression", "error"])
        for path, outcome in rows:
            if isinstance(outcome, Scores):
                writer.writerow([path, outcome.noise, outcome.blur, outcome.compression, ""])
            else:
                writer.writerow([path, "", "", "", reason(outcome)])
    else:
        width = max([len(p) for p, _ in rows] + [4])
        out.write(f"{'path':<{width}}  {'noise':>6}  {'blur':>6}  {'compression':>11}\n")
        for path, outcome in rows:
            if isinstance(outcome, Scores):
                out.write(f"{path:<{width}}  {outcome.noise:>6.3f}  {outcome.blur:>6.3f}  {outcome.compression:>11.3f}\n")
            else:
                out.write(f"{path:<{width}}  failed: {reason(outcome)}\n")


def report_skipped(skipped: list[tuple[Path, str]]) -> None:
    if skipped:
        print(f"iqa: skipped {len(skipped)} path{'s' if len(skipped) > 1 else ''} in the folders given:",
              file=sys.stderr)
        for path, reason in skipped:
            print(f"iqa:   {path}: {reason}", file=sys.stderr)


def cmd_score(client, args) -> int:
    files, skipped = expand(args.paths, args.recursive)
    report_skipped(skipped)
    if not files:
        print(f"iqa: nothing to score in {' '.join(map(str, args.paths))}", file=sys.stderr)
        return EXIT_USAGE
    bar = ProgressBar("scoring")
    outcomes = client.score_many(files, concurrency=args.concurrency, progress=bar)
    bar.close()
    rows = [(str(path), outcome) for path, outcome in zip(files, outcomes)]
    write_scores(rows, args.format, sys.stdout, skipped)
    failed = sum(not isinstance(outcome, Scores) for _, outcome in rows)
    if failed:
        print(f"iqa: {failed} of {len(rows)} failed (each named in the output)", file=sys.stderr)
    return EXIT_FAILED_ITEMS if failed else EXIT_OK


def cmd_video(client, args) -> int:
    bar = ProgressBar("frames")
    report = client.score_video(args.file, fps=args.fps, frames=None if args.fps is not None else args.frames,
                                percentile=args.percentile, concurrency=args.concurrency, progress=bar)
    bar.close()
    if args.format == "json":
        print(report.to_json(indent=2))
    else:
        print(f"{report.path}: {len(report.frames)} frames over {report.duration_s or 0:.1f} s, "
              f"{report.frames_failed} failed, {report.frames_no_evidence} with no evidence (flat, "
              f"left out of mean and p{report.percentile:g})")
        if report.mean:
            for label, scores in (("mean", report.mean), (f"p{report.percentile:g}", report.worst)):
                print(f"  {label:<5} noise {scores.noise:.3f}  blur {scores.blur:.3f}  "
                      f"compression {scores.compression:.3f}")
        elif report.frames_no_evidence:
            print("  no frame holds evidence of any degradation (black or flat): no mean or "
                  f"p{report.percentile:g}")
        for frame in report.frames:
            if frame.error:
                print(f"  frame at {frame.time_s:.3f} s failed: {frame.error}")
    if args.plot:
        report.plot(args.plot)
        print(f"iqa: timeline written to {args.plot}", file=sys.stderr)
    if not report.frames:
        print(f"iqa: no frame could be read from {args.file}", file=sys.stderr)
    elif report.frames_failed:
        print(f"iqa: {report.frames_failed} of {len(report.frames)} frames failed (each named in the output)",
              file=sys.stderr)
    return EXIT_FAILED_ITEMS if report.frames_failed or not report.frames else EXIT_OK


def cmd_map(client, args) -> int:
    try:
        scored = client.score_map(args.file)
    except BadImageError as err:
        if args.format == "json":  # a JSON reader gets JSON either way
            print(json.dumps({"source": str(args.file), "error": reason(err)}, ensure_ascii=False, indent=2))
        print(f"iqa: failed: {args.file}: {reason(err)}", file=sys.stderr)
        return EXIT_FAILED_ITEMS
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
    return EXIT_OK


def cmd_health(client, args) -> int:
    health = client.health()
    print(json.dumps(health.__dict__))
    return EXIT_OK if health.live and health.ready and health.model_ready else EXIT_SERVER


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a usage error it has printed (2)
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    try:
        require_all(args.extras(args), f"iqa {args.command}", "map" if args.command == "map" else None)
    except MissingExtraError as err:
        print(f"iqa: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with IQAClient(args.url, model=args.model, timeout=args.timeout, ssl=args.tls,
                       root_certificates=str(args.ca_cert) if args.ca_cert else None, headers=dict(args.header),
                       connect=args.connect is True, map_model=getattr(args, "map_model", MAP_MODEL)) as client:
            if args.connect == "map":
                client.connect(map=True)
            return args.run(client, args)
    except SERVER_ERRORS as err:
        print(f"iqa: {err}", file=sys.stderr)
        return EXIT_SERVER
    except IQAError as err:  # the input as a whole cannot be read (a file that is no video)
        print(f"iqa: {err}", file=sys.stderr)
        return EXIT_FAILED_ITEMS


if __name__ == "__main__":
    sys.exit(main())
