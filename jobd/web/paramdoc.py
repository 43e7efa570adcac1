"""Each job's parameters in the served OpenAPI document.

Jobs come from the config, so the committed document (scripts/openapi_gen.py) cannot name them:
it describes `POST /api/v1/jobs/{name}/trigger` with params as any object. The document a daemon
serves adds, for each job that declares parameters, its schema as the component
`JobParams.NAME` and a concrete path `/api/v1/jobs/NAME/trigger` whose body takes those params
(OpenAPI matches a concrete path before the templated one).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from jobd.config import JobConfig
from jobd.web.params import PREFIX

_TEMPLATE = PREFIX + "/jobs/{name}/trigger"


def add_job_params(document: dict[str, Any], jobs: Mapping[str, JobConfig]) -> None:
    schemas = document["components"]["schemas"]
    generic = document["paths"].get(_TEMPLATE, {}).get("post")
    for job in jobs.values():
        schema = job.params.json_schema()
        if schema is None or generic is None:
            continue
        schema.pop("$schema")  # the document's jsonSchemaDialect says it
        params_name, request_name = f"JobParams.{job.name}", f"TriggerRequest.{job.name}"
        schemas[params_name] = schema
        params_ref = {"$ref": f"#/components/schemas/{params_name}"}
        request = copy.deepcopy(schemas["TriggerRequest"])
        request["properties"]["params"] = params_ref
        request["properties"]["runs"]["items"]["properties"]["params"] = params_ref
        schemas[request_name] = request
        operation = copy.deepcopy(generic)
        operation["summary"] = f"Start a run of {job.name}"
        operation["operationId"] = "triggerJob_" + re.sub(r"[^A-Za-z0-9_]", "_", job.name)
        operation["parameters"] = [p for p in operation.get("parameters", []) if p.get("in") != "path"]
        operation["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{request_name}"
        }
        document["paths"][f"{PREFIX}/jobs/{job.name}/trigger"] = {"post": operation}
