"""Running the explorer: uvicorn in a background thread on a socket bound before it starts.

Example:
    >>> handle = explore("seed-cnn", open_browser=False, block=False)     # doctest: +SKIP
    gradsight explore: http://127.0.0.1:41235/
    >>> handle.url                                                        # doctest: +SKIP
    'http://127.0.0.1:41235/'
    >>> handle.stop()                                                     # doctest: +SKIP

The socket is bound first, so the URL (and a port in use) is known before anything is served; port 0 picks a
free one. Binding a non-loopback address prints a warning: requests must still carry a localhost Host header
unless they name that address.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
import webbrowser
from typing import Any

from ..errors import BadInputError, MissingDependencyError
from .uploads import LOOPBACK_NAMES

#: Host-header names the explorer answers to, with any port (DNS-rebinding guard).


class ExplorerHandle:
    """A running explorer: ``url``, ``stop()``, ``wait()`` (until stopped or Ctrl+C); a context manager."""

    def __init__(self, server, thread: threading.Thread, url: str, session):
        self._server, self._thread, self.url, self.session = server, thread, url, session

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and close the socket (waits for requests in flight)."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def wait(self) -> None:
        """Block until the server stops; Ctrl+C stops it."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        return f"<gradsight explorer at {self.url}{'' if self.running else ' (stopped)'}>"


def _require_web():
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise MissingDependencyError(f"the explorer needs starlette and uvicorn ({err}); install them with "
                                     "pip install 'gradsight[explore]'") from None
    return uvicorn


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise BadInputError("port", expected="0..65535 (0: any free port)", got=repr(port))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise BadInputError(f"host {host!r}", expected="an address of this machine such as 127.0.0.1",
                            got=f"a name that does not resolve ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY only on such connections, and without it every
    # keep-alive answer waits ~40 ms for the browser's delayed ACK.
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise BadInputError(f"port {port} on {host}", expected="a free port", got=f"{err.strerror or err}",
                            fix="pass another port, or port 0 for any free one") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def start(model: Any = None, images: Any = None, *, host: str = "127.0.0.1", port: int = 0,
          session=None) -> ExplorerHandle:
    """Start serving in a background thread and return once the server accepts connections."""
    uvicorn = _require_web()
    from .app import create_app
    from .session import Session

    session = session if session is not None else Session(model, images)
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    hosts = LOOPBACK_NAMES
    if not _is_loopback(host):
        print(f"gradsight explore: warning: serving on {host}, which other machines may reach; everyone who can "
              "open the page can run the models", file=sys.stderr)
        if host not in ("0.0.0.0", "::"):
            hosts = hosts + ((f"[{host}]" if ":" in host else host),)
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    if bound_host in ("0.0.0.0", "::"):
        shown = "127.0.0.1" if bound_host == "0.0.0.0" else "[::1]"
    url = f"http://{shown}:{bound_port}/"
    # log_config=None: uvicorn must not reconfigure the process's logging (a notebook's, or TensorFlow's handlers)
    config = uvicorn.Config(create_app(session, hosts=hosts), log_config=None, log_level="warning", access_log=False,
                            lifespan="off", server_header=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="gradsight-explorer",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the explorer's server did not start; see the messages above")
        time.sleep(0.01)
    return ExplorerHandle(server, thread, url, session)


def explore(model: Any = None, images: Any = None, *, host: str = "127.0.0.1", port: int = 0,
            open_browser: bool = True, block: bool = True) -> ExplorerHandle:
    """Serve the explorer on ``host:port`` (0: a free port), print its URL and open it in the browser.

    ``model``: a name, a ``LoadedModel`` or a framework model, offered first besides the named models
    (seed-cnn, seed-cnn-torch, efficientnet_lite0, resnet50); ``images``: paths or PIL images offered besides
    the random input and the bundled photo. ``block=False`` (notebooks) returns at once with a handle:
    ``handle.url``, ``handle.stop()``. With ``block=True`` it serves until Ctrl+C and returns the stopped handle.
    """
    handle = start(model, images, host=host, port=port)
    print(f"gradsight explore: {handle.url}" + ("  (Ctrl+C to stop)" if block else ""), flush=True)
    if open_browser:
        webbrowser.open(handle.url)
    if block:
        handle.wait()
        handle.stop()
    return handle
