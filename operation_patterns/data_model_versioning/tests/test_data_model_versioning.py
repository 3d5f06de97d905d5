"""O3 integration tests: the real registry, trainer and predictor over HTTP, on the seeded DWH.

Each test registers its own model name, so the tests do not depend on each other's versions;
dataset versions are shared (a dataset is the same version for everyone who asks for it).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from operation_patterns.data_model_versioning.tables import DWH_IRIS, FEATURES, part_table_name
from operation_patterns.data_model_versioning.trainer import (
    EVERYTHING,
    JANUARY,
    Plan,
    interface,
    train_version,
)
from operation_patterns.data_model_versioning.versions import VERSION_RE, Version
from patternkit.client import Client
from patternkit.db import make_engine
from patternkit.testing import extra_instance
from patternkit.topology import Stack

PETALS = ["petal_length_cm", "petal_width_cm"]
# unique per session: under DATABASE_URL (PostgreSQL) the registry's tables outlive a run
NAMES = (f"t{secrets.token_hex(3)}_{i}" for i in itertools.count())


@pytest.fixture
def registry(entry: Client) -> Client:
    return entry


@pytest.fixture
def engine(stack: Stack) -> Iterator[sa.Engine]:
    db = make_engine(stack.proc("registry").env["DATABASE_URL"])
    yield db
    db.dispose()


def dataset(registry: Client, query: str = JANUARY, **split: Any) -> dict[str, Any]:
    resp = registry.post("/datasets", json={"query": query, "split": split})
    assert resp.status_code in (200, 201), resp.text
    found: dict[str, Any] = resp.json()
    return found


def register(registry: Client, name: str, data: str, *, features: list[str] | None = None,
             params: dict[str, Any] | None = None, library: str = "scikit-learn==1.9.1",
             status: tuple[int, ...] = (201,)) -> dict[str, Any]:
    resp = registry.post("/models", json={
        "name": name, "interface": interface(features or list(FEATURES)),
        "algorithm": "logistic_regression", "library": library,
        "params": params if params is not None else {"C": 1.0}, "dataset": data})
    assert resp.status_code in status, resp.text
    found: dict[str, Any] = resp.json()
    return found


def xyz(version: str) -> tuple[int, int, int]:
    v = Version.parse(version)
    return v.release, v.interface, v.logic


def test_a_params_change_bumps_z_and_an_interface_change_bumps_y_and_resets_z(
    registry: Client,
) -> None:
    name, data = next(NAMES), dataset(registry)["version"]
    first = register(registry, name, data)
    assert first["version"] == f"0.0.1-{data}" and first["changed"] == "first"
    assert first["full_version"] == f"{name} 0.0.1-{data}"
    tuned = register(registry, name, data, params={"C": 0.1})
    assert (xyz(tuned["version"]), tuned["changed"]) == ((0, 0, 2), "logic")
    assert tuned["previous"] == first["version"]
    again = register(registry, name, data, params={"C": 0.1}, status=(200,))  # nothing changed
    assert again["version"] == tuned["version"] and again["created"] is False
    library = register(registry, name, data, params={"C": 0.1}, library="scikit-learn==1.5.0")
    assert (xyz(library["version"]), library["changed"]) == ((0, 0, 3), "logic")
    petals = register(registry, name, data, features=PETALS, params={"C": 0.1},
                      library="scikit-learn==1.5.0")
    assert (xyz(petals["version"]), petals["changed"]) == ((0, 1, 0), "interface")
    retuned = register(registry, name, data, features=PETALS, params={"C": 10.0},
                       library="scikit-learn==1.5.0")
    assert xyz(retuned["version"]) == (0, 1, 1)
    listed = registry.get(f"/models/{name}").json()
    assert [v["version"].split("-")[0] for v in listed["versions"]] == [
        "0.0.1", "0.0.2", "0.0.3", "0.1.0", "0.1.1"]
    assert listed["latest"] == retuned["version"]


def test_a_new_dataset_changes_data_or_split_and_keeps_x_y_z(registry: Client) -> None:
    january, everything = dataset(registry, JANUARY), dataset(registry, EVERYTHING)
    assert january["data"] != everything["data"] and january["split"] == everything["split"]
    resplit = dataset(registry, EVERYTHING, test_fraction=0.2)
    assert resplit["data"] == everything["data"] and resplit["split"] != everything["split"]
    reseeded = dataset(registry, EVERYTHING, seed=1)
    assert reseeded["data"] == everything["data"]
    assert len({everything["split"], resplit["split"], reseeded["split"]}) == 3
    # the same query re-indented is the same DATA; the defaults spelled out, the same SPLIT
    same = dataset(registry, "  " + EVERYTHING.replace(" FROM ", "\n   FROM ") + " ;",
                   test_fraction=0.3, seed=0, key="id")
    assert same["version"] == everything["version"] and same["created"] is False
    assert (everything["rows"]["train"] + everything["rows"]["test"],
            january["rows"]["train"] + january["rows"]["test"]) == (150, 100)

    name = next(NAMES)
    first = register(registry, name, january["version"])
    moved = register(registry, name, everything["version"])
    assert moved["changed"] == "data" and xyz(moved["version"]) == xyz(first["version"])
    assert moved["version"] == f"0.0.1-{everything['version']}"
    split = register(registry, name, resplit["version"])
    assert split["version"] == f"0.0.1-{resplit['version']}"


def test_promotion_moves_x_from_0_to_1(registry: Client) -> None:
    name, data = next(NAMES), dataset(registry)["version"]
    register(registry, name, data)
    dev = register(registry, name, data, features=PETALS)
    assert xyz(dev["version"]) == (0, 1, 0) and dev["released"] is False
    resp = registry.post(f"/models/{name}/versions/{dev['version']}/promote")
    assert resp.status_code == 201, resp.text
    release = resp.json()
    assert release["version"] == f"1.1.0-{data}" and release["released"] is True
    assert (release["changed"], release["previous"], release["release"]) == (
        "promotion", dev["version"], 1)
    assert release["logic"] == dev["logic"] and release["interface"] == dev["interface"]
    twice = registry.post(f"/models/{name}/versions/{release['version']}/promote")
    assert twice.status_code == 409 and twice.json()["error"] == "already_released"
    # the next change builds on the release; releasing it makes release 2
    patch = register(registry, name, data, features=PETALS, params={"C": 3.0})
    assert xyz(patch["version"]) == (1, 1, 1) and patch["released"] is False
    second = registry.post(f"/models/{name}/versions/{patch['version']}/promote").json()
    assert xyz(second["version"]) == (2, 1, 1)


def test_a_dataset_version_reads_back_with_the_same_rows_and_hash_and_disjoint_parts(
    registry: Client, engine: sa.Engine
) -> None:
    made = dataset(registry, EVERYTHING, test_fraction=0.25, seed=7)
    version = made["version"]
    first, second = (registry.get(f"/datasets/{version}/train").json() for _ in range(2))
    assert first["rows"] == second["rows"] and first["sha256"] == second["sha256"]
    assert first["sha256"] == made["sha256"]["train"]
    test = registry.get(f"/datasets/{version}/test").json()
    assert test["sha256"] == made["sha256"]["test"]
    key = first["columns"].index("id")
    train_ids, test_ids = ({r[key] for r in p["rows"]} for p in (first, test))
    assert not train_ids & test_ids
    assert train_ids | test_ids == set(range(1, 151))
    assert len(test_ids) == made["rows"]["test"] and 20 <= len(test_ids) <= 55  # ~25% of 150
    # the rows are in tables named after the version, and asking again stores nothing new
    tables = set(sa.inspect(engine).get_table_names())
    assert {part_table_name(version, "train"), part_table_name(version, "test")} <= tables
    again = registry.post("/datasets", json={"query": EVERYTHING,
                                             "split": {"test_fraction": 0.25, "seed": 7}})
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["sha256"] == made["sha256"]


def test_the_dwh_changing_under_a_stored_query_is_a_409_and_the_version_is_kept(
    registry: Client, engine: sa.Engine
) -> None:
    query = f"SELECT id, species, label FROM {DWH_IRIS.name} WHERE id <= 150"
    made = dataset(registry, query)
    with engine.begin() as conn:
        conn.execute(sa.update(DWH_IRIS).where(DWH_IRIS.c.id == 99).values(label=0))
    try:
        resp = registry.post("/datasets", json={"query": query})
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"] == "source_changed"
        assert f"dataset {made['version']} exists" in resp.json()["message"]
        stored = registry.get(f"/datasets/{made['version']}/train").json()
        assert stored["sha256"] == made["sha256"]["train"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.update(DWH_IRIS).where(DWH_IRIS.c.id == 99).values(label=1))
    assert registry.post("/datasets", json={"query": query}).status_code == 200


def test_eval_runs_are_kept_per_version(registry: Client) -> None:
    name, data = next(NAMES), dataset(registry)["version"]
    v = register(registry, name, data)["version"]
    runs = [registry.post(f"/models/{name}/versions/{v}/runs",
                          json={"metrics": {"accuracy": acc}, "params": {"C": 1.0}})
            for acc in (0.96, 0.93)]
    assert [r.status_code for r in runs] == [201, 201]
    assert [r.json()["run"] for r in runs] == ["tr0", "tr1"]
    other = register(registry, name, data, params={"C": 2.0})["version"]
    assert registry.post(f"/models/{name}/versions/{other}/runs",
                         json={"metrics": {"accuracy": 0.9}}).json()["run"] == "tr0"
    kept = registry.get(f"/models/{name}/versions/{v}").json()["runs"]
    assert [(r["run"], r["metrics"]["accuracy"]) for r in kept] == [("tr0", 0.96), ("tr1", 0.93)]


def test_an_alias_resolves_to_its_version_moves_and_is_deleted(registry: Client) -> None:
    name, data = next(NAMES), dataset(registry)["version"]
    a = register(registry, name, data)["version"]
    b = register(registry, name, data, params={"C": 5.0})["version"]
    set_a = registry.put(f"/models/{name}/aliases/champion", json={"version": a})
    assert set_a.status_code == 200 and set_a.json()["previous"] is None
    resolved = registry.get(f"/models/{name}/aliases/champion").json()
    assert resolved["version"] == a and resolved["aliases"] == ["champion"]
    moved = registry.put(f"/models/{name}/aliases/champion", json={"version": b}).json()
    assert (moved["previous"], moved["version"]) == (a, b)
    assert registry.get(f"/models/{name}/aliases/champion").json()["version"] == b
    assert registry.get(f"/models/{name}/versions/{a}").json()["aliases"] == []
    registry.put(f"/models/{name}/aliases/challenger", json={"version": a})
    assert registry.get(f"/models/{name}").json()["aliases"] == {"challenger": a, "champion": b}
    gone = registry.request("DELETE", f"/models/{name}/aliases/champion")
    assert gone.status_code == 200 and gone.json()["was"] == b
    missing = registry.get(f"/models/{name}/aliases/champion")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_alias"
    assert "aliases: challenger" in missing.json()["message"]
    assert registry.request("DELETE", f"/models/{name}/aliases/champion").status_code == 404


BAD = [
    ("POST", "/models", {"name": "bad_clf", "interface": interface(list(FEATURES)),
                         "algorithm": "lr", "library": "x", "dataset": "00000000.00000000"},
     422, "unknown_dataset", "unknown dataset version '00000000.00000000'"),
    ("POST", "/models", {"name": "bad_clf", "interface": interface(list(FEATURES)),
                         "algorithm": "lr", "library": "x", "dataset": "january"},
     422, "invalid_version", "expected DATA.SPLIT"),
    ("POST", "/models", {"name": "bad_clf", "interface": {"inputs": [], "outputs": []},
                         "algorithm": "lr", "library": "x", "dataset": "{data}"},
     422, "validation_error", "body.interface.inputs"),
    ("POST", "/models", {"name": "bad_clf", "interface": interface(["petal_length_mm"]),
                         "algorithm": "lr", "library": "x", "dataset": "{data}"},
     422, "interface_mismatch", "has no column petal_length_mm"),
    ("POST", "/models", {"name": "Bad Name", "interface": interface(list(FEATURES)),
                         "algorithm": "lr", "library": "x", "dataset": "{data}"},
     422, "validation_error", "body.name"),
    ("GET", "/models/iris_clf/versions/1.0", None, 422, "invalid_version", "X.Y.Z-DATA.SPLIT"),
    ("GET", "/models/iris_clf/versions/9.9.9-{data}", None, 404, "unknown_version",
     "iris_clf has no version 9.9.9"),
    ("GET", "/models/nobody_clf", None, 404, "unknown_model", "unknown model 'nobody_clf'"),
    ("PUT", "/models/iris_clf/aliases/champion", {"version": "7.7.7-{data}"}, 422,
     "unknown_version", "iris_clf has no version 7.7.7"),
    ("PUT", "/models/iris_clf/aliases/champion", {"version": "seven"}, 422,
     "invalid_version", "'seven' is not a model version"),
    ("PUT", "/models/iris_clf/aliases/latest", {"version": "0.0.1-{data}"}, 422,
     "invalid_alias", "reserved"),
    ("POST", "/models/iris_clf/versions/8.8.8-{data}/promote", None, 404, "unknown_version",
     "no version 8.8.8"),
    ("POST", "/datasets", {"query": f"DELETE FROM {DWH_IRIS.name}"}, 422, "bad_query",
     "one SELECT"),
    ("POST", "/datasets", {"query": f"WITH x AS (SELECT 1) DELETE FROM {DWH_IRIS.name}"},
     422, "bad_query", "the DWH refused the query"),
    ("POST", "/datasets", {"query": "SELECT * FROM no_such_table"}, 422, "bad_query",
     "no_such_table"),
    ("POST", "/datasets", {"query": f"SELECT label FROM {DWH_IRIS.name}"}, 422, "bad_split",
     "no column 'id'"),
    ("POST", "/datasets", {"query": f"SELECT label AS id FROM {DWH_IRIS.name}"}, 422,
     "bad_split", "must be unique"),
    ("POST", "/datasets", {"query": f"SELECT * FROM {DWH_IRIS.name}",
                           "split": {"test_fraction": 1.5}}, 422, "validation_error",
     "body.split.test_fraction"),
    ("GET", "/datasets/00000000.00000000", None, 404, "unknown_dataset", "known: "),
    ("GET", "/datasets/latest", None, 422, "invalid_version", "expected DATA.SPLIT"),
    ("GET", "/datasets/{data}/eval", None, 404, "unknown_part", "parts train, test"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "error", "says"), BAD,
                         ids=[f"{m} {p} {e}" for m, p, _, _, e, _ in BAD])
def test_bad_input_is_a_4xx_naming_the_problem(
    registry: Client, engine: sa.Engine, method: str, path: str, body: Any, status: int,
    error: str, says: str,
) -> None:
    data = dataset(registry)["version"]
    fill = (lambda v: v.replace("{data}", data)) if "{data}" in repr((path, body)) else str
    if isinstance(body, dict) and body.get("dataset") == "{data}":
        body = {**body, "dataset": data}
    if isinstance(body, dict) and "{data}" in str(body.get("version", "")):
        body = {**body, "version": fill(body["version"])}
    resp = registry.request(method, fill(path), json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error
    assert says in resp.text
    with engine.connect() as conn:  # nothing was written to the DWH
        assert conn.scalar(sa.select(sa.func.count()).select_from(DWH_IRIS)) == 150


def test_the_predictor_reports_the_registered_full_version(
    stack: Stack, registry: Client, tmp_path: Path
) -> None:
    champion = registry.get("/models/iris_clf/aliases/champion").json()
    with Client(stack.url("predictor")) as predictor:
        meta = predictor.get("/metadata").json()
        reply = predictor.post("/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
    assert VERSION_RE.match(meta["model_version"])
    assert meta["model_version"] == champion["version"]
    assert meta["model"]["full_version"] == champion["full_version"] == \
        f"iris_clf {champion['version']}"
    assert reply.headers["x-model-version"] == champion["version"]
    assert reply.json()["prediction"] == [0]
    # the served file is the one the champion's run recorded, trained on its dataset's rows
    assert champion["runs"][0]["artifact_sha256"] == meta["model"]["sha256"]
    stored = registry.get(f"/datasets/{champion['dataset']}").json()
    assert meta["model"]["registry"]["dataset"]["sha256"] == stored["sha256"]

    # a new version, promoted, served by another predictor process: its /metadata follows
    done = train_version(stack.url(), tmp_path / "release", Plan(
        name="iris_clf", query=EVERYTHING, features=PETALS, promote=True))
    release = done["served"]
    assert release["released"] and xyz(release["version"])[0] >= 1
    with extra_instance(stack, "predictor", {"MODEL_PATH": str(tmp_path / "release")}) as extra, \
            Client(extra.url) as other:
        other.wait_ready(timeout=30)
        shown = other.get("/metadata").json()
        assert shown["model_version"] == release["version"]
        assert shown["model"]["full_version"] == release["full_version"]
        assert shown["model"]["registry"]["trained_as"] == done["registered"]["version"]
        assert shown["n_features"] == 2
        assert other.post("/predict", json={"data": [[1.4, 0.2]]}).status_code == 200
    # the champion alias still names the version the topology's predictor serves
    assert registry.get("/models/iris_clf/aliases/champion").json()["version"] == \
        meta["model_version"]
