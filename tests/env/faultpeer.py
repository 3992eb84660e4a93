#!/usr/bin/env python3
"""Scripted MongoDB fault peer for sluice's loopback environment.

A wire-protocol proxy in front of the MongoDB peer (mongo-java-server). Every OP_MSG command passes through
unchanged unless a scripted rule matches it; then the peer answers the way a real server does when things go
wrong, so the official driver sees exactly what a replica set would send:

* ``reply``: answer the command with the given document, e.g.
  ``{"ok": 0, "code": 286, "codeName": "ChangeStreamHistoryLost", "errmsg": "..."}`` or a retryable error
  with ``"errorLabels": ["RetryableWriteError"]``;
* ``failIndexes``: for ``insert``/``update``/``delete``, forward the batch without the listed indexes and add
  a ``writeErrors`` entry for each of them to the server's reply (a BulkWriteError with per-index errors; an
  ordered batch stops at the first failed index, as MongoDB does);
* ``closeConnection``: drop the connection without answering (a network error to the driver).
* ``postBatchResumeToken: "clock"``: for ``getMore`` on a change stream, forward it and, when the batch comes
  back empty, add the ``postBatchResumeToken`` a replica set reports for a quiet stream (mongo-java-server
  sends none); the token is mongo-java-server's own form for the current second, so it can be resumed from.

Rules are scripted over a small HTTP control API (JSON):

* ``POST /rules`` ``{"command": "aggregate", "changeStream": true, "collection": "orders", "skip": 0,
  "times": 1, "reply": {...}}`` -> ``{"id": 1}``. ``command`` ``"*"`` matches every command; ``times`` absent =
  every match; ``skip`` lets the first N matches through; ``forMs`` keeps the rule for that long after it was
  added (an outage of a given length); ``match`` (e.g. ``{"sort": {"$natural": -1}}``) also requires those
  command fields to be equal. Rules are extended JSON, so a reply can carry BSON types
  (``{"$timestamp": {"t": 1, "i": 1}}``).
  ``appName`` limits a rule to the connections whose handshake (``hello``/``isMaster``) gave that
  application name (a sluice task names itself ``sluice/<namespace>/<connector>/<task>``), so a rule for
  one test's task leaves the others alone.
* ``GET /rules`` -> the rules with how often each fired; ``DELETE /rules`` removes them all.
* ``GET /commands`` -> how many times each command was seen (``{"aggregate": 3, ...}``), and
  ``changeStreamAggregates`` for aggregates opening a change stream.
* ``POST /reset`` -> no rules, counters at zero.

Usage: ``faultpeer.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --control 127.0.0.1:PORT``.
Prints ``READY`` once both listeners are bound; binds to loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bson
from bson import json_util

OP_MSG = 2013
FLAG_CHECKSUM = 1
FLAG_MORE_TO_COME = 2
WRITE_SEQUENCES = {"insert": "documents", "update": "updates", "delete": "deletes"}
HANDSHAKES = {"hello", "isMaster", "ismaster"}


class Rules:
    """The scripted rules and the command counters, shared by the proxy and the control API."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[dict] = []
        self.ids = itertools.count(1)
        self.commands: Counter[str] = Counter()

    def add(self, rule: dict) -> int:
        if not isinstance(rule.get("command"), str):
            raise ValueError('a rule needs "command" (e.g. "aggregate")')
        actions = [k for k in ("reply", "failIndexes", "closeConnection", "postBatchResumeToken") if k in rule]
        if len(actions) != 1:
            raise ValueError('a rule needs exactly one of "reply", "failIndexes", "closeConnection", '
                             '"postBatchResumeToken"')
        if "postBatchResumeToken" in rule and (rule["command"] != "getMore" or rule["postBatchResumeToken"] != "clock"):
            raise ValueError('"postBatchResumeToken": "clock" applies to getMore')
        if "failIndexes" in rule and rule["command"] not in WRITE_SEQUENCES:
            raise ValueError('"failIndexes" applies to insert, update and delete')
        if "forMs" in rule:
            if not isinstance(rule["forMs"], int) or rule["forMs"] <= 0:
                raise ValueError('"forMs" is a positive number of milliseconds')
            rule = dict(rule, until=time.monotonic() + rule["forMs"] / 1000)
        with self.lock:
            rule = dict(rule, id=next(self.ids), fired=0, seen=0)
            self.rules.append(rule)
            return rule["id"]

    def match(self, command: str, body: dict, app_name: str | None = None) -> dict | None:
        """Counts the command and returns the rule that takes it, if any (``app_name``: the connection's)."""
        with self.lock:
            self.commands[command] += 1
            if is_change_stream(command, body):
                self.commands["changeStreamAggregates"] += 1
            for rule in self.rules:
                if rule["command"] not in (command, "*"):
                    continue
                if "until" in rule and time.monotonic() > rule["until"]:
                    continue
                if rule.get("changeStream") and not is_change_stream(command, body):
                    continue
                target = body.get("collection") if command == "getMore" else body.get(command)
                if "collection" in rule and target != rule["collection"]:
                    continue
                if "database" in rule and body.get("$db") != rule["database"]:
                    continue
                if "appName" in rule and app_name != rule["appName"]:
                    continue
                if any(body.get(k) != v for k, v in rule.get("match", {}).items()):
                    continue
                rule["seen"] += 1
                if rule["seen"] <= rule.get("skip", 0):
                    continue
                if rule.get("times") is not None and rule["fired"] >= rule["times"]:
                    continue
                rule["fired"] += 1
                return dict(rule)
            return None

    def snapshot(self) -> dict:
        with self.lock:
            return {"rules": [dict(r) for r in self.rules], "commands": dict(self.commands)}

    def clear(self, counters: bool) -> None:
        with self.lock:
            self.rules.clear()
            if counters:
                self.commands.clear()


def is_change_stream(command: str, body: dict) -> bool:
    pipeline = body.get("pipeline") if command == "aggregate" else None
    return bool(pipeline) and isinstance(pipeline[0], dict) and "$changeStream" in pipeline[0]


class Message:
    """One OP_MSG: its header fields, the body document and its document sequences."""

    def __init__(self, request_id: int, response_to: int, flags: int, body: dict, sequences: dict[str, list]):
        self.request_id = request_id
        self.response_to = response_to
        self.flags = flags
        self.body = body
        self.sequences = sequences

    @staticmethod
    def parse(header: bytes, payload: bytes) -> "Message":
        _, request_id, response_to, _ = struct.unpack("<iiii", header)
        flags = struct.unpack_from("<I", payload, 0)[0]
        end = len(payload) - (4 if flags & FLAG_CHECKSUM else 0)
        pos, body, sequences = 4, None, {}
        while pos < end:
            kind = payload[pos]
            pos += 1
            if kind == 0:
                size = struct.unpack_from("<i", payload, pos)[0]
                body = bson.decode(payload[pos : pos + size])
                pos += size
            elif kind == 1:
                size = struct.unpack_from("<i", payload, pos)[0]
                section_end = pos + size
                name_end = payload.index(b"\x00", pos + 4)
                name = payload[pos + 4 : name_end].decode()
                docs, cursor = [], name_end + 1
                while cursor < section_end:
                    dsize = struct.unpack_from("<i", payload, cursor)[0]
                    docs.append(bson.decode(payload[cursor : cursor + dsize]))
                    cursor += dsize
                sequences[name] = docs
                pos = section_end
            else:
                raise ValueError(f"unknown OP_MSG section kind {kind}")
        if body is None:
            raise ValueError("OP_MSG without a body section")
        return Message(request_id, response_to, flags, body, sequences)

    def encode(self) -> bytes:
        parts = [struct.pack("<I", self.flags & ~FLAG_CHECKSUM), b"\x00", bson.encode(self.body)]
        for name, docs in self.sequences.items():
            encoded = b"".join(bson.encode(d) for d in docs)
            ident = name.encode() + b"\x00"
            parts += [b"\x01", struct.pack("<i", 4 + len(ident) + len(encoded)), ident, encoded]
        payload = b"".join(parts)
        return struct.pack("<iiii", 16 + len(payload), self.request_id, self.response_to, OP_MSG) + payload


def add_post_batch_resume_token(raw: bytes) -> bytes:
    """Adds a postBatchResumeToken for the current second to an empty getMore batch."""
    if struct.unpack("<i", raw[12:16])[0] != OP_MSG:
        return raw
    reply = Message.parse(raw[:16], raw[16:])
    cursor = reply.body.get("cursor")
    if not isinstance(cursor, dict) or cursor.get("nextBatch"):
        return raw
    cursor["postBatchResumeToken"] = {"_data": f"{int(time.time()):08x}{0:08x}"}
    return reply.encode()


def reply_to(request_id: int, doc: dict) -> bytes:
    return Message(next(_reply_ids), request_id, 0, doc, {}).encode()


_reply_ids = itertools.count(1_000_000)


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(16)
    length, _, _, _ = struct.unpack("<iiii", header)
    return header, await reader.readexactly(length - 16)


class Connection:
    """One driver connection and its own upstream connection."""

    def __init__(self, rules: Rules, upstream: tuple[str, int], reader, writer):
        self.rules = rules
        self.upstream_addr = upstream
        self.reader, self.writer = reader, writer
        self.up_reader = self.up_writer = None
        self.app_name: str | None = None  # from the connection's handshake

    async def upstream(self):
        if self.up_writer is None:
            self.up_reader, self.up_writer = await asyncio.open_connection(*self.upstream_addr)
        return self.up_reader, self.up_writer

    async def roundtrip(self, raw: bytes, expect_reply: bool) -> list[bytes]:
        up_reader, up_writer = await self.upstream()
        up_writer.write(raw)
        await up_writer.drain()
        replies = []
        while expect_reply:
            header, payload = await read_message(up_reader)
            replies.append(header + payload)
            opcode = struct.unpack("<i", header[12:16])[0]
            flags = struct.unpack_from("<I", payload, 0)[0] if opcode == OP_MSG else 0
            expect_reply = bool(flags & FLAG_MORE_TO_COME)
        return replies

    async def serve(self) -> None:
        try:
            while True:
                header, payload = await read_message(self.reader)
                raw = header + payload
                opcode = struct.unpack("<i", header[12:16])[0]
                if opcode != OP_MSG:
                    for reply in await self.roundtrip(raw, True):
                        self.writer.write(reply)
                    await self.writer.drain()
                    continue
                msg = Message.parse(header, payload)
                command = next(iter(msg.body), "")
                if command in HANDSHAKES and isinstance(msg.body.get("client"), dict):
                    self.app_name = msg.body["client"].get("application", {}).get("name")
                rule = self.rules.match(command, msg.body, self.app_name)
                expect_reply = not msg.flags & FLAG_MORE_TO_COME
                if rule is None:
                    replies = await self.roundtrip(raw, expect_reply)
                elif "closeConnection" in rule:
                    return
                elif "reply" in rule:
                    replies = [reply_to(msg.request_id, rule["reply"])] if expect_reply else []
                elif "postBatchResumeToken" in rule:
                    replies = [add_post_batch_resume_token(r) for r in await self.roundtrip(raw, expect_reply)]
                else:
                    replies = await self.fail_indexes(msg, command, rule, expect_reply)
                for reply in replies:
                    self.writer.write(reply)
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in (self.writer, self.up_writer):
                if w is not None:
                    w.close()

    async def fail_indexes(self, msg: Message, command: str, rule: dict, expect_reply: bool) -> list[bytes]:
        """Forwards the write batch without the failing indexes and reports those as writeErrors."""
        seq_name = WRITE_SEQUENCES[command]
        in_sequence = seq_name in msg.sequences
        items = msg.sequences[seq_name] if in_sequence else list(msg.body.get(seq_name, []))
        failing = sorted(i for i in rule["failIndexes"] if 0 <= i < len(items))
        if msg.body.get("ordered", True) and failing:
            failing = failing[:1]
            kept = items[: failing[0]]
        else:
            kept = [item for i, item in enumerate(items) if i not in set(failing)]
        error = rule.get("writeError", {"code": 11000, "errmsg": "E11000 duplicate key error (scripted)"})
        write_errors = [dict(error, index=i) for i in failing]
        if kept:
            if in_sequence:
                msg.sequences[seq_name] = kept
            else:
                msg.body[seq_name] = kept
            replies = await self.roundtrip(msg.encode(), expect_reply)
            if not replies:
                return []
            reply_header, reply_payload = replies[-1][:16], replies[-1][16:]
            reply = Message.parse(reply_header, reply_payload)
            reply.body.setdefault("writeErrors", [])
            # The upstream numbered its errors within the shortened batch: map them back.
            original = [i for i in range(len(items)) if i not in set(failing)]
            for e in reply.body["writeErrors"]:
                e["index"] = original[e["index"]]
            reply.body["writeErrors"] = sorted(reply.body["writeErrors"] + write_errors, key=lambda e: e["index"])
            return replies[:-1] + [reply.encode()]
        if not expect_reply:
            return []
        return [reply_to(msg.request_id, {"ok": 1.0, "n": 0, "writeErrors": write_errors})]


def control_server(rules: Rules, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def send(self, code: int, doc) -> None:
            body = json.dumps(doc, default=str).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            snap = rules.snapshot()
            if self.path == "/rules":
                self.send(200, snap["rules"])
            elif self.path == "/commands":
                self.send(200, snap["commands"])
            else:
                self.send(404, {"error": f"no {self.path}"})

        def do_POST(self):
            if self.path == "/reset":
                rules.clear(counters=True)
                self.send(200, {})
                return
            if self.path != "/rules":
                self.send(404, {"error": f"no {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                # Extended JSON, so replies can carry BSON types: {"$timestamp": {"t": 1700000000, "i": 1}}.
                rule = json_util.loads(self.rfile.read(length) or b"{}")
                self.send(201, {"id": rules.add(rule)})
            except (ValueError, TypeError) as e:
                self.send(400, {"error": str(e)})

        def do_DELETE(self):
            if self.path == "/rules":
                rules.clear(counters=False)
                self.send(200, {})
            else:
                self.send(404, {"error": f"no {self.path}"})

        def log_message(self, fmt, *args):
            sys.stderr.write("control: " + (fmt % args) + "\n")

    return ThreadingHTTPServer((host, port), Handler)


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host.startswith("127."):
        raise argparse.ArgumentTypeError(f"{value}: the fault peer binds and connects on loopback only")
    return host, int(port)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=host_port, required=True)
    parser.add_argument("--upstream", type=host_port, required=True)
    parser.add_argument("--control", type=host_port, required=True)
    args = parser.parse_args()

    rules = Rules()
    control = control_server(rules, *args.control)
    threading.Thread(target=control.serve_forever, daemon=True).start()

    async def accept(reader, writer):
        await Connection(rules, args.upstream, reader, writer).serve()

    server = await asyncio.start_server(accept, *args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    async with server:
        await stop.wait()
    control.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
