"""Finding runs and sessions by id or by continuation token; a missing one is NotFound, and one that is
missing because retention deleted it says so. A run the caller may not see is not found either."""

from __future__ import annotations

from .. import clock
from ..errors import NotFound, not_found
from .callers import OPERATOR, Caller
from .model import Run
from .requests import RUN_ID_PREFIX, run_id_created_at, valid_id
from .sessions import SESSION_ID_PREFIX, Session, SessionStore
from .store import RunStore
from .tokens import TokenClaims, TokenCodec


class RunReader:
    def __init__(self, store: RunStore, sessions: SessionStore, tokens: TokenCodec, retention_seconds: float) -> None:
        self._store = store
        self._sessions = sessions
        self._tokens = tokens
        self._retention = retention_seconds

    async def get(
        self, run_id: str, *, existed: bool = False, caller: Caller = OPERATOR, with_request: bool = False
    ) -> Run:
        """The run with its result (and its provider request if asked). `existed`: the caller proved the run
        existed (a signed token)."""
        run = (
            await self._store.get(run_id, with_result=True, with_request=with_request)
            if valid_id(RUN_ID_PREFIX, run_id)
            else None
        )
        if run is not None and not caller.can_see(run):
            raise not_found("run", run_id)  # exactly what an unknown id answers
        if run is None:
            raise self._missing(run_id, existed)
        return run

    async def get_by_token(self, token: str) -> tuple[Run, TokenClaims]:
        claims = self._tokens.decode(token)
        return await self.get(claims.run_id, existed=True), claims

    def decode_token(self, token: str, *, param: str = "continuation_token") -> TokenClaims:
        return self._tokens.decode(token, param=param)

    async def session(self, session_id: str) -> tuple[Session, list[Run]]:
        session = await self._sessions.get(session_id) if valid_id(SESSION_ID_PREFIX, session_id) else None
        if session is None:
            raise not_found("session", session_id)
        runs = [await self._store.get(run_id, with_result=True) for run_id in await self._sessions.run_ids(session_id)]
        return session, [run for run in runs if run is not None]

    def _missing(self, run_id: str, existed: bool) -> NotFound:
        created = run_id_created_at(run_id)
        if existed or (created is not None and clock.now() - created > self._retention):
            days = self._retention / 86400
            return NotFound("expired", f"run {run_id!r} has expired: runs are deleted {days:g} days after they end")
        return not_found("run", run_id)
