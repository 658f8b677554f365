"""Start the Serve app from the command line and keep it up until Ctrl-C or SIGTERM."""

from __future__ import annotations

import errno
import signal
import socket
import sys
import threading

from rmray.core.spec import ScoringSpec, check_model_dir
from rmray.errors import UsageError
from rmray.ray_env import init_ray, joins_cluster

from .settings import ServeSettings
from .versions import forget_registry, process_ensemble_problem


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before Ray starts.

    Ray Serve's proxy opens its socket with port reuse, so a second ``rmray serve`` on a taken port would
    start, and the kernel would then split requests between the two servers -- an RL loop would get
    rewards from two models at random. This probe binds without port reuse, which fails on any socket
    bound there, a Serve proxy's included. It does set ``SO_REUSEADDR``, as every server does: connections
    a stopped server left in TIME_WAIT (for about a minute, nothing listening) do not count, so a
    supervisor (systemd ``Restart=``, Kubernetes) restarting ``rmray serve`` on its port is not refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use (another rmray serve or server?) "
                                 f"(fix: stop it, or pass --port with a free port)") from None
            raise UsageError(f"cannot bind {host}:{port}: {err.strerror} (fix: --host/--port)") from None


def check_model_dirs(model_dirs: list[str]) -> None:
    for path in model_dirs:
        check_model_dir(path)
    problem = process_ensemble_problem([ScoringSpec.load(path).kind for path in model_dirs])
    if problem:
        raise UsageError(problem)


def start(settings: ServeSettings, *, ray_address: str | None = None):
    """Deploy (Ray started or joined as needed) and return the app's ``DeploymentHandle``."""
    import ray
    from ray import serve

    from .app import build_app

    if not ray.is_initialized():
        port = settings.metrics_export_port
        if port and joins_cluster(ray_address):
            print(f"rmray: warning: --metrics-export-port {port} is ignored when joining a cluster: its nodes "
                  "export on the ports `ray start --metrics-export-port` gave them", file=sys.stderr, flush=True)
        init_ray(ray_address, **({"_metrics_export_port": port} if port and not joins_cluster(ray_address) else {}))
    serve.start(http_options={"host": settings.host, "port": settings.port})
    return serve.run(build_app(settings), name=settings.name, route_prefix=settings.route_prefix)


def serve_forever(settings: ServeSettings, *, ray_address: str | None = None) -> None:
    from ray import serve

    check_model_dirs(settings.model_dirs)
    check_port_free(settings.host, settings.port)
    stop = threading.Event()

    def on_signal(*_):
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):  # before start: a stop during start-up still shuts down cleanly
        signal.signal(sig, on_signal)
    print("rmray: starting Ray and the Serve app...", flush=True)
    start(settings, ray_address=ray_address)
    # ray.init installs its own SIGTERM handler (it exits the process with 134, skipping serve.shutdown);
    # Docker, Kubernetes and systemd stop with SIGTERM, so ours goes back in place.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    prefix = settings.route_prefix.rstrip("/")
    print(f"rmray: serving {', '.join(settings.model_names)} at http://{settings.host}:{settings.port}{prefix}  "
          f"(POST /score /score_group /get_reward /classify, GET /healthz, docs at /docs)"
          + ("; bearer token required" if settings.api_token else "")
          + ("; POST /admin/models swaps the models (RMRAY_ADMIN_TOKEN)" if settings.admin_token else ""), flush=True)
    while not stop.wait(1.0):  # a timed wait: signal handlers run between the waits
        pass
    print("rmray: shutting down", flush=True)
    serve.shutdown()
    forget_registry(settings.name)
