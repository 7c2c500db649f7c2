"""The simulated executor: a fleet described in a file (:mod:`.fleet`) whose state lives in SQLite
(:mod:`.executor`), for demos, tests and scale benchmarks.

May import: :mod:`patchflow.core`, :mod:`patchflow.executors.base`, the standard library.
"""

from patchflow.executors.simulated.executor import *  # noqa: F403 - the backend's public names
from patchflow.executors.simulated.executor import __all__ as __all__
