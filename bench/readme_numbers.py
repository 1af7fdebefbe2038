"""The README's measured numbers come from one place: docs/measured.json.

In the README's measured sections (``sections`` in docs/measured.json: Models and
evaluation, Measuring what outreach changed, Performance) every measured number is followed
by a marker naming its entry, invisible on GitHub::

    | **scoring worker, exactly-once** | **20,090<!--m:bench.exactly_once-->** | ...

docs/measured.json holds each entry's value as the README prints it, the run that measured
it (``runs``: what, when, where), and, for numbers a run writes to a file, where in that
file (``path``) and how it is printed (``format``). Settings, workload sizes and goals are
not measurements: they are listed under ``given``. ``tests/unit/test_readme_numbers.py``
fails when a marked number differs from its entry or a number in those sections has neither
a marker nor a place in ``given``.

After a run, one command copies its numbers into docs/measured.json and rewrites the
README's marked numbers (only entries with a ``path`` in that kind of run change; numbers of
earlier runs quoted for history keep their value and their run)::

    make bench && make readme-numbers                    # bench/results/latest.json, delivery.json
    .venv/bin/python bench/readme_numbers.py evaluate=report.json    # a `forewarn evaluate` report
    .venv/bin/python bench/readme_numbers.py --check     # the README against docs/measured.json

The command of each kind of run is in docs/measured.json (``sources``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PUBLISHED = ROOT / "docs" / "measured.json"

MINUS = "\u2212"
#: a number as the README prints it: 20,090 / 0.27 / 2,552,148, and negative ones after MINUS
NUMBER = rf"{MINUS}?(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?"
MARKER = re.compile(rf"(?<![\w.,])({NUMBER})<!--m:([\w.\-]+)-->")
ANY_MARKER = re.compile(r"<!--m:([\w.\-]+)-->")
#: a number not part of a word, an id or a longer number
BARE_NUMBER = re.compile(rf"(?<![\w.,])({NUMBER})(?![\d])")

#: never measurements: code, dates and times, references, versions, seeds
NOT_MEASURED = [
    re.compile(r"```.*?```", re.S),  # code blocks
    re.compile(r"`[^`]+`"),  # inline code
    re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?"),  # dates, times
    re.compile(r"\b\d{1,2}:\d{2}\b"),  # times of day
    re.compile(r"\b(?:[Ii]ssues?|decision|design) §?\d+|§\d+"),  # references
    re.compile(r"\b\d+\.\d+\.\d+\b|\b\d{4}\.\d+-\d+\b"),  # versions, rulebook versions
    re.compile(r"\b(?:Streams|faust-streaming|Python|seeds?) \d+(?:\.\d+)?"),
    re.compile(r"\b(?:UTF|SHA)-\d+"),
]


@dataclass(frozen=True)
class Marked:
    key: str
    value: str
    line: int


def sections(text: str, names: list[str]) -> dict[str, str]:
    """The README's ``## name`` sections, each up to the next ``## ``."""
    out = {}
    for name in names:
        head = f"\n## {name}\n"
        if head not in text:
            raise SystemExit(f"README.md has no section '## {name}'")
        out[name] = text.split(head, 1)[1].split("\n## ", 1)[0]
    return out


def marked(text: str) -> list[Marked]:
    return [
        Marked(m.group(2), m.group(1), text.count("\n", 0, m.start()) + 1)
        for m in MARKER.finditer(text)
    ]


def _blank(m: re.Match[str]) -> str:
    return re.sub(r"\S", " ", m.group())


def phrase_pattern(phrase: str) -> re.Pattern[str]:
    """A given phrase wherever the README's lines break it."""
    return re.compile(r"\s+".join(map(re.escape, phrase.split())))


def not_measured(section: str, given: dict[str, str]) -> str:
    """The section with its markers' numbers, code, dates, references and given phrases
    blanked out (same length, same line breaks)."""
    text = MARKER.sub(_blank, section)
    for pattern in NOT_MEASURED:
        text = pattern.sub(_blank, text)
    for phrase in sorted(given, key=len, reverse=True):
        text = phrase_pattern(phrase).sub(_blank, text)
    return text


def unmarked(section: str, given: dict[str, str]) -> list[str]:
    """Numbers in a measured section with no marker and no place in ``given``, each with
    the words around it."""
    text = not_measured(section, given)
    out = []
    for m in BARE_NUMBER.finditer(text):
        around = section[max(0, m.start() - 40) : m.end() + 20].replace("\n", " ")
        out.append(f"{m.group(1)!r} in '...{around}...'")
    return out


def problems(readme: str, published: dict[str, Any]) -> list[str]:
    """What is wrong between the README and docs/measured.json (nothing: an empty list)."""
    numbers: dict[str, dict[str, Any]] = published["numbers"]
    runs: dict[str, dict[str, Any]] = published["runs"]
    out: list[str] = []
    found = marked(readme)
    for m in found:
        if m.key not in numbers:
            out.append(f"README.md:{m.line}: {m.value} is marked {m.key!r}, which "
                       "docs/measured.json does not hold")  # fmt: skip
        elif numbers[m.key]["value"] != m.value:
            want = numbers[m.key]["value"]
            out.append(f"README.md:{m.line}: {m.key} is {m.value} in the README, {want} in "
                       "docs/measured.json (make readme-numbers rewrites it)")  # fmt: skip
    if len(found) != len(ANY_MARKER.findall(readme)):
        bad = ANY_MARKER.findall(MARKER.sub("", readme))
        out.append(f"README.md: markers without a number right before them: {bad}")
    used = {m.key for m in found}
    out += [f"docs/measured.json: {key} is quoted nowhere in the README"
            for key in numbers if key not in used]  # fmt: skip
    for key, entry in numbers.items():
        if entry.get("run") not in runs:
            out.append(f"docs/measured.json: {key} names no run of 'runs' ({entry.get('run')})")
    for name, section in sections(readme, published["sections"]).items():
        out += [f"README.md, {name}: {x} has no marker (a measurement: mark it and add it to "
                "docs/measured.json; a setting, size or goal: add its phrase to 'given')"
                for x in unmarked(section, published["given"])]  # fmt: skip
    return out


def against_files(published: dict[str, Any]) -> list[str]:
    """Numbers that differ from the file of the run they name, where that file is here and
    still holds that run (the model card always; bench/results/latest.json until the next
    ``make bench``)."""
    out = []
    for run_id, run in published["runs"].items():
        path = ROOT / run["file"] if "file" in run else None
        if path is None or not path.exists():
            continue
        data = json.loads(path.read_text())
        if run_of(run["source"], data, path)[0] != run_id:
            continue  # the file holds another run by now
        for key, entry in published["numbers"].items():
            if entry["run"] != run_id or "path" not in entry:
                continue
            if (now := value_of(entry, data)) != entry["value"]:
                out.append(f"docs/measured.json: {key} is {entry['value']}, {run['file']} "
                           f"makes it {now}")  # fmt: skip
    return out


# --- publishing a run's numbers -----------------------------------------------------------


def lookup(data: Any, path: list[Any]) -> Any:
    """``path`` in a run's output: keys, list indexes, ``{"field": value}`` (the list item
    with that field), ``"*"`` (every item: a list of values)."""
    for i, step in enumerate(path):
        if step == "*":
            items = data.values() if isinstance(data, dict) else data
            return [lookup(item, path[i + 1 :]) for item in items]
        if isinstance(step, dict):
            ((field, value),) = step.items()
            data = next(x for x in data if x.get(field) == value)
        else:
            data = data[step]
    return data


def value_of(entry: dict[str, Any], data: Any) -> str:
    """The entry's number in a run's output, as the README prints it (a negative one with a
    minus sign, U+2212: the hyphen joins the two ends of a range)."""
    text = _value_text(entry, data)
    return MINUS + text[1:] if text.startswith("-") else text


def _value_text(entry: dict[str, Any], data: Any) -> str:
    x = lookup(data, entry["path"])
    if isinstance(x, list):  # a path through "*": min, max or sum of the values
        values = [float(v) for v in x if v is not None]
        reduce = entry["reduce"]
        x = min(values) if reduce == "min" else max(values) if reduce == "max" else sum(values)
    x = float(x)
    if "add" in entry:
        x += float(lookup(data, entry["add"]))
    if "divide" in entry:
        x /= float(lookup(data, entry["divide"]))
    x = x * entry.get("scale", 1) + entry.get("offset", 0)
    if "round" in entry:
        x = round(x, entry["round"])
    form = entry["format"]
    if form == "floor":  # "more than N times": never rounded up
        return f"{math.floor(x):,}"
    if form == "p":  # a p-value: two significant digits, never an exponent
        text = f"{float(f'{x:.2g}'):.6f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    return format(x, form)


def run_of(source: str, data: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    """A run's id and description, from its output file."""
    at = data.get("at") or data.get("created_at")
    if at is None:  # an evaluate report says nothing of its time: the file's
        at = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
    run: dict[str, Any] = {"source": source, "at": at}
    if path.resolve().is_relative_to(ROOT):  # a file elsewhere means nothing to others
        run["file"] = str(path.resolve().relative_to(ROOT))
    machine = data.get("machine")
    if isinstance(machine, dict):
        run["where"] = (
            f"{machine.get('cpus')} cores, Python {machine.get('python')}, "
            f"{data.get('broker', 'broker not recorded')}"
        )
    return f"{source} {at}", run


def publish(
    published: dict[str, Any], readme: str, source: str, path: Path
) -> tuple[str, list[str]]:
    """Copy ``source``'s numbers from ``path`` into ``published`` (in place) and rewrite the
    README's marked numbers; returns the README and what changed, for people."""
    data = json.loads(path.read_text())
    run_id, run = run_of(source, data, path)
    runs: dict[str, dict[str, Any]] = published["runs"]
    ours = [k for k, e in published["numbers"].items()
            if "path" in e and runs[e["run"]]["source"] == source]  # fmt: skip
    if not ours:
        raise SystemExit(f"docs/measured.json has no number from a {source!r} run")
    said: list[str] = []
    missing: list[str] = []
    new: dict[str, str] = {}
    for key in ours:
        entry = published["numbers"][key]
        try:
            new[key] = value_of(entry, data)
        except (KeyError, IndexError, StopIteration, TypeError, ValueError) as error:
            missing.append(f"{key} ({entry['path']}: {error!r})")
    if missing:  # nothing is copied from a run that cannot give every number
        raise SystemExit(f"{path} lacks what these numbers need:\n  " + "\n  ".join(missing))
    for key, value in new.items():
        entry = published["numbers"][key]
        if value != entry["value"]:
            said.append(f"  {key}: {entry['value']} -> {value}")
        entry["value"], entry["run"] = value, run_id
    runs[run_id] = run
    for old in [r for r in runs if all(e["run"] != r for e in published["numbers"].values())]:
        del runs[old]
    kept: dict[str, list[str]] = {}
    for k, e in published["numbers"].items():
        if "path" not in e and runs[e["run"]]["source"] == source:
            kept.setdefault(e["run"], []).append(k)
    said.insert(0, f"{source}: {len(ours)} numbers from {path} ({run_id}), {len(said)} changed")
    if kept:
        said.append("  not in this run's output, kept with their run (check the words around "
                    "them in the README):")  # fmt: skip
        said += [f"    {run}: {', '.join(keys)}" for run, keys in kept.items()]
    values = {k: e["value"] for k, e in published["numbers"].items()}
    readme = MARKER.sub(lambda m: f"{values.get(m.group(2), m.group(1))}<!--m:{m.group(2)}-->",
                        readme)  # fmt: skip
    return readme, said


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "runs",
        nargs="*",
        metavar="SOURCE[=FILE]",
        help="a kind of run and its output (default: the file docs/measured.json names for "
        "it), e.g. bench, delivery, evaluate=report.json",
    )
    ap.add_argument("--check", action="store_true", help="only check; exit 1 on a problem")
    args = ap.parse_args(argv)
    published = json.loads(PUBLISHED.read_text())
    readme = README.read_text()
    if not args.check:
        for spec in args.runs:
            source, _, file = spec.partition("=")
            if source not in published["sources"]:
                raise SystemExit(f"no source {source!r}; docs/measured.json has "
                                 f"{', '.join(published['sources'])}")  # fmt: skip
            default = published["sources"][source].get("file")
            path = Path(file) if file else ROOT / default if default else None
            if path is None or not path.exists():
                command = published["sources"][source]["command"]
                raise SystemExit(f"{source}: no output file ({file or default}); its command: "
                                 f"{command}")  # fmt: skip
            readme, said = publish(published, readme, source, path)
            print("\n".join(said))
        PUBLISHED.write_text(json.dumps(published, indent=2, ensure_ascii=False) + "\n")
        if README.read_text() != readme:
            README.write_text(readme)
            print("README.md rewritten")
    found = problems(readme, published) + against_files(published)
    for p in found:
        print(p, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
