"""The executor: runs the function app performs itself, for models without a background mode (Chat Completions
servers such as vLLM, Ollama, LiteLLM or Azure AI Foundry models, or a Responses API that only streams).

A run's walk (RUN_BACKEND=executor): `backend.ExecutorBackend.start` opens the run's `event_log` and queues it on
runs-execute -> `attempts.Executor` (the execute_run trigger) claims an attempt, builds the call (`model_request`,
a session's earlier turns) and streams it through `model_client.ModelClient` (`chat_translation` or
`responses_passthrough`, the parameters by `parameters`) into the log in batches -> at the terminal event it ends
the run through runs.ending, like every other path. The poll chain, the relay, cancel and deadlines see the run
through `backend.ExecutorBackend` (the RunBackend seam), which reads the log.
"""
