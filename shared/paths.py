"""Where the project's data files (topics.yaml, schemas/, app*.toml, migrations/) live."""

from __future__ import annotations

import functools
import os
from pathlib import Path

HOME_ENV = "DISPATCHER_HOME"


def project_root() -> Path:
    """The directory holding topics.yaml and schemas/.

    In the repository that is the parent of the ``shared`` package; a deployed function bundle
    lays the same files beside ``shared/``. ``DISPATCHER_HOME`` overrides both.
    """
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override)
    return _package_parent()


@functools.cache
def _package_parent() -> Path:
    # resolve() costs a few syscalls per path component; every schema validation asks.
    return Path(__file__).resolve().parent.parent
