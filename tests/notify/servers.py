"""Local servers that speak the notification channels' protocols (no internet in tests).

* :class:`TelegramBotApi`: Telegram's Bot API ``POST /bot<token>/sendMessage`` (JSON body with
  ``chat_id`` and ``text``), answering ``{"ok": true, "result": <Message>}`` as Telegram does, or
  ``401 {"ok": false, "error_code": 401, "description": "Unauthorized"}`` for an unknown token
  (https://core.telegram.org/bots/api#making-requests).
* :class:`WebhookReceiver`: a JSON webhook (apprise's ``json://``: ``{"version", "title", "message",
  "type", ...}``), which can be stopped and started again on the same port mid-run.

Both keep what they received across restarts, and can be told to fail the next N requests with a 5xx.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from mambo.streams.kafka.broker import free_port


class _Server:
    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict[str, Any]] = []  # {"path", "body"} in arrival order
        self.fail_next = 0
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError

    def start(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                with server.lock:
                    if server.fail_next > 0:
                        server.fail_next -= 1
                        status, reply = 502, {"ok": False, "description": "Bad Gateway"}
                    else:
                        status, reply = server.answer(self.path, body)
                        if status == 200:
                            server.received.append({"path": self.path, "body": body})
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        httpd.allow_reuse_address = True
        httpd.daemon_threads = False  # stop() waits for the requests in progress: none lands after it
        httpd.server_bind()
        httpd.server_activate()
        self._httpd = httpd
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop answering: connections are refused until :meth:`start` again (same port)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.received)


class TelegramBotApi(_Server):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.message_id = 0

    @property
    def base(self) -> str:
        """What apprise's Telegram plugin prefixes the token with (its ``notify_url``)."""
        return f"http://127.0.0.1:{self.port}/bot"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        prefix, _, method = path.rpartition("/")
        if prefix != f"/bot{self.token}":
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        if method != "sendMessage":
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        if "chat_id" not in body or not body.get("text"):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        self.message_id += 1
        return 200, {
            "ok": True,
            "result": {
                "message_id": self.message_id,
                "chat": {"id": int(body["chat_id"]), "type": "private"},
                "date": 0,
                "text": body["text"],
            },
        }


class WebhookReceiver(_Server):
    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True}

    def event_ids(self) -> list[str]:
        """The notification ids received, in order (the last line of each message: ``id <event_id>``)."""
        with self.lock:
            return [r["body"]["message"].rsplit("\nid ", 1)[1] for r in self.received]
