"""Where the project's data files (topics.yaml, schemas/, app*.toml, migrations/) live."""

from __future__ import annotations

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
    return Path(__file__).resolve().parent.parent
