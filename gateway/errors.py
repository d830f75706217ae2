"""Errors specific to the gateway, on top of the shared tree."""

from __future__ import annotations

from qa_common.errors import NotFound


class AdminRoutesDisabled(NotFound):
    """Document administration is off until ADMIN_API_KEY is set."""

    code = "admin_disabled"
    default_message = "Document administration is disabled: set ADMIN_API_KEY to enable it."
