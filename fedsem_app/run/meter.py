"""Communication accounting, measured on the real records of every message.

Runs on the server.

:class:`MeteredGrid` wraps the Grid that Flower hands to the ServerApp. Every
strategy talks to clients through it, so the same meter serves all of them:
bytes are the serialised size of each message's RecordDict (Flower's own
protobuf serde), counted per direction and per message kind (train/evaluate).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from logging import WARNING

from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid

DOWN = "down"  # server -> client
UP = "up"  # client -> server


def human_bytes(n: float) -> str:
    """Bytes with a decimal unit (kB = 1000 B), e.g. ``3.7 MB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def record_bytes(content: RecordDict) -> int:
    """Serialised size in bytes of a RecordDict, as it goes over the wire."""
    return recorddict_to_proto(content).ByteSize()


def message_bytes(message: Message) -> int:
    """Content bytes of one message; an error reply carries no content (0 bytes)."""
    if message.has_error() or not message.has_content():
        return 0
    return record_bytes(message.content)


def _kind(message_type: str) -> str:
    # "train", "evaluate", "query.generate" -> the part before the first dot
    return message_type.split(".", 1)[0]


def attribute_replies(
    sent: list[Message], replies: Iterable[Message], timeout: float | None
) -> list[Message]:
    """Name the right node in every reply, and log the nodes that never replied.

    When a node vanishes, the SuperLink answers for it with an error reply whose
    source is the SuperLink; such a reply is rebuilt as a reply from the node the
    message went to, so the strategy's drop line names that node. Nodes with no
    reply at all (slower than ``round-timeout``) get one warning line.
    """
    replies = list(replies)
    origins = {m.metadata.message_id: m for m in sent}
    if "" in origins:  # ids are set when messages are pushed; without them nothing matches
        return replies
    out = []
    for reply in replies:
        origin = origins.pop(reply.metadata.reply_to_message_id, None)
        if (
            origin is not None
            and reply.has_error()
            and reply.metadata.src_node_id != origin.metadata.dst_node_id
        ):
            reply = Message(error=reply.error, reply_to=origin)
        out.append(reply)
    if origins:
        missing = sorted(m.metadata.dst_node_id for m in origins.values())
        kind = _kind(next(iter(origins.values())).metadata.message_type)
        log(
            WARNING,
            "%s: no reply from node(s) %s within %s s (round-timeout); left out of this round",
            kind,
            ", ".join(map(str, missing)),
            "no limit" if timeout is None else f"{timeout:g}",
        )
    return out


class PassThroughGrid(Grid):
    """A Grid that hands every call to the Grid it wraps; subclasses watch the traffic.

    Parameters
    ----------
    grid
        The Grid provided by Flower to ``ServerApp.main`` (or another wrapper).
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run) -> None:  # noqa: D102
        self._grid.set_run(run)

    @property
    def run(self):  # noqa: D102
        return self._grid.run

    def create_message(self, *args, **kwargs) -> Message:  # noqa: D102
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self._grid.get_node_ids()

    def get_nodes(self):  # noqa: D102
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._grid.pull_messages(message_ids)

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


class MeteredGrid(PassThroughGrid):
    """A Grid that counts the bytes of every message it sends and receives.

    Parameters
    ----------
    grid
        The Grid provided by Flower to ``ServerApp.main``.

    Attributes
    ----------
    totals
        Counter keyed by ``(direction, kind)``, e.g. ``("down", "train")``, in bytes.
    messages
        Counter of messages keyed the same way.
    """

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.totals: Counter[tuple[str, str]] = Counter()
        self.messages: Counter[tuple[str, str]] = Counter()

    def _count(self, direction: str, messages: Iterable[Message]) -> list[Message]:
        counted = list(messages)
        for msg in counted:
            key = (direction, _kind(msg.metadata.message_type))
            self.totals[key] += message_bytes(msg)
            self.messages[key] += 1
        return counted

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        return self._grid.push_messages(self._count(DOWN, messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._count(UP, self._grid.pull_messages(message_ids))

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = self._count(DOWN, messages)
        replies = self._count(UP, self._grid.send_and_receive(sent, timeout=timeout))
        return attribute_replies(sent, replies, timeout)

    def snapshot(self) -> dict[str, int]:
        """Byte totals so far as flat keys, e.g. ``bytes-down-train``."""
        return {f"bytes-{d}-{k}": v for (d, k), v in sorted(self.totals.items())}

    def restore(self, snapshot: Mapping[str, int]) -> None:
        """Count on from earlier totals (a checkpoint's :meth:`snapshot`), for a resumed run."""
        for key, value in snapshot.items():
            _, direction, kind = key.split("-", 2)
            self.totals[(direction, kind)] = int(value)
