"""The verbs reached past the framework (:class:`extender.webhook.app.VerbsApp`): the same
answers as through FastAPI, everything else still FastAPI's."""

from __future__ import annotations

from fastapi.responses import Response
from fastapi.testclient import TestClient
from starlette.requests import Request

from extender.webhook.app import VerbsApp
from tests.scheduler_payloads import filter_body, pod, small_extender

JSON = {"Content-Type": "application/json"}


def test_only_a_post_to_a_verb_takes_the_direct_path() -> None:
    app = small_extender().app()
    assert isinstance(app, VerbsApp)
    assert sorted(app.verb_handlers) == ["/bind", "/filter", "/preempt", "/prioritize"]
    with TestClient(app) as client:
        r = client.post("/filter", content=filter_body(pod("eu-0"), ["gpu-1a"]), headers=JSON)
        assert r.status_code == 200 and r.json()["NodeNames"] == ["gpu-1a"]
        # Anything else is FastAPI's, as before: a wrong method, an unknown path.
        assert client.get("/filter").status_code == 405
        assert client.post("/filters", content=b"{}", headers=JSON).status_code == 404


def test_a_handler_that_raises_is_a_500_that_says_nothing_of_the_exception() -> None:
    app = small_extender().app()
    assert isinstance(app, VerbsApp)

    async def broken(_: Request) -> Response:
        raise RuntimeError("Authorization: Bearer s3cret")

    app.verb_handlers = {**app.verb_handlers, "/filter": broken}
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/filter", content=b"{}", headers=JSON)
    assert r.status_code == 500
    assert "s3cret" not in r.text and "internal error" in r.json()["Error"]
