"""Test fixtures and demo backends — never used by production code paths.

:mod:`patchflow.testing.ssm_endpoint` serves a faithful AWS Systems Manager endpoint (on top of moto's server)
so the SSM executor can be exercised with real boto3 over real HTTP. It needs the ``test`` extra
(``pip install -e '.[test]'``), which brings moto.

:mod:`patchflow.testing.slack_api` is a small local Slack Web API for the Slack tests and demos.

May import anything. No production code path imports it (an import-linter contract keeps it so); only tests
and the CLI's ``--fake-aws`` demos do.
"""
