"""The AWS Systems Manager executor: ``AWS-RunPatchBaseline`` through boto3 (:mod:`.executor`), and the
collection of a fleet's patch inventory into a catalog (:mod:`.inventory`).

May import: :mod:`patchflow.core`, :mod:`patchflow.executors.base`, boto3/botocore.
"""

from patchflow.executors.ssm.executor import *  # noqa: F403 - the backend's public names
from patchflow.executors.ssm.executor import __all__ as __all__
