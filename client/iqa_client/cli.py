"""`iqa`: score images and videos from a shell against a running iqa_degradation server.

    iqa score photo.heic shots/ https://example.org/x.jpg --recursive --csv > scores.csv
    iqa score shots/ --csv -o scores.csv --resume   # after a Ctrl-C: goes on, the scored files skipped
    iqa video clip.mp4 --frames 64 --plot timeline.png
    iqa map photo.jpg --plot map.png        # scores per region of the picture (degradation map)
    iqa health
    iqa --url host:8001 score photo.jpg     # the common options go before or after the command

Rows (score's files, video's frames with --csv / --json) are written as they are scored, one
flushed line each: CSV, or JSON Lines with --json. Progress goes to stderr: a bar on a terminal,
else a line every 10 s (--progress). Hidden files in folders are left out unless --hidden.

Exit status, the same rule for every command:
  0    everything asked for was scored (health: the server is live and the model ready)
  1    some input could not be scored (a bad image, a missing file, a failed download): each is
       named once, with its reason, in the output; the others are scored
  2    usage error: a bad option or argument (named), nothing to score in the folders given,
       or an optional extra the command needs is not installed
  3    the server cannot be used: unreachable, not ready, not serving this model, or gone in
       the middle of a run (the rows written so far are kept; no summary)
  130  interrupted (Ctrl-C): the rows written so far are kept
  141  the reader of the output went away (`| head`): stopped quietly, as shell tools do
Errors go to stderr as one line, "iqa: ..."; usage errors as argparse prints them.
"""

from __future__ import annotations

import os

# gRPC's C core prints its own log lines (a failed TLS handshake, "I1203 ... Handshake failed") beside the
# one-line errors below unless told otherwise before it starts; its errors still show.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from iqa_client.channel import grpc_target  # noqa: E402
from iqa_client.client import DEFAULT_URL, SERVER_GONE, IQAClient  # noqa: E402
from iqa_client.contract import ENSEMBLE_MODEL, IMAGE_SUFFIXES, MAP_MODEL  # noqa: E402
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
from iqa_client.extras import require_all  # noqa: E402
from iqa_client.images import client_version, is_url  # noqa: E402
from iqa_client.result import Scores  # noqa: E402

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_SERVER = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a program ended by Ctrl-C
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what `yes | head -n 1` leaves `yes` with
# Raised while the server cannot be used at all (connect, health): exit 3.
SERVER_ERRORS = (ServerUnreachableError, ModelError, ServerBusyError, IQATimeoutError, ServerError)
DEFAULT_TIMEOUT_S = 30.0


def _seconds(text: str | None, default: float) -> float:
    try:
        return float(text) if text and float(text) > 0 else default
    except ValueError:
        return default


# --progress lines: one line this often ($IQA_PROGRESS_INTERVAL_S: a CI log may want fewer, a test more)
PROGRESS_INTERVAL_S = _seconds(os.environ.get("IQA_PROGRESS_INTERVAL_S"), 10.0)
SERVER_CHECK_TIMEOUT_S = 5.0
# --output's name gives the format when --csv / --json do not
OUTPUT_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json"}  # after an item failed for no reason of its own: does the server still answer?


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


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}" if not path.exists() else f"not a file: {text}")
    return path


def server_url(text: str) -> str:
    """--url: what grpc_target accepts (host:port, a bare host, grpc:// http:// https://), else the fix."""
    try:
        grpc_target(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


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
    (("--url",), dict(type=server_url, default=DEFAULT_URL, metavar="HOST:PORT",
                      help="Triton's gRPC endpoint: host:port, a bare host (port 8001), https://host:port (TLS) "
                           "($IQA_URL sets the default)")),
    (("--timeout",), dict(type=positive(float), default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                          help="per request, retries included")),
    (("--model",), dict(default=ENSEMBLE_MODEL, help="the model to call (an iqa_degradation ensemble)")),
    (("--tls",), dict(action="store_true", default=False, help="connect with TLS")),
    (("--ca-cert",), dict(type=existing_file, default=None, metavar="PEM", help="root certificates for --tls")),
    (("--header",), dict(type=header, action="append", default=[], metavar="KEY=VALUE",
                         help="gRPC metadata sent with every call (repeatable)")),
    (("--progress",), dict(choices=("auto", "bar", "lines", "off"), default="auto",
                           help="progress on stderr: a bar redrawn in place, a line every "
                                f"{PROGRESS_INTERVAL_S:g} s, or nothing; auto: a bar on a terminal, else lines")),
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


def add_common_options(parser: argparse.ArgumentParser, *, with_defaults: bool, leave_out: tuple[str, ...] = ()
                       ) -> None:
    """The options every command takes (but `leave_out`). The top-level parser holds their defaults; a
    command's parser holds them without (SUPPRESS), so a value given after the command wins and one given
    before it is not reset. The help text still names the default."""
    group = parser.add_argument_group("common options (before or after the command)")
    for flags, settings in COMMON_OPTIONS:
        if flags[0] in leave_out:
            continue
        settings = dict(settings)
        if not with_defaults:
            default = settings["default"]
            settings.update(default=argparse.SUPPRESS, help=f"{settings['help']} (default: {default})"
                            if worth_showing(default) else settings["help"])
        group.add_argument(*flags, **settings)


def add_command(commands, name: str, summary: str, run: Callable[[object, argparse.Namespace], int], *,
                connect: bool | str = True, extras: Callable[[argparse.Namespace], list[str]] = lambda args: [],
                leave_out: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """A subcommand: `run(client, args) -> exit status` once the client is connected to --model (or to
    --map-model, for connect="map"; not at all for connect=False); `extras(args)` names the optional
    modules it needs, checked before anything runs; `leave_out`: common options it has no use for."""
    sub = commands.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
    add_common_options(sub, with_defaults=False, leave_out=leave_out)
    sub.set_defaults(run=run, connect=connect, extras=extras)
    return sub


def add_output_options(sub: argparse.ArgumentParser, rows: str) -> None:
    formats = sub.add_mutually_exclusive_group()
    formats.add_argument("--json", dest="format", action="store_const", const="json",
                         help=f"JSON Lines: one object a line per {rows}, written as each is scored")
    formats.add_argument("--csv", dest="format", action="store_const", const="csv",
                         help=f"CSV: a header, then one row per {rows}, written as each is scored")
    sub.add_argument("--output", "-o", type=writable_file, metavar="FILE",
                     help="write the rows to FILE instead of stdout (needed by --resume); a name ending in .csv or "
                          ".jsonl means --csv or --json")
    sub.add_argument("--resume", action="store_true",
                     help=f"go on from an interrupted run: keep the scored rows already in --output, score only "
                          f"the other {rows}s (failed ones again), append their rows")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="iqa", description=__doc__.split("\n\n")[0],
                                  epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=HelpFormatter)
    top.add_argument("--version", action="version", help="print the client's version and exit",
                     version=f"iqa {client_version()} (iqa-client, Python {platform.python_version()})")
    add_common_options(top, with_defaults=True)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = add_command(commands, "score", "score image files, URLs, standard input and the images in folders",
                        cmd_score)
    score.add_argument("paths", nargs="+", metavar="PATH",
                       help="image files (sent whatever their name), http(s) URLs, - for standard input, and folders "
                            "(their files named like images: " + " ".join(IMAGE_SUFFIXES) + ")")
    score.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders")
    score.add_argument("--hidden", action="store_true",
                       help="in folders, also score hidden files and enter hidden folders (names starting with '.')")
    score.add_argument("--concurrency", type=positive(int), default=8, metavar="N", help="requests in flight")
    add_output_options(score, "file")

    video = add_command(commands, "video", "score frames sampled from a video (needs the client's video extra)",
                        cmd_video, extras=lambda args: ["av"] + (["matplotlib"] if args.plot else []))
    video.add_argument("file", help="a video file PyAV (FFmpeg) can read")
    sampling = video.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=positive(float), help="frames per second to sample, instead of --frames")
    sampling.add_argument("--frames", type=positive(int), default=32, help="frames sampled uniformly over the video")
    video.add_argument("--percentile", type=percentile, default=95.0, help="the worst-case percentile reported")
    video.add_argument("--plot", type=plot_file, metavar="PNG", help="write a timeline of the scores here")
    video.add_argument("--concurrency", type=positive(int), default=8, metavar="N", help="requests in flight")
    add_output_options(video, "frame")

    mapping = add_command(commands, "map", "scores per region of one image: a degradation map over the whole picture",
                          cmd_map, connect="map", extras=lambda args: ["matplotlib"] if args.plot else [],
                          leave_out=("--model", "--progress"))
    mapping.add_argument("file", help="an image file, an http(s) URL, or - for standard input")
    mapping.add_argument("--plot", type=plot_file, metavar="IMAGE",
                         help="write the picture under a heat map of each score here (PNG, JPEG, PDF, SVG)")
    mapping.add_argument("--json", dest="format", action="store_const", const="json",
                         help="the map as one JSON object: grid, every cell's box and scores, the pooled scores")
    mapping.add_argument("--map-model", default=MAP_MODEL, help="the map ensemble to call")

    add_command(commands, "health", "is the server live and the model ready? (exit 0 if so, else 3)", cmd_health,
                connect=False, leave_out=("--progress",))
    return top


# --- the commands ---------------------------------------------------------------------------------


@dataclass
class Inputs:
    """What `iqa score` was given, sorted out before any request: (row name, what to read) per item to score,
    (path, reason) per file a folder held that is not scored, and how many hidden ones were left out."""

    items: list[tuple[str, object]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    hidden: int = 0


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def expand(paths: list[str], recursive: bool, hidden: bool = False, stdin=None) -> Inputs:
    """Files named on the command line are scored whatever their name, and so are http(s) URLs and `-` (the
    bytes on standard input); a name that does not exist stays in the list and fails as its own item. In
    folders: the files named like an accepted image format (any case), sub-folders only with --recursive,
    and hidden files and folders (names starting with '.') only with --hidden, as `find`-style tools and file
    managers leave them out."""
    found = Inputs()
    for given in paths:
        path = Path(given)
        if given == "-":
            found.items.append(("-", stdin if stdin is not None else sys.stdin.buffer))
        elif is_url(given) or not path.is_dir():
            found.items.append((given, given))
        else:
            walk = sorted(path.rglob("*") if recursive else path.iterdir())
            for entry in walk:
                relative = entry.relative_to(path)
                if not hidden and any(part.startswith(".") for part in relative.parts):
                    found.hidden += is_hidden(entry)  # count what was left out, not what a hidden folder holds
                elif entry.is_dir():
                    if not recursive:
                        found.skipped.append((entry, "a folder: give --recursive to score what it holds"))
                elif entry.suffix.lower() in IMAGE_SUFFIXES:
                    found.items.append((str(entry), entry))
                else:
                    found.skipped.append((entry, f"not named like an accepted image ({entry.suffix or 'no extension'})"))
    return found


class Progress:
    """How a long run shows itself on stderr (--progress). `bar`: one line redrawn in place, for a terminal;
    `lines`: a line every PROGRESS_INTERVAL_S seconds (from the start of the run, so a run shorter than that
    prints none), for a log file or CI; `off`: nothing. `auto`, the default: a bar when stderr is a terminal,
    else lines."""

    def __init__(self, label: str, unit: str, mode: str = "auto", interval_s: float | None = None) -> None:
        self.label, self.unit, self.stream = label, unit, sys.stderr
        self.mode = ("bar" if self.stream.isatty() else "lines") if mode == "auto" else mode
        self.done, self.total, self.started = 0, None, time.monotonic()
        self._stop = threading.Event()
        self._ticker = None
        if self.mode == "lines":
            interval = PROGRESS_INTERVAL_S if interval_s is None else interval_s
            self._ticker = threading.Thread(target=self._tick, args=(interval,), daemon=True, name="iqa-progress")
            self._ticker.start()

    def __call__(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total
        if self.mode != "bar":
            return
        if total:
            filled = int(30 * done / total)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        else:
            self.stream.write(f"\r{self.label} {done}")
        self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        text = f"iqa: {self.label}: {self.done}{f'/{self.total}' if self.total else ''} {self.unit} in {elapsed:.0f} s"
        if self.done and self.total:
            rate = self.done / elapsed
            text += f" ({rate:.2f}/s, about {max(0, self.total - self.done) / rate:.0f} s left)"
        return text

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Stop the lines, end the bar's line; once (a message that follows starts on a line of its own)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._ticker:
            self._ticker.join()
        if self.mode == "bar":
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reason(error: IQAError) -> str:
    """An item's failure without the path its row already names."""
    return f"bad image: {error.reason}" if isinstance(error, BadImageError) else str(error)


def score_record(name: str, outcome) -> dict:
    return {"path": name, **outcome.to_dict()} if isinstance(outcome, Scores) else {"path": name, "error": reason(outcome)}


def frame_record(time_s: float, outcome) -> dict:
    """A video frame's row: its time and scores (and, in JSON Lines, whether it held no evidence), or its error."""
    if isinstance(outcome, Scores):
        return {"time_s": time_s, **outcome.to_dict(), "no_evidence": outcome.no_evidence}
    return {"time_s": time_s, "error": reason(outcome)}


class Rows:
    """Result rows written as they come, each flushed at once (a reader at the other end of a pipe, or of
    --output, sees every row when it is scored). `json`: JSON Lines, one object a line; `csv`: a header, then
    one row per record; None: a table for people (the first column `width` wide), failures in the error column."""

    def __init__(self, out, fmt: str | None, key: str, width: int = 0) -> None:
        self.out, self.fmt, self.key, self.width = out, fmt, key, max(width, len(key))
        self.columns = (key, "noise", "blur", "compression", "error")
        # Lines end in "\n", as grep, cut and awk expect (the csv module's default is RFC 4180's "\r\n").
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        self.written = 0

    def header(self) -> None:
        if self.fmt == "csv":
            self.csv.writerow(self.columns)
        elif self.fmt is None:
            self.out.write(f"{self.key:<{self.width}}  {'noise':>6}  {'blur':>6}  {'compression':>11}  error\n")
        self.out.flush()

    def write(self, record: dict) -> None:
        if self.fmt == "json":
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.fmt == "csv":
            self.csv.writerow([record.get(column, "") for column in self.columns])
        elif "skipped" not in record:
            name = record[self.key]
            if "error" in record:
                self.out.write(f"{name:<{self.width}}  {'-':>6}  {'-':>6}  {'-':>11}  {record['error']}\n")
            else:
                self.out.write(f"{name:<{self.width}}  {record['noise']:>6.3f}  {record['blur']:>6.3f}  "
                               f"{record['compression']:>11.3f}\n")
        self.out.flush()
        self.written += 1


def previous_rows(path: Path, fmt: str, key: str) -> list[dict]:
    """The scored rows of an earlier run's --output, for --resume: its failed rows, skipped rows and a last
    line cut short (a run killed mid-write) are left out, so those items are tried again."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    text = text[: text.rfind("\n") + 1]  # a line without its newline was cut short
    if fmt == "json":
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    else:
        records = list(csv.DictReader(io.StringIO(text)))
    kept = []
    for record in records:
        if not isinstance(record, dict) or record.get("error") or key not in record:
            continue
        try:
            scores = {name: float(record[name]) for name in ("noise", "blur", "compression")}
            value = float(record[key]) if key == "time_s" else record[key]
        except (KeyError, TypeError, ValueError):
            continue
        kept.append({key: value, **scores})
    return kept


@contextlib.contextmanager
def output(args, key: str, width: int = 0):
    """Rows to --output (for --resume: its scored rows first, rewritten without the failed ones) or stdout,
    and the rows kept from an earlier run."""
    if not args.output:
        rows = Rows(sys.stdout, args.format, key, width)
        rows.header()
        yield rows, []
        return
    kept = previous_rows(args.output, args.format, key) if args.resume else []
    if kept:
        partial = args.output.with_name(args.output.name + ".partial")
        with open(partial, "w", encoding="utf-8", newline="") as handle:  # the old file stays whole until replaced
            rows = Rows(handle, args.format, key, width)
            rows.header()
            for record in kept:
                rows.write(record)
        os.replace(partial, args.output)
    with open(args.output, "a" if kept else "w", encoding="utf-8", newline="") as handle:
        rows = Rows(handle, args.format, key, width)
        if kept:
            rows.written = len(kept)
        else:
            rows.header()
        yield rows, kept


def server_gone(client, outcome, map_model: bool = False) -> IQAError | None:
    """The error that makes the rest of a run pointless, or None when `outcome` is about its item only.

    Unreachable or model gone: at once. Any other failure that is not the image's (a timeout, an internal
    error) is checked with a fresh connect() of its own SERVER_CHECK_TIMEOUT_S, not the run's --timeout: a
    short --timeout on a busy server times items out, and must not make a live server look gone. A server
    that still answers means the item failed alone."""
    if isinstance(outcome, Scores) or isinstance(outcome, BadImageError):
        return None
    if isinstance(outcome, SERVER_GONE):
        return outcome
    try:
        client.connect(timeout=SERVER_CHECK_TIMEOUT_S, map=map_model)
    except IQAError as err:
        return err
    return None


def stopped(err: IQAError, done: int, total: int | None, unit: str, rows: Rows | None, where: str, args) -> int:
    """One line for a run the server left: what stopped it and how far it got; no summary of a part."""
    kept = f"; the {rows.written} rows written{where} are kept{resume_hint(rows, args)}" if rows else ""
    print(f"iqa: the server stopped serving ({err}): stopped after {done}{f' of {total}' if total else ''} "
          f"{unit}{kept}; no summary", file=sys.stderr)
    return EXIT_SERVER


def resume_hint(rows: Rows | None, args) -> str:
    """How to go on from the rows written, when a later run can (CSV or JSON Lines rows)."""
    if not rows or not args.format:  # rows redirected to a file (`> scores.csv`) can be gone on from just the same
        return ""
    return (" (the same command with --resume goes on from them)" if args.output else
            " (the same command with -o <that file> --resume goes on from them)")


def report_skipped(found: Inputs) -> None:
    if found.skipped:
        print(f"iqa: skipped {len(found.skipped)} path{'s' if len(found.skipped) > 1 else ''} in the folders given:",
              file=sys.stderr)
        for path, why in found.skipped:
            print(f"iqa:   {path}: {why}", file=sys.stderr)
    if found.hidden:
        print(f"iqa: left out {found.hidden} hidden file{'s' if found.hidden > 1 else ''} or folder"
              f"{'s' if found.hidden > 1 else ''} (names starting with '.'; --hidden scores them)", file=sys.stderr)


def cmd_score(client, args) -> int:
    found = expand(args.paths, args.recursive, args.hidden)
    report_skipped(found)
    if not found.items:
        print(f"iqa: nothing to score in {' '.join(args.paths)}", file=sys.stderr)
        return EXIT_USAGE
    where = f" to {args.output}" if args.output else ""
    with output(args, "path", max(len(name) for name, _ in found.items)) as (rows, kept):
        for path, why in found.skipped if args.format == "json" else ():  # --resume drops the old ones
            rows.write({"path": str(path), "skipped": why})
        done_before = {record["path"] for record in kept} - {"-"}  # standard input may hold another image now
        todo = [(name, source) for name, source in found.items if name not in done_before]
        if kept:
            print(f"iqa: resuming: {len(found.items) - len(todo)} of {len(found.items)} files already scored in "
                  f"{args.output}", file=sys.stderr)
        failed = done = timed_out = 0
        with Progress("scoring", "files", args.progress) as progress:
            try:
                with contextlib.closing(client.iter_score_many([source for _, source in todo],
                                                               concurrency=args.concurrency,
                                                               progress=progress)) as outcomes:
                    for (name, _), outcome in zip(todo, outcomes):
                        gone = server_gone(client, outcome)
                        if gone:
                            progress.close()
                            return stopped(gone, done, len(todo), "files", rows, where, args)
                        rows.write(score_record(name, outcome))
                        done += 1
                        failed += not isinstance(outcome, Scores)
                        timed_out += isinstance(outcome, IQATimeoutError)
            except KeyboardInterrupt:
                progress.close()
                return interrupted(done, len(todo), "files", rows, where, args)
    if failed:
        print(f"iqa: {failed} of {len(todo)} failed (each named in the output)", file=sys.stderr)
    if timed_out:  # a busy server, not bad pictures: say which knob helps and how to redo only those
        print(f"iqa: {timed_out} got no answer within the {args.timeout:g} s timeout: raise --timeout or lower "
              f"--concurrency (now {args.concurrency}); with -o FILE --resume a second run scores only the "
              f"failed ones", file=sys.stderr)
    return EXIT_FAILED_ITEMS if failed else EXIT_OK


def interrupted(done: int, total: int | None, unit: str, rows: Rows | None, where: str, args) -> int:
    kept = f": the {rows.written} rows written{where} are kept" if rows else ""
    resume = resume_hint(rows, args)
    print(f"iqa: interrupted after {done}{f' of {total}' if total else ''} {unit}{kept}{resume}", file=sys.stderr)
    return EXIT_INTERRUPTED


def cmd_video(client, args) -> int:
    from iqa_client import video

    if args.file == "-" or is_url(args.file):
        print(f"iqa: iqa video reads a video file, not {'standard input' if args.file == '-' else 'a URL'}: "
              "save it first", file=sys.stderr)
        return EXIT_USAGE
    sampler = video.sample_frames(args.file, fps=args.fps, frames=None if args.fps is not None else args.frames)
    fmt = args.format
    where = f" to {args.output}" if args.output else ""
    times: list[float] = []
    outcomes: list = []
    # Without --csv / --json the output is the summary below, not a row per frame.
    with output(args, "time_s", 8) if fmt else contextlib.nullcontext((None, [])) as (rows, kept):
        for record in kept:
            times.append(record["time_s"])
            outcomes.append(Scores(record["noise"], record["blur"], record["compression"]))
        done_before = {round(t, 3) for t in times}
        todo = ((time_s, frame) for time_s, frame in sampler if round(time_s, 3) not in done_before)
        if kept:
            print(f"iqa: resuming: {len(kept)} frames already scored in {args.output}", file=sys.stderr)
        total = sampler.count
        done = 0
        with Progress("frames", "frames", args.progress) as progress:
            try:
                with contextlib.closing(client.iter_score_frames(
                        todo, concurrency=args.concurrency,
                        progress=lambda n, _total: progress(n + len(kept), total))) as scored:
                    for time_s, outcome in scored:
                        gone = server_gone(client, outcome)
                        if gone:
                            progress.close()
                            return stopped(gone, done + len(kept), total, "frames", rows, where, args)
                        if rows:
                            rows.write(frame_record(time_s, outcome))
                        times.append(time_s)
                        outcomes.append(outcome)
                        done += 1
            except KeyboardInterrupt:
                progress.close()
                return interrupted(done + len(kept), total, "frames", rows, where, args)
        order = sorted(range(len(times)), key=times.__getitem__)
        report = video.report(args.file, sampler.duration_s, [times[i] for i in order], [outcomes[i] for i in order],
                              args.percentile, sampler.start_s)
        if fmt == "json":
            rows.out.write(json.dumps({"summary": report.to_dict(series=False)}, ensure_ascii=False) + "\n")
            rows.out.flush()
    summary = sys.stdout if fmt is None else sys.stderr  # rows own stdout in CSV and JSON Lines
    if fmt != "json":
        prefix = "" if fmt is None else "iqa: "
        print(f"{prefix}{report.path}: {len(report.frames)} frames over {report.duration_s or 0:.1f} s, "
              f"{report.frames_failed} failed, {report.frames_no_evidence} with no evidence (flat, "
              f"left out of mean and p{report.percentile:g})", file=summary)
        if report.mean:
            for label, scores in (("mean", report.mean), (f"p{report.percentile:g}", report.worst)):
                print(f"{prefix}  {label:<5} noise {scores.noise:.3f}  blur {scores.blur:.3f}  "
                      f"compression {scores.compression:.3f}", file=summary)
        elif report.frames_no_evidence:
            print(f"{prefix}  no frame holds evidence of any degradation (black or flat): no mean or "
                  f"p{report.percentile:g}", file=summary)
        if fmt is None:
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
    source = sys.stdin.buffer if args.file == "-" else args.file
    try:
        scored = client.score_map(source)
    except BadImageError as err:
        if args.format == "json":  # a JSON reader gets JSON either way
            print(json.dumps({"source": args.file, "error": reason(err)}, ensure_ascii=False, indent=2))
        print(f"iqa: failed: {args.file}: {reason(err)}", file=sys.stderr)
        return EXIT_FAILED_ITEMS
    if args.format == "json":
        print(scored.to_json(indent=2))
    else:
        pooled = scored.pooled
        print(f"{scored.source}: {scored.width}x{scored.height}, {scored.rows} x {scored.columns} cells")
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
    try:
        health = client.health()
    except IQAError as err:  # the report still comes first, for whatever reads it
        print(json.dumps({"live": False, "ready": False, "model_ready": False, "server_version": "",
                          "model": args.model, "error": str(err)}))
        raise
    print(json.dumps(health.__dict__))
    return EXIT_OK if health.live and health.ready and health.model_ready else EXIT_SERVER


def quiet_stdout() -> None:
    """After a reader closed the pipe (`| head`): point stdout at /dev/null, so that nothing (the final flush
    at exit included) writes to it again and fails (Python's docs, signal module, "Note on SIGPIPE")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    try:
        status = dispatch(argv)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return status
    except KeyboardInterrupt:  # Ctrl-C outside a run's loop (connecting, reading a video's header)
        print("iqa: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `iqa ... | head -n 2`: the reader has what it wanted; stop quietly, as shell tools do
        quiet_stdout()
        return EXIT_PIPE_CLOSED


def dispatch(argv: list[str] | None) -> int:
    """Parse, check, connect, run the command: its exit status."""
    top = parser()
    try:
        args = top.parse_args(argv)
        if args.command == "map" and args.model != ENSEMBLE_MODEL:
            top.error(f"argument --model: iqa map calls --map-model (default {MAP_MODEL}), not --model")
        if getattr(args, "output", None) and not args.format:  # -o scores.csv: the name says the format
            args.format = OUTPUT_SUFFIXES.get(args.output.suffix.lower())
        if getattr(args, "resume", False) and not (args.output and args.format):
            top.error("argument --resume: needs --output FILE and --csv or --json (the rows it goes on from)")
        if args.command == "video" and args.output and not args.format:
            top.error("argument --output: iqa video writes a row per frame with --csv or --json; its summary goes "
                      "to stdout")
    except SystemExit as stop:  # argparse: --help, --version (0) or a usage error it has printed (2)
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
        if args.command == "map" and args.format == "json":  # a JSON reader gets JSON either way
            print(json.dumps({"source": args.file, "error": str(err)}, ensure_ascii=False, indent=2))
        print(f"iqa: {err}", file=sys.stderr)
        return EXIT_SERVER
    except IQAError as err:  # the input as a whole cannot be read (a file that is no video)
        print(f"iqa: {err}", file=sys.stderr)
        return EXIT_FAILED_ITEMS


if __name__ == "__main__":
    sys.exit(main())
