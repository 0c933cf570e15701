"""Store-and-forward: the SQLite outbox of sealed batches (see ``outbox`` for its invariants)."""

from edgegw.store.outbox import WHEN_FULL, Outbox, OutboxError, OutboxFull, StoredBatch

__all__ = ["WHEN_FULL", "Outbox", "OutboxError", "OutboxFull", "StoredBatch"]
