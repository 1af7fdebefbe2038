"""CEL conditions (``when``) over the event, the customer and the scores, type-checked at load.

A rule's ``when`` is a Common Expression Language expression. It is compiled and
type-checked once, when the rulebook loads, against a declared schema: a misspelt field, a
comparison of a number with a string, or an expression that is not a boolean is refused with
its position. Rules never run Python from the file.

What an expression sees:

* ``event``: ``type``, ``customer_id``, ``channel``, ``session_id``, ``value`` (double, 0 when
  absent), ``properties`` (a map of the event's properties);
* ``customer``: ``tier``, ``timezone``, ``locale``, ``preferred_channel``,
  ``do_not_contact``, ``has_profile``, ``in_checkout``, ``events_seen``,
  ``hours_since_support_contact`` (-1 if never), ``counts_24h`` and ``counts_7d`` (maps from
  event type to how many in that window, up to 10; test ``'x' in customer.counts_7d`` before
  reading a type that may be absent);
* ``scores``: ``friction`` (0-100), ``friction_before``, ``churn_risk`` (0-1, -1 without a
  model), ``churn_risk_before``, ``contact_risk`` (0-1, -1 without a contact-risk model),
  ``contact_risk_before``.

>>> check("scores.friction >= 60.0 && event.properties['step'] == 'payment'")
>>> check("scores.frction > 1.0")
Traceback (most recent call last):
...
ValueError: undefined field 'frction' not found in struct 'forewarn.Scores' (at 1:7)
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from google.protobuf.struct_pb2 import Struct

from forewarn.rules.moment import Moment

_F = descriptor_pb2.FieldDescriptorProto
_SCHEMA: dict[str, list[tuple[str, int, str | None]]] = {
    "Event": [
        ("type", _F.TYPE_STRING, None),
        ("customer_id", _F.TYPE_STRING, None),
        ("channel", _F.TYPE_STRING, None),
        ("session_id", _F.TYPE_STRING, None),
        ("value", _F.TYPE_DOUBLE, None),
        ("properties", _F.TYPE_MESSAGE, ".google.protobuf.Struct"),
    ],
    "Customer": [
        ("tier", _F.TYPE_STRING, None),
        ("timezone", _F.TYPE_STRING, None),
        ("locale", _F.TYPE_STRING, None),
        ("preferred_channel", _F.TYPE_STRING, None),
        ("do_not_contact", _F.TYPE_BOOL, None),
        ("has_profile", _F.TYPE_BOOL, None),
        ("in_checkout", _F.TYPE_BOOL, None),
        ("events_seen", _F.TYPE_INT64, None),
        ("hours_since_support_contact", _F.TYPE_DOUBLE, None),
        ("counts_24h", _F.TYPE_MESSAGE, ".forewarn.Customer.Counts24hEntry"),
        ("counts_7d", _F.TYPE_MESSAGE, ".forewarn.Customer.Counts7dEntry"),
    ],
    "Scores": [
        ("friction", _F.TYPE_DOUBLE, None),
        ("friction_before", _F.TYPE_DOUBLE, None),
        ("churn_risk", _F.TYPE_DOUBLE, None),
        ("churn_risk_before", _F.TYPE_DOUBLE, None),
        ("contact_risk", _F.TYPE_DOUBLE, None),
        ("contact_risk_before", _F.TYPE_DOUBLE, None),
    ],
}
_MAPS = ("counts_24h", "counts_7d")
_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*?)\s*\|", re.S)


@cache
def _pool() -> Any:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="forewarn_conditions.proto", package="forewarn", syntax="proto3",
        dependency=["google/protobuf/struct.proto"],
    )  # fmt: skip
    for name, fields in _SCHEMA.items():
        msg = fdp.message_type.add(name=name)
        for number, (field, kind, type_name) in enumerate(fields, start=1):
            f = msg.field.add(name=field, number=number, type=kind, label=_F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = type_name
                if field in _MAPS:
                    f.label = _F.LABEL_REPEATED
                    entry = msg.nested_type.add(name=type_name.rsplit(".", 1)[1])
                    entry.options.map_entry = True
                    entry.field.add(
                        name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL
                    )
                    entry.field.add(
                        name="value", number=2, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL
                    )
    pool.Add(fdp)
    return pool


@cache
def _env() -> Any:
    return cel.NewEnv(
        descriptor_pool=_pool(),
        variables={
            "event": cel.Type("forewarn.Event"),
            "customer": cel.Type("forewarn.Customer"),
            "scores": cel.Type("forewarn.Scores"),
        },
    )


@cache
def message_class(name: str) -> Any:
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"forewarn.{name}"))


def _explain(error: Exception) -> str:
    text = str(error)
    m = _POSITION.search(text)
    if m is None:
        return text.replace("INVALID_ARGUMENT: ", "").strip()
    return f"{m.group(3).replace('ERROR: ', '').strip()} (at {m.group(1)}:{m.group(2)})"


@cache
def compile_condition(expression: str) -> Any:
    """The checked, compiled expression; ``ValueError`` with the position when it is wrong."""
    try:
        compiled = _env().compile(expression)
    except Exception as e:
        raise ValueError(_explain(e)) from None
    kind = compiled.return_type()
    if kind != cel.Type.BOOL:
        raise ValueError(f"a condition must be true or false, this one is {kind.name().lower()}")
    return compiled


def check(expression: str) -> None:
    """Refuse an expression that does not type-check (``ValueError``)."""
    compile_condition(expression)


def evaluate(expression: str, data: dict[str, Any]) -> bool:
    """Evaluate a checked expression; a runtime error (a missing key...) counts as false."""
    try:
        result = compile_condition(expression).eval(data=data)
        return result.value() is True
    except Exception:
        return False


def condition_data(m: Moment) -> dict[str, Any]:
    """What a rule's CEL ``when`` sees of this moment (built once per moment)."""
    e, state, profile = m.event, m.state, m.state.profile
    props = Struct()
    props.update(e.properties)
    last = state.last_support_contact
    counts: dict[str, dict[str, int]] = {"counts_24h": {}, "counts_7d": {}}
    for kind, times in state.occurrences.items():
        for key, window in (("counts_24h", 86400.0), ("counts_7d", 7 * 86400.0)):
            n = sum(1 for t in times if m.at - window < t <= m.at)
            if n:
                counts[key][kind] = n
    return {
        "event": message_class("Event")(
            type=e.type,
            customer_id=e.customer_id,
            channel=e.channel.value if e.channel else "",
            session_id=e.session_id or "",
            value=e.value or 0.0,
            properties=props,
        ),
        "customer": message_class("Customer")(
            tier=(profile.tier or "") if profile else "",
            timezone=profile.timezone if profile else "",
            locale=(profile.locale or "") if profile else "",
            preferred_channel=(
                profile.preferred_channel.value if profile and profile.preferred_channel else ""
            ),
            do_not_contact=bool(profile and profile.do_not_contact),
            has_profile=profile is not None,
            in_checkout=m.in_checkout,
            events_seen=state.events_seen,
            hours_since_support_contact=-1.0 if last is None else max(0.0, m.at - last) / 3600,
            **counts,
        ),
        "scores": message_class("Scores")(
            friction=m.friction,
            friction_before=m.prev_friction,
            churn_risk=-1.0 if m.churn is None else m.churn,
            churn_risk_before=-1.0 if m.prev_churn is None else m.prev_churn,
            contact_risk=-1.0 if m.contact is None else m.contact,
            contact_risk_before=-1.0 if m.prev_contact is None else m.prev_contact,
        ),
    }
