"""RouterLink (hhmr.server.sockets) on real loopback sockets, no model: which connections
dropped, including the races between a drop and the reading of a message."""

import time

import pytest
import zmq
from backend_process import free_port
from hhmr.server.sockets import RouterLink, bind_router


@pytest.fixture
def served():
    """A RouterLink on a loopback port: (context, port, link); closed afterwards."""
    ctx = zmq.Context()
    port = free_port()
    link = RouterLink(bind_router(ctx, f"tcp://127.0.0.1:{port}", 1 << 20))
    yield ctx, port, link
    link.close()
    ctx.term()


def dealer(ctx: zmq.Context, port: int, rid: bytes) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, rid)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def receive(link: RouterLink, timeout_s: float = 5.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        inc = link.recv()
        if inc is not None:
            return inc
        link.socket.poll(50)
    raise AssertionError("no message")


def gone_within(link: RouterLink, timeout_s: float = 3.0) -> list[bytes]:
    end, out = time.monotonic() + timeout_s, []
    while time.monotonic() < end and not out:
        out = link.gone()
        time.sleep(0.05)
    return out


def test_a_dropped_connection_is_named_once(served):
    ctx, port, link = served
    a = dealer(ctx, port, b"conn-a")
    a.send(b"hello")
    inc = receive(link)
    assert (inc.connection, inc.payload, inc.owner) == (b"conn-a", b"hello", b"conn:conn-a")
    assert link.gone() == []
    a.close()
    assert gone_within(link) == [b"conn-a"]
    assert gone_within(link, 0.5) == []


def test_a_message_read_after_its_connection_dropped_counts_as_dropped(served):
    """The race: the client sent and left before the server read its message."""
    ctx, port, link = served
    a = dealer(ctx, port, b"conn-a")
    a.send(b"last words")
    time.sleep(0.5)  # the message is queued in the server's socket
    a.close()
    time.sleep(0.5)  # and the drop is in the monitor before the message is read
    assert receive(link).payload == b"last words"
    assert link.gone() == [b"conn-a"]


def test_a_reconnected_client_is_not_gone(served):
    """A client that drops and comes back with the same routing id (ZeroMQ's reconnect, or
    HHMRClient's resend on it) before the server looked is not reported as gone."""
    ctx, port, link = served
    a = dealer(ctx, port, b"conn-a")
    a.send(b"first")
    assert receive(link).payload == b"first"
    a.close()
    time.sleep(0.5)
    b = dealer(ctx, port, b"conn-a")
    b.send(b"again")
    assert receive(link).payload == b"again"
    assert link.gone() == []
    b.close()
    assert gone_within(link) == [b"conn-a"]


def test_a_stale_message_from_the_dropped_connection_does_not_drop_the_new_one(served):
    """Reconnected (same routing id, new fd) and read first; then a message still queued from
    the old, dead fd: the client lives on in the new connection."""
    link = served[2]
    link._track(b"conn-a", 40)  # its first connection
    link.dead.add(40)  # which dropped (the monitor's event) ...
    link.by_fd.pop(40)
    link.fd_of.pop(b"conn-a")
    link.dropped.add(b"conn-a")
    link._track(b"conn-a", 41)  # ... and came back
    link._track(b"conn-a", 40)  # a late message of the old connection
    assert link.gone() == [] and link.fd_of[b"conn-a"] == 41
