"""Fixtures of the data tests: a real HTTP server on 127.0.0.1, and small real image folders."""
from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from tests.conftest import DATASETS

CIFAR_TEST_ZIP = DATASETS / "cifar10-jpg" / "test.zip"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder read-only and records every requested path (`server.requests`)."""

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest's output clean
        pass


class HalfBodyHandler(CountingHandler):
    """Announces the full Content-Length, sends half of the body, then closes: a cut transfer."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def serve():
    """serve(folder, handler=CountingHandler) -> (base_url, server); stopped after the test."""
    servers = []

    def start(folder: Path, handler=CountingHandler):
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
        server.requests = []
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def unzip_cifar_test(dest: Path, per_class: int, classes=CIFAR_CLASSES) -> dict[str, list[Path]]:
    """The first `per_class` test JPEGs of each class as dest/<class>/NNNN.jpg (real images)."""
    written = {c: [] for c in classes}
    with zipfile.ZipFile(CIFAR_TEST_ZIP) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")  # test/<class>/NNNN.jpg
            if len(parts) == 3 and parts[1] in written and len(written[parts[1]]) < per_class:
                path = dest / parts[1] / parts[2]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(name))
                written[parts[1]].append(path)
    return written
