"""The demo served for real: `python -m demo` on localhost only, no outside connection, two users at once through
`gradio_client`, errors reaching the client. Helpers and the tiny checkpoint come from conftest."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import (
    ROOT,
    assert_close8,
    bad_files,
    expected_restore,
    free_port,
    natural_image,
    save,
    write_tiny_checkpoint,
)
from gradio_client import Client, handle_file

from demo.__main__ import main as demo_main
from demo.app import STRENGTH_AUTO, build_app, serve
from infer.backends import open_backend
from pipeline.io import load_rgb8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def cli_server(checkpoint, tmp_path_factory):
    """`python -m demo` started as a user starts it (tiny model, CPU); yields its URL. On teardown it gets Ctrl+C
    (SIGINT) and must exit having removed its work folder."""
    folder, port = tmp_path_factory.mktemp("cli"), free_port()
    command = [sys.executable, "-m", "demo", "--model", str(checkpoint), "--port", str(port), "--device", "cpu"]
    env = os.environ | {"TMPDIR": str(folder), "GRADIO_TEMP_DIR": str(folder / "gradio")}
    log = folder / "server.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_as_from_a_terminal
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180  # importing torch and Gradio takes several seconds on a busy 2-core box
        while not _answers(url):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.25)
        yield url, log
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise AssertionError(f"the demo did not stop within 60 s of Ctrl+C:\n{log.read_text()[-2000:]}") from None
    assert not list(folder.glob("ml-restoration-demo-*")), "the work folder was left behind"
    uploads = [p for p in (folder / "gradio").rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert not uploads, f"users' uploads outlived the demo: {uploads[:3]}"  # (Gradio's parser leaves empty tmp files)


def _as_from_a_terminal() -> None:
    """Ctrl+C reaches the server as in a terminal: a test run started in the background (`nohup ... &`) ignores
    SIGINT, and a child would inherit that and never see the signal this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_command_line_serves_on_localhost_only(cli_server, checkpoint, tmp_path):
    url, log = cli_server
    with urllib.request.urlopen(url, timeout=30) as response:
        assert "ml-restoration demo" in response.read().decode()  # the page title
    assert f"serving checkpoint:tiny.pt on cpu at {url.rstrip('/')}" in log.read_text()
    port = int(url.rsplit(":", 1)[1].strip("/"))
    hosts = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for host in hosts - {"127.0.0.1"}:  # another address of this machine: nothing listens there
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(5)
            sock.connect((host, port))


def test_serving_opens_no_outside_connection(checkpoint, tmp_path):
    """Every name lookup and connection this process makes while the demo starts, serves a request through
    `gradio_client` and stops, recorded by an audit hook: all must be local (analytics on would look up
    api.gradio.app)."""
    hosts, recording = [], [True]

    def audit(event: str, args: tuple) -> None:
        if recording[0] and event in ("socket.connect", "socket.getaddrinfo"):
            address = args[1] if event == "socket.connect" else args
            hosts.append(str(address[0]) if isinstance(address, tuple) else str(address))

    sys.addaudithook(audit)  # cannot be removed: `recording` switches it off after the test
    try:
        app = build_app(open_backend(checkpoint, device="cpu"), workroot=tmp_path / "work")
        _, local_url, share_url = serve(app, port=free_port(), block=False)
        client = Client(local_url, analytics_enabled=False, download_files=str(tmp_path / "dl"), verbose=False)
        path = save(natural_image(24, 24, seed=14), tmp_path / "x.png")
        assert client.predict([handle_file(path)], STRENGTH_AUTO, 15, 40, False, api_name="/restore")[1]
        client.close()
        app.close()
    finally:
        recording[0] = False
    assert local_url.startswith("http://127.0.0.1:") and share_url is None
    assert app.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert hosts and set(hosts) <= {"127.0.0.1", "localhost", "::1"}, sorted(set(hosts))


def test_two_sessions_at_once_each_get_their_own_result(cli_server, checkpoint, tmp_path):
    local_url, _ = cli_server
    clean = {"alice": natural_image(36, 44, seed=20), "bob": natural_image(52, 30, seed=21)}
    results, failures = {}, []
    start = threading.Barrier(len(clean))

    def session(user: str) -> None:
        path = save(clean[user], tmp_path / f"{user}.png")
        client = Client(local_url, analytics_enabled=False, download_files=str(tmp_path / user), verbose=False)
        try:
            start.wait(timeout=60)
            outputs = client.predict([handle_file(path)], STRENGTH_AUTO, 15, 40, False, api_name="/restore")
            pair = client.predict(f"1. {user}.png", api_name="/compare")  # reads this session's gr.State
            results[user] = (outputs, pair)
        except Exception as err:  # reported below: pytest does not see exceptions raised in threads
            failures.append(f"{user}: {err!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=session, args=(user,)) for user in clean]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and set(results) == set(clean)
    for user, (outputs, pair) in results.items():
        _, downloads, _, report = outputs
        assert f"**{user}.png**" in report
        restored8 = load_rgb8(downloads[0])
        assert_close8(restored8, expected_restore(checkpoint, clean[user]))
        assert np.array_equal(load_rgb8(pair[0]), clean[user])  # this user's own input came back
        assert np.array_equal(load_rgb8(pair[1]), restored8)


def test_errors_reach_the_client_with_their_message(cli_server, tmp_path):
    local_url, _ = cli_server
    path, words = bad_files(tmp_path)["text"]
    client = Client(local_url, analytics_enabled=False, download_files=str(tmp_path / "dl"), verbose=False)
    try:
        with pytest.raises(Exception, match=re.escape(words)):
            client.predict([handle_file(path)], STRENGTH_AUTO, 15, 40, False, api_name="/restore")
    finally:
        client.close()


def test_command_line_refuses_a_missing_model(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(SystemExit, match=re.escape(f"cannot open the model: model file not found: {missing}")):
        demo_main(["--model", str(missing)])
