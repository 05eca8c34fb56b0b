"""The exposition a replay publishes, served from a process of its own (e2e.exposition)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2e.exposition import CONTENT_TYPE, Exposition, exposition_server


def get(address: str, path: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as answer:
        return answer.read(), answer.headers["Content-Type"]


def test_the_server_answers_each_scrape_with_the_newest_publication(tmp_path: Path) -> None:
    exposition = Exposition(tmp_path / "powersim.prom")
    exposition.publish(b"a 1\n")
    with exposition_server(exposition.path, tmp_path / "exposition.log") as address:
        assert get(address, "/metrics") == (b"a 1\n", CONTENT_TYPE)
        exposition.publish(b"a 2\nb 3\n")
        assert get(address, "/metrics")[0] == b"a 2\nb 3\n"
        assert get(address, "/healthz")[0] == b"ok\n"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            get(address, "/other")
        # Nothing published (the file gone): an error, never an empty exposition, which
        # Prometheus would take for every series gone.
        exposition.path.unlink()
        with pytest.raises(urllib.error.HTTPError, match="503"):
            get(address, "/metrics")


def test_publishing_replaces_the_file_whole(tmp_path: Path) -> None:
    exposition = Exposition(tmp_path / "x.prom")
    exposition.publish(b"first\n")
    exposition.publish(b"second\n")
    assert exposition.path.read_bytes() == b"second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.prom"]  # no half-written leftovers
