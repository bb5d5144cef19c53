"""Chromium for the browser tests: Debian's build (`make test` installs it with apt-get), driven by the pinned
`playwright` package, never its own browsers (`playwright install` is never run); and a relay whose open
connections a test can reset, to cut a page's streams the way a network failure does."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import threading
from urllib.parse import urlsplit

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class DroppingRelay:
    """A loopback TCP relay in front of the host whose open connections the test can reset at once."""

    def __init__(self, target_url: str) -> None:
        self.target = (urlsplit(target_url).hostname, urlsplit(target_url).port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop(self) -> int:
        """Reset every open connection (RST, like a network failure); returns how many there were."""
        with self.lock:
            victims, self.sockets = self.sockets, set()
        for s in victims:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv(), or close() would wait for it
            except OSError:
                pass
            s.close()
        return len(victims)

    def close(self) -> None:
        self.listener.close()
        self.drop()


def errors_while_loading(page, url: str) -> list[str]:
    """Open `url` and wait until the page is idle and has asked for its icon: every console error, failed
    request and answer of 400 or more on the way (a page that loads cleanly gives [])."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on(
        "response",
        lambda response: errors.append(f"{response.status} {response.url}") if response.status >= 400 else None,
    )
    page.on("requestfailed", lambda request: errors.append(f"failed {request.url}"))
    page.goto(url)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)  # the icon is asked for after the load
    return errors
