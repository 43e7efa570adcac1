"""Templates over an event: `string.Template` text with the fields of config/notifiers.py.

Substitution only, no expressions; a value is inserted as text, and inside a webhook's JSON body
template each string is rendered on its own and the structure encoded afterwards, so a quote or
a newline in an error message cannot break the JSON.
"""

from __future__ import annotations

import json
import string
from email.message import EmailMessage
from typing import Any

from jobd.config.notifiers import TEMPLATE_FIELDS, NotifierConfig

_RUN_FIELDS = (
    "status",
    "error",
    "exit_code",
    "attempt",
    "duration_ms",
    "triggered_by",
    "scheduled_for",
    "started_at",
    "finished_at",
    "node",
)


def fields(event: dict[str, Any], notifier: str) -> dict[str, str]:
    """Every template field as text: those the event lacks are empty."""
    run = event.get("run") or {}
    values: dict[str, Any] = {name: event.get(name) for name in TEMPLATE_FIELDS}
    values["notifier"] = notifier
    values["run_id"] = run.get("id")
    for name in _RUN_FIELDS:
        values[name] = run.get(name)
    return {name: "" if value is None else str(value) for name, value in values.items()}


def render_text(template: str, values: dict[str, str]) -> str:
    return string.Template(template).substitute(values)


def render_body(body: Any, values: dict[str, str]) -> Any:
    if isinstance(body, str):
        return render_text(body, values)
    if isinstance(body, list):
        return [render_body(item, values) for item in body]
    if isinstance(body, dict):
        return {name: render_body(item, values) for name, item in body.items()}
    return body


def webhook_body(config: NotifierConfig, event: dict[str, Any]) -> tuple[bytes, str]:
    """The request body and its default content type."""
    if config.body is None:
        return json.dumps(event).encode(), "application/json"
    rendered = render_body(config.body, fields(event, config.name))
    if isinstance(rendered, str):
        return rendered.encode(), "text/plain; charset=utf-8"
    return json.dumps(rendered).encode(), "application/json"


def email_message(config: NotifierConfig, event: dict[str, Any]) -> EmailMessage:
    values = fields(event, config.name)
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message["Subject"] = render_text(config.subject, values).replace("\n", " ")[:200]
    if config.body is not None:
        text = render_text(config.body, values)
    else:
        text = values["text"] + "\n\n" + json.dumps(event, indent=2) + "\n"
    message.set_content(text)
    return message
