"""Starting Ray for a search: a private local instance, or joining the cluster the user started (``--address``).

Local (the default): a new instance of our own, even where another Ray runs on the machine (``address="local"``;
without it ``ray.init`` joins whatever cluster it finds), with no dashboard and every server on loopback.

A cluster (``--address HOST:PORT``, started with ``ray start --head --port PORT`` there): the driver joins it and
starts nothing of its own; trials run on the cluster's nodes, which need this project importable (a shared
checkout, or ``pip install -e .`` on each). Two things Ray does by default stand in the way and are handled here:

* **Loopback heads.** Ray replaces a loopback address with the host's routable one, where a head started with
  ``--node-ip-address 127.0.0.1`` (and multi-node clusters off) does not listen: the driver then retries for
  minutes. For a loopback ``--address`` the driver turns multi-node clusters off as well, as for a local search.
* **Token authentication** (Ray >= 2.59 enables it for clusters started with ``ray start --head``, and writes the
  token to ``~/.ray/auth_token``). A driver that joins by address does not turn it on by itself. Where the user has
  not chosen a mode (``RAY_AUTH_MODE``) and a token is at hand (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``
  names, or the default file), the driver sends it; a cluster without authentication accepts it too. On another
  machine: ``ray get-auth-token`` on the head prints the token; save it to a file and point ``RAY_AUTH_TOKEN_PATH``
  at it (https://docs.ray.io/en/latest/ray-security/token-auth.html).

A cluster that cannot be reached, or that refuses the driver, ends the search within a minute with one line that
says what to check (``ConnectionError``, exit code 2 at the CLI).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from .settings import SearchSettings

__all__ = ["DEFAULT_TOKEN_FILE", "init_ray"]

ROOT = Path(__file__).resolve().parents[1]
#: Where ``ray start`` and ``ray get-auth-token --generate`` keep the token (Ray's token-auth guide).
DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")
CONNECT_TIMEOUT_S = 10.0
#: Ray Tune's function trainables read this in the worker (``FunctionTrainable.reset_config``).
THREAD_TIMEOUT_ENV, THREAD_TIMEOUT_S = "TUNE_FUNCTION_THREAD_TIMEOUT_S", 120
_CHECK = ("check the address and port, that `ray status --address {address}` works from this machine, and, if the "
          "cluster uses token authentication, that this machine has its token (`ray get-auth-token` on the head; "
          "save it to a file and set RAY_AUTH_TOKEN_PATH to it)")


def init_ray(settings: SearchSettings) -> bool:
    """Start (or join) Ray; ``True`` if this call connected the driver and should ``ray.shutdown()`` it."""
    import ray

    if ray.is_initialized():
        return False
    # Trials import this project's packages; workers of a local Ray inherit the driver's environment.
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # OpenMP threads that spin while waiting burn the cores other trials (or other users) need: on a busy 2-core
    # machine a 2-thread smoke trial took 24-74 s spinning and 7 s with passive waiting.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # A reused worker waits this long for the thread of the trial it ran before to end (Ray's default: 2 s). A
    # trial stopped mid-epoch on a loaded machine takes longer to unwind; Ray then logs "Could not re-use actor"
    # as an ERROR and, once, left a resumed search with nothing running for minutes.
    os.environ.setdefault(THREAD_TIMEOUT_ENV, str(THREAD_TIMEOUT_S))
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                              "configure_logging": True}
    if settings.address:
        _join(settings.address, common)
    else:
        # No dashboard (no HTTP server), no Ray client server, and every other server on loopback: Ray binds its
        # gRPC servers to the node IP, and resolves even _node_ip_address="127.0.0.1" to the host's routable
        # address unless multi-node clusters are off, as Ray itself has them on macOS and Windows. A local search
        # has no other node, so it turns them off (a user who sets the variable keeps their choice).
        _single_node()
        ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=0 if settings.gpus_per_trial == 0 else None,
                 **common)
    return True


def _single_node() -> None:
    from ray._private import ray_constants

    os.environ.setdefault(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    # Ray reads the variable into a constant when it is imported, hence the assignment as well.
    ray_constants.ENABLE_RAY_CLUSTER = os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR].lower() in ("1", "true")


def _host_port(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` of a GCS address; None for the forms Ray resolves itself (``auto``, ``ray://...``)."""
    if address == "auto" or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConnectionError(f"--address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, the head's "
                              "`ray start --head --port` address)")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _send_a_token_if_there_is_one() -> bool:
    """Turn token authentication on for this driver where ``RAY_AUTH_MODE`` is unset and a token exists; whether
    a token will be sent.

    Ray does this itself only for the clusters it starts (``ray.init()`` without an address, ``ray start --head``);
    a driver that joins by address must ask for it. Ray's own helper does exactly that (it also refreshes the config
    Ray cached when it was imported, which setting ``RAY_AUTH_MODE`` now would not); it is private, hence this one
    place that calls it."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _join(address: str, common: dict[str, Any]) -> None:
    import ray

    target = _host_port(address)
    if target is not None:
        host, port = target
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise ConnectionError(f"nothing answers at {host}:{port} ({reason}); " + _CHECK.format(
                address=address)) from None
        if _is_loopback(host):
            _single_node()
    sending = _send_a_token_if_there_is_one()
    # The cluster's nodes import this project from the same checkout (a shared one, or this machine's own head).
    env = {"PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"],
           THREAD_TIMEOUT_ENV: os.environ[THREAD_TIMEOUT_ENV]}
    # Ray's C++ client logs every refused retry to stderr (one line a second for ~20 s) before it gives up: held
    # back here, read for the reason, and passed on only when the connection succeeds.
    with tempfile.TemporaryFile(mode="w+b") as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, **common)
            error = None
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
            error = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        logged = held.read().decode(errors="replace")
    if error is None:
        sys.stderr.write(logged)
        return
    why = " ".join(str(error).split()) or type(error).__name__
    if "InvalidAuthToken" in logged or "Unauthenticated" in logged:
        why = (f"the cluster at {address} uses token authentication and refused this machine's token "
               + ("(the one sent)" if sending else f"(none found: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                                                    f"{DEFAULT_TOKEN_FILE})"))
    raise ConnectionError(f"{why}; " + _CHECK.format(address=address)) from None
