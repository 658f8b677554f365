"""Keep a Serve replica's internal gRPC server off the public interfaces.

Ray Serve 2.60 starts, in every replica, a gRPC server for deployment-to-deployment calls bound to
``[::]:0`` -- every interface, hard-coded (``ray/serve/_private/replica.py``, ``_on_initialized``).
With Serve's default transport (handles call replicas as Ray actors; gRPC only under
``RAY_SERVE_USE_GRPC_BY_DEFAULT=1`` / ``RAY_SERVE_PROXY_USE_GRPC=1``) nothing connects to it, so it is
bound to loopback; when gRPC transport is on, to the node's own address, which is where the routers
connect (``node_ip:port``). Called from each deployment's constructor, which runs in the replica
process before that server starts.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("rmray.serve")


def grpc_transport_on() -> bool:
    from ray.serve._private import constants

    return bool(constants.RAY_SERVE_USE_GRPC_BY_DEFAULT or constants.RAY_SERVE_PROXY_USE_GRPC)


def replica_grpc_host() -> str:
    """``127.0.0.1`` under Serve's default transport, else the node's address (bracketed if IPv6)."""
    if not grpc_transport_on():
        return "127.0.0.1"
    import ray

    ip = ray.util.get_node_ip_address()
    return f"[{ip}]" if ":" in ip else ip


def bind_replica_grpc_privately() -> None:
    from ray.serve._private import replica

    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_rmray", False):
        if original is None:
            logger.warning("this Ray version has no replica gRPC hook; its internal server binds as Ray chooses")
        return
    host = replica_grpc_host()

    def add_port(server, address):
        if address.startswith("[::]:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return original(server, address)

    add_port._rmray = True
    replica.add_port_to_grpc_server = add_port
