"""Writes jobd/web/openapi.json, the OpenAPI 3.1 document of jobd's HTTP API.

    python scripts/openapi_gen.py          # rewrite the file
    python scripts/openapi_gen.py --check  # exit 1 when the file is not what this script writes

The document is the contract: tests check that the app serves exactly its routes (and their scopes,
`x-jobd-scope`) and that real responses, including fuzzed ones, match its schemas. So a change to
the API is a change here first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jobd import __version__
from jobd.config import OVERLAP_POLICIES
from jobd.config.groups import MAX_PRIORITY, MIN_PRIORITY
from jobd.config.notifiers import NOTIFY_EVENTS
from jobd.models import (
    RunStatus,
    TriggerSource,
    json_schema_components,
    run_json_schema,
    status_update_json_schema,
)
from jobd.stats import MAX_DAYS
from jobd.store.notifications import STATUSES as NOTIFICATION_STATUSES
from jobd.web.audit import ACTIONS
from jobd.web.routes.backfill import DEFAULT_MAX_RUNS, MAX_RANGE, MAX_RUNS
from jobd.web.timing import MAX_DELAY_S

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "jobd" / "web" / "openapi.json"
V1 = "/api/v1"
Schema = dict[str, Any]

STATUSES = [status.value for status in RunStatus]
SOURCES = [source.value for source in TriggerSource]
# Why a stream may end with an `error` message (jobd.web.sse).
STREAM_ERRORS = {
    "lagging": "the client fell behind the events or stopped reading, and was cut off",
    "internal": "the stream failed on the server; the log says why",
    "node_unreachable": "a run's stream relayed from the node executing the run (in a cluster) lost that node",
}


# -- building blocks -------------------------------------------------------------------------------


def run_detail_schema(ref: Any) -> Schema:
    """GET /runs/{run_id}'s run: the run with its log tail and its chain's `children`."""
    schema = run_json_schema(with_log=True, ref=ref)
    schema["properties"]["children"] = {
        "type": "array",
        "items": ref("ChainChild"),
        "description": "what the run's end made through its chain, in the order of the job's keys",
    }
    schema["required"].append("children")
    return schema


def run_timing(where: str) -> dict[str, Schema]:
    """A trigger's `run_at` / `delay_s` (jobd.web.timing), at the top level or in a batch item."""
    return {
        "run_at": {
            "type": ["string", "null"],
            "format": "date-time",
            "description": f"{where}: PENDING until then (ISO-8601 with Z or an offset; a naive time is "
            f"refused, a past one means now); not with delay_s",
        },
        "delay_s": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": MAX_DELAY_S,
            "description": f"{where}: PENDING for this many seconds from the request's arrival; not with run_at",
        },
    }


def priority_field(where: str) -> dict[str, Schema]:
    """A trigger's `priority` (jobd.web.priority), at the top level or in a batch item."""
    return {
        "priority": {
            "type": ["integer", "null"],
            "minimum": MIN_PRIORITY,
            "maximum": MAX_PRIORITY,
            "description": f"{where}: the priority instead of the job's (null: the job's); higher starts first",
        }
    }


JOB_QUEUEING: dict[str, Schema] = {
    "priority": {"type": "integer", "description": "its runs' priority unless a trigger gives one"},
    "groups": {"type": "array", "items": {"type": "string"}, "description": "the shared concurrency groups it is in"},
}


def group_schema() -> Schema:
    """One shared concurrency group in GET /queue (jobd.lifecycle.groups.usage)."""
    return obj(
        {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "limit": {"type": "integer", "minimum": 1, "description": "max_concurrency"},
            "running": {"type": "integer", "minimum": 0, "description": "runs of its jobs PROCESSING (in the cluster)"},
            "waiting": {"type": "integer", "minimum": 0, "description": "runs of its jobs PENDING"},
            "jobs": {"type": "array", "items": {"type": "string"}},
        }
    )


# Both given (and not null) is refused.
GIVEN = {"not": {"type": "null"}}
NOT_BOTH_TIMES = {"required": ["run_at", "delay_s"], "properties": {"run_at": GIVEN, "delay_s": GIVEN}}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    if "type" in schema and "$ref" not in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*types, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def obj(
    properties: dict[str, Schema],
    *,
    optional: tuple[str, ...] = (),
    extra: bool = False,
    description: str | None = None,
) -> Schema:
    """An object whose properties are all required unless named in `optional`."""
    schema: Schema = {"type": "object"}
    if description:
        schema["description"] = description
    schema["properties"] = properties
    required = [name for name in properties if name not in optional]
    if required:
        schema["required"] = required
    schema["additionalProperties"] = extra
    return schema


INT = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time", "description": "ISO-8601 UTC with milliseconds"}
MAYBE_TIME = nullable(TIME)


JOB_CONFINEMENT: dict[str, Schema] = {
    "run_as": nullable(
        obj(
            {
                "user": nullable({"type": "string", "description": "a name or a numeric id"}),
                "group": nullable({"type": "string", "description": "a name or a numeric id"}),
                "umask": nullable({"type": "string", "description": 'octal, e.g. "027"'}),
            }
        )
    ),
    "limits": nullable(
        obj(
            {
                "memory_max": nullable({"type": "string", "description": 'as configured, e.g. "512M"'}),
                "cpu_quota": nullable({"type": "string", "description": 'percent of one CPU, e.g. "50%"'}),
                "tasks_max": nullable({"type": "integer", "minimum": 1}),
                "io_weight": nullable({"type": "integer", "minimum": 1, "maximum": 10000}),
            }
        )
    ),
    "limits_enforced": nullable(
        {
            "type": "boolean",
            "description": "whether this node can enforce the job's limits with cgroup v2 (null: no limits); "
            "false: its runs run without them, with a line in their log",
        }
    ),
}


def json_content(schema: Schema, description: str, media: str = "application/json") -> Schema:
    return {"description": description, "content": {media: {"schema": schema}}}


def problem(description: str) -> Schema:
    return json_content(ref("Problem"), description, "application/problem+json")


def text_content(media: str, description: str, schema: Schema | None = None) -> Schema:
    return {"description": description, "content": {media: {"schema": schema or STR}}}


def query(name: str, schema: Schema, description: str, *, required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def path_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def header(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


def any_case(word: str) -> str:
    """A pattern for `word` in any letter case (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def names_list(values: list[str]) -> Schema:
    """A comma-separated list of these names, as the server reads one: any case, spaces around
    a name and empty items ignored (so an empty value is no filter)."""
    name = "(?:" + "|".join(any_case(value) for value in values) + ")"
    item = rf"\s*{name}?\s*"
    return {"type": "string", "pattern": f"^{item}(?:,{item})*$"}


def cursor_schema() -> Schema:
    """A page cursor as jobd writes one: a run id (1 to 18 digits) in unpadded base64url."""
    lead = "(?:[MN][DTjz]|O[DT])"  # a digit's high bits, then the next one's
    group = f"{lead}[AEIMQUYcgk][w-z0-5]"  # three digits
    tails = f"(?:[MN][AQgw]|O[AQ]|{lead}[AEIMQUYcgk])"  # one or two digits
    return {"type": "string", "pattern": f"^(?:(?:{group}){{1,6}}|(?:{group}){{0,5}}{tails})?$"}


JOB_NAME = path_param("name", STR, "the job's name, as in the config")
RUN_ID = path_param("run_id", {"type": "integer", "minimum": 1}, "the run's id")
TICKET = query("ticket", STR, "a ticket from POST /api/v1/tickets, for clients that cannot send headers")
LAST_EVENT_ID = header("Last-Event-ID", STR, "resume after this event id (sent by EventSource on reconnect)")
LAST_EVENT_ID_QUERY = query("last_event_id", STR, "the same as Last-Event-ID, for clients that cannot set it")
LOG = query("log", STR, "1 (or true, yes, on): also the run's log lines")
STREAM_PARAMS = (LOG, TICKET, LAST_EVENT_ID_QUERY, LAST_EVENT_ID)


def operation(
    summary: str,
    *,
    tag: str,
    scope: str | None,
    responses: dict[str, Schema],
    description: str | None = None,
    parameters: tuple[Schema, ...] = (),
    body: Schema | None = None,
    operation_id: str,
    security: list[Schema] | None = None,
) -> Schema:
    """`scope`: what the token needs (x-jobd-scope); None is an operation open to anyone."""
    op: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    all_responses = dict(responses)
    if scope is None:
        op["security"] = security if security is not None else []
    else:
        op["x-jobd-scope"] = scope
        all_responses.setdefault("401", problem("no token, or an invalid one (when tokens are configured)"))
        if scope != "read":  # every token has at least the read scope
            all_responses.setdefault("403", problem(f"the token's scope is below {scope!r}"))
    op["responses"] = dict(sorted(all_responses.items()))
    return op


# -- schemas ---------------------------------------------------------------------------------------


def schemas() -> dict[str, Schema]:
    # The run's fields, and what they share, come from the one wire table in jobd.models.
    shared = json_schema_components()
    by_status = obj({status: COUNT for status in STATUSES})
    by_trigger = obj({source: COUNT for source in SOURCES})
    rate = nullable({"type": "number", "minimum": 0, "maximum": 1})
    average = nullable({"type": "number", "minimum": 0})
    return {
        "Problem": obj(
            {"type": STR, "title": STR, "status": {"type": "integer", "minimum": 400, "maximum": 599}, "detail": STR},
            extra=True,
            description=(
                "RFC 9457 problem details; some problems add fields (job, run_id, request_id, max_batch_runs, ...)"
            ),
        ),
        "RunStatus": shared["RunStatus"],
        "TriggerSource": shared["TriggerSource"],
        "Counts": shared["Counts"],
        "Run": run_json_schema(ref=ref),
        "RunWithLog": run_json_schema(with_log=True, ref=ref),
        "RunDetail": run_detail_schema(ref),
        "ChainChild": obj(
            {
                "id": nullable({"type": "integer", "minimum": 1}),
                "job": STR,
                "status": {
                    "type": ["string", "null"],
                    "enum": [*STATUSES, "skipped", None],
                    "description": "the child run's status now; skipped: the job got no run (reason says why); "
                    "null: the child run has been deleted by retention",
                },
                "reason": nullable(STR),
            },
            description="a job named by the run's on_success, on_failure or on_finish (see docs/chains.md)",
        ),
        "RunAnswer": obj({"run": ref("Run")}),
        "Job": obj(
            {
                "name": STR,
                "description": STR,
                "kind": {"type": "string", "enum": ["command", "python"]},
                "command": nullable({"type": "array", "items": STR}),
                "shell": nullable(STR),
                "handler": nullable(STR),
                "schedule": nullable(STR),
                "schedule_description": nullable(
                    {
                        "type": "string",
                        "description": (
                            "the schedule in words, e.g. 'at 02:30 every day'; an H field is described by its value for this "
                            "job ('hourly at minute 6'); a form with no words is the expression, H values filled in"
                        ),
                    }
                ),
                "timezone": STR,
                "overlap": {"type": "string", "enum": list(OVERLAP_POLICIES)},
                "max_concurrency": {"type": "integer", "minimum": 1},
                "timeout_s": nullable({"type": "number"}),
                "retries": COUNT,
                "paused": BOOL,
                "pause_reason": nullable(
                    {
                        "type": "string",
                        "description": "why the job paused itself: its failures in a row reached "
                        "pause_after_failures (shown while it is paused with such a streak; null otherwise)",
                    }
                ),
                "next_run_at": MAYBE_TIME,
                "next_run_at_local": nullable({"type": "string", "description": "in the job's time zone, with offset"}),
                "last_fire_at": MAYBE_TIME,
                "skipped_fires": COUNT,
                "last_skipped_at": MAYBE_TIME,
                "last_skip_reason": nullable(
                    {
                        "type": "string",
                        "enum": ["overlap", "excluded", None],
                        "description": "why the last skipped fire was skipped: the overlap policy, or the "
                        "job's calendars or active period",
                    }
                ),
                "is_running": BOOL,
                "active_runs": {"type": "array", "items": INT},
                "last_run": nullable(ref("Run")),
                "consecutive_failures": COUNT,
                "alert_after_failures": {"type": "integer", "minimum": 1},
                "failing": BOOL,
                "params_schema": nullable(
                    {
                        "type": "object",
                        "description": (
                            "the JSON Schema (draft 2020-12) of the job's params, from its [jobs.NAME.params] "
                            "definitions; null when it declares none (any object is taken). A secret parameter "
                            "is writeOnly, without its default"
                        ),
                    }
                ),
                "snoozed_until": {**MAYBE_TIME, "description": "its notifications are silenced until then"},
                "secret_env": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "enum": ["***"]},
                    "description": (
                        "the variables of its secret_env (and [defaults] secret_env) by name; the values are "
                        "read at each run's start and never shown"
                    ),
                },
                **JOB_QUEUEING,
                **JOB_CONFINEMENT,
            }
        ),
        "JobAnswer": obj({"job": ref("Job")}),
        "TriggerRequest": obj(
            {
                "params": nullable(
                    {"type": "object", "description": "passed to the handler; JOBD_PARAMS for commands"}
                ),
                "runs": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        {
                            "params": nullable({"type": "object"}),
                            **run_timing("this run, instead of the top level's"),
                            **priority_field("this run, instead of the top level's"),
                        },
                        optional=("params", "run_at", "delay_s", "priority"),
                    )
                    | {"not": NOT_BOTH_TIMES},
                    "description": "a batch (up to server.max_batch_runs), instead of params",
                },
                "overlap": {
                    "type": ["string", "null"],
                    "enum": [*OVERLAP_POLICIES, None],
                    "description": "this trigger's overlap policy instead of the job's (null: the job's)",
                },
                "triggered_by": {"type": "string", "enum": ["api", "manual"], "default": "api"},
                **run_timing("every run of the request"),
                **priority_field("every run of the request"),
            },
            optional=("params", "runs", "overlap", "triggered_by", "run_at", "delay_s", "priority"),
        )
        | {
            "not": {"required": ["params", "runs"]},
            "allOf": [{"not": NOT_BOTH_TIMES}],
            "description": "params for one run, or runs for a batch",
        },
        "RunPage": obj(
            {
                "runs": {"type": "array", "items": ref("Run")},
                "pagination": obj(
                    {
                        "total": {**COUNT, "description": "runs matching the filters (the cursor aside)"},
                        "limit": {"type": "integer", "minimum": 1},
                        "offset": COUNT,
                        "has_more": BOOL,
                        "next_cursor": nullable(
                            {"type": "string", "description": "pass as ?cursor= for the next page; null on the last"}
                        ),
                    }
                ),
                "statistics": ref("RunStatistics"),
            }
        ),
        "RunStatistics": obj(
            {
                "runs": COUNT,
                "successful_runs": {**COUNT, "description": "COMPLETED or PARTIAL"},
                "failed_runs": COUNT,
                "total_items": COUNT,
                "successful_items": COUNT,
                "failed_items": COUNT,
                "skipped_items": COUNT,
                "average_duration_ms": average,
            },
            description="over every run matching the filters, not only this page",
        ),
        "Queue": obj(
            {
                "counts": by_status,
                "pending": COUNT,
                "processing": COUNT,
                "workers": obj({"busy": COUNT, "total": COUNT}),
                "oldest_pending_age_s": nullable({"type": "number"}),
                "groups": {
                    "type": "array",
                    "items": group_schema(),
                    "description": "shared concurrency groups, by name",
                },
            }
        ),
        "Nodes": obj(
            {
                "cluster": {**BOOL, "description": "true with a PostgreSQL store (cluster mode)"},
                "node": {**STR, "description": "the name of the node that answered"},
                "nodes": {
                    "type": "array",
                    "items": obj(
                        {
                            "name": STR,
                            "host": STR,
                            "pid": COUNT,
                            "started_at": TIME,
                            "heartbeat_at": TIME,
                            "running": COUNT,
                            "alive": BOOL,
                            "url": {
                                **nullable(STR),
                                "description": "where the other nodes reach it ([cluster] advertise_url, "
                                "or the address it listens on); null on SQLite",
                            },
                            "heartbeat_age_s": {
                                "type": "number",
                                "minimum": 0,
                                "description": "seconds since its last heartbeat, in the database's time",
                            },
                        }
                    ),
                },
            },
            description="the nodes sharing the store; one on SQLite",
        ),
        "Stats": obj(
            {
                "job": nullable(STR),
                "days": {"type": "integer", "minimum": 1, "maximum": MAX_DAYS},
                "since": {**TIME, "description": "start of the first day (UTC midnight)"},
                "until": {**TIME, "description": "end of the last day, today (exclusive)"},
                "total": COUNT,
                "by_status": by_status,
                "success_rate": {**rate, "description": "(COMPLETED + PARTIAL) / (COMPLETED + PARTIAL + FAILED)"},
                "average_duration_ms": average,
                "p95_duration_ms": {**nullable(COUNT), "description": "nearest rank: the ceil(0.95 n)-th shortest"},
                "by_trigger": by_trigger,
                "timeline": {
                    "type": "array",
                    "description": "one entry per UTC day, oldest first",
                    "items": obj(
                        {
                            "date": {"type": "string", "format": "date"},
                            "total": COUNT,
                            "completed": {**COUNT, "description": "COMPLETED or PARTIAL"},
                            "failed": COUNT,
                        }
                    ),
                },
                "jobs": {
                    "type": "array",
                    "description": "per job, when no job was asked for",
                    "items": obj(
                        {
                            "job": STR,
                            "total": COUNT,
                            "by_status": by_status,
                            "success_rate": rate,
                            "average_duration_ms": average,
                            "p95_duration_ms": nullable(COUNT),
                        }
                    ),
                },
            },
            optional=("jobs",),
        ),
        "Health": obj({"status": STR}),
        "TicketRequest": obj(
            {
                "stream": {
                    "type": "string",
                    "pattern": r"^/api/v1/(?:runs/[0-9]{1,18}(?:/events)?|events)(?:\?[\s\S]*)?$",
                    "description": "the stream's path, e.g. /api/v1/runs/12/events (a query string is ignored)",
                }
            }
        ),
        "Ticket": obj(
            {
                "ticket": STR,
                "stream": {"type": "string", "description": "the path the ticket is good for"},
                "expires_at": TIME,
            },
            description="a short-lived credential for one stream, with the scope of the token that minted it",
        ),
        "Whoami": obj(
            {
                "auth": {"type": "boolean", "description": "whether tokens are configured"},
                "scope": {"type": "string", "enum": ["read", "trigger", "admin"]},
                "token": {**nullable(STR), "description": "the token's name; null when auth is off"},
                "jobs": {
                    **nullable({"type": "array", "items": STR}),
                    "description": "the glob patterns of the jobs a token limited to some jobs sees; null: every job",
                },
                "features": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["audit", "events", "run_events", "stats", "tickets"]},
                    "description": "optional endpoints this daemon serves",
                },
            }
        ),
        **stream_schemas(by_status),
    }


def stream_schemas(by_status: Schema) -> dict[str, Schema]:
    """The JSON messages of a stream, one schema per `type`, and the SSE event that carries one."""
    run_id = {"type": "integer", "minimum": 1}
    messages = {
        "connected": obj(
            {"run_id": {**nullable(run_id), "description": "the run streamed; null on the firehose"}},
            description="the first message: the stream is open (its id is 0, or the Last-Event-ID resumed from)",
        ),
        "status_update": obj(
            {key: schema for key, schema in status_update_json_schema(ref=ref)["properties"].items() if key != "type"},
            description="a run's state: its current one when the stream opens, then every change",
        ),
        "log": obj(
            {"run_id": run_id, "job": STR, "stream": {"type": "string", "enum": ["stdout", "stderr"]}, "line": STR},
            description="a line of the run's output (with ?log=1)",
        ),
        "summary": obj(
            {
                "queue": obj({"pending": COUNT, "processing": COUNT}),
                "workers": obj({"busy": COUNT, "total": COUNT}),
                "counts": by_status,
            },
            description="firehose: queue and workers, sent when they change (at most once per events.summary_interval_s)",
        ),
        "fire_skipped": obj(
            {
                "job": STR,
                "scheduled_for": TIME,
                "skipped_at": TIME,
                "skipped_fires": COUNT,
                "active_run_ids": {"type": "array", "items": run_id},
                "reason": STR,
                "skip_reason": {**STR, "enum": ["excluded"], "description": "only on a fire a calendar excluded"},
                "excluded_by": {
                    **STR,
                    "description": "the calendar, `not in NAME`, `before active_from` or `after active_until`",
                },
            },
            optional=("skip_reason", "excluded_by"),
            description="firehose: a cron fire the job's overlap policy skipped, or its calendars excluded",
        ),
        "shutdown": obj({}, description="jobd is stopping: the stream ends; reconnect to the next instance"),
        "error": obj(
            {
                "message": STR,
                "reason": {
                    "type": "string",
                    "enum": list(STREAM_ERRORS),
                    "description": "; ".join(f"{code}: {meaning}" for code, meaning in STREAM_ERRORS.items()),
                },
            },
            description=(
                "the stream ends for another reason than its run's end or a shutdown; reconnecting with "
                "Last-Event-ID resumes where it ended"
            ),
        ),
    }
    schemas = {}
    for kind, schema in messages.items():
        name = "".join(part.title() for part in kind.split("_")) + "Message"
        properties = {"type": {"type": "string", "const": kind}, **schema["properties"]}
        schemas[name] = {**schema, "properties": properties, "required": ["type", *schema.get("required", [])]}
    schemas["StreamMessage"] = {
        "description": (
            "the JSON in each SSE `data:` field, told apart by `type`; a client ignores types it does not know"
        ),
        "oneOf": [ref(name) for name in schemas],
        "discriminator": {
            "propertyName": "type",
            "mapping": {kind: f"#/components/schemas/{name}" for kind, name in zip(messages, schemas)},
        },
    }
    schemas["StreamEvent"] = obj(
        {
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": ref("StreamMessage"),
                "description": "one StreamMessage, as JSON",
            },
            "event": {"type": "string", "enum": ["message"], "description": "jobd sends no event names"},
            "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the id to resume after (Last-Event-ID)"},
            "retry": {"type": "integer", "minimum": 0, "description": "the reconnect delay hint, at the start"},
        },
        optional=("event", "id", "retry"),
        description=(
            "one Server-Sent Event: every one has an `id:` and a `data:` field, and no `event:` name, so "
            "EventSource.onmessage sees them all. Comment lines are heartbeats."
        ),
    )
    return schemas


# -- paths -----------------------------------------------------------------------------------------


def paths() -> dict[str, Schema]:
    run_answer = json_content(ref("RunAnswer"), "the run")
    job_answer = json_content(ref("JobAnswer"), "the job")
    not_found_job = problem("no job by that name")
    not_found_run = problem("no run with that id")
    bad_request = problem("a parameter or the body is not valid")
    stream = text_content("text/event-stream", "Server-Sent Events, each a StreamEvent", ref("StreamEvent"))
    stream_done = {"description": "resumed (Last-Event-ID) after the run's final state: nothing more to send"}
    too_many_streams = problem("too many open streams (server.max_streams), or shutting down")
    health = json_content(ref("Health"), "alive")
    ready = {
        "200": json_content(ref("Health"), "ready: the store is open and jobd accepts work"),
        "503": json_content(ref("Health"), "starting or shutting down"),
    }
    run_filters = (
        query("job", STR, "only this job's runs"),
        query("status", names_list(STATUSES), f"comma-separated statuses: {', '.join(STATUSES)}"),
        query("triggered_by", names_list(SOURCES), f"comma-separated trigger sources: {', '.join(SOURCES)}"),
        query("since", {"type": "string", "format": "date-time"}, "created at or after"),
        query("until", {"type": "string", "format": "date-time"}, "created before"),
        query(
            "parent",
            {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
            "only the runs this run's end made (its chain's children)",
        ),
    )

    def health_ops(op_id: str) -> Schema:
        return {"get": operation("Liveness", tag="health", scope=None, operation_id=op_id, responses={"200": health})}

    def ready_ops(op_id: str) -> Schema:
        return {"get": operation("Readiness", tag="health", scope=None, operation_id=op_id, responses=ready)}

    return {
        "/": {
            "get": operation(
                "The dashboard",
                tag="dashboard",
                scope=None,
                operation_id="dashboard",
                responses={"200": text_content("text/html", "the dashboard page")},
            )
        },
        "/static/{path}": {
            "get": operation(
                "The dashboard's files",
                tag="dashboard",
                scope=None,
                operation_id="staticFile",
                parameters=(path_param("path", STR, "a file name, e.g. jobd.js"),),
                responses={
                    "200": {"description": "the file (JavaScript, CSS, images)"},
                    "404": problem("no such file"),
                },
            )
        },
        "/healthz": health_ops("healthz"),
        "/readyz": ready_ops("readyz"),
        "/metrics": {
            "get": operation(
                "Prometheus metrics",
                tag="observability",
                scope=None,
                operation_id="metrics",
                security=[{"bearer": []}, {"apiKey": []}],
                description=(
                    "The Prometheus text format. With `[metrics] token` set, send it as a Bearer token "
                    "(API tokens work too when API auth is on); without it, the read scope applies."
                ),
                responses={
                    "200": text_content("text/plain", "metrics in the Prometheus text format 0.0.4"),
                    "401": problem("the metrics token (or a token) is missing or wrong"),
                    "403": problem("a token limited to some jobs (metrics name every job)"),
                },
            )
        },
        "/api/docs": {
            "get": operation(
                "This API's reference, as a page",
                tag="contract",
                scope=None,
                operation_id="apiDocs",
                description="Its script and style sheet are /static/api-docs.js and /static/api-docs.css.",
                responses={"200": text_content("text/html", "the page; it renders /api/v1/openapi.json")},
            )
        },
        V1 + "/openapi.json": {
            "get": operation(
                "This document",
                tag="contract",
                scope=None,
                operation_id="openapi",
                responses={"200": json_content({"type": "object"}, "the OpenAPI 3.1 document")},
            )
        },
        V1 + "/healthz": health_ops("healthzV1"),
        V1 + "/readyz": ready_ops("readyzV1"),
        V1 + "/jobs": {
            "get": operation(
                "Jobs with their state",
                tag="jobs",
                scope="read",
                operation_id="listJobs",
                responses={"200": json_content(obj({"jobs": {"type": "array", "items": ref("Job")}}), "every job")},
            )
        },
        V1 + "/jobs/{name}": {
            "get": operation(
                "One job with its state",
                tag="jobs",
                scope="read",
                operation_id="getJob",
                parameters=(JOB_NAME,),
                responses={"200": job_answer, "404": not_found_job},
            )
        },
        V1 + "/jobs/{name}/trigger": {
            "post": operation(
                "Start a run (or a batch of runs)",
                tag="jobs",
                scope="trigger",
                operation_id="triggerJob",
                description=(
                    "202 once the runs are committed to the store. `Idempotency-Key`: the same key for the "
                    "same job within 24 h answers with the same run."
                ),
                parameters=(
                    JOB_NAME,
                    header(
                        "Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 200}, "single triggers only"
                    ),
                ),
                body={"required": False, "content": {"application/json": {"schema": ref("TriggerRequest")}}},
                responses={
                    "202": json_content(
                        {"oneOf": [ref("RunAnswer"), obj({"runs": {"type": "array", "items": ref("Run")}})]},
                        "the run ({run}), or the batch's runs ({runs})",
                    ),
                    "400": problem(
                        "the body is not valid; a batch over server.max_batch_runs says the limit in "
                        "max_batch_runs, so that a client can send it again in smaller pieces; params that do "
                        "not fit the job's schema name the first bad one in param and list each in errors "
                        "([{param, message, where}])"
                    ),
                    "404": not_found_job,
                    "409": problem("the overlap policy refused the run"),
                    "413": problem("the body is over server.max_body_bytes"),
                    "503": problem("shutting down; not accepting runs (see Retry-After)"),
                },
            )
        },
        V1 + "/jobs/{name}/pause": {
            "post": operation(
                "Pause the job's schedule",
                tag="jobs",
                scope="admin",
                operation_id="pauseJob",
                parameters=(JOB_NAME,),
                responses={"200": job_answer, "404": not_found_job},
            )
        },
        V1 + "/jobs/{name}/resume": {
            "post": operation(
                "Resume the job's schedule",
                tag="jobs",
                scope="admin",
                operation_id="resumeJob",
                parameters=(JOB_NAME,),
                responses={"200": job_answer, "404": not_found_job},
            )
        },
        V1 + "/runs": {
            "get": operation(
                "Runs, newest first, with statistics of all that match",
                tag="runs",
                scope="read",
                operation_id="listRuns",
                description=(
                    "Pages by limit/offset, or by cursor: pass pagination.next_cursor as ?cursor= for the "
                    "next page, stable while new runs arrive."
                ),
                parameters=(
                    *run_filters,
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
                    query("offset", {"type": "integer", "minimum": 0, "maximum": 10**12, "default": 0}, "runs to skip"),
                    query("cursor", cursor_schema(), "from pagination.next_cursor: the page starts after that run"),
                ),
                responses={"200": json_content(ref("RunPage"), "a page of runs"), "400": bad_request},
            )
        },
        V1 + "/runs/last": {
            "get": operation(
                "A job's most recent run",
                tag="runs",
                scope="read",
                operation_id="lastRun",
                parameters=(query("job", {"type": "string", "minLength": 1}, "the job", required=True),),
                responses={"200": run_answer, "400": problem("job is missing"), "404": problem("the job has no runs")},
            )
        },
        V1 + "/runs/{run_id}": {
            "get": operation(
                "One run, with the tail of its log",
                tag="runs",
                scope="read",
                operation_id="getRun",
                description="With `Accept: text/event-stream`, the run's live stream (as /runs/{run_id}/events).",
                parameters=(RUN_ID, header("Accept", STR, "text/event-stream for the run's stream"), *STREAM_PARAMS),
                responses={
                    "200": {
                        "description": "the run",
                        "content": {
                            "application/json": {"schema": obj({"run": ref("RunDetail")})},
                            "text/event-stream": {"schema": ref("StreamEvent")},
                        },
                    },
                    "204": stream_done,
                    "404": not_found_run,
                    "503": too_many_streams,
                },
            )
        },
        V1 + "/runs/{run_id}/log": {
            "get": operation(
                "The run's whole log",
                tag="runs",
                scope="read",
                operation_id="getRunLog",
                parameters=(RUN_ID,),
                responses={"200": text_content("text/plain", "the log"), "404": not_found_run},
            )
        },
        V1 + "/runs/{run_id}/cancel": {
            "post": operation(
                "Cancel a run",
                tag="runs",
                scope="trigger",
                operation_id="cancelRun",
                parameters=(RUN_ID,),
                description="PENDING: at once. PROCESSING: its process group is terminated; answers once it ended.",
                responses={"200": run_answer, "404": not_found_run, "409": problem("the run has already finished")},
            )
        },
        V1 + "/runs/{run_id}/retry": {
            "post": operation(
                "Run a finished run again",
                tag="runs",
                scope="trigger",
                operation_id="retryRun",
                parameters=(RUN_ID,),
                responses={
                    "202": json_content(ref("RunAnswer"), "the new run (retry_of = run_id)"),
                    "404": not_found_run,
                    "409": problem("the run has not finished"),
                    "503": problem("shutting down; not accepting runs (see Retry-After)"),
                },
            )
        },
        V1 + "/runs/{run_id}/events": {
            "get": operation(
                "One run's live stream",
                tag="streams",
                scope="read",
                operation_id="runEvents",
                description=(
                    "connected, the run's current state as a status_update, then every change; the stream "
                    "ends after the final status_update. Heartbeat comments keep it open."
                ),
                parameters=(RUN_ID, *STREAM_PARAMS),
                responses={"200": stream, "204": stream_done, "404": not_found_run, "503": too_many_streams},
            )
        },
        V1 + "/events": {
            "get": operation(
                "Every run's live stream, with summaries",
                tag="streams",
                scope="admin",
                operation_id="allEvents",
                description=(
                    "The current state of every active run, then every change, `summary` messages, and a "
                    "`fire_skipped` message for each cron fire the overlap policy skips."
                ),
                parameters=(
                    query("job", STR, "comma-separated jobs"),
                    query(
                        "status",
                        names_list(STATUSES),
                        f"comma-separated statuses: {', '.join(STATUSES)}; run events only "
                        "(summary and fire_skipped have no status and pass)",
                    ),
                    *STREAM_PARAMS,
                ),
                responses={"200": stream, "400": bad_request, "503": too_many_streams},
            )
        },
        V1 + "/tickets": {
            "post": operation(
                "Mint a short-lived ticket for a stream",
                tag="streams",
                scope="read",
                operation_id="createTicket",
                description=(
                    "For EventSource, which cannot send headers: ?ticket= on that one stream instead of a "
                    "token in the URL. The ticket carries the token's scope."
                ),
                body={"required": True, "content": {"application/json": {"schema": ref("TicketRequest")}}},
                responses={
                    "201": json_content(ref("Ticket"), "the ticket"),
                    "400": bad_request,
                    "403": problem("the stream needs a scope above the token's"),
                    "404": problem("a token limited to some jobs asked for the stream of another job's run"),
                },
            )
        },
        V1 + "/whoami": {
            "get": operation(
                "Who the caller is, and what this daemon serves",
                tag="contract",
                scope="read",
                operation_id="whoami",
                responses={"200": json_content(ref("Whoami"), "the caller's scope and the optional features")},
            )
        },
        V1 + "/queue": {
            "get": operation(
                "Queue and workers",
                tag="observability",
                scope="read",
                operation_id="queue",
                responses={
                    "200": json_content(ref("Queue"), "run counts by status, workers, oldest PENDING run, groups")
                },
            )
        },
        V1 + "/nodes": {
            "get": operation(
                "The nodes of the cluster",
                tag="observability",
                scope="read",
                operation_id="nodes",
                responses={"200": json_content(ref("Nodes"), "each node with its heartbeat and running runs")},
            )
        },
        V1 + "/stats": {
            "get": operation(
                "Run statistics over the last days",
                tag="observability",
                scope="read",
                operation_id="stats",
                description=(
                    "Runs created in the last `days` UTC days (today included): totals, success rate, "
                    "average and p95 duration, by trigger, a per-day timeline, and per job."
                ),
                parameters=(
                    query(
                        "days", {"type": "integer", "minimum": 1, "maximum": MAX_DAYS, "default": 30}, "how many days"
                    ),
                    query("job", STR, "only this job (404 if not configured)"),
                ),
                responses={
                    "200": json_content(ref("Stats"), "the statistics"),
                    "400": bad_request,
                    "404": not_found_job,
                },
            )
        },
    }


# -- backfill --------------------------------------------------------------------------------------


def backfill_schemas() -> dict[str, Schema]:
    listed: dict[str, Schema] = {
        "job": STR,
        "timezone": {**STR, "description": "the job's time zone, that of fire_times_local"},
        "fire_times": {"type": "array", "items": TIME, "description": "every fire time in [from, to), oldest first"},
        "fire_times_local": {
            "type": "array",
            "items": {"type": "string", "format": "date-time"},
            "description": "the same times in the job's zone, with their offsets",
        },
        "excluded": {
            "type": "array",
            "items": obj(
                {
                    "at": TIME,
                    "at_local": {"type": "string", "format": "date-time"},
                    "excluded_by": {
                        **STR,
                        "description": "the calendar, `not in NAME`, `before active_from` or `after active_until`",
                    },
                }
            ),
            "description": "fire times in the range the job's calendars or active period exclude: no run is made "
            "for them (not counted in max_runs)",
        },
        "excluded_truncated": {**BOOL, "description": "more excluded times than the 1000 listed"},
    }
    return {
        "BackfillRequest": obj(
            {
                "from": {"type": "string", "format": "date-time", "description": "the first time (inclusive)"},
                "to": {
                    "type": "string",
                    "format": "date-time",
                    "description": (
                        f"the end (exclusive), not in the future nor past the job's next fire, at most "
                        f"{MAX_RANGE.days} days after from"
                    ),
                },
                "max_runs": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_RUNS,
                    "default": DEFAULT_MAX_RUNS,
                    "description": "a range holding more fire times is refused (400, field max_runs)",
                },
                "dry_run": {"type": "boolean", "default": False, "description": "list the times; create nothing"},
            },
            optional=("max_runs", "dry_run"),
        ),
        "BackfillPlan": obj({**listed, "dry_run": {"const": True}}),
        "BackfillAnswer": obj(
            {
                **listed,
                "dry_run": {"const": False},
                "existing": {
                    "type": "array",
                    "items": TIME,
                    "description": "fire times left out: the job already has a run (or, in a cluster, a fire) for them",
                },
                "runs": {
                    "type": "array",
                    "items": ref("Run"),
                    "description": "the runs created (triggered_by catchup, scheduled_for the fire time)",
                },
            }
        ),
    }


def backfill_paths() -> dict[str, Schema]:
    return {
        V1 + "/jobs/{name}/backfill": {
            "post": operation(
                "Create runs for the job's past fire times",
                tag="jobs",
                scope="trigger",
                operation_id="backfillJob",
                description=(
                    "One run per fire time of the job's schedule in [from, to), in its time zone with its DST "
                    "rules, skipping the times it already has a run for. The runs are admitted whatever the "
                    "overlap policy and wait for the job's concurrency slots, oldest first."
                ),
                parameters=(JOB_NAME,),
                body={"required": True, "content": {"application/json": {"schema": ref("BackfillRequest")}}},
                responses={
                    "200": json_content(ref("BackfillPlan"), "dry_run: the fire times; nothing was created"),
                    "202": json_content(ref("BackfillAnswer"), "the runs created, once committed"),
                    "400": problem("the body is not valid; `field` names the field"),
                    "404": problem("no job by that name"),
                    "409": problem("the job has no schedule"),
                    "413": problem("the body is over server.max_body_bytes"),
                    "503": problem("shutting down; not accepting runs (see Retry-After)"),
                },
            )
        }
    }


# -- notifications ---------------------------------------------------------------------------------


def notification_schemas() -> dict[str, Schema]:
    return {
        "Notification": obj(
            {
                "id": INT,
                "job": STR,
                "event": {"enum": list(NOTIFY_EVENTS)},
                "notifier": STR,
                "run_id": nullable(INT),
                "status": {"enum": list(NOTIFICATION_STATUSES)},
                "attempts": {**COUNT, "description": "deliveries tried so far"},
                "last_error": {**nullable(STR), "description": "why the last failed attempt failed"},
                "created_at": TIME,
                "next_attempt_at": {**MAYBE_TIME, "description": "while pending: when it is tried next"},
                "delivered_at": MAYBE_TIME,
                "updated_at": TIME,
                "payload": {"type": "object", "description": "the event, as a command reads it on stdin"},
            }
        ),
        "NotificationPage": obj(
            {
                "notifications": {"type": "array", "items": ref("Notification")},
                "pagination": obj(
                    {"limit": {"type": "integer", "minimum": 1}, "has_more": BOOL, "next_cursor": nullable(STR)}
                ),
            }
        ),
        "SnoozeRequest": obj(
            {"until": {**MAYBE_TIME, "description": "silence the job's notifications until then; null: unsnooze"}}
        ),
        "SnoozeAnswer": obj({"job": STR, "snoozed_until": MAYBE_TIME}),
        "NotifierTest": obj(
            {"notifier": STR, "delivered": {"const": True}, "event": {"type": "object", "description": "what was sent"}}
        ),
    }


def notification_paths() -> dict[str, Schema]:
    snooze_answer = json_content(ref("SnoozeAnswer"), "the job's snooze now")
    not_found = problem("no job by that name")
    return {
        V1 + "/notifications": {
            "get": operation(
                "Notifications, newest first",
                tag="notifications",
                scope="read",
                operation_id="listNotifications",
                description="Pages by cursor: pass pagination.next_cursor as ?cursor= for the next page.",
                parameters=(
                    query("job", STR, "only this job's"),
                    query("status", names_list(list(NOTIFICATION_STATUSES)), "only these statuses, comma-separated"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
                    query("cursor", cursor_schema(), "pagination.next_cursor of the previous page"),
                ),
                responses={
                    "200": json_content(ref("NotificationPage"), "a page of notifications"),
                    "400": problem("a query parameter is not valid"),
                },
            )
        },
        V1 + "/notifiers/{name}/test": {
            "post": operation(
                "Send a sample event to a notifier now",
                tag="notifications",
                scope="admin",
                operation_id="testNotifier",
                description="Sent at once, past the queue, and not recorded; what `jobd notify-test NAME` calls.",
                parameters=(path_param("name", STR, "the notifier, as in [notifiers.NAME]"),),
                responses={
                    "200": json_content(ref("NotifierTest"), "delivered"),
                    "404": problem("no notifier by that name"),
                    "502": problem("the delivery failed; detail says why"),
                },
            )
        },
        V1 + "/jobs/{name}/snooze": {
            "post": operation(
                "Silence the job's notifications until a time",
                tag="notifications",
                scope="admin",
                operation_id="snoozeJob",
                description="Notifications made meanwhile are recorded with status snoozed and never sent.",
                parameters=(JOB_NAME,),
                body={"required": True, "content": {"application/json": {"schema": ref("SnoozeRequest")}}},
                responses={
                    "200": snooze_answer,
                    "400": problem("the body is not valid"),
                    "404": not_found,
                    "413": problem("the body is over server.max_body_bytes"),
                },
            ),
            "delete": operation(
                "Unsnooze the job",
                tag="notifications",
                scope="admin",
                operation_id="unsnoozeJob",
                parameters=(JOB_NAME,),
                responses={"200": snooze_answer, "404": not_found},
            ),
        },
    }


# -- the audit log ---------------------------------------------------------------------------------


def audit_schemas() -> dict[str, Schema]:
    maybe_str = nullable(STR)
    return {
        "AuditRecord": obj(
            {
                "id": {"type": "integer", "minimum": 1},
                "at": TIME,
                "token": {**maybe_str, "description": "the token's name; null when auth is off"},
                "remote": {**maybe_str, "description": "the caller's address"},
                "action": {"type": "string", "enum": list(ACTIONS)},
                "job": {**maybe_str, "description": "the job acted on (of the run, for cancel and retry), when known"},
                "run_id": {**nullable(INT), "description": "the run the path names (cancel, retry, a run's stream)"},
                "target": {**STR, "description": "the request's path (a ticket's: the stream's)"},
                "status": {"type": "integer", "minimum": 100, "maximum": 599, "description": "the HTTP status"},
                "outcome": {**STR, "description": "ok, or the problem's type (overlap, job-not-found, ...)"},
                "detail": {**maybe_str, "description": "the run created (run 42), or the problem's detail"},
                "request_id": {**maybe_str, "description": "the request's X-Request-ID"},
            }
        ),
        "AuditPage": obj(
            {
                "records": {"type": "array", "items": ref("AuditRecord")},
                "pagination": obj(
                    {
                        "total": COUNT,
                        "limit": {"type": "integer", "minimum": 1, "maximum": 500},
                        "has_more": BOOL,
                        "next_cursor": nullable(STR),
                    }
                ),
            }
        ),
    }


def audit_paths() -> dict[str, Schema]:
    return {
        V1 + "/audit": {
            "get": operation(
                "The audit log, newest first",
                tag="audit",
                scope="admin",
                operation_id="auditLog",
                description=(
                    "One record per state-changing call (trigger, backfill, cancel, retry, pause, resume, "
                    "snooze, ticket), refusals included. An admin token limited to some jobs reads the "
                    "records of its jobs. Page with pagination.next_cursor as ?cursor=."
                ),
                parameters=(
                    query("since", {"type": "string", "format": "date-time"}, "records at or after this time"),
                    query("until", {"type": "string", "format": "date-time"}, "records before this time"),
                    query("token", STR, "records of this token (its name)"),
                    query("action", names_list(list(ACTIONS)), "comma-separated actions"),
                    query("job", STR, "records about this job"),
                    query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
                    query("cursor", cursor_schema(), "from pagination.next_cursor: the page starts after that record"),
                ),
                responses={
                    "200": json_content(ref("AuditPage"), "a page of records"),
                    "400": problem("a parameter is not valid"),
                },
            )
        }
    }


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobd",
            "version": __version__,
            "description": (
                "jobd's HTTP API. JSON under /api/v1; times are ISO-8601 UTC with milliseconds. Every error is "
                "application/problem+json (RFC 9457). With tokens configured, send `Authorization: Bearer TOKEN` "
                "or `X-API-Key: TOKEN`; each operation's `x-jobd-scope` is the scope it needs "
                "(read < trigger < admin). A token limited to some jobs (`jobs` in its config) sees only "
                "those: lists leave the others out and paths naming another job or its runs answer 404. "
                "State-changing calls are recorded in the audit log (GET /api/v1/audit)."
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": [{"bearer": []}, {"apiKey": []}],
        "tags": [
            {"name": name}
            for name in (
                "jobs",
                "runs",
                "notifications",
                "streams",
                "observability",
                "audit",
                "health",
                "contract",
                "dashboard",
            )
        ],
        "paths": paths() | backfill_paths() | notification_paths() | audit_paths(),
        "components": {
            "schemas": schemas() | backfill_schemas() | notification_schemas() | audit_schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/openapi_gen.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python scripts/openapi_gen.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
