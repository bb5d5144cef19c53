"""Where a run lives: one Table entity per run (PartitionKey = run id, RowKey = "run").

Large parts (the provider request, the result, the metadata, the provider's create reply) go to a blob when they do
not fit a Table property. Azure counts a string property in UTF-16 (2 bytes per unit, astral characters take two
units) and allows 64 KiB per property and 1 MiB per entity, so the decision is made on the encoded size, never on
Python characters. A blob written for a save has a name of its own (never overwritten), so a save that
loses an ETag race cannot change what the winner's entity points to.

Reads load the parts they are asked for: the poll chain and the sweeper never download a result.
Every change is ETag-conditional, so concurrent writers (poll chain, sweeper, cancel, stream relay)
never overwrite each other blindly.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Mapping
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, UpdateMode

from ..errors import PayloadTooLarge
from ..settings import DEFAULT_DEPLOYMENT
from ..storage import BlobContainer, Table
from ..telemetry import Timeline
from .changes import RunChanges
from .model import Admission, Run
from .results import loaded_result, stored_result
from .webhook_state import WebhookState

RUN_ROW = "run"
PROPERTY_LIMIT_BYTES = 64 * 1024
ENTITY_LIMIT_BYTES = 1024 * 1024
# Room for the service's own properties and the entity overhead (names, types, keys).
_ENTITY_BUDGET_BYTES = ENTITY_LIMIT_BYTES - 128 * 1024
_PARTS = ("request", "result", "metadata", "response")
_SIZE_ERRORS = {"PropertyValueTooLarge", "EntityTooLarge", "RequestBodyTooLarge"}


class RunConflict(Exception):
    """The run changed since it was read (ETag mismatch), or already exists; re-read and decide again."""


def utf16_bytes(text: str) -> int:
    """The size Table Storage counts for a string property's value."""
    if len(text) * 4 <= PROPERTY_LIMIT_BYTES:  # even all-astral text fits: skip the encoding
        return len(text) * 2 if text.isascii() else len(text.encode("utf-16-le"))
    return len(text.encode("utf-16-le"))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class RunStore:
    def __init__(self, table: Table, payloads: BlobContainer, changes: RunChanges | None = None) -> None:
        """`changes` is told of every write of a run, to wake the reads held on it (runs.waiting)."""
        self._table = table
        self._payloads = payloads
        self.changes = changes or RunChanges()

    # -- parts: inline when they fit, else one blob per write --------------------------------------------
    async def _place_parts(self, run_id: str, texts: dict[str, str]) -> dict[str, str]:
        """Entity properties for `texts` (part name -> JSON text): inline, or a pointer to a new blob."""
        placed: dict[str, str] = {}
        sizes = {name: utf16_bytes(text) for name, text in texts.items()}
        inline_total = 0
        for name in sorted(texts, key=sizes.__getitem__):  # smallest first: keep as much inline as the entity allows
            if sizes[name] <= PROPERTY_LIMIT_BYTES and inline_total + sizes[name] <= _ENTITY_BUDGET_BYTES:
                placed.update({name: texts[name], f"{name}_blob": ""})
                inline_total += sizes[name]
                continue
            blob = f"{run_id}/{name}-{secrets.token_hex(6)}.json"
            await self._payloads.upload_blob(blob, texts[name].encode("utf-8"), overwrite=False)
            placed.update({name: "", f"{name}_blob": blob})
        return placed

    async def _load_part(self, entity: TableEntity, name: str) -> Any:
        blob = entity.get(f"{name}_blob")
        if blob:
            downloader = await self._payloads.download_blob(blob)
            return json.loads((await downloader.readall()).decode("utf-8"))
        text = entity.get(name)
        return json.loads(text) if text else None

    async def _forget_blobs(self, placed: dict[str, str]) -> None:
        """Best effort: a save that lost its race leaves no orphan blob behind."""
        for key, value in placed.items():
            if key.endswith("_blob") and value:
                try:
                    await self._payloads.delete_blob(value)
                except Exception:  # noqa: BLE001 - an orphan costs a little storage, nothing else
                    pass

    # -- entity <-> Run ------------------------------------------------------------------------------------
    @staticmethod
    def _fields(run: Run) -> dict[str, Any]:
        entity = {
            "PartitionKey": run.id,
            "RowKey": RUN_ROW,
            "status": run.status,
            "created_at": run.created_at,
            "model": run.model,
            "session_id": run.session_id or "",
            "response_id": run.response_id or "",
            "stream": run.stream,
            "completed_at": run.completed_at,
            "poll_seq": run.poll_seq,
            "poll_nonce": run.poll_nonce,
            "poll_count": run.poll_count,
            "next_poll_at": run.next_poll_at,
            "chain_restarts": run.chain_restarts,
            "deadline_at": run.deadline_at,
            "watch_position": run.watch_position,
            "webhook_url": run.webhook_url or "",
            "webhook": _dumps(run.webhook.to_dict()) if run.webhook else "",
            "backend": run.backend,
            "deployment": run.deployment or "",
            "admission": _dumps(run.admission.to_dict()) if run.admission else "",
            "owner": run.owner or "",
            "previous_run_id": run.previous_run_id or "",
            "quota_slot": run.quota_slot or None,
            "traceparent": run.traceparent,
            "tracestate": run.tracestate,
            "timeline": run.timeline.dumps(),
        }
        return {k: v for k, v in entity.items() if v is not None}

    async def _parts_to_write(self, run: Run, *, creating: bool) -> dict[str, str]:
        texts = {}
        if creating:
            texts["request"] = _dumps(run.request)
            texts["metadata"] = _dumps(run.metadata)
        if run.result is not None and not run.result_stored:
            texts["result"] = _dumps(stored_result(run.result))
        if run.response is not None and not run.response_stored:
            texts["response"] = _dumps(run.response)
        return await self._place_parts(run.id, texts) if texts else {}

    async def _from_entity(self, entity: TableEntity, *, with_result: bool, with_request: bool) -> Run:
        has_result = bool(entity.get("result") or entity.get("result_blob"))
        has_response = bool(entity.get("response") or entity.get("response_blob"))
        webhook, admission = entity.get("webhook"), entity.get("admission")
        return Run(
            id=entity["PartitionKey"],
            status=entity["status"],
            created_at=entity["created_at"],
            model=entity["model"],
            request=(await self._load_part(entity, "request") or {}) if with_request else {},
            session_id=entity.get("session_id") or None,
            metadata=await self._load_part(entity, "metadata") or {},
            response_id=entity.get("response_id") or None,
            stream=bool(entity.get("stream")),
            completed_at=entity.get("completed_at"),
            result=loaded_result(await self._load_part(entity, "result")) if with_result and has_result else None,
            poll_seq=entity.get("poll_seq", 0),
            poll_nonce=entity.get("poll_nonce", ""),
            poll_count=entity.get("poll_count", 0),
            next_poll_at=entity.get("next_poll_at"),
            chain_restarts=entity.get("chain_restarts", 0),
            watch_position=entity.get("watch_position", -1),
            deadline_at=entity.get("deadline_at", 0.0),
            webhook_url=entity.get("webhook_url") or None,
            webhook=WebhookState.from_dict(json.loads(webhook)) if webhook else None,
            admission=Admission.from_dict(json.loads(admission)) if admission else None,
            owner=entity.get("owner") or None,
            previous_run_id=entity.get("previous_run_id") or None,
            quota_slot=bool(entity.get("quota_slot")),
            response=await self._load_part(entity, "response") if with_result and has_response else None,
            backend=entity.get("backend") or "background",
            # a row from before the pool: its response is at the one deployment there was
            deployment=entity.get("deployment", DEFAULT_DEPLOYMENT if entity.get("response_id") else "") or None,
            etag=entity.metadata.get("etag"),
            result_stored=has_result,
            response_stored=has_response,
            traceparent=entity.get("traceparent") or "",
            tracestate=entity.get("tracestate") or "",
            timeline=Timeline(entity.get("timeline") or ""),
        )

    # -- operations ------------------------------------------------------------------------------------------
    async def create(self, run: Run) -> Run:
        parts = await self._parts_to_write(run, creating=True)
        meta = await self._write(
            run, parts, self._table.create_entity({**self._fields(run), **parts}), conflicts=(ResourceExistsError,)
        )
        run.etag = meta.get("etag")
        run.result_stored = run.result is not None
        run.response_stored = run.response is not None
        return run

    async def _write(
        self,
        run: Run,
        parts: dict[str, str],
        write: Awaitable[Mapping[str, Any]],
        *,
        conflicts: tuple[type[Exception], ...],
    ) -> Mapping[str, Any]:
        """Await one entity write; if it fails, the blobs written for it go too (`conflicts` become RunConflict,
        a size refusal PayloadTooLarge)."""
        try:
            return await write
        except conflicts:
            await self._forget_blobs(parts)
            raise RunConflict(run.id) from None
        except HttpResponseError as error:
            await self._forget_blobs(parts)
            raise _too_large_or(error) from None

    async def get(self, run_id: str, *, with_result: bool = False, with_request: bool = False) -> Run | None:
        """The run, or None. Its result (terminal runs) and request are loaded only when asked for."""
        try:
            entity = await self._table.get_entity(run_id, RUN_ROW)
        except ResourceNotFoundError:
            return None
        return await self._from_entity(entity, with_result=with_result, with_request=with_request)

    async def save(self, run: Run) -> Run:
        """Write the run if nobody changed it since it was read; raises RunConflict otherwise.

        MERGE keeps the parts not rewritten (the request, a stored result)."""
        parts = await self._parts_to_write(run, creating=False)
        meta = await self._write(
            run,
            parts,
            self._table.update_entity(
                {**self._fields(run), **parts},
                mode=UpdateMode.MERGE,
                etag=run.etag,
                match_condition=MatchConditions.IfNotModified,
            ),
            conflicts=(ResourceModifiedError, ResourceNotFoundError),
        )
        run.etag = meta.get("etag")
        run.result_stored = run.result_stored or run.result is not None
        run.response_stored = run.response_stored or run.response is not None
        self.changes.touched(run.id)
        return run

    async def save_chain(self, run: Run) -> Run:
        """`save` for the poll chain's hot path: only the chain's own properties (with the provider response it
        follows and the status it moves between queued and in_progress), ETag-conditional like every save."""
        fields = {
            "PartitionKey": run.id,
            "RowKey": RUN_ROW,
            "status": run.status,
            "response_id": run.response_id or "",
            "poll_seq": run.poll_seq,
            "poll_nonce": run.poll_nonce,
            "poll_count": run.poll_count,
            "next_poll_at": run.next_poll_at,
            "chain_restarts": run.chain_restarts,
            "watch_position": run.watch_position,
        }
        if run.timeline.changed:  # the step's timeline entry rides on this save
            fields["timeline"] = run.timeline.dumps()
        try:
            meta = await self._table.update_entity(
                fields, mode=UpdateMode.MERGE, etag=run.etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise RunConflict(run.id) from None
        run.etag = meta.get("etag")
        self.changes.touched(run.id)
        return run

    async def delete(self, run: Run) -> bool:
        """Delete the run as it was read (ETag-conditional) with its blobs; False if it changed meanwhile."""
        try:
            await self._table.delete_entity(
                run.id, RUN_ROW, etag=run.etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceNotFoundError:
            return True
        except ResourceModifiedError:
            return False
        self.changes.touched(run.id)
        await self.delete_blobs(run.id)
        return True

    async def purge(self, run_id: str) -> None:
        """Delete the run and its blobs whatever state it is in (retention)."""
        try:
            await self._table.delete_entity(run_id, RUN_ROW)
        except ResourceNotFoundError:
            pass
        await self.delete_blobs(run_id)

    async def delete_blobs(self, run_id: str) -> None:
        async for blob in self._payloads.list_blobs(name_starts_with=f"{run_id}/"):
            try:
                await self._payloads.delete_blob(blob.name)
            except ResourceNotFoundError:
                pass


def _too_large_or(error: HttpResponseError) -> Exception:
    """Storage refusing a size is permanent: say so (413), never as a transient outage."""
    code = getattr(error, "error_code", None) or ""
    if code in _SIZE_ERRORS or error.status_code == 413:
        return PayloadTooLarge("too_large_to_store", f"The run is too large to store ({code or error.status_code}).")
    return error
