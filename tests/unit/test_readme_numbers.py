"""The README's measured numbers come from one place, docs/measured.json (issue 16, point 8).

Each measured number in the README's measured sections carries a marker naming its entry;
``bench/readme_numbers.py`` copies a run's numbers into docs/measured.json and rewrites the
README (``make readme-numbers``)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import readme_numbers as rn  # noqa: E402

README = (ROOT / "README.md").read_text()
PUBLISHED: dict[str, Any] = json.loads((ROOT / "docs" / "measured.json").read_text())


def test_every_measured_number_in_the_readme_is_the_published_one() -> None:
    """Marked numbers equal their entries, every entry is quoted, every run is described,
    and no number in Models and evaluation, Measuring what outreach changed or Performance
    goes unmarked unless it is a setting, size or goal listed as given."""
    assert rn.problems(README, PUBLISHED) == []
    assert set(PUBLISHED["sections"]) >= {
        "Models and evaluation",
        "Measuring what outreach changed",
        "Performance",
    }
    assert len(rn.marked(README)) > 250


def test_the_published_numbers_are_those_of_the_files_here() -> None:
    """The shipped model's card always (and the last bench run's results while they hold
    the run the README quotes)."""
    assert rn.against_files(PUBLISHED) == []
    card_numbers = [k for k, e in PUBLISHED["numbers"].items()
                    if PUBLISHED["runs"][e["run"]]["source"] == "model card"]  # fmt: skip
    assert len(card_numbers) == 8


def test_every_number_says_which_run_measured_it() -> None:
    for key, entry in PUBLISHED["numbers"].items():
        run = PUBLISHED["runs"][entry["run"]]
        assert run["source"] in PUBLISHED["sources"], key
        assert run.get("at"), key
        if "path" in entry:
            assert entry["format"], key
    for name, source in PUBLISHED["sources"].items():
        assert source["command"], name


def _performance(readme: str) -> str:
    return rn.sections(readme, ["Performance"])["Performance"]


def test_a_number_changed_by_hand_or_quoted_without_a_marker_is_found() -> None:
    eo = PUBLISHED["numbers"]["bench.exactly_once"]["value"]
    assert f"**{eo}<!--m:bench.exactly_once-->**" in README
    edited = README.replace(f"**{eo}<!--m:bench.exactly_once-->**",
                            "**1,000,000<!--m:bench.exactly_once-->**")  # fmt: skip
    found = rn.problems(edited, PUBLISHED)
    assert len(found) == 1
    assert f"bench.exactly_once is 1,000,000 in the README, {eo} in docs/measured.json" in found[0]

    perf = _performance(README)
    added = perf.replace("**Serving**", "The worker also did 31,337 events/s. **Serving**", 1)
    found = rn.problems(README.replace(perf, added), PUBLISHED)
    assert len(found) == 1 and "'31,337'" in found[0] and "has no marker" in found[0]

    # a setting quoted in prose is not a measurement: listed as given, it passes
    assert "the goal is 2 KiB" in PUBLISHED["given"]
    given = {k: v for k, v in PUBLISHED["given"].items() if k != "the goal is 2 KiB"}
    found = rn.problems(README, {**PUBLISHED, "given": given})
    assert len(found) == 1 and "'2' in" in found[0]

    unknown = README.replace("<!--m:bench.exactly_once-->", "<!--m:bench.nothing-->", 1)
    found = rn.problems(unknown, PUBLISHED)
    assert len(found) == 1
    assert "marked 'bench.nothing', which docs/measured.json does not hold" in found[0]
    # (bench.exactly_once is still quoted: the Development section shows its marker)

    noise = PUBLISHED["numbers"]["bench.noise"]["value"]
    orphan = README.replace(f"{noise}<!--m:bench.noise-->", noise)
    found = rn.problems(orphan, PUBLISHED)
    assert "docs/measured.json: bench.noise is quoted nowhere in the README" in found


def _put(data: dict[str, Any], path: list[Any], value: float) -> None:
    for step in path[:-1]:
        data = data.setdefault(step, {})
    data[path[-1]] = value


def _bench_output(published: dict[str, Any], at: str) -> dict[str, Any]:
    """A results file holding every number the bench's entries read, each 1,234.5 (ratios'
    denominators 2)."""
    data: dict[str, Any] = {"at": at, "machine": {"cpus": 8, "python": "3.11.9"},
                            "broker": "a test"}  # fmt: skip
    ours = [e for e in published["numbers"].values()
            if "path" in e and published["runs"][e["run"]]["source"] == "bench"]  # fmt: skip
    for entry in ours:
        path = entry["path"]
        if "*" in path:
            path = [*path[: path.index("*")], "one", *path[path.index("*") + 1 :]]
        _put(data, path, 1234.5)
    for entry in ours:
        if "divide" in entry:
            _put(data, entry["divide"], 2.0)
    return data


def test_one_command_publishes_a_bench_run(tmp_path: Path) -> None:
    """``make readme-numbers``: every number the bench writes is copied with its new run,
    the README's marked numbers are rewritten, and numbers quoted from earlier runs stay."""
    published = copy.deepcopy(PUBLISHED)
    latest = tmp_path / "latest.json"
    latest.write_text(json.dumps(_bench_output(published, "2027-01-02T03:04:05+00:00")))
    readme, said = rn.publish(published, README, "bench", latest)

    run = "bench 2027-01-02T03:04:05+00:00"
    assert published["runs"][run]["where"] == "8 cores, Python 3.11.9, a test"
    eo = published["numbers"]["bench.exactly_once"]
    assert eo == {**PUBLISHED["numbers"]["bench.exactly_once"], "value": "1,234", "run": run}
    before = PUBLISHED["numbers"]["bench.exactly_once"]["value"]
    assert "**1,234<!--m:bench.exactly_once-->**" in readme
    assert "`1,234<!--m:bench.exactly_once-->`" in readme  # every place it is quoted
    assert f"{before}<!--m:bench.exactly_once-->" not in readme
    assert published["numbers"]["bench.vs_faust"]["value"] == "1234.5"
    assert published["numbers"]["bench.faust.vs_raw"]["value"] == "617.25"
    history = published["numbers"]["bench.noise"]
    assert history == PUBLISHED["numbers"]["bench.noise"], "an earlier run's stays"
    assert f"{history['value']}<!--m:bench.noise-->" in readme
    copied = sum(e["run"] == run for e in published["numbers"].values())
    changed = sum(" -> " in line for line in said)
    assert said[0] == f"bench: {copied} numbers from {latest} ({run}), {changed} changed"
    assert f"  bench.exactly_once: {before} -> 1,234" in said
    assert any(history["run"] in line and "bench.noise" in line for line in said)
    # only runs still quoted are described, and the README agrees with the published file
    quoted = {e["run"] for e in published["numbers"].values()}
    assert set(published["runs"]) == quoted
    assert rn.problems(readme, published) == []


def test_a_run_without_what_a_number_needs_is_refused(tmp_path: Path) -> None:
    published = copy.deepcopy(PUBLISHED)
    data = _bench_output(published, "2027-01-02T03:04:05+00:00")
    del data["peers"]["faust"]
    latest = tmp_path / "latest.json"
    latest.write_text(json.dumps(data))
    try:
        rn.publish(published, README, "bench", latest)
    except SystemExit as e:
        assert "bench.faust " in str(e) and "lacks what these numbers need" in str(e)
    else:
        raise AssertionError("a number without its value in the run was published")
    assert published == PUBLISHED, "nothing copied from a refused run"
