"""The iqa_client library and the `iqa` command line against the real server (conftest's `triton`)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import json
import sys
import threading
import time
from dataclasses import astuple
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageFilter
from tritonclient.utils import InferenceServerException

from iqa.serving.launcher import free_ports
from iqa_client import (
    AsyncIQAClient,
    BadImageError,
    DegradationMap,
    IQAClient,
    IQAError,
    MissingExtraError,
    ModelError,
    RetryPolicy,
    Scores,
    ServerError,
    ServerUnreachableError,
)
from iqa_client import cli
from iqa_client.images import png_from_array
from iqa_client.video import VideoReport
from tests import odd_images
from tests.conftest import DATA, without_warmup

TOLERANCE = 1e-4  # as in test_server: same model, different batch companions


@pytest.fixture(scope="module")
def client(triton):
    with IQAClient(triton.grpc_url, timeout=120) as client:
        yield client


def close(a: Scores, b: Scores) -> bool:
    return np.allclose([a.noise, a.blur, a.compression], [b.noise, b.blur, b.compression], atol=TOLERANCE)


def test_every_input_kind_gets_the_scores_of_the_equivalent_file(client, tmp_path):
    path = DATA / "sheep.jpg"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    png = tmp_path / "sheep.png"
    Image.fromarray(pixels).save(png)
    from_file = client.score(path)
    assert close(client.score(str(path)), from_file)
    assert close(client.score(path.read_bytes()), from_file)
    # pixels travel losslessly, so they score like the decoded JPEG, and like a PNG file of them
    assert close(client.score(pixels), from_file)
    assert close(client.score(Image.open(path)), from_file)
    assert close(client.score(png), from_file)


def test_arrays_travel_as_lossless_png():
    pixels = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_from_array(pixels)))), pixels)


def test_score_many_keeps_order_and_isolates_a_bad_item(client, photos):
    items = list(photos.values())
    inputs = items + [b"not an image at all", DATA / "missing.jpg"] + items[::-1]
    outcomes = client.score_many(inputs, concurrency=4)
    assert len(outcomes) == len(inputs)
    bad, missing = outcomes[len(items)], outcomes[len(items) + 1]
    assert isinstance(bad, BadImageError) and bad.index == len(items) and "not a recognised image" in str(bad)
    assert isinstance(missing, BadImageError) and "missing.jpg" in str(missing)
    good = [(i, o) for i, o in enumerate(outcomes) if i not in (len(items), len(items) + 1)]
    for index, outcome in good:
        assert close(outcome, client.score(inputs[index])), index


def test_async_and_sync_clients_agree(client, triton, photos):
    items = list(photos.values())

    async def run():
        async with AsyncIQAClient(triton.grpc_url, timeout=120) as aclient:
            single = await aclient.score(items[0])
            many = await aclient.score_many(items + [b""], concurrency=3)
            health = await aclient.health()
            return single, many, health

    single, many, health = asyncio.run(run())
    assert close(single, client.score(items[0]))
    for got, want in zip(many, client.score_many(items)):
        assert close(got, want)
    assert isinstance(many[-1], BadImageError) and "empty input" in str(many[-1])
    assert health == client.health()


def write_video(path, first: np.ndarray, second: np.ndarray, seconds: int = 2, rate: int = 10) -> None:
    """A lossless (FFV1) video: `first` for the first half, `second` for the rest."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=rate)
        stream.width, stream.height, stream.pix_fmt = first.shape[1], first.shape[0], "bgr0"
        for i in range(seconds * rate):
            frame = av.VideoFrame.from_ndarray(first if i < seconds * rate // 2 else second, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_a_video_series_shows_its_change_and_aggregates_it(client, triton, tmp_path):
    photo = Image.open(DATA / "sheep.jpg").convert("RGB").crop((0, 0, 512, 298))
    clean, blurred = np.asarray(photo), np.asarray(photo.filter(ImageFilter.GaussianBlur(3)))
    video = tmp_path / "clean_then_blurred.mkv"
    write_video(video, clean, blurred)

    report = client.score_video(video, fps=5)
    times = [f.time_s for f in report.frames]
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8])
    first, second = client.score(clean), client.score(blurred)
    assert not close(first, second)
    for frame in report.frames:
        assert close(frame.scores, first if frame.time_s < 1.0 else second), frame
    values = np.array([[f.scores.noise, f.scores.blur, f.scores.compression] for f in report.frames])
    assert np.allclose([report.mean.noise, report.mean.blur, report.mean.compression], values.mean(axis=0))
    assert np.allclose([report.worst.noise, report.worst.blur, report.worst.compression],
                       np.percentile(values, 95, axis=0))

    uniform = client.score_video(video, frames=4)
    assert [f.time_s for f in uniform.frames] == pytest.approx([0.2, 0.7, 1.2, 1.7])
    parsed = json.loads(uniform.to_json())
    assert parsed["frames_scored"] == 4 and len(parsed["series"]) == 4 and parsed["p95"]["blur"] == uniform.worst.blur

    async def run():
        async with AsyncIQAClient(triton.grpc_url, timeout=120) as aclient:
            return await aclient.score_video(video, frames=4)

    assert [close(a.scores, b.scores) for a, b in zip(asyncio.run(run()).frames, uniform.frames)] == [True] * 4
    report.plot(tmp_path / "timeline.png")
    assert Image.open(tmp_path / "timeline.png").format == "PNG"


def test_a_server_that_is_down_gives_a_clear_error_within_the_timeout():
    url = f"127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()
    with pytest.raises(ServerUnreachableError, match=f"no Triton server answers at {url}"):
        IQAClient(url, timeout=3)
    offline = IQAClient(url, timeout=3, connect=False)
    with pytest.raises(ServerUnreachableError, match="unreachable"):
        offline.score(DATA / "sheep.jpg")
    assert time.monotonic() - started < 6


def test_a_wrong_model_is_refused_at_connect(triton):
    with pytest.raises(ModelError, match="'no_such_model' is not served"):
        IQAClient(triton.grpc_url, model="no_such_model")
    with pytest.raises(ModelError, match="is not an iqa_degradation model"):
        IQAClient(triton.grpc_url, model="iqa_preprocess")


def test_transient_failures_are_retried_and_bad_images_are_not(triton):
    client = IQAClient(triton.grpc_url, timeout=60, retry=RetryPolicy(attempts=4, initial_backoff_s=0.01),
                       headers={"x-request-origin": "iqa-tests"})
    real_infer, calls, drops = client._grpc.infer, [], [2]

    def flaky_infer(*args, **kwargs):  # the transport drops the first two attempts
        calls.append(kwargs.get("headers"))
        if drops[0]:
            drops[0] -= 1
            raise InferenceServerException("connection reset", status="StatusCode.UNAVAILABLE")
        return real_infer(*args, **kwargs)

    client._grpc.infer = flaky_infer
    assert isinstance(client.score(DATA / "sheep.jpg"), Scores)
    assert len(calls) == 3 and calls[-1] == {"x-request-origin": "iqa-tests"}

    calls.clear()
    with pytest.raises(BadImageError, match="truncated"):
        client.score((DATA / "sheep.jpg").read_bytes()[:5000])
    assert len(calls) == 1  # INVALID_ARGUMENT is final


def test_modelscope_shape():
    assert Scores(0.1, 0.2, 0.3).to_modelscope() == {"scores": [0.1, 0.2, 0.3], "labels": ["噪声强度", "模糊程度", "压缩强度"]}
    assert json.loads(Scores(0.1, 0.2, 0.3).to_json()) == {"noise": 0.1, "blur": 0.2, "compression": 0.3}


def test_the_cli_json_and_csv_match_the_library(client, triton, tmp_path, capsys):
    (tmp_path / "nested").mkdir()
    for name in ("sheep", "rocks"):
        (tmp_path / f"{name}.jpg").write_bytes((DATA / f"{name}.jpg").read_bytes())
    (tmp_path / "nested" / "lighthouse.jpg").write_bytes((DATA / "lighthouse.jpg").read_bytes())
    expected = {str(p): client.score(p) for p in sorted(tmp_path.rglob("*.jpg"))}

    assert cli.main(["score", str(tmp_path), "--recursive", "--json", "--url", triton.grpc_url]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON Lines
    assert {r["path"] for r in rows} == set(expected)
    for row in rows:
        assert close(Scores(row["noise"], row["blur"], row["compression"]), expected[row["path"]])

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    assert cli.main(["score", str(tmp_path), "--csv", "--url", triton.grpc_url]) == 1  # not recursive: 3 files
    captured = capsys.readouterr()
    table = list(csv.DictReader(io.StringIO(captured.out)))
    assert [r["path"] for r in table] == [str(broken), str(tmp_path / "rocks.jpg"), str(tmp_path / "sheep.jpg")]
    assert table[0]["error"] and not table[0]["noise"]
    for row in table[1:]:
        assert close(Scores(float(row["noise"]), float(row["blur"]), float(row["compression"])), expected[row["path"]])
    # the failure is named once, in the output; stderr counts it, and names the folder it did not enter
    assert table[0]["error"] not in captured.err and "1 of 3 failed" in captured.err
    assert f"{tmp_path / 'nested'}: a folder: give --recursive" in captured.err


# --- the command line's contract: one rule for exit status and messages ------------------------------


def unreachable() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


@pytest.fixture(scope="module")
def a_video(tmp_path_factory):
    photo = np.asarray(Image.open(DATA / "sheep.jpg").convert("RGB").crop((0, 0, 256, 192)))
    path = tmp_path_factory.mktemp("video") / "clip.mkv"
    write_video(path, photo, photo[::-1].copy())
    return path


USAGE_ERRORS = {  # arguments -> what the message must name
    "timeout 0": (["score", str(DATA), "--timeout", "0"], "argument --timeout: must be > 0, got '0'"),
    "timeout -1 before the command": (["--timeout", "-1", "health"], "argument --timeout: must be > 0, got '-1'"),
    "fps 0": (["video", str(DATA / "sheep.jpg"), "--fps", "0"], "argument --fps: must be > 0"),
    "frames 0": (["video", str(DATA / "sheep.jpg"), "--frames", "0"], "argument --frames: must be > 0"),
    "fps and frames": (["video", str(DATA / "sheep.jpg"), "--fps", "1", "--frames", "2"],
                       "argument --frames: not allowed with argument --fps"),
    "percentile 150": (["video", str(DATA / "sheep.jpg"), "--percentile", "150"], "argument --percentile: must be in"),
    "concurrency 0": (["score", str(DATA), "--concurrency", "0"], "argument --concurrency: must be > 0"),
    "header without =": (["score", str(DATA), "--header", "token"], "argument --header: expected KEY=VALUE"),
    "plot into a missing folder": (["video", str(DATA / "sheep.jpg"), "--plot", "no/such/dir/t.png"],
                                   "argument --plot: no such folder to write into"),
    "plot in a format matplotlib does not write": (["map", str(DATA / "sheep.jpg"), "--plot", "map.txt"],
                                                   "argument --plot: name a plot format by its suffix"),
    "plot without a suffix": (["video", str(DATA / "sheep.jpg"), "--plot", "timeline"],
                              "argument --plot: name a plot format by its suffix"),
    "unknown option": (["score", str(DATA), "--colour"], "unrecognized arguments: --colour"),
    "resume without an output file": (["score", str(DATA), "--csv", "--resume"], "argument --resume: needs --output"),
    "video rows to a file without a format": (["video", str(DATA / "sheep.jpg"), "-o", "frames.txt"],
                                              "argument --output: iqa video writes a row per frame with --csv"),
    "map with --model": (["map", str(DATA / "sheep.jpg"), "--model", "x"], "unrecognized arguments: --model"),
    "--model before map": (["--model", "x", "map", str(DATA / "sheep.jpg")],
                           "argument --model: iqa map calls --map-model"),
    "no command": ([], "the following arguments are required: COMMAND"),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_bad_arguments_are_usage_errors_naming_the_argument(case, capsys):
    argv, message = USAGE_ERRORS[case]
    assert cli.main(["--url", unreachable(), *argv]) == cli.EXIT_USAGE == 2  # refused before any connection
    err = capsys.readouterr().err
    assert message in err and "no Triton server answers" not in err, err


@pytest.mark.parametrize("argv", [["health"], ["score", str(DATA / "sheep.jpg")], ["video", "VIDEO"]])
def test_a_server_that_cannot_be_used_exits_3_with_one_line(argv, a_video, capsys):
    argv = [str(a_video) if a == "VIDEO" else a for a in argv]
    url = unreachable()
    assert cli.main([*argv, "--url", url, "--timeout", "2"]) == cli.EXIT_SERVER == 3
    err = capsys.readouterr().err
    assert err.startswith(f"iqa: no Triton server answers at {url}") and err.count("\n") == 1, err


def test_exit_status_0_and_1_and_each_failure_named_once(triton, tmp_path, capsys):
    good, broken = DATA / "sheep.jpg", tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert cli.main(["score", str(good), "--url", triton.grpc_url]) == cli.EXIT_OK == 0
    capsys.readouterr()
    assert cli.main(["score", str(good), str(broken), "--url", triton.grpc_url]) == cli.EXIT_FAILED_ITEMS == 1
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert output.count(str(broken)) == 1 and output.count("truncated") == 1, output  # named once, with its reason
    assert "1 of 2 failed" in captured.err
    not_a_video = tmp_path / "clip.mp4"
    not_a_video.write_bytes(b"not a video")
    assert cli.main(["video", str(not_a_video), "--url", triton.grpc_url]) == 1
    assert "cannot read a video stream" in capsys.readouterr().err
    assert cli.main(["video", str(tmp_path / "missing.mp4"), "--url", triton.grpc_url]) == 1  # input, not usage
    assert "cannot read a video stream" in capsys.readouterr().err
    # FFmpeg would read a still picture as a one-frame video: refused as no video, not scored as one
    assert cli.main(["video", str(good), "--url", triton.grpc_url]) == 1
    assert "is a still image (image2), not a video" in capsys.readouterr().err
    assert cli.main(["health", "--url", triton.grpc_url]) == 0
    assert json.loads(capsys.readouterr().out)["model_ready"] is True
    url = unreachable()  # the report comes first, as the docs say, then the one-line error
    assert cli.main(["health", "--url", url, "--timeout", "2"]) == 3
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["live"] is False and report["model_ready"] is False and url in report["error"]
    assert captured.err.startswith(f"iqa: no Triton server answers at {url}") and captured.err.count("\n") == 1
    assert cli.main(["map", str(good), "--json", "--url", url, "--timeout", "2"]) == 3  # JSON for a JSON reader
    assert url in json.loads(capsys.readouterr().out)["error"]


def test_the_table_puts_a_failure_in_its_error_column(triton, tmp_path, capsys):
    broken = tmp_path / "b.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    assert cli.main(["score", str(DATA / "sheep.jpg"), str(broken), "--url", triton.grpc_url]) == 1
    head, good, bad = capsys.readouterr().out.splitlines()
    assert head.split() == ["path", "noise", "blur", "compression", "error"]
    assert good.split()[0] == str(DATA / "sheep.jpg") and len(good.split()) == 4
    assert bad.split()[:4] == [str(broken), "-", "-", "-"]
    assert bad.index("bad image:") == head.index("error")  # in the error column, not under noise


def test_version_and_help_say_what_the_commands_take(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("iqa 0.1.0 (iqa-client")
    top = cli.parser()
    commands = subcommands(top)
    assert "--model" not in commands["map"].format_help() and "--map-model" in commands["map"].format_help()
    assert "--model" in commands["score"].format_help()
    for name in ("score", "video"):
        text = " ".join(commands[name].format_help().split())
        assert "JSON Lines" in text and "--resume" in text and "(default: auto)" in text


def test_common_options_go_before_or_after_the_command(triton, capsys):
    photo = str(DATA / "sheep.jpg")
    assert cli.main(["--url", triton.grpc_url, "score", photo]) == 0
    assert cli.main(["score", photo, "--url", triton.grpc_url]) == 0
    assert cli.main(["--url", unreachable(), "score", photo, "--url", triton.grpc_url]) == 0  # after wins
    capsys.readouterr()
    before = cli.parser().parse_args(["--timeout", "5", "--header", "a=1", "score", photo])
    assert before.timeout == 5.0 and before.header == [("a", "1")] and before.url == cli.DEFAULT_URL
    assert cli.parser().parse_args(["score", photo]).timeout == cli.DEFAULT_TIMEOUT_S


def subcommands(top) -> dict:
    (action,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_option_has_help_and_the_help_shows_its_default():
    top = cli.parser()
    for name, parser in {"iqa": top, **subcommands(top)}.items():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
            default = cli.COMMON_DEFAULTS.get(action.dest, action.default)
            if default not in (None, False, [], argparse.SUPPRESS):
                assert f"(default: {default})" in " ".join(text.split()), (name, action.dest)


def test_a_missing_extra_is_a_clear_error_before_any_work(a_video, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if `pip install ./client` without [video]
    url = unreachable()  # were the server asked first, the error would be "no Triton server answers"
    assert cli.main(["video", str(a_video), "--plot", str(tmp_path / "t.png"), "--url", url]) == 2
    err = capsys.readouterr().err
    assert "iqa video needs matplotlib, which is not installed: pip install 'matplotlib>=" in err, err
    assert "no Triton server answers" not in err and not (tmp_path / "t.png").exists()

    monkeypatch.setitem(sys.modules, "av", None)
    assert cli.main(["video", str(a_video), "--url", url]) == 2
    assert "iqa video needs av, which is not installed: pip install 'av>=" in capsys.readouterr().err
    offline = IQAClient(url, connect=False, timeout=2)
    with pytest.raises(MissingExtraError, match="pip install 'av>=") as caught:
        offline.score_video(a_video, frames=2)  # before any frame is read or any request sent
    assert isinstance(caught.value, IQAError) and isinstance(caught.value, ImportError)
    report = VideoReport(str(a_video), 1.0, 95.0, None, None, ())
    with pytest.raises(MissingExtraError, match="VideoReport.plot needs matplotlib"):
        report.plot(tmp_path / "t.png")

    # The map's plot names the client's map extra.
    assert cli.main(["map", str(DATA / "sheep.jpg"), "--plot", str(tmp_path / "m.png"), "--url", url]) == 2
    assert "iqa map needs matplotlib" in (err := capsys.readouterr().err) and "./client[map]" in err, err
    scored = DegradationMap("x", 64, 48, 1, 1, (), Scores(0.0, 0.0, 0.0))
    with pytest.raises(MissingExtraError, match=r"DegradationMap.plot needs matplotlib.*client\[map\]"):
        scored.plot(tmp_path / "m.png")


# --- the formats phones and browsers send -----------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_heic_and_avif_folders_score_through_the_cli_and_skipped_files_are_named(client, triton, tmp_path, capsys):
    photo = Image.open(DATA / "rocks.jpg").convert("RGB")
    (tmp_path / "IMG_0001.HEIC").write_bytes(encoded(photo, "HEIF", quality=90))
    (tmp_path / "web.avif").write_bytes(encoded(photo, "AVIF", quality=90))
    (tmp_path / "IMG_0001.png").write_bytes(encoded(photo, "PNG"))
    (tmp_path / "IMG_0001.AAE").write_text("<plist/>")  # the edit sidecar iPhones export beside a photo
    (tmp_path / "notes.txt").write_text("not an image")
    assert cli.main(["score", str(tmp_path), "--json", "--url", triton.grpc_url]) == 0
    captured = capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in map(json.loads, captured.out.splitlines())}
    assert set(rows) == {"IMG_0001.HEIC", "web.avif", "IMG_0001.png", "IMG_0001.AAE", "notes.txt"}
    assert "not named like an accepted image (.txt)" in rows["notes.txt"]["skipped"]
    assert "skipped" in rows["IMG_0001.AAE"] and "noise" not in rows["IMG_0001.AAE"]
    assert "skipped 2 paths" in captured.err
    assert f"{tmp_path / 'notes.txt'}: not named like" in captured.err and "IMG_0001.AAE" in captured.err
    png = rows["IMG_0001.png"]
    for name in ("IMG_0001.HEIC", "web.avif"):
        assert abs(rows[name]["noise"] - png["noise"]) <= 0.05 and abs(rows[name]["blur"] - png["blur"]) <= 0.05
        assert abs(rows[name]["compression"] - png["compression"]) <= 0.1


def test_a_pil_image_opened_from_heic_or_avif_scores_like_its_file(client, tmp_path):
    """PIL images travel as PNG in their own mode, with their EXIF orientation: the server then treats
    transparency and orientation as it does for the file itself."""
    rgba = Image.open(io.BytesIO(odd_images.png_with_alpha()))
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = odd_images.photo().transpose(Image.Transpose.ROTATE_90)
    files = {"alpha.heic": encoded(rgba, "HEIF", quality=90), "alpha.avif": encoded(rgba, "AVIF", quality=90),
             "turned.avif": encoded(turned, "AVIF", quality=90, exif=exif.tobytes())}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert close(client.score(Image.open(tmp_path / name)), client.score(tmp_path / name)), name


@pytest.fixture(scope="module")
def tls_triton(tmp_path_factory):
    """A second server whose gRPC endpoint speaks TLS only, with a self-signed certificate."""
    import subprocess

    from iqa.serving.launcher import Ports, TritonServer

    run_dir = tmp_path_factory.mktemp("tls")
    cert, key = run_dir / "cert.pem", run_dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log",
                          exit_timeout_s=5, config_edit=without_warmup(),
                          extra_args=["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}",
                                      f"--grpc-root-cert={cert}"])
    with server:
        yield server, cert


def test_tls_endpoints_are_reached_with_tls_and_refuse_plaintext(tls_triton, client):
    server, cert = tls_triton
    url = f"localhost:{server.ports.grpc}"
    with IQAClient(url, ssl=True, root_certificates=str(cert), timeout=60) as secure:
        assert close(secure.score(DATA / "sheep.jpg"), client.score(DATA / "sheep.jpg"))
    with pytest.raises(ServerUnreachableError, match=f"{url} speaks TLS: connect with TLS"):
        IQAClient(url, timeout=3)  # plaintext to a TLS port: the fix is named


def test_score_many_reads_its_input_lazily_so_memory_stays_bounded(client, photos):
    photo = photos["sheep"]
    pulled = []

    def endless_frames():  # a long video's frames: must not be read ahead without bound
        for i in range(40):
            pulled.append(i)
            yield photo

    results = client.iter_score_many(endless_frames(), concurrency=2)
    first = next(results)
    assert isinstance(first, Scores)
    assert len(pulled) <= 2 * 2 + 1, f"read {len(pulled)} items ahead for concurrency 2"
    results.close()


def test_an_image_over_the_size_limit_is_refused_before_sending():
    """Nothing listens at the URL: the refusal can only come from the client, and it is a BadImageError."""
    from iqa_client.contract import MAX_IMAGE_BYTES

    url = f"127.0.0.1:{free_ports(1)[0]}"
    too_large = b"\xff\xd8" + bytes(MAX_IMAGE_BYTES - 1)
    with pytest.raises(BadImageError, match=f"more than the server's limit of {MAX_IMAGE_BYTES} bytes"):
        IQAClient(url, timeout=2, connect=False).score(too_large)
    (outcome,) = IQAClient(url, timeout=2, connect=False).score_many([too_large])
    assert isinstance(outcome, BadImageError) and outcome.index == 0

    async def run():
        offline = AsyncIQAClient(url, timeout=2)  # not entered: connects on no call
        try:
            return await offline.score(too_large)
        finally:
            await offline.close()

    with pytest.raises(BadImageError, match="not sent"):
        asyncio.run(run())


# --- video: black frames, and streams that do not start at 0 s (issue 25) --------------------------------


def encode_h264(path, frames: list[np.ndarray], rate: int = 10, start_s: float = 0.0) -> None:
    """An H.264 video (x264, as cameras and phones write) of `frames`, its first timestamp at `start_s`
    (MPEG-TS streams, HLS segments and cut recordings do not start at 0 s)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "18"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = round(start_s * rate) + index, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def noisy_frames(count: int, sigma: float = 25.0) -> list[np.ndarray]:
    photo = np.asarray(Image.open(DATA / "sheep.jpg").convert("RGB").crop((0, 0, 512, 288)), dtype=np.float64)
    rng = np.random.default_rng(0)
    return [np.clip(photo + rng.normal(0, sigma, photo.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def video_json_lines(out: str) -> tuple[list[dict], dict]:
    """`iqa video --json`'s JSON Lines: one object per frame, then {"summary": ...}."""
    *rows, last = [json.loads(line) for line in out.splitlines()]
    return rows, last["summary"]


def test_black_frames_are_reported_as_no_evidence_and_left_out_of_mean_and_p95(client, triton, tmp_path, capsys):
    video = tmp_path / "black_then_noisy.mp4"
    encode_h264(video, [np.zeros((288, 512, 3), np.uint8)] * 20 + noisy_frames(20), rate=10)  # 2 s + 2 s

    report = client.score_video(video, fps=5)
    assert [round(f.time_s, 1) for f in report.frames] == [round(0.2 * i, 1) for i in range(20)]
    black = [f for f in report.frames if f.time_s < 2.0]
    noisy = [f for f in report.frames if f.time_s >= 2.0]
    assert all(f.no_evidence and f.scores == Scores(0.0, 0.0, 0.0) for f in black)
    assert not any(f.no_evidence for f in noisy) and report.frames_no_evidence == len(black) == 10
    values = np.array([[f.scores.noise, f.scores.blur, f.scores.compression] for f in noisy])
    assert np.allclose(astuple(report.mean), values.mean(axis=0))
    assert np.allclose(astuple(report.worst), np.percentile(values, 95, axis=0))
    assert report.mean.noise > 0.5  # what the noisy half reads, not half of it

    assert cli.main(["video", str(video), "--fps", "5", "--url", triton.grpc_url]) == 0
    text = capsys.readouterr().out
    assert "20 frames over 4.0 s, 0 failed, 10 with no evidence (flat, left out of mean and p95)" in text, text
    assert f"mean  noise {report.mean.noise:.3f}" in text, text
    assert cli.main(["video", str(video), "--fps", "5", "--json", "--url", triton.grpc_url]) == 0
    rows, parsed = video_json_lines(capsys.readouterr().out)
    assert parsed["frames_no_evidence"] == 10 and parsed["frames_scored"] == 20
    assert [row["no_evidence"] for row in rows] == [True] * 10 + [False] * 10
    assert parsed["mean"]["noise"] == pytest.approx(report.mean.noise, abs=TOLERANCE)

    # A clip with no evidence at all has no mean to report, and says so; nothing failed.
    dark = tmp_path / "black.mp4"
    encode_h264(dark, [np.zeros((288, 512, 3), np.uint8)] * 10)
    assert cli.main(["video", str(dark), "--frames", "4", "--url", triton.grpc_url]) == 0
    text = capsys.readouterr().out
    assert "4 with no evidence" in text and "no frame holds evidence of any degradation" in text, text
    assert not any(line.startswith("  mean") for line in text.splitlines()), text
    dark_report = client.score_video(dark, frames=4)
    assert dark_report.mean is None and dark_report.worst is None and dark_report.frames_no_evidence == 4


@pytest.mark.parametrize("suffix", [".ts", ".mkv"])
def test_a_video_starting_at_10_s_is_sampled_over_its_own_span(suffix, client, triton, tmp_path, capsys):
    """Frame times count from the stream's first timestamp (as a player shows them) and the duration is
    the span of the frames, whatever the container states (Matroska states the end time, 14 s)."""
    video = tmp_path / f"segment{suffix}"
    frames = noisy_frames(40, sigma=10.0)
    encode_h264(video, frames, rate=10, start_s=10.0)
    with av.open(str(video)) as container:
        assert container.streams.video[0].start_time * container.streams.video[0].time_base == 10  # as written

    assert cli.main(["video", str(video), "--frames", "8", "--json", "--url", triton.grpc_url]) == 0
    rows, parsed = video_json_lines(capsys.readouterr().out)
    assert parsed["duration_s"] == pytest.approx(4.0) and parsed["start_s"] == pytest.approx(10.0)
    assert [row["time_s"] for row in rows] == pytest.approx([0.2, 0.7, 1.2, 1.7, 2.2, 2.7, 3.2, 3.7])
    assert parsed["frames_scored"] == 8 and parsed["frames_failed"] == 0
    assert cli.main(["video", str(video), "--frames", "8", "--url", triton.grpc_url]) == 0
    assert "8 frames over 4.0 s, 0 failed" in capsys.readouterr().out

    by_rate = client.score_video(video, fps=2)
    assert [f.time_s for f in by_rate.frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])


# --- the async client and event loops (issue 25) ---------------------------------------------------------


def test_an_async_client_built_outside_a_loop_works_in_each_asyncio_run_that_uses_it(client, triton, photos):
    """Built with no loop running, then used by one asyncio.run after another (each a new loop, the last
    one gone), by `async with` blocks that close it, and by two loops at once: the scores, and only
    the documented errors."""
    photo = photos["sheep"]
    expected = client.score(photo)
    aclient = AsyncIQAClient(triton.grpc_url, timeout=120)
    assert close(asyncio.run(aclient.score(photo)), expected)
    assert close(asyncio.run(aclient.score(photo)), expected)  # a second loop: the first one is closed

    async def in_a_block():
        async with aclient:  # connects, and closes on the way out
            return await aclient.score_many([photo, b"not an image"])

    for _ in range(2):  # a closed client opens a new channel when it is used again
        scored, bad = asyncio.run(in_a_block())
        assert close(scored, expected) and isinstance(bad, BadImageError)
    with pytest.raises(BadImageError, match="not a recognised image"):
        asyncio.run(aclient.score(b"not an image"))

    outcomes: dict[int, object] = {}

    def in_its_own_loop(index: int) -> None:
        try:
            outcomes[index] = asyncio.run(aclient.score(photo))
        except Exception as err:  # noqa: BLE001 - reported below
            outcomes[index] = err

    threads = [threading.Thread(target=in_its_own_loop, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(o, Scores) and close(o, expected) for o in outcomes.values()), outcomes

    offline = AsyncIQAClient(unreachable(), timeout=2)
    for _ in range(2):
        with pytest.raises(ServerUnreachableError, match="no Triton server answers"):
            asyncio.run(offline.connect())


def test_an_image_sent_as_text_gets_a_hint_about_its_encoding(client):
    """Base64 text or a data: URL given where a path or bytes belong: the client says so for a string
    (it names no file), the server for bytes; messages stay short whatever the text's length."""
    text = base64.b64encode(odd_images.encode(odd_images.photo(), "PNG"))
    as_path, as_url, as_bytes = client.score_many([text.decode(), "data:image/png;base64," + text.decode(), text])
    assert isinstance(as_path, BadImageError) and "base64 text of an image, not a path" in str(as_path), as_path
    assert isinstance(as_url, BadImageError) and "a data: URL is the picture written as text" in str(as_url), as_url
    assert isinstance(as_bytes, BadImageError) and "these bytes are base64 text of a PNG image" in str(as_bytes)
    assert max(len(str(e)) for e in (as_path, as_url, as_bytes)) < 400
    with pytest.raises(BadImageError, match="these bytes are a data: URL"):
        client.score(b"data:image/png;base64," + text)


def _answer(**outputs: np.ndarray):
    """A successful answer as tritonclient reads it off the wire: a ModelInferResponse holding these outputs."""
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse(model_name="iqa_degradation", model_version="1")
    for name, value in outputs.items():
        response.outputs.add(name=name, datatype="FP32", shape=list(value.shape))
        response.raw_output_contents.append(value.astype(np.float32).tobytes())
    return grpcclient.InferResult(response)


def test_an_answer_without_a_score_output_is_a_server_error_naming_it():
    # Once seen from the wheel's Triton 2.51 after a cancelled request under load (client.py, _output): the
    # CLI died with "AttributeError: 'NoneType' object has no attribute 'reshape'".
    from iqa_client.client import _map, _scores

    whole = _answer(NOISE=np.array([[0.25]]), BLUR=np.array([[0.5]]), COMPRESSION=np.array([[0.75]]))
    assert _scores(whole, "host:8001", "iqa_degradation") == Scores(0.25, 0.5, 0.75)
    for answer, missing in ((_answer(), "NOISE"), (_answer(NOISE=np.array([[0.1]]), BLUR=np.array([[0.2]])),
                                                   "COMPRESSION"),
                            (_answer(NOISE=np.zeros((1, 0)), BLUR=np.array([[0.2]]), COMPRESSION=np.array([[0.3]])),
                             "NOISE")):
        with pytest.raises(ServerError, match=f"model 'iqa_degradation' at host:8001 answered without its {missing} "
                                              "output$"):
            _scores(answer, "host:8001", "iqa_degradation")
    with pytest.raises(ServerError, match="model 'iqa_degradation_map' at host:8001 answered without its "):
        _map(_answer(), "host:8001", "iqa_degradation_map", b"", None, None)
