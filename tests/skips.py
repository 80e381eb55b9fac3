"""The one list of skips CI accepts.

On a developer's machine a test may skip for a reason of that machine (not root, no iptables,
no PostgreSQL binaries), and says so. In CI (`CI=true`) every one of those is installed or
true, so a skip means a part of the suite silently did not run: the run fails, unless the
skip is listed here (by test id prefix) with the reason it is expected in CI.
"""

from __future__ import annotations

#: Test id prefix -> why CI may skip it.
ALLOWED_IN_CI: dict[str, str] = {}


def allowed(nodeid: str) -> str | None:
    """The reason `nodeid`'s skip is accepted in CI, or None."""
    for prefix, reason in ALLOWED_IN_CI.items():
        if nodeid.startswith(prefix):
            return reason
    return None
