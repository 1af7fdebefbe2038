"""docs/asyncapi.yaml: what the code generates (drift), every topic in it with its settings
and contract, and valid against the official AsyncAPI 3.0 JSON Schema (vendored in
tests/data/asyncapi/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from forewarn.models.contracts import SCHEMA_FILES
from forewarn.streams.asyncapi import asyncapi_document, asyncapi_text
from forewarn.streams.settings import TopicNames

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "asyncapi.yaml"
SPEC = ROOT / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"


def committed() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(DOC.read_text())
    return doc


def test_the_committed_file_is_what_the_code_generates() -> None:
    assert DOC.read_text() == asyncapi_text(), "docs/asyncapi.yaml drifted: run `make schemas`"


def test_the_drift_check_sees_a_changed_topic_setting() -> None:
    changed = asyncapi_document(TopicNames(partitions=12, actions="actions-v2"))
    assert changed != committed()
    assert changed["channels"]["actionsV2"]["bindings"]["kafka"]["partitions"] == 12


def test_every_topic_is_a_channel_with_its_partitions_cleanup_and_contract() -> None:
    t = TopicNames()
    doc = committed()
    by_address = {c["address"]: c for c in doc["channels"].values()}
    assert set(by_address) == {*t.all(), t.feedback}
    for address, channel in by_address.items():
        kafka = channel["bindings"]["kafka"]
        assert kafka["partitions"] == (1 if address == t.models else t.partitions), address
        want = ["compact"] if address in t.compacted() else ["delete"]
        assert kafka["topicConfiguration"]["cleanup.policy"] == want, address
        assert any(op["channel"]["$ref"] == f"#/channels/{cid}"
                   for cid, c in doc["channels"].items() if c is channel
                   for op in doc["operations"].values()), f"no process uses {address}"  # fmt: skip
    refs = {
        m["payload"]["$ref"].removeprefix("../schemas/")
        for m in doc["components"]["messages"].values()
        if "$ref" in m["payload"]
    }
    every_contract = {*SCHEMA_FILES, "model-release.v1.json"}
    assert refs == every_contract
    for name in refs:
        assert (ROOT / "schemas" / name).is_file(), name


def test_the_actions_contract_is_where_the_document_says() -> None:
    doc = committed()
    msg = doc["components"]["messages"]["outreachAction"]
    schema = json.loads((ROOT / msg["payload"]["$ref"].replace("..", ".", 1)).read_text())
    assert schema["title"] == "OutreachAction"
    sends = [op for op in doc["operations"].values()
             if op["channel"]["$ref"] == "#/channels/outreachActions"]  # fmt: skip
    assert {(op["action"], op["tags"][0]["name"]) for op in sends} == {
        ("send", "score"),
        ("receive", "deliver"),
    }


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SPEC.read_text()))


def test_valid_against_the_official_asyncapi_3_schema(
    validator: jsonschema.Draft7Validator,
) -> None:
    errors = sorted(validator.iter_errors(committed()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


@pytest.mark.parametrize(
    "breakage",
    ["operation action", "channel address", "version"],
)
def test_the_schema_check_can_fail(validator: jsonschema.Draft7Validator, breakage: str) -> None:
    doc = committed()
    if breakage == "operation action":
        next(iter(doc["operations"].values()))["action"] = "publish"  # AsyncAPI 2's word
    elif breakage == "channel address":
        next(iter(doc["channels"].values()))["address"] = 42
    else:
        doc["asyncapi"] = "2.6.0"
    assert list(validator.iter_errors(doc))
