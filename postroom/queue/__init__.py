"""The queue: durable spool, envelopes and per-recipient state."""
