"""A real Prometheus server scrapes a scoring worker, the learner and the feedback plane fed by
the responding simulator, with the alert rules loaded; then every dashboard query and every
metric the alerts name must return series. A panel or an alert naming a metric Forewarn
does not export fails here."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from forewarn.streams.broker import free_port
from forewarn.streams.learning import LearnerWorker
from forewarn.streams.settings import Settings
from forewarn.streams.simulate import publish_live
from tests.conftest import RunningWorker, running_in_threads, wait_committed
from tests.deploy.test_alerts_and_dashboard import (
    ALERTS,
    alert_rules,
    dashboard_queries,
    grafana_to_promql,
    metric_names,
)
from tests.integration.test_delivery import (
    Receiver,
    book_for,
    dest,
    fast,
    receivers,  # noqa: F401 (a fixture)
    start_deliverer,  # noqa: F401 (a fixture)
)
from tests.integration.test_feedback import FeedbackProcess, feedback, wait_for

pytestmark = pytest.mark.integration
__all__ = ["feedback"]  # the fixture, used below


@pytest.fixture
def start_learner() -> Iterator[Callable[[Settings], RunningWorker]]:
    yield from running_in_threads(LearnerWorker)


class Prometheus:
    """Debian's Prometheus server on 127.0.0.1, scraping every second."""

    def __init__(self, workdir: Path, targets: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("the Prometheus server is not installed (.ci/run installs Debian's "
                        "prometheus package)")  # fmt: skip
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]

    def query(self, expr: str) -> list[Any]:
        result: list[Any] = self.api("query", query=expr)["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def test_prometheus_finds_every_series_the_dashboard_and_the_alerts_ask_for(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    start_learner: Callable[[Settings], RunningWorker],
    feedback: Callable[[Settings], FeedbackProcess],
    receivers: Callable[..., Receiver],  # noqa: F811 (the fixture imported above)
    start_deliverer: Callable[..., RunningWorker],  # noqa: F811
    tmp_path: Path,
) -> None:
    s = make_settings(partitions=2, reload_check_seconds=0.5, delivery=fast())
    worker = start_worker(s)
    worker_port = free_port()
    worker.worker.serve_http("127.0.0.1", worker_port)
    learner = start_learner(s)
    learner_port = free_port()
    learner.worker.serve_http("127.0.0.1", learner_port)
    plane = feedback(s)
    # the actions go on to a real HTTP receiver through a deliverer
    deliverer = start_deliverer(s, book_for(dest("crm-webhook", receivers().port)))
    deliverer_port = free_port()
    deliverer.worker.serve_http("127.0.0.1", deliverer_port)
    stats = publish_live(s, customers=300, rate=800, duration=10, seed=3, bad_rate=0.02,
                         respond=True)  # fmt: skip
    wait_committed(s, stats.events + sum(stats.bad.values()), timeout=120)
    counted = {"source": "decisions", "result": "counted"}
    wait_for(lambda: plane.metric("forewarn_feedback_records_total", **counted) > 0, 60,
             "the feedback plane counts", plane)  # fmt: skip

    prometheus = Prometheus(
        tmp_path,
        {
            "forewarn-scoring": f"127.0.0.1:{worker_port}",
            "forewarn-learner": f"127.0.0.1:{learner_port}",
            "forewarn-feedback": f"127.0.0.1:{s.feedback_http_port}",
            "forewarn-deliver": f"127.0.0.1:{deliverer_port}",
        },
    )
    try:
        wait_for(
            lambda: _answers(prometheus) and len(prometheus.query("up == 1")) == 4
            and all(float(r["value"][1]) >= 2
                    for r in prometheus.query("count_over_time(up[1m])")),
            60,
            "Prometheus scraped every process twice",
        )  # fmt: skip
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        assert len(rules) == len(alert_rules())
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]

        empty = [q for q in dashboard_queries() if not prometheus.query(grafana_to_promql(q))]
        assert not empty, f"dashboard queries without series: {empty}"
        named = {"up"}
        for rule in alert_rules():
            named |= metric_names(rule["expr"])
        missing = sorted(n for n in named if not prometheus.query(f'{{__name__="{n}"}}'))
        assert not missing, f"alerts name metrics Prometheus never saw: {missing}"
    finally:
        prometheus.stop()


def _answers(prometheus: Prometheus) -> bool:
    try:
        prometheus.api("status/buildinfo")
    except OSError:
        return False
    return True
