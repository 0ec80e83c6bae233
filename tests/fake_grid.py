"""A Ray-free Grid that delivers messages straight to a ClientApp in this process.

Content crosses a protobuf round trip both ways, as on the wire, so a record the
real transport would reject fails here too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


def wire_copy(content: RecordDict) -> RecordDict:
    return recorddict_from_proto(recorddict_to_proto(content))


_RUN_IDS = itertools.count(1)


class FakeGrid(Grid):
    """Nodes 1..N, each with its own Context (partition-id, num-partitions, state)."""

    def __init__(
        self,
        client_app: Callable[[Message, Context], Message],
        num_nodes: int,
        run_config: dict,
        node_configs: list[dict] | None = None,
    ) -> None:
        # A new run id per grid, as Flower gives every run its own.
        self.run_id = next(_RUN_IDS)
        TaskIdentity.run_id = self.run_id
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1
        self.client_app = client_app
        self.contexts = {}
        for i in range(num_nodes):
            node_config = {"partition-id": i, "num-partitions": num_nodes}
            node_config.update((node_configs or [{}] * num_nodes)[i])
            self.contexts[i + 1] = Context(
                run_id=self.run_id,
                node_id=i + 1,
                node_config=node_config,
                state=RecordDict(),
                run_config=dict(run_config),
            )
        self.offline: set[int] = set()
        self.sent: list[Message] = []
        self.replies: list[Message] = []  # as they left the nodes, after the wire copy

    def set_run(self, run) -> None:
        pass

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            # As Flower's grids do on push: the message gets its id.
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            self.sent.append(msg)
            node_id = msg.metadata.dst_node_id
            if node_id in self.offline:
                continue  # no reply, as with a node that went away
            inbound = Message(
                content=wire_copy(msg.content),
                dst_node_id=node_id,
                message_type=msg.metadata.message_type,
            )
            try:
                reply = self.client_app(inbound, self.contexts[node_id])
                out = Message(content=wire_copy(reply.content), reply_to=msg)
            except Exception as err:  # noqa: BLE001 - becomes an error reply, as in Flower
                out = Message(
                    error=Error(code=1, reason=f"{type(err).__name__}: {err}"), reply_to=msg
                )
            replies.append(out)
        self.replies.extend(replies)
        return replies
