"""A ``/metrics`` endpoint in a process of its own, serving a file that the harness rewrites.

A replay's power simulator computes its readings in the harness process, whose interpreter
also runs the pod watch, the simulated agents and the replay's meter. A scrape answered by
a thread of that process waits for the interpreter at each blocking call, up to its switch
interval every time: with one busy thread beside it a scrape of 320 nodes took 50 ms instead
of 4, with two 90 ms, and on a 2-core machine under a replay's load the 0.2 s scrapes timed
out. Each timeout makes Prometheus mark every series stale, and the controller is blind
until the next scrape — more often in a window with the simulated agents than without
(benchmarks/README.md, "Blind readings"). So a replay publishes each sample's exposition
to a file (:class:`Exposition`), and this module, run as ``python -m e2e.exposition FILE
PORT``, serves the newest one from an interpreter that does nothing else, as a DCGM exporter
serves the readings it collected last.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from e2e.cluster import Process, free_ports
from e2e.scheduler import wait_ready

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
READY_TIMEOUT_S = 20.0


class Exposition:
    """The file a served exposition is read from. :meth:`publish` replaces it whole, so a
    scrape reads one exposition or the next, never part of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next = path.with_name(path.name + ".next")

    def publish(self, body: bytes) -> None:
        self._next.write_bytes(body)
        os.replace(self._next, self.path)


def metrics_handler(body: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    """A request handler answering ``/metrics`` with ``body()`` (503 when it raises
    :class:`OSError`: nothing to serve yet) and ``/healthz``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                try:
                    payload, kind = body(), CONTENT_TYPE
                except OSError as exc:
                    self.send_error(503, f"no exposition yet: {exc}")
                    return
            elif self.path == "/healthz":
                payload, kind = b"ok\n", "text/plain"
            else:
                self.send_error(404)
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the scraper gave up (its timeout): the next scrape will do

        def log_message(self, format: str, *args: object) -> None:
            return  # one line per scrape would drown the logs

    return Handler


def serve(path: Path, port: int) -> None:
    """Serve ``path`` on ``127.0.0.1:port`` until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", port), metrics_handler(path.read_bytes))
    server.daemon_threads = True
    server.serve_forever()


@contextlib.contextmanager
def exposition_server(path: Path, log: Path) -> Iterator[str]:
    """``python -m e2e.exposition path PORT`` on a free loopback port until the block
    ends; yields the ``host:port`` to scrape. Name ``path`` inside a claimed run directory
    (:func:`e2e.reaper.claim`): the reaper then stops the server of a run that died."""
    (port,) = free_ports(1)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "e2e.exposition", str(path), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    proc = Process("exposition", popen, log)
    try:
        wait_ready(proc, port, READY_TIMEOUT_S, path="/healthz", every_s=0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print("usage: python -m e2e.exposition FILE PORT", file=sys.stderr)
        return 2
    serve(Path(args[0]), int(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
