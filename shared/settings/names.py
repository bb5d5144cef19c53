"""Fixed resource names; infra/ creates the same ones (tests/infra/test_parity.py checks)."""

POLL_QUEUE = "runs-poll"
WEBHOOK_QUEUE = "runs-webhook"
RUNS_TABLE = "runs"
SESSIONS_TABLE = "sessions"
IDEMPOTENCY_TABLE = "idempotency"
INDEX_TABLE = "runindex"
PAYLOAD_CONTAINER = "run-payloads"
EXECUTE_QUEUE = "runs-execute"  # runs the function app executes itself (RUN_BACKEND=executor)
EVENTS_TABLE = "runevents"  # their event logs
STORAGE_CONNECTION = "AzureWebJobsStorage"
