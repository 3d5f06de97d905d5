"""Every service's OpenAPI, built in-process for each pattern: what /docs shows a user.

Each app service of every topology is created with the settings the runner would give it
(nothing is started: a factory has no side effects), and its document must declare the body
of every route that takes one, show a request and a reply example on every predict route, and
give every 4xx/5xx the one error shape (under `/v2`, the Open Inference Protocol's own).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from patternkit.schemas import PredictRequest, predict_example
from patternkit.service.docs import request_example
from patternkit.topology import Stack, discover, repo_root

# actions that take no body: the id in the path says it all, or the file they re-read
NO_BODY = {("post", "/jobs"), ("post", "/jobs/{job_id}/rerun"), ("post", "/config/reload"),
           ("post", "/rules/reload"), ("post", "/models/{name}/versions/{version}/promote"),
           ("post", "/models/{model_id}/rebuild"), ("post", "/runs/{run_id}/retry"),
           ("post", "/runs/{run_id}/steps/{step}"),
           ("post", "/models/{name}/aliases/{alias}/rollback"), ("post", "/admin/rollback"),
           ("post", "/admin/reload")}
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
OIP_ERROR_REF = {"$ref": "#/components/schemas/InferenceErrorBody"}


def app_services(tmp: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(pattern/service, module:factory, env) for every app service of every pattern."""
    for folder in discover(repo_root()):
        stack = Stack(folder, tmp / folder.name)
        seen: set[str] = set()
        for proc in stack.procs.values():
            if proc.kind == "app" and proc.service not in seen and proc.spec and proc.spec.app:
                seen.add(proc.service)
                yield f"{folder.name}/{proc.service}", proc.spec.app, proc.env


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, factory, env in app_services(tmp_path_factory.mktemp("plans")):
            for key, value in env.items():
                mp.setenv(key, value)
            module, _, func = factory.partition(":")
            app = getattr(importlib.import_module(module), func)()
            docs[name] = app.openapi()
            for key in env:
                mp.delenv(key, raising=False)
    return docs


@pytest.fixture(scope="module")
def widths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """The services told their docs' example row width (DOCS_EXAMPLE_WIDTH)."""
    return {name: int(env["DOCS_EXAMPLE_WIDTH"])
            for name, _, env in app_services(tmp_path_factory.mktemp("widths"))
            if "DOCS_EXAMPLE_WIDTH" in env}


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        found: dict[str, Any] = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
        return found
    return schema


def reply_example(doc: dict[str, Any], op: dict[str, Any]) -> Any:
    for code in ("200", "202", "201"):
        media = op["responses"].get(code, {}).get("content", {}).get("application/json", {})
        if "example" in media:
            return media["example"]
        examples = resolve(doc, media.get("schema", {})).get("examples")
        if examples:
            return examples[0]
    return None


def test_every_pattern_service_is_documented(documents: dict[str, dict[str, Any]]) -> None:
    assert len(documents) >= 30
    assert {"web_single/lb", "serving_template/proxy", "all_in_one/router"} <= set(documents)


def test_every_route_that_takes_a_body_declares_it(documents: dict[str, dict[str, Any]]) -> None:
    missing = [f"{name}: {method.upper()} {path}"
               for name, doc in documents.items() for method, path, op in operations(doc)
               if method in ("post", "put", "patch") and "requestBody" not in op
               and (method, path) not in NO_BODY]
    assert missing == []


def test_every_predict_route_shows_a_request_and_a_reply_example(
    documents: dict[str, dict[str, Any]], widths: dict[str, int],
) -> None:
    assert widths == {"offline_only/proxy": 5}  # QA1's proxy passes 5-feature rows on
    problems = []
    for name, doc in documents.items():
        for method, path, op in operations(doc):
            if method != "post" or "predict" not in path:
                continue
            try:
                example = request_example(doc, path)
            except KeyError:
                problems.append(f"{name}: POST {path} has no request example")
                continue
            if "data" in example and set(example) <= set(PredictRequest.model_fields):
                # a PredictRequest: the iris row, valid for the schema (a body with more
                # fields, e.g. OA2's `unit`, is another schema)
                PredictRequest.model_validate(example)
                # the iris row, or a row of the width the service was told (DOCS_EXAMPLE_WIDTH)
                width = widths.get(name)
                assert example == predict_example(width), f"{name}: {example}"
            if reply_example(doc, op) is None:
                problems.append(f"{name}: POST {path} has no reply example")
    assert problems == []


def test_every_error_response_has_the_error_schema(documents: dict[str, dict[str, Any]]) -> None:
    wrong = []
    for name, doc in documents.items():
        assert "HTTPValidationError" not in json.dumps(doc), name  # never sent here
        schema = doc["components"]["schemas"]["ErrorBody"]
        assert {"error", "message", "details", "request_id"} <= set(schema["properties"])
        for method, path, op in operations(doc):
            oip = path == "/v2" or path.startswith("/v2/")
            assert "500" in op["responses"], f"{name}: {method.upper()} {path}"
            if "requestBody" in op:  # a bad body: the scaffold's 422, the protocol's 400
                bad_body = "400" if oip else "422"
                assert {"413", bad_body} <= set(op["responses"]), f"{name}: {method} {path}"
            expected = OIP_ERROR_REF if oip else ERROR_REF
            for code, response in op["responses"].items():
                if code[0] in "45":
                    media = response.get("content", {}).get("application/json", {})
                    if media.get("schema") != expected or not response.get("description"):
                        wrong.append(f"{name}: {method.upper()} {path} {code}")
    assert wrong == []
