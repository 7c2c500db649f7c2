"""Canary analysis, pure: the ``success`` grammar, the verdicts, the instance regex, alert matching, and the plan keys.

Field meanings follow Argo Rollouts' AnalysisTemplate (interval, count, successCondition, failureLimit,
inconclusiveLimit: https://argo-rollouts.readthedocs.io/en/stable/features/analysis/); alert blocking follows
kured's ``--alert-filter-regexp`` with ``--alert-filter-match-only`` and ``--alert-firing-only``
(https://kured.dev/docs/configuration/).
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from pathlib import Path

import pytest

from patchflow.core import analysis
from patchflow.core.analysis import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    AnalysisQuery,
    ExpressionError,
    QueryTally,
    analysis_verdict,
    blocking_alerts,
    expand_query,
    instances_regex,
    measurement_verdict,
    parse_success,
    query_verdict,
)
from patchflow.core.plans import PlanError, load_plan
from tests.core.test_plans import GOOD_STAGE, write_plan

# ---------------------------------------------------------------------------------------------- the grammar


@pytest.mark.parametrize(
    ("expression", "result", "baseline", "expected"),
    [
        ("< 0.01", 0.005, None, True),
        ("< 0.01", 0.01, None, False),
        ("<= 0.01", 0.01, None, True),
        (">= 0.95", 0.95, None, True),
        ("> 0.95", 0.95, None, False),
        ("== 0", 0.0, None, True),
        ("!= 0", 0.0, None, False),
        ("result < 1 and result > 0", 0.5, None, True),
        ("result < 1 and result > 0", 1.5, None, False),
        ("result < 0 or result > 1", 1.5, None, True),
        ("not result > 1", 0.5, None, True),
        ("not (result > 1 or result < 0)", -1, None, False),
        ("result <= baseline * 1.5", 0.15, 0.1, True),
        ("result <= baseline * 1.5", 0.16, 0.1, False),
        ("result - baseline < 0.05", 0.12, 0.1, True),
        ("result / 2 + 1 == 2", 2, None, True),
        ("2 * (result + 1) == 6", 2, None, True),
        ("-result < 0", 2, None, True),
        ("result < 1e-2", 0.005, None, True),
        ("result < .5", 0.25, None, True),
        ("  <  0.01  ", 0.001, None, True),
        ("result * 1 + 2 * 3 == 7", 1, None, True),  # precedence: * before +
        ("result - 1 - 1 == 0", 2, None, True),  # left-associative
        ("result < 1 or result > 5 and result < 3", 6, None, False),  # and binds tighter than or
    ],
)
def test_expressions_evaluate(expression: str, result: float, baseline: float | None, expected: bool) -> None:
    assert parse_success(expression).evaluate(result, baseline) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty; write a condition such as '< 0.01'"),
        ("0.5", "must compare"),
        ("result + 1", "must compare"),
        ("res < 1", "unknown name 'res' at column 1; the variables are result and baseline"),
        ("< 1 <", "expected 'and' or 'or' between two comparisons"),
        ("0 < result < 1", "a < result < b is not allowed"),
        ("(result < 1", "expected ')' at column 12"),
        ("result < ", "expected a number, result, baseline or '(' at column 9, found the end"),
        ("< 1 $", "unexpected '$' at column 5"),
        ("__import__ < 1", "unknown name '__import__'"),
        ("__import__('os') < 1", 'unexpected "\'" at column 12'),
        ("result < 1 result", "expected an operator"),
        ("result and", "expected a number, result, baseline or '('"),
        ("< 0.01 )", "found ')'"),
    ],
)
def test_invalid_expressions_say_what_and_where(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(message)):
        parse_success(expression)


def test_the_grammar_never_evaluates_python() -> None:
    """No eval/exec/compile anywhere in the module: the expression is only ever walked."""
    tree = ast.parse(inspect.getsource(analysis))
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


def test_division_by_zero_is_no_crash() -> None:
    assert parse_success("result / baseline < 2").evaluate(1.0, 0.0) is False  # inf
    assert parse_success("result / baseline < 2").evaluate(0.0, 0.0) is False  # nan compares false


# ---------------------------------------------------------------------------------------------- verdicts


def test_a_measurement_fails_when_any_series_fails() -> None:
    assert measurement_verdict("< 0.01", [0.001, 0.002], None, compare=False) == (SUCCESSFUL, "")
    verdict, detail = measurement_verdict("< 0.01", [0.001, 0.2], None, compare=False)
    assert verdict == FAILED and "0.2 does not satisfy '< 0.01'" in detail


def test_no_series_or_nan_is_inconclusive() -> None:
    assert measurement_verdict("< 1", [], None, compare=False)[0] == INCONCLUSIVE
    assert measurement_verdict("< 1", [math.nan], None, compare=False)[0] == INCONCLUSIVE
    assert measurement_verdict("result < baseline", [1.0], None, compare=True)[0] == INCONCLUSIVE
    assert measurement_verdict("result < baseline", [1.0], 2.0, compare=True)[0] == SUCCESSFUL


def query(count: int, failure_limit: int = 0, inconclusive_limit: int | None = None) -> AnalysisQuery:
    return AnalysisQuery(
        name="q",
        query="x",
        success="< 1",
        count=count,
        failure_limit=failure_limit,
        inconclusive_limit=inconclusive_limit,
    )


def tally(successful: int = 0, failed: int = 0, inconclusive: int = 0) -> QueryTally:
    return QueryTally(successful=successful, failed=failed, inconclusive=inconclusive)


def test_failure_limit_is_argos() -> None:
    """Argo: "failureLimit ... the maximum number of failed measurements allowed"; one more fails the run."""
    q = query(count=5, failure_limit=2)
    assert query_verdict(q, tally(successful=1, failed=2), done=False) == ""
    assert query_verdict(q, tally(successful=1, failed=3), done=False) == FAILED
    assert query_verdict(q, tally(successful=3, failed=2), done=False) == SUCCESSFUL
    assert query_verdict(query(count=1), tally(failed=1), done=False) == FAILED


def test_errors_count_as_failures() -> None:
    t = QueryTally()
    t.add(ERROR)
    assert t.failed == 1 and query_verdict(query(count=3), t, done=False) == FAILED


def test_inconclusive_past_the_limit_and_its_default() -> None:
    # default (count - 1) // 2: 10 measurements tolerate 4 inconclusive ones, not 5
    q = query(count=10)
    assert query_verdict(q, tally(successful=6, inconclusive=4), done=False) == SUCCESSFUL
    assert query_verdict(q, tally(successful=1, inconclusive=5), done=False) == INCONCLUSIVE
    # all inconclusive: inconclusive (count 1 tolerates none)
    assert query_verdict(query(count=1), tally(inconclusive=1), done=False) == INCONCLUSIVE
    assert query_verdict(
        query(count=3, inconclusive_limit=2), tally(inconclusive=2, successful=1), done=False
    ) == (SUCCESSFUL)
    # failures decide before inconclusive ones
    assert query_verdict(query(count=4), tally(failed=1, inconclusive=3), done=False) == FAILED


def test_the_analysis_result() -> None:
    assert analysis_verdict([SUCCESSFUL, SUCCESSFUL]) == SUCCESSFUL
    assert analysis_verdict([SUCCESSFUL, INCONCLUSIVE]) == INCONCLUSIVE
    assert analysis_verdict([INCONCLUSIVE, FAILED]) == FAILED


# ---------------------------------------------------------------------------------------------- queries, alerts


def test_instances_expand_to_an_exact_alternation() -> None:
    ids = ["i-0abc", "host.example.com", "web+1"]
    regex = instances_regex(ids)
    assert regex == "i-0abc|host[.]example[.]com|web[+]1"
    anchored = re.compile(f"^(?:{regex})$")
    assert all(anchored.match(i) for i in ids)
    assert not anchored.match("hostXexample.com") and not anchored.match("i-0abcd")
    assert not re.match(f"^(?:{instances_regex([])})$", "")
    promql = expand_query(
        'sum(x{host=~"{{instances}}"}) / sum(x{host=~"{{baseline_instances}}"})', ["a"], ["b", "c"]
    )
    assert promql == 'sum(x{host=~"a"}) / sum(x{host=~"b|c"})'


def test_only_firing_matching_alerts_block() -> None:
    alerts = [
        {"labels": {"alertname": "NodeDown"}, "state": "firing"},
        {"labels": {"alertname": "HighErrorRate"}, "state": "pending"},
        {"labels": {"alertname": "DiskFull"}, "state": "firing"},
        {"labels": {"alertname": "NodeDown", "instance": "b"}, "state": "firing"},
    ]
    assert blocking_alerts(alerts, "^(NodeDown|HighErrorRate)$") == ["NodeDown"]
    assert blocking_alerts(alerts, "^Nothing$") == []


# ---------------------------------------------------------------------------------------------- plan keys

ANALYSIS = (
    "    canary: {count: 2, soak_seconds: 30}\n"
    "    gate:\n"
    "      analysis:\n"
    "        prometheus: http://127.0.0.1:9090\n"
    "        compare: unpatched\n"
    "        inconclusive: approval\n"
    "        approvers: [alice]\n"
    "        queries:\n"
    "          - name: error-rate\n"
    "            query: 'sum(rate(errors{host=~\"{{instances}}\"}[1m]))'\n"
    "            success: result <= baseline * 1.5\n"
    "            interval_seconds: 10\n"
    "            count: 6\n"
    "            failure_limit: 1\n"
    "    block_on_alerts: {prometheus: 'http://127.0.0.1:9090/', match: '^NodeDown$', check_seconds: 5}\n"
)


def test_plan_keys(tmp_path: Path) -> None:
    plan = load_plan(
        write_plan(
            tmp_path,
            "block_on_alerts: {prometheus: http://prom:9090, match: Page}\nstages:\n" + GOOD_STAGE + ANALYSIS,
        )
    )
    stage = plan.stages[0]
    assert stage.canary is not None and (stage.canary.count, stage.canary.soak_seconds) == (2, 30)
    spec = stage.gate.analysis
    assert stage.gate.kind == "analysis" and spec is not None
    assert (spec.compare, spec.inconclusive, spec.approvers) == ("unpatched", "approval", ["alice"])
    q = spec.queries[0]
    assert (q.name, q.interval_seconds, q.count, q.failure_limit, q.inconclusive_limit) == (
        "error-rate",
        10,
        6,
        1,
        None,
    )
    assert stage.block_on_alerts is not None and stage.block_on_alerts.prometheus == "http://127.0.0.1:9090"
    assert stage.block_on_alerts.check_seconds == 5
    assert plan.block_on_alerts is not None and plan.block_on_alerts.check_seconds == 60


@pytest.mark.parametrize(
    ("replace", "expected"),
    [
        (
            "success: result <= baseline * 1.5",
            "stages[0].gate.analysis.queries[0].success: 'result <= baseline * 1.5 <': expected 'and' or 'or'",
        ),
        (
            "compare: unpatched",
            "stages[0].gate.analysis.queries[0].success: uses baseline: add compare: unpatched",
        ),
        (
            "failure_limit: 1",
            "stages[0].gate.analysis.queries[0].failure_limit: must be smaller than count (6)",
        ),
        ("approvers: [alice]", "stages[0].gate.analysis.approvers: required with inconclusive: approval"),
        ("inconclusive: approval", "stages[0].gate.analysis.inconclusive: 'maybe': use approval"),
        (
            "prometheus: http://127.0.0.1:9090\n",
            "stages[0].gate.analysis.prometheus: required: the Prometheus",
        ),
        ("count: 2, soak", "stages[0].canary.count: required: how many targets go first"),
        ("match: '^NodeDown$'", "stages[0].block_on_alerts.match: '(' is not a regex"),
        (
            "interval_seconds: 10",
            "stages[0].gate.analysis.queries[0].interval_secs: unknown key; did you mean 'interval_seconds'?",
        ),
    ],
)
def test_plan_errors_name_the_field(tmp_path: Path, replace: str, expected: str) -> None:
    broken = {
        "success: result <= baseline * 1.5": "success: result <= baseline * 1.5 <",
        "compare: unpatched": "compare: ''",
        "failure_limit: 1": "failure_limit: 6",
        "approvers: [alice]": "approvers: []",
        "inconclusive: approval": "inconclusive: maybe",
        "prometheus: http://127.0.0.1:9090\n": "prometheus: prom:9090\n",
        "count: 2, soak": "count: 0, soak",
        "match: '^NodeDown$'": "match: '('",
        "interval_seconds: 10": "interval_secs: 10",
    }[replace]
    body = ANALYSIS.replace(replace, broken, 1)
    with pytest.raises(PlanError) as caught:
        load_plan(write_plan(tmp_path, "stages:\n" + GOOD_STAGE + body))
    text = str(caught.value) + "\n".join(f"{p.path}: {p.message}" for p in caught.value.problems or [])
    assert expected in text, text
    assert re.search(r"plan\.yaml:\d+", text), text
