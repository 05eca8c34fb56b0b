"""A throwaway real Prometheus for e2e tests.

    jobs = [ScrapeJob("powersim", [sim.address]), ScrapeJob("powercap", ["127.0.0.1:8080"])]
    with prometheus(jobs, log_dir=Path("out/e2e-logs")) as prom:
        prom.wait_for_targets()
        prom.query("up")            # the data.result of an instant query

The binary is the Debian package's (``$POWERCAP_PROMETHEUS``, then ``prometheus`` on PATH,
then ``/usr/bin/prometheus``); when there is none, :class:`e2e.cluster.ToolchainMissing`
names ``make prometheus`` — tests fail, never skip. Prometheus listens on a free loopback
port with its storage in a temporary directory, both gone at exit; when the body raised,
its log and config are copied to ``log_dir/<name>/`` first.

History for tests that need it is backfilled: write OpenMetrics text, turn it into
blocks with ``promtool tsdb create-blocks-from openmetrics`` (:func:`promtool_binary`),
and pass the directory as ``storage=`` with a ``retention=`` reaching back to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from e2e import toolchain
from e2e.cluster import Process, ToolchainMissing, free_ports
from e2e.reaper import claim

READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: ``targets`` are ``host:port``; ``interval_s`` also bounds the scrape
    timeout (Prometheus requires timeout <= interval)."""

    name: str
    targets: Sequence[str]
    interval_s: float = 1.0
    metrics_path: str = "/metrics"
    honor_labels: bool = False
    # An HTTPS target behind a bearer token (kube-scheduler's secure port): the token sent
    # as Authorization, the target's self-signed certificate not verified.
    scheme: str = "http"
    bearer_token: str | None = None
    insecure_skip_verify: bool = False


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _scrape_config(j: ScrapeJob) -> dict[str, Any]:
    config: dict[str, Any] = {
        "job_name": j.name,
        "scrape_interval": _duration(j.interval_s),
        "scrape_timeout": _duration(j.interval_s),
        "metrics_path": j.metrics_path,
        "honor_labels": j.honor_labels,
        "static_configs": [{"targets": list(j.targets)}],
    }
    if j.scheme != "http":
        config["scheme"] = j.scheme
    if j.bearer_token is not None:
        config["authorization"] = {"type": "Bearer", "credentials": j.bearer_token}
    if j.insecure_skip_verify:
        config["tls_config"] = {"insecure_skip_verify": True}
    return config


def config_document(
    jobs: Sequence[ScrapeJob], evaluation_s: float = 1.0, rule_files: Sequence[Path] = ()
) -> dict[str, Any]:
    """The ``prometheus.yml`` for ``jobs``, loading the rule files ``rule_files``."""
    if len({j.name for j in jobs}) != len(jobs):
        raise ValueError("scrape job names must differ")
    return {
        "global": {
            "scrape_interval": _duration(min((j.interval_s for j in jobs), default=1.0)),
            "evaluation_interval": _duration(evaluation_s),
        },
        **({"rule_files": [str(p) for p in rule_files]} if rule_files else {}),
        "scrape_configs": [_scrape_config(j) for j in jobs],
    }


def write_config(
    path: Path,
    jobs: Sequence[ScrapeJob],
    evaluation_s: float = 1.0,
    *,
    rule_files: Sequence[Path] = (),
) -> Path:
    document = config_document(jobs, evaluation_s, rule_files)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def prometheus_binary() -> Path:
    """The Prometheus binary, or :class:`ToolchainMissing` naming how to install it."""
    given = os.environ.get("POWERCAP_PROMETHEUS")
    if given:
        if os.access(given, os.X_OK):
            return Path(given)
        raise ToolchainMissing(f"$POWERCAP_PROMETHEUS={given} is not an executable")
    found = toolchain.find_prometheus()
    if found is None:
        raise ToolchainMissing(
            "prometheus is not installed; install it with `make prometheus` "
            f"(or `{toolchain.PROMETHEUS_INSTALL}`)"
        )
    return found


def promtool_binary() -> Path:
    """``promtool`` (beside the Prometheus binary, on PATH, or the Debian package's), or
    :class:`ToolchainMissing` naming how to install it."""
    candidates = [prometheus_binary().with_name("promtool")]
    found = shutil.which("promtool")
    if found:
        candidates.append(Path(found))
    candidates.append(Path("/usr/bin/promtool"))
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise ToolchainMissing(
        "promtool is not installed; it comes with Prometheus: install it with "
        f"`make prometheus` (or `{toolchain.PROMETHEUS_INSTALL}`)"
    )


@dataclass
class Prometheus:
    """A running Prometheus: ``url`` is ``http://127.0.0.1:<port>``."""

    name: str
    url: str
    run_dir: Path
    config_path: Path
    jobs: Sequence[ScrapeJob]
    process: Process

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=5) as response:
            return orjson.loads(response.read())

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """The ``data.result`` of an instant query (at ``at``, default now)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        answer = self._get("/api/v1/query", params)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def query_answer(self, promql: str) -> dict[str, Any]:
        """The whole answer of an instant query, errors included: ``status`` is
        ``success`` or ``error`` (with ``errorType`` and ``error``), as the HTTP API says
        (a 400 for an expression that does not parse is returned, not raised)."""
        try:
            answer: dict[str, Any] = self._get("/api/v1/query", {"query": promql})
        except urllib.error.HTTPError as exc:
            answer = orjson.loads(exc.read())
        return answer

    def rule_groups(self) -> list[dict[str, Any]]:
        """The loaded rule groups, as ``/api/v1/rules`` reports them (each rule with its
        ``health``, ``lastError`` and, for an alert, ``state``)."""
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["data"]["groups"]
        return groups

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        """The ``ALERTS`` series of ``alertname`` that are firing now."""
        return self.query(f'ALERTS{{alertname="{alertname}",alertstate="firing"}}')

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, as ``/api/v1/targets`` reports them."""
        active: list[dict[str, Any]] = self._get("/api/v1/targets")["data"]["activeTargets"]
        return active

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.process.alive():
                raise RuntimeError(
                    f"prometheus exited with {self.process.popen.returncode}:\n"
                    f"{self.process.tail()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"prometheus not ready after {timeout_s:.0f}s:\n{self.process.tail()}"
                )
            time.sleep(0.1)

    def wait_for_targets(
        self, timeout_s: float = 20.0, up: bool = True, jobs: Sequence[str] | None = None
    ) -> None:
        """Wait until every target of ``jobs`` (default: all) has been scraped and is
        ``up`` (or, with ``up=False``, until every one is down)."""
        names = {j.name for j in self.jobs} if jobs is None else set(jobs)
        wanted = {(j.name, t) for j in self.jobs if j.name in names for t in j.targets}
        state = "up" if up else "down"
        deadline = time.monotonic() + timeout_s
        seen: dict[tuple[str, str], str] = {}
        while True:
            seen = {
                (t["labels"].get("job", ""), t["labels"].get("instance", "")): t["health"]
                for t in self.targets()
            }
            if all(seen.get(w) == state for w in wanted):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"targets not {state} after {timeout_s:.0f}s: "
                    + ", ".join(
                        f"{job}/{inst}: {seen.get((job, inst), 'absent')}"
                        for job, inst in sorted(wanted)
                    )
                )
            time.sleep(0.2)


@contextlib.contextmanager
def prometheus(
    jobs: Sequence[ScrapeJob],
    log_dir: Path | None = None,
    evaluation_s: float = 1.0,
    *,
    storage: Path | None = None,
    retention: str = "1h",
    rule_groups: Sequence[dict[str, Any]] = (),
    port: int | None = None,
    lookback_s: float | None = None,
) -> Iterator[Prometheus]:
    """Run Prometheus scraping ``jobs`` until the block ends (see the module docstring).

    ``storage`` is an existing TSDB directory to serve (blocks backfilled with
    ``promtool tsdb create-blocks-from``); it belongs to the caller and is left in place.
    ``retention`` must reach back to its oldest sample, or Prometheus deletes the blocks
    at start. ``rule_groups`` (the ``groups`` of a rules file, e.g. a PrometheusRule's
    ``spec.groups``) are written to a rules file and evaluated every ``evaluation_s``;
    Prometheus refuses to start on one that does not parse. ``port`` (default: a free
    one) lets a second Prometheus take the address of one that was stopped.
    ``lookback_s`` (default: Prometheus's 5 minutes) is how far back an instant query
    looks for a series' last sample (``--query.lookback-delta``): an instant query reads
    every sample of that window, so a compressed clock that scrapes many times a second
    needs it compressed too."""
    binary = prometheus_binary()
    name = f"prometheus-{uuid.uuid4().hex[:8]}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"powercap-{name}-"))
    claim(run_dir)
    rule_files: list[Path] = []
    if rule_groups:
        rules = run_dir / "rules.yml"
        rules.write_text(yaml.safe_dump({"groups": list(rule_groups)}, sort_keys=False))
        rule_files.append(rules)
    config = write_config(run_dir / "prometheus.yml", jobs, evaluation_s, rule_files=rule_files)
    if port is None:
        (port,) = free_ports(1)
    log = run_dir / "prometheus.log"
    argv = [
        str(binary),
        f"--config.file={config}",
        f"--storage.tsdb.path={storage if storage is not None else run_dir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.retention.time={retention}",
        "--web.enable-lifecycle",
        "--log.level=info",
    ]
    if lookback_s is not None:
        argv.append(f"--query.lookback-delta={_duration(lookback_s)}")
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    prom = Prometheus(
        name, f"http://127.0.0.1:{port}", run_dir, config, list(jobs), Process(name, popen, log)
    )
    failed = False
    try:
        prom.wait_ready()
        yield prom
    except BaseException:
        failed = True
        raise
    finally:
        prom.process.stop()
        if failed and log_dir is not None:
            keep = log_dir / name
            keep.mkdir(parents=True, exist_ok=True)
            for path in (log, config, *rule_files):
                with contextlib.suppress(OSError):
                    shutil.copy2(path, keep / path.name)
        shutil.rmtree(run_dir, ignore_errors=True)
