"""The run and its life: the model, where it is stored, how it starts, is polled, ends, is cancelled,
streamed, swept and, after the retention period, deleted. Framework-free: no HTTP, no Functions types."""
