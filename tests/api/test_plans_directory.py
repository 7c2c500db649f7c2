"""Plans are read on a client's behalf only from the plans directory: attacks on that boundary, through the
real API (``POST /plans/validate``, ``/plans/dry-run``, ``/waves``) and against :class:`PlansDirectory`.

Each attack puts a secret next to (or behind) the plans directory and checks the secret never comes back, in
any field of any answer, and that the answer is a 4xx — never a 500 or a hang.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from patchflow.config import Settings
from patchflow.control.devserver import free_port
from patchflow.core.plans import PlanError
from patchflow.metrics import Metrics
from patchflow.service.api import create_app
from patchflow.service.intake import MAX_PLAN_BYTES, PlanAccessRefused, PlansDirectory
from patchflow.store import db
from tests.conftest import EXAMPLES_DIR

SECRET = "hunter2-7f3a"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``data/plans`` with a valid plan (and the files it names), and a secret outside the directory."""
    plans = tmp_path / "data" / "plans"
    plans.mkdir(parents=True)
    plan = yaml.safe_load((EXAMPLES_DIR / "demo-plan.yaml").read_text())
    for key in ("baseline", "catalog"):
        source = (EXAMPLES_DIR / plan[key]).resolve()
        (plans / source.name).write_text(source.read_text())
        plan[key] = source.name
    (plans / "fleet.yaml").write_text((EXAMPLES_DIR / plan["executor"]["fleet"]).read_text())
    plan["executor"]["fleet"] = "fleet.yaml"
    (plans / "demo.yaml").write_text(yaml.safe_dump(plan))
    (tmp_path / "shadow").write_text(f"root: {SECRET}\nSECRET_{SECRET}: 1\n")
    return tmp_path


@pytest.fixture
async def api(tree: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """The API with its default plans directory ($PATCHFLOW_DATA_DIR/plans), an operator token, no Temporal."""
    url = f"sqlite:///{tree / 'patchflow.db'}"
    db.upgrade(url)
    with db.open_session(db.get_engine(url)) as session:
        token = db.create_token(session, name="olga", role="operator")[1]
    settings = Settings(data_dir=tree / "data", database_url=url, temporal_address=f"127.0.0.1:{free_port()}")
    assert settings.api_plans_dir is None and settings.api_plans_dir_resolved == tree / "data" / "plans"
    app = create_app(settings, metrics=Metrics(CollectorRegistry()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client, {"Authorization": f"Bearer {token}"}


async def validate(api: tuple[httpx.AsyncClient, dict[str, str]], plan: str) -> httpx.Response:
    client, auth = api
    response = await client.post("/plans/validate", json={"plan": plan}, headers=auth)
    assert SECRET not in response.text, response.text
    return response


async def test_the_default_plans_directory_serves_its_plans(
    api: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    response = await validate(api, "demo.yaml")
    assert response.status_code == 200 and response.json()["valid"] is True, response.text


@pytest.mark.parametrize(
    "plan",
    [
        "../../shadow",
        "../shadow",
        "SHADOW",
        "/etc/passwd",
        "/dev/zero",
        "/proc/self/environ",
        "/no/such/file",
    ],
)
async def test_paths_outside_the_directory_are_refused(
    api: tuple[httpx.AsyncClient, dict[str, str]], tree: Path, plan: str
) -> None:
    """Refused as outside whether or not they exist: the answer is no oracle for the server's files."""
    if plan == "SHADOW":
        plan = str(tree / "shadow")  # absolute, outside
    response = await validate(api, plan)
    assert response.status_code == 422, response.text
    assert "outside the plans directory" in response.json()["error"]["message"], response.text


async def test_symlinks_leading_out_are_refused_and_those_staying_in_are_followed(
    api: tuple[httpx.AsyncClient, dict[str, str]], tree: Path
) -> None:
    plans = tree / "data" / "plans"
    (plans / "innocent.yaml").symlink_to(tree / "shadow")
    (plans / "zero.yaml").symlink_to("/dev/zero")
    (plans / "outside").symlink_to(tree)
    (plans / "alias.yaml").symlink_to(plans / "demo.yaml")
    for plan in ("innocent.yaml", "zero.yaml", "outside/shadow", "outside/data/plans/../../shadow"):
        response = await validate(api, plan)
        assert response.status_code == 422 and "outside the plans directory" in response.text, (
            plan,
            response.text,
        )
    assert (await validate(api, "alias.yaml")).json()["valid"] is True


async def test_only_regular_files_small_enough_are_read(
    api: tuple[httpx.AsyncClient, dict[str, str]], tree: Path
) -> None:
    plans = tree / "data" / "plans"
    os.mkfifo(plans / "pipe.yaml")  # opening it for reading would block until a writer came
    (plans / "folder.yaml").mkdir()
    (plans / "huge.yaml").write_text("#" * (MAX_PLAN_BYTES + 1))
    for plan, words in (
        ("pipe.yaml", "a plan is a regular file"),
        ("folder.yaml", "a plan is a regular file"),
        ("huge.yaml", "plans are at most 1048576 bytes"),
    ):
        response = await validate(api, plan)
        assert response.status_code == 422 and words in response.json()["error"]["message"], response.text


@pytest.mark.parametrize(
    "content",
    [
        f"root: {SECRET}\ndaemon: x\n",  # a mapping, but no plan: no key or value is named
        f"{SECRET}\n",  # a scalar
        f"name: x\nstages: [\n  {SECRET}: [unclosed\n",  # a syntax error: line and column only
        f"password: '{SECRET}\n",  # an unterminated quote
        f"tag: !{SECRET} x\n",  # the parser's message would quote the tag
        "[" * 10_000 + "]" * 10_000,  # deep: refused before the parser recurses
        "",
    ],
)
async def test_files_that_are_not_plans_are_never_quoted(
    api: tuple[httpx.AsyncClient, dict[str, str]], tree: Path, content: str
) -> None:
    (tree / "data" / "plans" / "notaplan.yaml").write_text(content)
    response = await validate(api, "notaplan.yaml")  # asserts the secret is not in the answer
    assert response.status_code == 200 and response.json()["valid"] is False, response.text
    client, auth = api
    for path, body in (("/waves", {"plan": "notaplan.yaml"}), ("/plans/dry-run", {"plan": "notaplan.yaml"})):
        answer = await client.post(path, json=body, headers=auth)
        assert answer.status_code == 422 and SECRET not in answer.text, answer.text


async def test_files_a_plan_names_must_be_inside_too(
    api: tuple[httpx.AsyncClient, dict[str, str]], tree: Path
) -> None:
    plans = tree / "data" / "plans"
    plan = yaml.safe_load((plans / "demo.yaml").read_text())
    (plans / "link.yaml").symlink_to(tree / "shadow")
    variants = {
        "baseline": {**plan, "baseline": "../../shadow"},
        "catalog": {**plan, "catalog": str(tree / "shadow")},
        "executor.fleet": {**plan, "executor": {**plan["executor"], "fleet": "link.yaml"}},
        "freezes[0].ical": {**plan, "freezes": [{"name": "x", "ical": "../../shadow"}]},
    }
    for where, variant in variants.items():
        (plans / "bad.yaml").write_text(yaml.safe_dump(variant))
        response = await validate(api, "bad.yaml")
        assert response.status_code == 422, response.text
        [problem] = response.json()["error"]["problems"]
        assert (
            problem["path"] == where
            and problem["line"]
            and "outside the plans directory" in problem["message"]
        )


def test_a_missing_directory_says_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(PlanAccessRefused, match="does not exist; create it"):
        PlansDirectory(tmp_path / "nowhere").load("demo.yaml")


def test_a_plan_that_is_a_plan_keeps_its_located_problems(tree: Path) -> None:
    """Refusing to quote is for files that are not plans; a plan's own mistakes are still shown where."""
    plans = tree / "data" / "plans"
    (plans / "typo.yaml").write_text("name: demo\nstages: []\nexecutor: {kind: warp}\n")
    with pytest.raises(PlanError) as caught:
        PlansDirectory(plans).load("typo.yaml")
    assert not isinstance(caught.value, PlanAccessRefused)
    paths = {p.path: p for p in caught.value.problems}
    assert paths["executor.kind"].line == 3 and "'warp' is not an executor" in paths["executor.kind"].message
    assert json.dumps(str(caught.value)).count(SECRET) == 0
