"""Who is calling, and as which training job (SPEC §11, §15): bearer tokens, their scopes, the job.

Three kinds of token, all optional:

* ``--api-token``: scoring and the difficulty state, as any job (one trainer, or a trusted cluster);
* ``--admin-token``: the admin API (table reloads);
* ``--tokens-file FILE``: JSON ``{"TOKEN": {"job": "name", "scopes": ["score", "state", "admin"]}}``,
  one token per training job: a job's token acts only as its job (naming another job in the body,
  the query or the ``X-Reward-Job`` header is a 403), with the scopes it lists.

With no token configured for a scope, that scope is open (the default for a service on loopback).
Every route checks its token before it reads the body, so a caller without the token learns nothing
about validation (401 first).

A request names its job with ``job`` in the body, ``?job=`` or ``X-Reward-Job`` (in that order);
without one it is the token's job, else ``default``.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

from reward_server.errors import Forbidden, InvalidRequest, Unauthorized, UsageError
from reward_server.items.settings import Settings

SCOPES = ("score", "state", "admin")
DEFAULT_JOB = "default"
JOB_HEADER = "x-reward-job"
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
JOB_RULE = "1-64 characters: letters, digits, '_', '.', '-', starting with a letter or digit"
_REALMS = {"score": "scoring", "state": "the difficulty API", "admin": "the admin API"}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the job it is bound to (None: any job) and what it may do."""

    job: str | None
    scopes: frozenset[str]


OPEN = Principal(job=None, scopes=frozenset(SCOPES))


def check_job_name(name: str, field: str = "job") -> str:
    if not isinstance(name, str) or not JOB_NAME.match(name):
        shown = name[:64] if isinstance(name, str) else type(name).__name__
        raise InvalidRequest.for_field(field, f"{shown!r} is not a job name ({JOB_RULE})")
    return name


def load_tokens_file(path: str) -> dict[str, Principal]:
    """The tokens file, checked: a start-up error (exit 2) names what is wrong and where."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--tokens-file {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise UsageError(f'--tokens-file {path}: expected {{"TOKEN": {{"job": "name", "scopes": [...]}}, ...}}')
    book: dict[str, Principal] = {}
    for token, entry in raw.items():
        where = f"--tokens-file {path}: token {token[:4]}…"
        if not isinstance(entry, dict) or set(entry) - {"job", "scopes"}:
            raise UsageError(f"{where}: each entry is {{\"job\": name, \"scopes\": [...]}} and nothing else")
        job = entry.get("job")
        if not isinstance(job, str) or not JOB_NAME.match(job):
            raise UsageError(f"{where}: job must be a job name ({JOB_RULE})")
        scopes = entry.get("scopes", ["score", "state"])
        if not isinstance(scopes, list) or not scopes or set(scopes) - set(SCOPES):
            raise UsageError(f"{where}: scopes must be a non-empty list of {', '.join(SCOPES)}")
        if len(token) < 8:
            raise UsageError(f"{where}: a token needs at least 8 characters")
        book[token] = Principal(job=job, scopes=frozenset(scopes))
    return book


class TokenBook:
    """Every token the server accepts, and what each may do."""

    def __init__(self, settings: Settings) -> None:
        self.tokens: dict[bytes, Principal] = {}
        if settings.tokens_file:
            self.tokens.update({t.encode(): p for t, p in load_tokens_file(settings.tokens_file).items()})
        if settings.api_token:
            self.tokens[settings.api_token.encode()] = Principal(job=None, scopes=frozenset({"score", "state"}))
        if settings.admin_token:
            self.tokens[settings.admin_token.encode()] = Principal(job=None, scopes=frozenset({"admin"}))
        #: scopes some token grants: those need a token; the others are open
        self.guarded = frozenset(scope for p in self.tokens.values() for scope in p.scopes)

    @property
    def jobs(self) -> list[str]:
        """The jobs the tokens file names (the metrics' job labels start with these)."""
        return sorted({p.job for p in self.tokens.values() if p.job is not None})

    def admin_enabled(self) -> bool:
        return "admin" in self.guarded

    def authenticate(self, request: Request, scope: str, *, query_param: str | None = None) -> Principal:
        """401 unless the request carries a token that grants ``scope`` (403 for a known token
        without it): ``Authorization: Bearer <token>``, or, where a client cannot send headers
        (OpenRLHF, slime), ``?<query_param>=<token>`` when no bearer header is sent."""
        if scope not in self.guarded:
            return OPEN
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            supplied: str | None = value.strip()
        elif query_param is not None:
            supplied = request.query_params.get(query_param)
        else:
            supplied = None
        principal = self._lookup(supplied)
        if principal is None:
            also = f" (or ?{query_param}=<token>)" if query_param is not None else ""
            raise Unauthorized(f"{_REALMS[scope]} requires 'Authorization: Bearer <token>'{also}")
        if scope not in principal.scopes:
            raise Forbidden(f"this token may not use {_REALMS[scope]} (its scopes: {', '.join(sorted(principal.scopes))})")
        return principal

    def _lookup(self, supplied: str | None) -> Principal | None:
        if not supplied:
            return None
        # Every token is compared, in constant time each: which one matched leaks nothing.
        candidate = supplied.encode(errors="replace")
        found = None
        for token, principal in self.tokens.items():
            if secrets.compare_digest(candidate, token):
                found = principal
        return found


def request_job(request: Request, principal: Principal, body_job: Any = None) -> str:
    """The job a request acts as: named in the body, ``?job=`` or ``X-Reward-Job``, else the token's,
    else ``default``. A job token naming another job is a 403."""
    named = body_job if body_job is not None else request.query_params.get("job") or request.headers.get(JOB_HEADER)
    if named is not None:
        check_job_name(named)
    if principal.job is not None:
        if named is not None and named != principal.job:
            raise Forbidden(f"job: this token acts as job {principal.job!r}, not {named!r}",
                            [{"item": None, "field": "job", "message": f"the token's job is {principal.job!r}"}])
        return principal.job
    return named or DEFAULT_JOB


__all__ = ["DEFAULT_JOB", "OPEN", "Principal", "TokenBook", "check_job_name", "load_tokens_file", "request_job"]
