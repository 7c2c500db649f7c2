"""Uploaded documents: JSON is parsed by ``json`` (the fast path that keeps ``POST /baselines/evaluate`` within
the CLI's time, ``bench/api_bench.py``), anything else by the shape-checked YAML path — with the same
results and the same refusals either way."""

from __future__ import annotations

import json

import pytest

from patchflow.errors import CatalogError
from patchflow.service.intake import parse_upload


def test_json_and_yaml_give_the_same_document() -> None:
    data = [{"name": "openssl", "version": "3.0.2-0ubuntu1.15", "security": True, "cve_ids": ["CVE-2026-1"]}]
    as_json = parse_upload(json.dumps(data), "catalog", CatalogError)
    as_yaml = parse_upload(
        "- name: openssl\n  version: 3.0.2-0ubuntu1.15\n  security: true\n  cve_ids: [CVE-2026-1]\n",
        "catalog",
        CatalogError,
    )
    assert as_json.data == as_yaml.data == data


def test_a_yaml_flow_mapping_that_is_not_json_still_parses() -> None:
    assert parse_upload("{Name: web, OperatingSystem: UBUNTU}", "baseline", CatalogError).data == {
        "Name": "web",
        "OperatingSystem": "UBUNTU",
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[" * 50_000 + "]" * 50_000, "nested more than 64 levels deep"),  # JSON: its parser's own recursion
        ("- " * 100 + "x", "nested more than 64 levels deep"),  # YAML: the shape check
        ('{"name": "a", "name": "b"}', "duplicate key"),  # JSON's duplicate refused through the YAML path
        ("a: &a [x, x]\nb: [*a, *a]\n", "aliases"),
        ('[{"name": ', "not valid YAML"),
    ],
)
def test_refusals(text: str, words: str) -> None:
    with pytest.raises(CatalogError, match=words):
        parse_upload(text, "catalog", CatalogError)
