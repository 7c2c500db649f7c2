"""Canary analysis and alert blocking: the plan's specs, the ``success`` expression grammar and the verdicts.

Field meanings follow Argo Rollouts' AnalysisTemplate
(https://argo-rollouts.readthedocs.io/en/stable/features/analysis/): a query is measured ``count`` times,
``interval_seconds`` apart; a measurement whose ``success`` expression is false is a failure, and more than
``failure_limit`` failures fail the analysis (Argo's ``failureLimit``). A measurement with no value (the query
returned no series, or NaN) is *inconclusive*; more than ``inconclusive_limit`` of them make the query
inconclusive (Argo's ``inconclusiveLimit``; its default 0 would stop a rollout at the first scrape gap, so here
the default tolerates fewer than half: ``(count - 1) // 2``). A query Prometheus could not answer (unreachable,
a bad query) is an *error* and counts as a failure — Argo's analysis errs and its rollout aborts; here, the wave
halts: never promote on data nobody saw.

Alert blocking follows kured's ``--alert-filter-regexp`` with ``--alert-filter-match-only`` and
``--alert-firing-only`` (https://kured.dev/docs/configuration/): dispatch waits while any *firing* alert whose
name matches ``match`` is active; a Prometheus that cannot be asked blocks too (fail safe).

The ``success`` expression is a small grammar evaluated without ``eval``::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | atom
    atom       := NUMBER | "result" | "baseline" | "(" expr ")"

and ``< 0.01`` (an expression that starts with a comparison operator) is short for ``result < 0.01``. The
expression must compare: a bare number or arithmetic is refused.

Pure: no I/O; workflows import it (the dataclasses cross the Temporal boundary).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime

# Measurement and analysis verdicts.
SUCCESSFUL = "successful"
FAILED = "failed"
INCONCLUSIVE = "inconclusive"
ERROR = "error"
"""A measurement Prometheus could not answer: counts as a failure."""

#: What an inconclusive analysis leads to (``gate.analysis.inconclusive``).
INCONCLUSIVE_CHOICES = ("approval", "halt", "continue")

#: Measurements one stage's status keeps (the newest; counts per query stay complete): a bounded payload.
MAX_KEPT_MEASUREMENTS = 60
#: Values of one measurement kept in the status (a query returning many series keeps its first ones).
MAX_KEPT_VALUES = 5


class ExpressionError(ValueError):
    """A ``success`` expression that does not parse; the message says where and what was expected."""


# ---------------------------------------------------------------------------------------------- specs


@dataclass
class AnalysisQuery:
    """One metric of an analysis (Argo: one entry of ``metrics``)."""

    name: str
    query: str
    """PromQL; ``{{instances}}`` becomes a regex alternation of the analysed instance ids (``{{baseline_instances}}``
    of the unpatched ones with ``compare: unpatched``)."""
    success: str
    """The success expression (``< 0.01``, ``result < baseline * 1.5``): see the module docstring."""
    interval_seconds: int = 60
    count: int = 1
    failure_limit: int = 0
    """Failed (or errored) measurements tolerated; one more fails the analysis."""
    inconclusive_limit: int | None = None
    """Inconclusive measurements tolerated; one more makes the query inconclusive. None: ``(count - 1) // 2``."""


@dataclass
class AnalysisSpec:
    """``gate.analysis`` of a stage."""

    prometheus: str
    """Base URL of the Prometheus HTTP API (``http://prometheus:9090``)."""
    queries: list[AnalysisQuery]
    compare: str = ""
    """``unpatched``: each query is also run over the stage's unpatched instances, as ``baseline``."""
    inconclusive: str = "halt"
    """``approval``, ``halt`` or ``continue``."""
    approvers: list[str] = field(default_factory=list)
    """Who may approve an inconclusive analysis (``inconclusive: approval``)."""


@dataclass
class AlertBlockSpec:
    """``block_on_alerts``: no dispatch while a matching alert fires."""

    prometheus: str
    match: str
    """Regex searched in each firing alert's name (``^(NodeDown|HighErrorRate)$``)."""
    check_seconds: int = 60
    """While blocked, check again this often."""


# ---------------------------------------------------------------------------------------------- payloads


@dataclass
class MeasureInput:
    """One measurement of one query (the ``measure`` activity)."""

    prometheus: str
    query: AnalysisQuery
    instance_ids: list[str]
    baseline_ids: list[str] = field(default_factory=list)
    compare: bool = False
    wave_id: str = ""
    stage: str = ""


@dataclass
class Measurement:
    """One measurement as recorded in the stage's status (and the history database with it)."""

    query: str
    at: datetime
    verdict: str
    """successful, failed, inconclusive or error."""
    values: list[float] = field(default_factory=list)
    """The query's values (the first :data:`MAX_KEPT_VALUES` series)."""
    baseline: float | None = None
    detail: str = ""


@dataclass
class AnalysisRunInput:
    """An analysis finished (the ``record_analysis`` activity counts it)."""

    wave_id: str
    stage: str
    result: str


@dataclass
class AlertCheckInput:
    spec: AlertBlockSpec


@dataclass
class AlertCheckResult:
    blocking: list[str]
    """Names of the firing alerts that block (empty: dispatch may go on)."""
    reason: str = ""
    """Why dispatch is blocked, as the operator reads it (empty when not blocked)."""


@dataclass
class QueryTally:
    """How one query's measurements went."""

    successful: int = 0
    failed: int = 0
    inconclusive: int = 0

    def add(self, verdict: str) -> None:
        if verdict == SUCCESSFUL:
            self.successful += 1
        elif verdict in (FAILED, ERROR):
            self.failed += 1
        else:
            self.inconclusive += 1


@dataclass
class AnalysisSummary:
    """A stage's analysis as ``wave status`` shows it: per query, how its measurements went, and the result."""

    tallies: dict[str, QueryTally] = field(default_factory=dict)
    result: str = ""
    """Empty while it runs; then successful, failed or inconclusive."""
    instances: int = 0
    """Instances analysed."""


# ---------------------------------------------------------------------------------------------- verdicts


def finite(value: float | None) -> float | None:
    """``value``, or None for NaN and ±Inf (which Prometheus answers for 0/0 and x/0, and JSON cannot hold)."""
    return value if value is not None and math.isfinite(value) else None


def inconclusive_limit(query: AnalysisQuery) -> int:
    """Inconclusive measurements the query tolerates."""
    return query.inconclusive_limit if query.inconclusive_limit is not None else (query.count - 1) // 2


def query_verdict(query: AnalysisQuery, tally: QueryTally, *, done: bool) -> str:
    """The query's verdict so far: failed past ``failure_limit``, inconclusive past its inconclusive limit,
    successful once every measurement was taken; "" while undecided (measure on)."""
    if tally.failed > query.failure_limit:
        return FAILED
    if tally.inconclusive > inconclusive_limit(query):
        return INCONCLUSIVE
    if done or tally.successful + tally.failed + tally.inconclusive >= query.count:
        return SUCCESSFUL
    return ""


def analysis_verdict(verdicts: list[str]) -> str:
    """The analysis' result from its queries': any failed → failed; else any inconclusive → inconclusive."""
    if FAILED in verdicts:
        return FAILED
    if INCONCLUSIVE in verdicts:
        return INCONCLUSIVE
    return SUCCESSFUL


def measurement_verdict(
    expression: str, values: list[float], baseline: float | None, *, compare: bool
) -> tuple[str, str]:
    """A measurement's verdict and detail: inconclusive without a value (no series, NaN, or no baseline when
    comparing); else successful when the expression holds for every value (every series)."""
    if not values or any(math.isnan(v) for v in values):
        return INCONCLUSIVE, "the query returned no series" if not values else "the query returned NaN"
    if compare and (baseline is None or math.isnan(baseline)):
        return INCONCLUSIVE, "the baseline query returned no value"
    condition = parse_success(expression)
    for value in values:
        if not condition.evaluate(value, baseline):
            return FAILED, f"{_fmt(value)} does not satisfy {expression!r}" + (
                f" (baseline {_fmt(baseline)})" if baseline is not None else ""
            )
    return SUCCESSFUL, ""


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def instances_regex(instance_ids: list[str]) -> str:
    """A regex alternation matching exactly these ids (for ``label=~"{{instances}}"``; Prometheus anchors it).

    Special characters become one-character classes (``.`` → ``[.]``), so the regex needs no backslash and reads
    the same inside a double-quoted, single-quoted or backtick PromQL string. No ids: a regex that matches no
    label value at all (the query then returns no series: an inconclusive measurement).
    """
    if not instance_ids:
        return "x^"  # a character before the start of the text: matches nothing, not even the empty string
    return "|".join("".join(_regex_char(c) for c in i) for i in instance_ids)


def _regex_char(char: str) -> str:
    if char.isalnum() or char in "-_:/@,;=%~!#&<> ":
        return char
    if char == '"':
        return '\\"'  # the PromQL string's escape; the regex sees a plain quote
    if char in "^\\]'":
        return "\\\\" + (
            "\\\\" if char == "\\" else char
        )  # rare: only a double-quoted PromQL string reads it as the regex's \c
    return f"[{char}]"


def expand_query(query: str, instance_ids: list[str], baseline_ids: list[str]) -> str:
    """The PromQL with ``{{instances}}`` and ``{{baseline_instances}}`` filled in."""
    return query.replace("{{instances}}", instances_regex(instance_ids)).replace(
        "{{baseline_instances}}", instances_regex(baseline_ids)
    )


def baseline_query(query: str, baseline_ids: list[str]) -> str:
    """The same query over the unpatched instances: ``{{instances}}`` means them here."""
    return expand_query(query, baseline_ids, baseline_ids)


def blocking_alerts(alerts: list[dict[str, object]], match: str) -> list[str]:
    """Names of the firing alerts (Prometheus' ``/api/v1/alerts`` entries) whose ``alertname`` matches."""
    pattern = re.compile(match)
    names: list[str] = []
    for alert in alerts:
        labels = alert.get("labels")
        name = labels.get("alertname", "") if isinstance(labels, dict) else ""
        firing = alert.get("state") == "firing"
        if firing and isinstance(name, str) and pattern.search(name) and name not in names:
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------- the grammar

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\))"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
_VARIABLES = ("result", "baseline")


@dataclass(frozen=True)
class _Token:
    kind: str
    """number, op, word or end."""
    text: str
    at: int
    """Column (0-based) in the expression."""


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if match is None or match.end() == pos:
            bad = text[pos:].lstrip()
            col = len(text) - len(bad)
            raise ExpressionError(f"unexpected {bad[0]!r} at column {col + 1}")
        kind = match.lastgroup or "op"
        value = match.group(kind)
        out.append(_Token(kind, value, match.start(kind)))
        pos = match.end()
    out.append(_Token("end", "", len(text)))
    return out


@dataclass(frozen=True)
class Node:
    """A parsed expression node: ``op`` with its ``args`` (numbers and variables are leaves)."""

    op: str
    """num, var, neg, not, and, or, a comparison or an arithmetic operator."""
    args: tuple[Node, ...] = ()
    value: float = 0.0
    name: str = ""

    def evaluate(self, result: float, baseline: float | None = None) -> float | bool:
        """The node's value for these variables (a comparison or logic node: a bool)."""
        op = self.op
        if op == "num":
            return self.value
        if op == "var":
            if self.name == "baseline":
                if baseline is None:
                    raise ExpressionError("baseline has no value (set compare: unpatched)")
                return baseline
            return result
        if op == "neg":
            return -self.args[0].evaluate(result, baseline)
        if op == "not":
            return not self.args[0].evaluate(result, baseline)
        if op == "and":
            return bool(self.args[0].evaluate(result, baseline)) and bool(
                self.args[1].evaluate(result, baseline)
            )
        if op == "or":
            return bool(self.args[0].evaluate(result, baseline)) or bool(
                self.args[1].evaluate(result, baseline)
            )
        left = float(self.args[0].evaluate(result, baseline))
        right = float(self.args[1].evaluate(result, baseline))
        return _binary(op, left, right)


def _binary(op: str, left: float, right: float) -> float | bool:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        return left / right if right else math.copysign(math.inf, left) if left else math.nan
    return {
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
        "==": left == right,
        "!=": left != right,
    }[op]


class _Parser:
    """Recursive descent over :func:`_tokens`; each method is one rule of the grammar."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def fail(self, expected: str) -> ExpressionError:
        token = self.peek()
        found = "the end" if token.kind == "end" else repr(token.text)
        return ExpressionError(f"expected {expected} at column {token.at + 1}, found {found}")

    def parse(self) -> tuple[Node, bool]:
        node = self.or_()
        if self.peek().kind != "end":
            raise self.fail("an operator (< <= > >= == != + - * / and or)")
        return node, _is_condition(node)

    def or_(self) -> Node:
        node = self.and_()
        while self.peek().kind == "word" and self.peek().text == "or":
            self.take()
            node = Node("or", (node, self.and_()))
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek().kind == "word" and self.peek().text == "and":
            self.take()
            node = Node("and", (node, self.not_()))
        return node

    def not_(self) -> Node:
        if self.peek().kind == "word" and self.peek().text == "not":
            self.take()
            return Node("not", (self.not_(),))
        return self.comparison()

    def comparison(self) -> Node:
        node = self.sum()
        if self.peek().kind == "op" and self.peek().text in _COMPARISONS:
            op = self.take().text
            node = Node(op, (node, self.sum()))
            if self.peek().kind == "op" and self.peek().text in _COMPARISONS:
                raise self.fail("'and' or 'or' between two comparisons (a < result < b is not allowed)")
        return node

    def sum(self) -> Node:
        node = self.product()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            op = self.take().text
            node = Node(op, (node, self.product()))
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/"):
            op = self.take().text
            node = Node(op, (node, self.unary()))
        return node

    def unary(self) -> Node:
        if self.peek().kind == "op" and self.peek().text == "-":
            self.take()
            return Node("neg", (self.unary(),))
        return self.atom()

    def atom(self) -> Node:
        token = self.peek()
        if token.kind == "number":
            self.take()
            return Node("num", value=float(token.text))
        if token.kind == "word" and token.text in _VARIABLES:
            self.take()
            return Node("var", name=token.text)
        if token.kind == "op" and token.text == "(":
            self.take()
            node = self.or_()
            if self.peek().kind != "op" or self.peek().text != ")":
                raise self.fail("')'")
            self.take()
            return node
        if token.kind == "word" and token.text not in ("and", "or", "not"):
            raise ExpressionError(
                f"unknown name {token.text!r} at column {token.at + 1}; the variables are result and baseline"
            )
        raise self.fail("a number, result, baseline or '('")


def _is_condition(node: Node) -> bool:
    """Whether the node yields true/false (a comparison or logic), not a number."""
    return node.op in (*_COMPARISONS, "and", "or", "not")


def parse_success(expression: str) -> Node:
    """Parse a ``success`` expression; ``< 0.01`` is short for ``result < 0.01``.

    Raises:
        ExpressionError: what is wrong, and where.
    """
    text = expression.strip()
    if not text:
        raise ExpressionError("empty; write a condition such as '< 0.01' or 'result <= baseline * 1.2'")
    if text.startswith(_COMPARISONS):
        text = f"result {text}"
        offset = len("result ") - (len(expression) - len(expression.lstrip()))
    else:
        offset = 0
    try:
        node, condition = _Parser(text).parse()
    except ExpressionError as exc:
        raise ExpressionError(_shift_column(str(exc), offset)) from None
    if not condition:
        raise ExpressionError("must compare (e.g. '< 0.01', 'result >= 0.95'), not just compute a number")
    return node


def _shift_column(message: str, offset: int) -> str:
    """Columns in ``message`` as the user wrote the expression (before ``result`` was prepended)."""
    return re.sub(r"column (\d+)", lambda m: f"column {max(1, int(m.group(1)) - offset)}", message)


def uses_baseline(expression: str) -> bool:
    """Whether the expression refers to ``baseline`` (then the plan must say ``compare: unpatched``)."""
    return any(t.kind == "word" and t.text == "baseline" for t in _tokens(expression.strip()))
