"""`rmray serve` as a user runs it: its own process and Ray, loopback only, clean exit on SIGTERM, mistakes
refused before Ray starts; and the Serve config file."""

import os
import socket
import time

import pytest

from rmray.testing import plain_transformers_scores

from ..conftest import ROOT, free_port, user_env
from .conftest import PROMPT, RESPONSES, post, rmray_command


def test_serve_config_file_is_valid_and_builds():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from rmray.serve.settings import ServeSettings

    path = os.path.join(ROOT, "jobs", "serve.yaml")
    with open(path) as f:
        config = yaml.safe_load(f)
    schema = ServeDeploySchema.parse_obj(config)
    app = schema.applications[0]
    assert app.import_path == "rmray.serve.app:build_app"
    assert schema.http_options.host == "127.0.0.1"
    settings = ServeSettings.from_dict(app.args)
    assert settings.model_dirs and settings.host == "127.0.0.1"
    with pytest.raises(ValueError, match="unknown serve setting"):
        ServeSettings.from_dict({**app.args, "replica": 2})


def _listening(root_pid: int, pid_filter) -> dict[str, list[str]]:
    """Listening TCP addresses of ``root_pid``'s descendants whose command line passes ``pid_filter``."""
    import psutil

    out = {}
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if pid_filter(cmd):
            try:
                out[cmd[:60]] = [c.laddr.ip for c in proc.net_connections(kind="tcp") if c.status == "LISTEN"]
            except psutil.Error:
                pass
    return out


@pytest.mark.ray
def test_rmray_serve_command_end_to_end(rm_qwen, tmp_path):
    """The CLI in its own process and its own Ray: ready, scores, no replica listening on every
    interface, exits cleanly on SIGTERM (how Docker, Kubernetes and systemd stop it)."""
    import signal
    import subprocess
    import sys

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "rmray.cli", "serve", rm_qwen, "--port", str(port),
                             "--ray-address", "local", "--num-cpus", "0.25"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env=user_env())
    try:
        deadline = time.time() + 180
        while "rmray: serving" not in (tmp_path / "serve.log").read_text() and time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        assert "rmray: serving" in (tmp_path / "serve.log").read_text(), "rmray serve did not start within 180 s"
        status, body, _ = post(port, "/score", {"prompt": PROMPT, "response": RESPONSES[0]}, token=None)
        assert status == 200, body
        assert body["rewards"][0] == pytest.approx(plain_transformers_scores(rm_qwen, [PROMPT + RESPONSES[0]])[0],
                                                   abs=1e-4)
        replicas = _listening(proc.pid, lambda cmd: "ServeReplica" in cmd)
        assert len(replicas) == 2 and all(replicas.values()), replicas
        assert not [ip for ips in replicas.values() for ip in ips if ip in ("::", "0.0.0.0")], replicas
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
        out = (tmp_path / "serve.log").read_text()
        assert f"http://127.0.0.1:{port}" in out and "rmray: shutting down" in out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_rmray_serve_refuses_a_taken_port_before_ray_starts(rm_qwen, tmp_path):
    """A Serve proxy opens its port with SO_REUSEPORT, so a second server would start and share it."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as Ray Serve's proxy does
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = rmray_command("serve", rm_qwen, "--port", str(port), "--ray-address", "local")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and lines[0].startswith("rmray: error:"), result.stderr
    assert "starting Ray" not in result.stdout


def test_a_port_a_stopped_server_left_in_time_wait_is_free_and_a_listened_one_is_not():
    """A server that answered requests and stopped leaves its connections in TIME_WAIT for about a minute;
    nothing listens, so a restarted ``rmray serve`` (systemd, Kubernetes) must get the port."""
    from rmray.errors import UsageError
    from rmray.serve.run import check_port_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    with pytest.raises(UsageError, match=f"port {port}"):
        check_port_free("127.0.0.1", port)  # listening: taken
    accepted.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
    server.close()
    client.close()
    with socket.socket() as strict:  # a probe without SO_REUSEADDR counts the TIME_WAIT port as taken
        with pytest.raises(OSError):
            strict.bind(("127.0.0.1", port))
    check_port_free("127.0.0.1", port)


def test_rmray_serve_refuses_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    for path in (str(tmp_path), str(tmp_path / "missing")):
        result = rmray_command("serve", path, "--port", str(free_port()))
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and path in lines[0] and "fix:" in lines[0], result.stderr


def test_big_requests_go_to_the_scorer_in_pieces():
    from rmray.serve.app import _pieces

    ids = [[1] * 5, [1] * 5, [1] * 7, [1] * 30, [1] * 2]
    assert [[len(s) for s in p] for p in _pieces(ids, 12)] == [[5, 5], [7], [30], [2]]
    assert _pieces([], 12) == []
