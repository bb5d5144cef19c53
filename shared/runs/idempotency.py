"""Idempotency-Key: the same key and body within 24 h returns the same run, without a second
provider call; the same key with another body is a conflict (409).

Table `idempotency`, PartitionKey = SHA-256 of the key. `create_entity` is the atomic claim.
Keys are scoped by caller (`scope`, the facade caller's name): one caller's key never names another's run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from .. import clock
from ..errors import Conflict, InvalidRequest
from ..storage import Table

WINDOW_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255


@dataclass
class Claim:
    run_id: str
    is_new: bool
    digest: str
    claimed_at: float = 0.0
    etag: str | None = None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _key_digest(key: str, scope: str | None) -> str:
    # Unscoped keys (the native API) keep the digest they always had.
    return _digest(key) if not scope else _digest(f"{scope}\n{key}")


class IdempotencyStore:
    window = WINDOW_SECONDS

    def __init__(self, table: Table) -> None:
        self._table = table

    async def claim(self, key: str, fingerprint: str, run_id: str, scope: str | None = None) -> Claim:
        """Claim `key` for `run_id`, or return the run that already holds it."""
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise InvalidRequest(
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
                param="Idempotency-Key",
            )
        pk, body_hash = _key_digest(key, scope), _digest(fingerprint)
        entity = {
            "PartitionKey": pk,
            "RowKey": "key",
            "run_id": run_id,
            "body_hash": body_hash,
            "claimed_at": clock.now(),
        }
        for _ in range(3):
            try:
                await self._table.create_entity(entity)
                return Claim(run_id, True, pk)
            except ResourceExistsError:
                pass
            try:
                existing = await self._table.get_entity(pk, "key")
            except ResourceNotFoundError:
                continue  # released meanwhile; try to claim again
            if clock.now() - existing["claimed_at"] > WINDOW_SECONDS:
                try:
                    await self._table.update_entity(
                        entity,
                        mode=UpdateMode.REPLACE,
                        etag=existing.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return Claim(run_id, True, pk)
                except (ResourceModifiedError, ResourceNotFoundError):
                    continue
            if existing["body_hash"] != body_hash:
                raise Conflict(
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request body.",
                    param="Idempotency-Key",
                )
            return Claim(existing["run_id"], False, pk, existing["claimed_at"], existing.metadata["etag"])
        raise Conflict(
            "idempotency_key_busy",
            "This Idempotency-Key is being claimed concurrently; retry.",
            param="Idempotency-Key",
            retry_after=1,
        )

    async def take_over(self, key: str, fingerprint: str, run_id: str, stale: Claim) -> bool:
        """Re-claim a key whose start died before recording its run (a crash); False if someone else did."""
        entity = {
            "PartitionKey": stale.digest,
            "RowKey": "key",
            "run_id": run_id,
            "body_hash": _digest(fingerprint),
            "claimed_at": clock.now(),
        }
        try:
            await self._table.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=stale.etag, match_condition=MatchConditions.IfNotModified
            )
            return True
        except (ResourceModifiedError, ResourceNotFoundError):
            return False

    async def release(self, key: str, run_id: str, scope: str | None = None) -> str | None:
        """Forget a claim whose run never started (its start failed), if it is still ours; the key's digest if it
        was forgotten here."""
        pk = _key_digest(key, scope)
        try:
            existing = await self._table.get_entity(pk, "key")
            if existing["run_id"] == run_id:
                await self._table.delete_entity(
                    pk, "key", etag=existing.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )
                return pk
        except (ResourceNotFoundError, ResourceModifiedError):
            pass
        return None

    async def purge(self, digest: str) -> None:
        """Delete a key's row once its window has passed (retention); a fresher claim is kept."""
        try:
            existing = await self._table.get_entity(digest, "key")
            if clock.now() - existing["claimed_at"] > self.window:
                await self._table.delete_entity(
                    digest, "key", etag=existing.metadata["etag"], match_condition=MatchConditions.IfNotModified
                )
        except (ResourceNotFoundError, ResourceModifiedError):
            pass
