"""shards.fetch against a real HTTP server on 127.0.0.1: full fetch, resumed download, wrong checksum."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import natural_image
from PIL import Image

from shards.fetch import ChecksumError, Remote, Source, download, fetch
from shards.verify import verify


class Blob(BaseHTTPRequestHandler):
    """Serves `server.blob` at any path with Range support; cuts the first full response once when asked."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        blob, requested = self.server.blob, self.headers.get("Range")
        self.server.ranges.append(requested)
        start = int(requested.split("=")[1].rstrip("-")) if requested else 0
        self.send_response(206 if requested else 200)
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
        self.send_header("Content-Length", str(len(blob) - start))
        self.end_headers()
        cut, self.server.cut_once = self.server.cut_once and not requested, False
        self.wfile.write(blob[: len(blob) // 2] if cut else blob[start:])  # a cut response is short of its length
        self.close_connection = cut

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        for i in range(4):
            png = io.BytesIO()
            Image.fromarray(natural_image(64, 70 + i, seed=i)).save(png, format="PNG")
            handle.writestr(f"set/img{i}.png", png.getvalue())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Blob)
    httpd.blob, httpd.ranges, httpd.cut_once = archive.getvalue(), [], False
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def remote(httpd, checksum: str | None = None) -> Remote:
    digest = checksum or "sha256:" + hashlib.sha256(httpd.blob).hexdigest()
    return Remote(f"http://127.0.0.1:{httpd.server_port}/set.zip", "set.zip", digest, len(httpd.blob))


def test_fetch_unpacks_and_packs(server, tmp_path):
    source = Source("tiny", (remote(server),))
    manifest = fetch("tiny", tmp_path / "out", cache=tmp_path / "cache", source=source, val_fraction=0.25)
    assert manifest["splits"]["train"]["samples"] == 3 and manifest["splits"]["val"]["samples"] == 1
    assert verify(tmp_path / "out") == [] and server.ranges == [None]


@pytest.mark.parametrize("attempts", [1, 3])
def test_download_resumes_after_cut(server, tmp_path, attempts):
    """The server drops the first response halfway; the client resumes in a later attempt or a later call."""
    server.cut_once = True
    if attempts == 1:
        with pytest.raises(ConnectionError, match="incomplete"):
            download(remote(server), tmp_path, attempts=1)
        assert (tmp_path / "set.zip.part").stat().st_size == len(server.blob) // 2
    path = download(remote(server), tmp_path, attempts=attempts)
    assert path.read_bytes() == server.blob and not (tmp_path / "set.zip.part").exists()
    assert server.ranges == [None, f"bytes={len(server.blob) // 2}-"], "the second request asks for the rest only"


def test_download_rejects_wrong_checksum(server, tmp_path):
    with pytest.raises(ChecksumError, match="sha256"):
        download(remote(server, "sha256:" + "0" * 64), tmp_path)
    assert list(tmp_path.iterdir()) == [], "a file failing its checksum is not kept"
