"""`hhmr serve`: the ZeroMQ + msgpack backend service.

A socket thread (`frontend`) receives, validates and answers requests and queues the sampling
ops for the compute loop on the main thread (`compute`), which batches them on the device and
sends progress and results back; `broker` routes requests to several such processes (workers,
linked to it by `worker_link`) and supervises them, and `sockets` holds what the server and the
broker share.
"""

from hhmr.server.broker import serve_broker
from hhmr.server.compute import (
    MAX_BATCH,
    Cancelled,
    ComputeLoop,
    QueuedRequest,
    plan_request,
    reconstruct_request,
)
from hhmr.server.frontend import Server, ServerFailed, hand_topology, serve
from hhmr.server.sockets import bind_router, check_bind, connect_dealer, is_loopback

__all__ = ["MAX_BATCH", "Cancelled", "ComputeLoop", "QueuedRequest", "Server", "ServerFailed",
           "bind_router", "check_bind", "connect_dealer", "hand_topology", "is_loopback",
           "plan_request", "reconstruct_request", "serve", "serve_broker"]
