"""``docs/asyncapi.yaml``: an AsyncAPI 3.0 document of every topic, generated from the topic
settings and the contracts (``make schemas``). A test fails when the file drifts from them,
and another validates it against the official AsyncAPI 3.0 JSON Schema.

Each channel is a topic: its default address, key, payload (by ``$ref`` to ``schemas/``),
Kafka bindings (partitions, replicas, cleanup policy). Each operation is one Forewarn process
sending to or receiving from a topic; what sits outside Forewarn (your systems and tools) is
named in the channel's description.

>>> doc = asyncapi_document()
>>> doc["asyncapi"], doc["channels"]["outreachActions"]["address"]
('3.0.0', 'outreach-actions')
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forewarn.streams.settings import TopicNames

KAFKA_BINDING_VERSION = "0.5.0"


@dataclass(frozen=True, slots=True)
class Topic:
    field: str  # the TopicNames field (FOREWARN_TOPICS__<FIELD>)
    message: str  # component message name
    payload: str | None  # schemas/ file, or None for bytes that are not JSON
    key: str
    description: str
    sends: tuple[str, ...]
    receives: tuple[str, ...]
    content_type: str = "application/json"


TOPICS = (
    Topic("journey_events", "journeyEvent", "journey-event.v1.json", "customer_id",
          "What customers did, from your systems (plain JSON, or CloudEvents binary or "
          "structured mode). Sent by upstream systems.", (), ("score",)),
    Topic("customer_profiles", "customerProfile", "customer-profile.v1.json", "customer_id",
          "Consent, do-not-contact, time zone; a tombstone deletes. Sent by your CRM/CDP; "
          "co-partitioned with journey-events.", (), ("score",)),
    Topic("actions", "outreachAction", "outreach-action.v1.json", "customer_id",
          "Explained outreach actions (JSON, or CloudEvents binary mode with "
          "FOREWARN_ACTIONS_FORMAT=cloudevents, ce_type dev.forewarn.action.v1). Received by "
          "your marketing and support tools, or by forewarn deliver.",
          ("score",), ("deliver",)),
    Topic("decisions", "decision", "decision.v1.json", "customer_id",
          "Every rule that fired, emitted or suppressed, with its reason and arm "
          "(CloudEvents type dev.forewarn.decision.v1 in cloudevents format).",
          ("score",), ("feedback",)),
    Topic("dlq", "journeyDeadLetter", "dead-letter.v1.json", "the original record's key",
          "Journey events and profiles the scoring workers could not use, with the original "
          "bytes and a typed reason. Read by operators.", ("score",), ()),
    Topic("state", "customerState", None, "customer_id",
          "Internal changelog of customer state (MessagePack), restored by the partition's "
          "next owner.", ("score",), ("score",), "application/x-msgpack"),
    Topic("outcomes", "outcome", "outcome.v1.json", "customer_id",
          "What became of each action: delivered, opened, clicked, converted, bounced, "
          "unsubscribed, complained, failed, expired. Sent by your tools and by forewarn "
          "deliver.", ("deliver",), ("feedback",)),
    Topic("milestones", "milestone", "milestone.v1.json", "customer_id",
          "Support contacts, cancellations and purchases, for the learner and the feedback "
          "plane.", ("score",), ("learn", "feedback")),
    Topic("feature_rows", "featureRow", "feature-row.v1.json", "customer_id",
          "A sample of moments' contact-risk features, for the learner.", ("score",),
          ("learn",)),
    Topic("models", "modelRelease", "model-release.v1.json", "the release's version",
          "Stream-learned contact-risk models, accepted and refused (the model history).",
          ("learn",), ("score", "learn")),
    Topic("outcomes_dlq", "outcomeDeadLetter", "dead-letter.v1.json",
          "the original record's key",
          "Outcomes the feedback plane could not count. Read by operators.", ("feedback",), ()),
    Topic("feedback", "feedbackLedgerInput", None, "customer_id",
          "Internal to the feedback plane: decisions, outcomes and milestones re-keyed by "
          "customer (a one-byte source tag and the original record).", ("feedback",),
          ("feedback",), "application/octet-stream"),
    Topic("delivery_held", "heldDelivery", "held-delivery.v1.json", "destination/action_id",
          "Internal to forewarn deliver: actions held (deferred, retrying, paused destination), "
          "in the partition of the action's own record; a tombstone settles one.",
          ("deliver",), ("deliver",)),
    Topic("delivery_dlq", "deliveryDeadLetter", "dead-letter.v1.json", "customer_id",
          "Actions forewarn deliver gave up on, with the destination's last answer. Read by "
          "operators.", ("deliver",), ()),
)  # fmt: skip

PROCESSES = {
    "score": "forewarn score (the scoring workers)",
    "learn": "forewarn learn (the contact-risk learner)",
    "feedback": "forewarn feedback (the feedback plane)",
    "deliver": "forewarn deliver (the webhook deliverer)",
}


def _camel(name: str) -> str:
    head, *rest = name.replace("-", "_").split("_")
    return head + "".join(w.capitalize() for w in rest)


def _partitions(t: TopicNames, field: str) -> int:
    # the model history is one partition (forewarn topics create makes it so)
    return 1 if field == "models" else t.partitions


def asyncapi_document(topics: TopicNames | None = None) -> dict[str, Any]:
    t = topics or TopicNames()
    compacted = t.compacted()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in TOPICS:
        address = getattr(t, topic.field)
        cid = _camel(address)
        payload: dict[str, Any] = (
            {"$ref": f"../schemas/{topic.payload}"}
            if topic.payload
            else {"type": "string", "format": "binary"}
        )
        messages.setdefault(topic.message, {
            "name": topic.message,
            "contentType": topic.content_type,
            "payload": payload,
            "bindings": {"kafka": {
                "key": {"type": "string", "description": topic.key},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }},
        })  # fmt: skip
        channels[cid] = {
            "address": address,
            "description": f"{topic.description} Setting: FOREWARN_TOPICS__{topic.field.upper()}.",
            "messages": {topic.message: {"$ref": f"#/components/messages/{topic.message}"}},
            "bindings": {"kafka": {
                "topic": address,
                "partitions": _partitions(t, topic.field),
                "replicas": t.replication_factor,
                "topicConfiguration": {
                    "cleanup.policy": ["compact"] if address in compacted else ["delete"]
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }},
        }  # fmt: skip
        for action, processes in (("send", topic.sends), ("receive", topic.receives)):
            for process in processes:
                operations[f"{process}{action.capitalize()}s{cid[0].upper()}{cid[1:]}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{cid}"},
                    "summary": f"{PROCESSES[process]} {action}s {address}",
                    "messages": [{"$ref": f"#/channels/{cid}/messages/{topic.message}"}],
                    "tags": [{"name": process}],
                }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Forewarn",
            "version": "1",
            "description": "Kafka topics of the Forewarn proactive customer-experience engine. "
            "Generated from forewarn/streams/settings.py (topic names, partitions, cleanup) "
            "and forewarn/models/contracts.py (payloads, in schemas/) by `make schemas`; "
            "edit those, not this file. Names are the defaults.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "FOREWARN_BOOTSTRAP_SERVERS",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def asyncapi_text() -> str:
    header = "# Generated by `make schemas` (forewarn/streams/asyncapi.py): do not edit.\n"
    return header + yaml.safe_dump(asyncapi_document(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "docs/asyncapi.yaml")
    path.write_text(asyncapi_text())
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
