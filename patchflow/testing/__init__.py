"""Test fixtures and demo backends — never used by production code paths.

:mod:`patchflow.testing.ssm_endpoint` serves a faithful AWS Systems Manager endpoint (on top of moto's server)
so the SSM executor can be exercised with real boto3 over real HTTP. It needs the ``test`` extra
(``pip install -e '.[test]'``), which brings moto.
"""
