"""The `iqa` command line over long runs and the inputs users have, against real servers (conftest):
rows streamed as they are scored, a server stopped mid-run, Ctrl-C, a closed pipe, progress with stderr
redirected, --resume, image URLs served on the loopback, standard input, and the --url forms."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iqa.serving.launcher import free_ports
from iqa_client import (AsyncIQAClient, BadImageError, IQAClient, IQATimeoutError, ModelError, Scores,
                        ServerUnreachableError)
from iqa_client import cli
from iqa_client.channel import grpc_target
from iqa_client.contract import MAX_IMAGE_BYTES
from iqa_client.images import MAX_REDIRECTS
from tests.conftest import DATA, serve
from tests.test_client import client, close, write_video  # noqa: F401 (client: a fixture)

IQA = Path(sys.executable).parent / "iqa"  # the console script, as a user runs it


def scores_of(row: dict) -> Scores:
    return Scores(float(row["noise"]), float(row["blur"]), float(row["compression"]))


def photo_folder(folder: Path, copies: int) -> list[Path]:
    """`copies` x the three test photos, under distinct names."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for i in range(copies):
        for photo in sorted(DATA.glob("*.jpg")):
            made.append(folder / f"{i:03d}_{photo.name}")
            shutil.copyfile(photo, made[-1])
    return sorted(made)


def iqa(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([str(IQA), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def wait_for_rows(path: Path, rows: int, process: subprocess.Popen, limit_s: float = 180) -> None:
    """Until `path` holds a header and `rows` complete rows (written as they are scored, not at the end)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= rows + 1:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.kill()
    pytest.fail(f"{path} did not get {rows} rows within {limit_s} s: {process.communicate()}")


def iqa_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# --- a server that stops in the middle of a run ---------------------------------------------------------


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    photo = np.asarray(Image.open(DATA / "sheep.jpg").convert("RGB").crop((0, 0, 256, 192)))
    path = tmp_path_factory.mktemp("long") / "long.mkv"
    write_video(path, photo, photo[::-1].copy(), seconds=60)  # 600 frames at 10 fps
    return path


def test_a_server_stopped_mid_run_ends_each_run_with_one_line_and_exit_3(tmp_path_factory, tmp_path, long_video):
    """`iqa video` and `iqa score` lose their server mid-run: one line each, exit 3, the rows written before
    kept and no summary; the library's score_video raises instead of reporting the part it scored."""
    folder = tmp_path / "photos"
    photo_folder(folder, 100)
    frames_csv, scores_csv = tmp_path / "frames.csv", tmp_path / "scores.csv"
    with serve(tmp_path_factory, "stopping") as server:
        url = server.grpc_url
        video = iqa("video", long_video, "--fps", 10, "--csv", "-o", frames_csv, "--progress", "off",
                    "--concurrency", 2, "--url", url)
        score = iqa("score", folder, "--csv", "-o", scores_csv, "--progress", "off", "--concurrency", 2, "--url", url)
        raised = []

        def library_run():
            try:
                with IQAClient(url, timeout=60) as client:
                    client.score_video(long_video, fps=10, concurrency=2)
            except Exception as err:  # noqa: BLE001 (the test asserts what it is)
                raised.append(err)

        library = threading.Thread(target=library_run)
        library.start()
        wait_for_rows(frames_csv, 3, video)
        wait_for_rows(scores_csv, 3, score)
        stopped_at = time.monotonic()
        server.stop()
    for process, path, unit in ((video, frames_csv, "frames"), (score, scores_csv, "files")):
        out, err = process.communicate(timeout=120)
        assert process.returncode == cli.EXIT_SERVER == 3, err
        (line,) = iqa_lines(err)  # one line: no failed row per item, no summary
        assert line.startswith("iqa: ") and f"stopped after" in line and unit in line and "no summary" in line, line
        assert "mean" not in out + err and "Traceback" not in err
        assert "the same command with --resume goes on from them" in line, line
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        assert len(rows) >= 3 and all(not row["error"] and row["noise"] for row in rows), rows[-3:]
    library.join(timeout=120)
    assert not library.is_alive() and len(raised) == 1 and isinstance(raised[0], (ServerUnreachableError, ModelError)), \
        raised
    assert time.monotonic() - stopped_at < 120


# --- Ctrl-C, --resume, a closed pipe, progress ----------------------------------------------------------------


def test_ctrl_c_mid_run_exits_130_keeping_the_rows_and_resume_scores_only_the_rest(triton, tmp_path):
    files = photo_folder(tmp_path / "photos", 20)
    out = tmp_path / "scores.csv"
    # As from a terminal: a test run started in the background (`pytest &` in a script) has SIGINT ignored, and
    # its children would inherit that.
    run = iqa("score", tmp_path / "photos", "--csv", "-o", out, "--concurrency", 1, "--url", triton.grpc_url,
              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_rows(out, 2, run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == cli.EXIT_INTERRUPTED == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "iqa: interrupted after" in err and "--resume" in err
    kept = list(csv.DictReader(io.StringIO(out.read_text())))
    assert 2 <= len(kept) < len(files) and all(row["noise"] and not row["error"] for row in kept)

    resumed = iqa("score", tmp_path / "photos", "--csv", "-o", out, "--resume", "--url", triton.grpc_url)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming: {len(kept)} of {len(files)} files already scored" in err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted(row["path"] for row in rows) == sorted(map(str, files))  # each once
    assert rows[: len(kept)] == kept  # the kept rows are the first run's, not rescored


def test_resume_keeps_scored_rows_and_tries_failed_and_cut_rows_again(triton, client, tmp_path, capsys):
    files = photo_folder(tmp_path / "photos", 1)
    out = tmp_path / "scores.csv"
    # An earlier run: one file scored (with values no server gives, to see they are kept, not rescored),
    # one failed, and a last row cut short by a kill.
    out.write_text("path,noise,blur,compression,error\n"
                   f"{files[0]},0.5,0.5,0.5,\n{files[1]},,,,bad image: it was broken then\n{files[2]},0.1,0.2")
    assert cli.main(["score", str(tmp_path / "photos"), "-o", str(out), "--resume",  # .csv: CSV
                     "--url", triton.grpc_url]) == 0
    assert "resuming: 1 of 3 files already scored" in capsys.readouterr().err
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(out.read_text()))}
    assert list(rows) == list(map(str, files)) and scores_of(rows[str(files[0])]) == Scores(0.5, 0.5, 0.5)
    for path in files[1:]:
        assert close(scores_of(rows[str(path)]), client.score(path))

    video = tmp_path / "clip.mkv"
    photo = np.asarray(Image.open(DATA / "sheep.jpg").convert("RGB").crop((0, 0, 256, 192)))
    write_video(video, photo, photo[::-1].copy())
    frames = tmp_path / "frames.jsonl"
    frames.write_text(json.dumps({"time_s": 0.2, "noise": 0.5, "blur": 0.5, "compression": 0.5}) + "\n")
    assert cli.main(["video", str(video), "--frames", "4", "--json", "-o", str(frames), "--resume",
                     "--url", triton.grpc_url]) == 0
    assert "resuming: 1 frames already scored" in capsys.readouterr().err
    *series, last = [json.loads(line) for line in frames.read_text().splitlines()]
    assert [row["time_s"] for row in series] == pytest.approx([0.2, 0.7, 1.2, 1.7])
    assert series[0]["noise"] == 0.5  # kept, and counted in the summary over the whole video
    assert last["summary"]["frames_scored"] == 4
    assert last["summary"]["mean"]["noise"] == pytest.approx(np.mean([row["noise"] for row in series]))


def test_a_closed_pipe_ends_the_run_quietly(triton, tmp_path):
    photo_folder(tmp_path / "photos", 4)
    for command in (f"score {tmp_path / 'photos'} --json --concurrency 1", f"map {DATA / 'sheep.jpg'} --json"):
        shell = f"{IQA} {command} --url {triton.grpc_url} 2>{tmp_path / 'err'} | head -n 1; echo ${{PIPESTATUS[0]}}"
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=300)
        first, status = done.stdout.splitlines()
        err = (tmp_path / "err").read_text()
        assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
        if command.startswith("score"):  # more rows than head reads: stopped, as `yes | head` stops `yes`
            assert json.loads(first)["noise"] >= 0 and status == str(cli.EXIT_PIPE_CLOSED) == "141", (first, err)
        else:  # one JSON object, which the pipe may have taken whole before head closed it
            assert first == "{" and status in ("0", "141"), status


def test_rows_are_written_as_they_are_scored_and_progress_lines_go_to_a_redirected_stderr(triton, tmp_path):
    photo_folder(tmp_path / "photos", 6)
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:  # stderr redirected to a file: not a terminal, so progress comes as lines
        run = subprocess.Popen([str(IQA), "score", str(tmp_path / "photos"), "--json", "--concurrency", "1",
                                "--url", triton.grpc_url], stdout=subprocess.PIPE, stderr=stderr, text=True,
                               env={**os.environ, "IQA_PROGRESS_INTERVAL_S": "0.5"})
        first = run.stdout.readline()  # arrives while the run goes on, not at its end
        assert run.poll() is None and json.loads(first)["path"].endswith("lighthouse.jpg")
        rest = run.stdout.read()
        assert run.wait(timeout=300) == 0
    assert len(rest.splitlines()) == 17
    lines = log.read_text().splitlines()
    assert any(line.startswith("iqa: scoring: ") and "/18 files in" in line for line in lines), lines
    assert "\r" not in log.read_text()  # no bar redrawn into a file


def test_progress_has_counted_every_item_when_the_last_one_arrives(client, photos):
    seen = []
    for outcome in client.iter_score_many(list(photos.values()), concurrency=2,
                                          progress=lambda done, total: seen.append((done, total))):
        assert isinstance(outcome, Scores)
        last = seen[-1]
    assert last == (len(photos), len(photos)) and seen == [(n, len(photos)) for n in range(1, len(photos) + 1)]


# --- inputs: URLs on the loopback, standard input, missing and hidden files ------------------------------------


class ImageHost(BaseHTTPRequestHandler):
    """A small image host on the loopback, with the ways downloads go wrong."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        if name.startswith("redirect/"):
            left = int(name.split("/")[1])
            return self.redirect("/sheep.jpg" if left == 0 else f"/redirect/{left - 1}")
        if name == "loop":
            return self.redirect("/loop")
        if name == "huge-declared":  # says how big before sending it: refused on the header
            self.send_response(200)
            self.send_header("Content-Length", str(MAX_IMAGE_BYTES + 1))
            self.end_headers()
            return self.write(b"\xff\xd8" + bytes(1000))
        if name == "huge-streamed":  # says nothing: refused when the limit is passed
            self.send_response(200)
            self.end_headers()
            for _ in range(MAX_IMAGE_BYTES // 2**20 + 2):
                if not self.write(bytes(2**20)):
                    return
            return
        if name == "slow":
            time.sleep(3)
        path = DATA / name.removeprefix("slow").lstrip("/") if name != "slow" else DATA / "sheep.jpg"
        if not path.is_file():
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        self.write(path.read_bytes())

    def redirect(self, where: str) -> None:
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            return True
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what the limit is for
            return False

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_image_url_scores_like_its_file_and_each_failed_download_says_why(client, triton, image_host):
    sheep = client.score(DATA / "sheep.jpg")
    assert close(client.score(f"{image_host}/sheep.jpg"), sheep)
    assert close(client.score(f"{image_host}/redirect/{MAX_REDIRECTS - 1}"), sheep)  # redirects followed, bounded
    failures = {
        "/missing.jpg": "HTTP 404",
        "/loop": f"more than {MAX_REDIRECTS} redirects",
        "/huge-declared": f"{MAX_IMAGE_BYTES + 1} bytes, more than the server's limit of {MAX_IMAGE_BYTES} bytes",
        "/huge-streamed": f"more than the server's limit of {MAX_IMAGE_BYTES} bytes",
    }
    for path, message in failures.items():
        with pytest.raises(BadImageError, match=message) as caught:
            client.score(f"{image_host}{path}")
        assert caught.value.source == f"{image_host}{path}"
    started = time.monotonic()
    with pytest.raises(BadImageError, match="not done within 1 s"):
        client.score(f"{image_host}/slow", timeout=1)
    assert time.monotonic() - started < 2.5
    with pytest.raises(BadImageError, match="cannot download it"):  # nothing listens there
        client.score(f"http://127.0.0.1:{free_ports(1)[0]}/x.jpg")

    urls = [f"{image_host}/rocks.jpg", f"{image_host}/missing.jpg", f"{image_host}/lighthouse.jpg"]
    many = client.score_many(urls, concurrency=3)
    assert isinstance(many[1], BadImageError) and many[1].index == 1 and "HTTP 404" in str(many[1])
    assert close(many[0], client.score(DATA / "rocks.jpg")) and close(many[2], client.score(DATA / "lighthouse.jpg"))

    async def run():
        async with AsyncIQAClient(triton.grpc_url, timeout=120) as aclient:
            return await aclient.score(urls[0]), await aclient.score_map(urls[2])

    from_async, mapped = asyncio.run(run())
    assert close(from_async, many[0]) and mapped.grid == client.score_map(DATA / "lighthouse.jpg").grid


def test_iqa_score_takes_urls_stdin_and_a_missing_path_fails_alone(triton, client, image_host, tmp_path, capsys):
    good, missing = str(DATA / "sheep.jpg"), str(tmp_path / "nope.jpg")
    url = f"{image_host}/rocks.jpg"
    assert cli.main(["score", good, missing, url, f"{image_host}/missing.jpg", "--csv",
                     "--url", triton.grpc_url]) == cli.EXIT_FAILED_ITEMS == 1
    captured = capsys.readouterr()
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(captured.out))}
    assert list(rows) == [good, missing, url, f"{image_host}/missing.jpg"]
    assert close(scores_of(rows[good]), client.score(good)) and close(scores_of(rows[url]), client.score(DATA / "rocks.jpg"))
    assert rows[missing]["error"] == "bad image: no such file" and "HTTP 404" in rows[f"{image_host}/missing.jpg"]["error"]
    assert "2 of 4 failed" in captured.err

    piped = subprocess.run([str(IQA), "score", "-", "--csv", "--url", triton.grpc_url],
                           input=(DATA / "lighthouse.jpg").read_bytes(), capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    (row,) = csv.DictReader(io.StringIO(piped.stdout.decode()))
    assert row["path"] == "-" and close(scores_of(row), client.score(DATA / "lighthouse.jpg"))
    assert b"\r" not in piped.stdout  # lines end in "\n", as grep, cut and awk expect
    mapped = subprocess.run([str(IQA), "map", "-", "--json", "--url", triton.grpc_url],
                            input=(DATA / "sheep.jpg").read_bytes(), capture_output=True, timeout=120)
    assert mapped.returncode == 0 and json.loads(mapped.stdout)["grid"] == [3, 4], mapped.stderr
    assert json.loads(mapped.stdout)["source"] == "-"  # standard input is named as it was given
    table = subprocess.run([str(IQA), "map", "-", "--url", triton.grpc_url], input=(DATA / "sheep.jpg").read_bytes(),
                           capture_output=True, timeout=120)
    assert table.returncode == 0 and table.stdout.decode().startswith("-: 512x"), table.stdout[:80]


def test_answers_past_the_timeout_name_the_timeout_and_what_to_change(triton, tmp_path, capsys, monkeypatch):
    """A busy server, not a bad picture: the summary says which knob helps and that --resume redoes only those.
    The server is real and answers (the run checks it after each timeout); the answers themselves come too late,
    as from a crowded queue: a --timeout small enough to make that happen would also fail the first connect."""
    folder = tmp_path / "photos"
    photo_folder(folder, 1)

    def too_late(self, images, **_):
        return (IQATimeoutError(f"no answer from {self.url} within the timeout (Deadline Exceeded)") for _ in images)

    monkeypatch.setattr(IQAClient, "iter_score_many", too_late)
    assert cli.main(["score", str(folder), "--csv", "--url", triton.grpc_url]) == cli.EXIT_FAILED_ITEMS == 1
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 3 and all("within the timeout" in row["error"] for row in rows), rows
    assert ("3 got no answer within the 30 s timeout: raise --timeout or lower --concurrency (now 8)"
            in captured.err and "--resume" in captured.err and "stopped" not in captured.err), captured.err


def test_one_error_family_for_inputs_that_cannot_be_read(client, triton, tmp_path):
    for given, message in ((tmp_path / "nope.jpg", "no such file"), (tmp_path, "a folder, not an image file"),
                           (42, "cannot score a int"), (np.zeros((4, 4, 3), np.float32), "pixels must be uint8")):
        with pytest.raises(BadImageError, match=message):
            client.score(given)
        with pytest.raises(BadImageError, match=message):
            client.score_map(given)
        (outcome,) = client.score_many([given])
        assert isinstance(outcome, BadImageError) and message in str(outcome)

    async def run():
        async with AsyncIQAClient(triton.grpc_url, timeout=60) as aclient:
            with pytest.raises(BadImageError, match="no such file"):
                await aclient.score(tmp_path / "nope.jpg")

    asyncio.run(run())


def test_hidden_files_and_folders_are_left_out_of_folder_scans_unless_asked(triton, tmp_path, capsys):
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    shutil.copyfile(DATA / "sheep.jpg", tmp_path / "visible.jpg")
    shutil.copyfile(DATA / "sheep.jpg", tmp_path / ".hidden.jpg")
    shutil.copyfile(DATA / "rocks.jpg", tmp_path / ".git" / "objects" / "inside.jpg")
    assert cli.main(["score", str(tmp_path), "-r", "--json", "--url", triton.grpc_url]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["path"] for line in captured.out.splitlines()] == [str(tmp_path / "visible.jpg")]
    assert "left out 2 hidden files or folders" in captured.err and "--hidden" in captured.err
    assert cli.main(["score", str(tmp_path), "-r", "--hidden", "--json", "--url", triton.grpc_url]) == 0
    scored = {Path(json.loads(line)["path"]).name for line in capsys.readouterr().out.splitlines()}
    assert scored == {"visible.jpg", ".hidden.jpg", "inside.jpg"}
    # named on the command line, a hidden file is scored like any other
    assert cli.main(["score", str(tmp_path / ".hidden.jpg"), "--url", triton.grpc_url]) == 0


# --- --url: each form accepted or refused with the fix ------------------------------------------------------


@pytest.mark.parametrize("given, target", [
    ("127.0.0.1", ("127.0.0.1:8001", False)), ("127.0.0.1:9001", ("127.0.0.1:9001", False)),
    ("http://127.0.0.1:9001", ("127.0.0.1:9001", False)), ("grpc://host:9001/", ("host:9001", False)),
    ("https://host", ("host:8001", True)), ("[::1]", ("[::1]:8001", False)), ("::1", ("[::1]:8001", False)),
    ("dns:///iqa-triton-grpc.iqa.svc:8001", ("dns:///iqa-triton-grpc.iqa.svc:8001", False)),
])
def test_server_addresses_as_people_write_them(given, target):
    assert grpc_target(given) == target


@pytest.mark.parametrize("given, message", [
    ("host:8001/v2/models", "has no path: write host:8001"), ("ftp://host:8001", "not ftp://"),
    ("host:grpc", "the port must be a number"),
])
def test_addresses_that_cannot_be_grpc_are_usage_errors_naming_the_fix(given, message, capsys):
    assert cli.main(["--url", given, "health"]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_the_http_port_or_the_wrong_tls_setting_names_the_fix(triton):
    http = f"127.0.0.1:{triton.ports.http}"
    done = subprocess.run([str(IQA), "--url", http, "--timeout", "3", "health"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3 and "answers HTTP/1.1, not gRPC: that is Triton's HTTP port" in done.stderr, done.stderr
    assert f"gRPC port (8001 by default)" in done.stderr
    plain = subprocess.run([str(IQA), "--url", triton.grpc_url, "--tls", "--timeout", "3", "score",
                            str(DATA / "sheep.jpg")], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 3 and "speaks plaintext gRPC, not TLS: connect without TLS" in plain.stderr
    assert "no TLS server answers at" in plain.stderr and "no Triton server answers" not in plain.stderr
    assert "Handshake failed" not in plain.stderr and len(iqa_lines(plain.stderr)) == 1, plain.stderr  # no gRPC log
    scheme = subprocess.run([str(IQA), "--url", f"http://{triton.grpc_url}", "score", str(DATA / "sheep.jpg")],
                            capture_output=True, text=True, timeout=120)
    assert scheme.returncode == 0, scheme.stderr
