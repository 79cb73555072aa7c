"""What may leave this machine: configurations without secrets, local paths, user names or timings."""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any

#: parameter names whose values never reach config.yaml, pipeline.yaml, the summary or a card
SECRET_RE = re.compile(r"(token|secret|password|passwd|api_?key|credential)", re.IGNORECASE)
REDACTED = "<redacted>"
#: keys of wall-clock measurements, left out of published documents
TIMING_RE = re.compile(r"(seconds|_time$|^time$|duration|elapsed|finished|started)", re.IGNORECASE)


def redact(obj: Any) -> Any:
    """Replace values of secret-looking keys (token, password, ...) with a placeholder."""
    if isinstance(obj, dict):
        return {k: (REDACTED if SECRET_RE.search(str(k)) and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def shareable(obj: Any) -> Any:
    """``obj`` fit for a published card: secrets redacted, timing keys dropped, every absolute
    path (or ``~`` path) reduced to its file name, so no local folder or user name is left."""
    if isinstance(obj, dict):
        return {k: shareable(v) for k, v in redact(obj).items() if not TIMING_RE.search(str(k))}
    if isinstance(obj, list):
        return [shareable(v) for v in obj]
    if isinstance(obj, str) and (os.path.isabs(obj) or obj.startswith("~")):
        return PurePosixPath(obj.replace("\\", "/")).name or "."
    return obj
