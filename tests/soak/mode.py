"""Short (CI) or long variants of the reliability suite: ``ISTHMUS_SOAK_LONG=1`` picks the long."""

from __future__ import annotations

import os
from typing import Any

API_KEY = "sk-soak-legit"  # the legitimate clients' key (the suite's edges accept only it)
IS_LONG = os.environ.get("ISTHMUS_SOAK_LONG", "") not in ("", "0")


def pick(short: Any, long: Any) -> Any:
    """The long variant's value under ISTHMUS_SOAK_LONG=1, else the short one."""
    return long if IS_LONG else short
