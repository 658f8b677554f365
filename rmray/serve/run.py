"""Start the Serve app from the command line and keep it up until Ctrl-C."""

from __future__ import annotations

import signal
import threading

from rmray.ray_env import init_ray

from .settings import ServeSettings


def start(settings: ServeSettings, *, ray_address: str | None = None):
    """Deploy (Ray started or joined as needed) and return the app's ``DeploymentHandle``."""
    import ray
    from ray import serve

    from .app import build_app

    if not ray.is_initialized():
        init_ray(ray_address)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    return serve.run(build_app(settings), name=settings.name, route_prefix=settings.route_prefix)


def serve_forever(settings: ServeSettings, *, ray_address: str | None = None) -> None:
    from ray import serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before start: Ctrl-C during start-up still shuts down cleanly
        signal.signal(sig, lambda *_: stop.set())
    start(settings, ray_address=ray_address)
    prefix = settings.route_prefix.rstrip("/")
    print(f"rmray: serving {', '.join(settings.model_names)} at http://{settings.host}:{settings.port}{prefix}  "
          f"(POST /score /score_group /get_reward /classify, GET /healthz, docs at /docs)"
          + ("; bearer token required" if settings.api_token else ""), flush=True)
    stop.wait()
    print("rmray: shutting down", flush=True)
    serve.shutdown()
