"""How the outbox hands messages to the broker: the Sender protocol and binding one to a session factory."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker


class Sender(Protocol):
    """send(task_name, args, queue, **options): hands one message to the broker. Options, passed
    only when set: `priority` (int) and `eta` (an aware datetime: deliver it then)."""

    def __call__(self, task: str, args: list[Any], queue: str, /, **options: Any) -> None: ...


_SENDER_KEY = "leap_outbox_sender"


def bind_sender(session_factory: sessionmaker[Session], send: Sender) -> None:
    """Make sessions from this factory send their outbox messages right after commit."""
    info = dict(session_factory.kw.get("info") or {})
    info[_SENDER_KEY] = (send, session_factory)
    session_factory.configure(info=info)
