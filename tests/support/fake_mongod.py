"""Fake MongoDB servers for the tests, where no MongoDB server installs.

- `SilentMongod`: accepts connections on a Unix socket and never answers; tells which
  processes connected.
- `RefusingMongod`: answers its handshake and refuses every user and password, with just
  enough of the wire protocol for pymongo to connect, find a primary and try to
  authenticate: `hello` (the legacy OP_QUERY handshake and OP_MSG), `saslStart` refused
  with MongoDB's own error (code 18, AuthenticationFailed), `{ok: 1}` to anything else:
  what a real server says to a wrong password.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import threading
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import bson

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
REFUSED = {
    "ok": 0.0,
    "errmsg": "Authentication failed.",
    "code": 18,
    "codeName": "AuthenticationFailed",
}


def _hello() -> dict[str, Any]:
    return {
        "helloOk": True,
        "ismaster": True,
        "isWritablePrimary": True,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": datetime.now(UTC),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": 1,
        "minWireVersion": 0,
        "maxWireVersion": 21,
        "readOnly": False,
        "saslSupportedMechs": ["SCRAM-SHA-256", "SCRAM-SHA-1"],
        "ok": 1.0,
    }


def _answer(command: dict[str, Any]) -> dict[str, Any]:
    name = next(iter(command), "").lower()
    if name in ("hello", "ismaster"):
        return _hello()
    if name in ("saslstart", "authenticate"):
        return REFUSED
    return {"ok": 1.0}


def accept_forever(sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Hand each connection `sock` accepts to `handle`, until `sock` is closed."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        handle(conn)


class SilentMongod:
    """A MongoDB that accepts connections on a Unix socket and never answers: a run that
    connects hangs there, and the socket tells which process connected (SO_PEERCRED)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mongo", dir="/tmp")  # short: sun_path <= 107
        self.path = os.path.join(self.dir, "m.sock")
        self.url = "mongodb://" + urllib.parse.quote(self.path, safe="")
        self.pids: list[int] = []
        self._conns: list[socket.socket] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(16)
        threading.Thread(target=accept_forever, args=(self._sock, self._keep), daemon=True).start()

    def _keep(self, conn: socket.socket) -> None:
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self._conns.append(conn)
        self.pids.append(struct.unpack("3i", cred)[0])

    def close(self) -> None:
        for conn in [self._sock, *self._conns]:
            conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class RefusingMongod:
    """`with RefusingMongod() as url:` a `mongodb://` URL (no credentials) of the server."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]

    def __enter__(self) -> str:
        threading.Thread(target=self._accept, daemon=True).start()
        return f"mongodb://127.0.0.1:{self.port}"

    def __exit__(self, *_: object) -> None:
        self._sock.close()

    def _accept(self) -> None:
        accept_forever(
            self._sock,
            lambda conn: threading.Thread(target=self._serve, args=(conn,), daemon=True).start(),
        )

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                while True:
                    header = _read(conn, 16)
                    length, request_id, _, op = struct.unpack("<iiii", header)
                    body = _read(conn, length - 16)
                    conn.sendall(_reply(op, request_id, body))
            except (OSError, EOFError):
                return


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _reply(op: int, request_id: int, body: bytes) -> bytes:
    if op == OP_QUERY:
        name_end = body.index(b"\0", 4)
        query = bson.decode(
            body[
                name_end + 9 : name_end
                + 9
                + int.from_bytes(body[name_end + 9 : name_end + 13], "little")
            ]
        )
        doc = bson.encode(_answer(query))
        payload = struct.pack("<iqii", 0, 0, 0, 1) + doc
        code = OP_REPLY
    else:  # OP_MSG: flag bits, then a kind-0 section holding the command
        size = int.from_bytes(body[5:9], "little")
        command = bson.decode(body[5 : 5 + size])
        payload = struct.pack("<IB", 0, 0) + bson.encode(_answer(command))
        code = OP_MSG
    return struct.pack("<iiii", 16 + len(payload), request_id + 1, request_id, code) + payload
