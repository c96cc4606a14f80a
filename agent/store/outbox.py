"""The dead-letter outbox: written with the state that rejected an input, marked sent once the
dead-letter topic (or file) has it, so a crash in between repeats a letter and never loses one."""

from __future__ import annotations

from collections.abc import Sequence

from agent.store.db import q
from agent.store.join import JoinMixin
from agent.store.records import DeadLetter

__all__ = ["OutboxMixin"]


class OutboxMixin(JoinMixin):
    """Dead letters waiting for delivery, and their delivery receipts."""

    def unsent_dead_letters(self, limit: int = 500) -> list[DeadLetter]:
        """Dead letters not yet handed to the dead-letter topic or file, oldest first."""
        with self._read() as conn:
            rows = q(
                conn,
                "SELECT id, source, reason, message, raw, at FROM dead_letters WHERE sent = 0"
                " ORDER BY id LIMIT :n",
                {"n": limit},
            ).fetchall()
        return [
            DeadLetter(int(i), s, r, m, bytes(raw) if raw is not None else None, at)
            for i, s, r, m, raw, at in rows
        ]

    def mark_dead_letters_sent(self, ids: Sequence[int]) -> None:
        """Record that these dead letters were delivered; old delivered ones are forgotten."""
        if not ids:
            return
        keep = self.policy.keep_sent_dead_letters

        def work(conn: object) -> None:
            for i in sorted(ids):
                q(conn, "UPDATE dead_letters SET sent = 1 WHERE id = :i", {"i": i})  # type: ignore[arg-type]
            q(
                conn,  # type: ignore[arg-type]
                "DELETE FROM dead_letters WHERE sent = 1 AND id <= (SELECT MAX(id) FROM dead_letters) - :k",
                {"k": keep},
            )

        self._run(work)

    def dead_letter(self, source: str, reason: str, message: str, raw: bytes | None = None) -> bool:
        """Dead-letter an input outside a batch (an unreadable image found while embedding).

        Returns whether it was new (a second call for the same ``source`` is a no-op).
        """
        return bool(self._run(lambda conn: self._dead_letter(conn, None, source, reason, message, raw)))
