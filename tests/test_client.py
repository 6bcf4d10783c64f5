"""The iqa_client library and the `iqa` command line against the real server (conftest's `triton`)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time

import av
import numpy as np
import pytest
from PIL import Image, ImageFilter
from tritonclient.utils import InferenceServerException

from iqa.serving.launcher import free_ports
from iqa_client import (
    AsyncIQAClient,
    BadImageError,
    IQAClient,
    ModelError,
    RetryPolicy,
    Scores,
    ServerUnreachableError,
)
from iqa_client import cli
from iqa_client.images import png_from_array
from tests.conftest import DATA

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
    rows = json.loads(capsys.readouterr().out)
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
    assert f"failed: {broken}" in captured.err and "1 of 3 failed" in captured.err


def test_the_cli_reports_an_unreachable_server_with_exit_status_2(capsys):
    assert cli.main(["health", "--url", f"127.0.0.1:{free_ports(1)[0]}", "--timeout", "2"]) == 2
    assert "no Triton server answers" in capsys.readouterr().err


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
                          exit_timeout_s=5, extra_args=["--grpc-use-ssl=true", f"--grpc-server-cert={cert}",
                                                        f"--grpc-server-key={key}", f"--grpc-root-cert={cert}"])
    with server:
        yield server, cert


def test_tls_endpoints_are_reached_with_tls_and_refuse_plaintext(tls_triton, client):
    server, cert = tls_triton
    url = f"localhost:{server.ports.grpc}"
    with IQAClient(url, ssl=True, root_certificates=str(cert), timeout=60) as secure:
        assert close(secure.score(DATA / "sheep.jpg"), client.score(DATA / "sheep.jpg"))
    with pytest.raises(ServerUnreachableError):
        IQAClient(url, timeout=3)  # plaintext to a TLS port


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
