"""The one error root of foretell, and what each error means to a caller.

Every error a user can cause or meet derives from :class:`ForetellError`, which carries the HTTP
status the REST layer answers with and the exit code the CLI ends with. Each transport maps the
root once; nothing else catches errors by message.

    ForetellError                  500 / exit 1   a genuine fault inside foretell
    ├── UserError                  400 / exit 2   the caller asked for something malformed
    │   ├── InputFormatError       400 / exit 2   a body or file that cannot be decoded
    │   ├── ValidationError        400 / exit 2   rows that break the model's input schema
    │   ├── TooLargeError          413 / exit 2   a body or a batch over the server's limits
    │   └── MethodNotAllowedError  405 / exit 2   an HTTP verb the route does not take
    ├── UnauthorizedError          401 / exit 6   no valid API key was sent
    ├── ForbiddenError             403 / exit 6   the key lacks the scope the call needs
    ├── NotFoundError              404 / exit 3   an unknown model or version
    ├── RateLimitedError           429 / exit 7   the caller sent more requests than its rate
    ├── RequestTimeoutError        504 / exit 7   a request ran past the server's time limit
    ├── SpecError                  500 / exit 4   a model.yaml that is not a valid spec
    └── ModelLoadError             503 / exit 5   a model that cannot be loaded or is not ready
        ├── UnsafeModelError       503 / exit 5   loading would run code the spec does not trust
        └── MissingExtraError      503 / exit 5   the runtime needs an optional extra
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ForetellError(Exception):
    """Root of every foretell error; ``status`` is the HTTP status, ``exit_code`` the CLI's."""

    status: int = 500
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """The body that HTTP transports answer with."""
        return {"error": self.message}


class UserError(ForetellError):
    """The caller asked for something malformed; asking differently fixes it."""

    status = 400
    exit_code = 2


class InputFormatError(UserError):
    """A request body or input file could not be decoded into rows."""


class TooLargeError(UserError):
    """A request body, or the rows in it, over the server's limits."""

    status = 413


class MethodNotAllowedError(UserError):
    """An HTTP verb the route does not take."""

    status = 405


@dataclass(frozen=True)
class Violation:
    """One broken rule: which row, which field, which rule, and what was received."""

    row: int
    field: str
    rule: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "rule": self.rule, "message": self.message}


class ValidationError(UserError):
    """Rows broke the model's input schema; ``violations`` lists every broken rule."""

    def __init__(self, violations: list[Violation], *, limit: int = 10) -> None:
        self.violations = violations
        shown = "; ".join(f"row {v.row}: {v.message}" for v in violations[:limit])
        more = len(violations) - limit
        suffix = f"; and {more} more" if more > 0 else ""
        super().__init__(f"input is invalid: {shown}{suffix}")

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "violations": [v.to_json() for v in self.violations]}


class UnauthorizedError(ForetellError):
    """No valid API key came with a call that needs one."""

    status = 401
    exit_code = 6


class ForbiddenError(ForetellError):
    """A valid API key without the scope the call needs."""

    status = 403
    exit_code = 6


class NotFoundError(ForetellError):
    """An unknown model or version was asked for."""

    status = 404
    exit_code = 3


class RateLimitedError(ForetellError):
    """The caller sent more requests than its rate limit; ``retry_after`` says when to retry."""

    status = 429
    exit_code = 7

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(ForetellError):
    """A request took longer than the server's time limit to arrive or to be answered."""

    status = 504
    exit_code = 7


class SpecError(ForetellError):
    """A model.yaml is missing, unreadable or breaks the spec's rules."""

    status = 500
    exit_code = 4


class ModelLoadError(ForetellError):
    """A model could not be loaded, or is not ready to answer."""

    status = 503
    exit_code = 5


class UnsafeModelError(ModelLoadError):
    """Loading the artifact would run code, and the spec does not say ``trusted: true``."""


class MissingExtraError(ModelLoadError):
    """A runtime needs an optional dependency that is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed; "
            f"install it with: pip install 'foretell[{extra}]'"
        )
        self.extra = extra
