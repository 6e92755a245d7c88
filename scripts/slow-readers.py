#!/usr/bin/env python3
"""Memory the proxy holds for a client that never reads its answer.

A backend streams an endless event stream as fast as it can; CLIENTS clients each start one
through the proxy (`POST /mcp`, a conversation start answered with `text/event-stream`) and
never read a byte. Once every stream has filled what it can, the proxy's resident set less
its resident set before the clients came, over CLIENTS, is what one slow reader costs it
(the kernel's socket buffers are not counted: they are the same whatever the proxy).

Usage: scripts/slow-readers.py PROXY_BINARY [CLIENTS] [EXTRA PROXY FLAGS...]
       (default 200 clients; build the binary with `cargo build --release --example proxy`)
Everything listens on 127.0.0.1 and is stopped when the script ends.
"""

import asyncio
import socket
import subprocess
import sys
import time

EVENT = b"data: " + b"x" * 16_000 + b"\n\n"
CHUNK = b"%x\r\n" % len(EVENT) + EVENT + b"\r\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def stream_forever(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"mcp-session-id: s-1\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        while True:
            writer.write(CHUNK)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main():
    binary = sys.argv[1]
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    extra = sys.argv[3:]
    backend = await asyncio.start_server(stream_forever, "127.0.0.1", 0)
    backend_port = backend.sockets[0].getsockname()[1]
    listen = free_port()
    proxy = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{listen}", "--backend",
         f"http://127.0.0.1:{backend_port}", "--health-interval", "0", "--threads", "1", *extra],
        stderr=subprocess.DEVNULL,
    )
    sockets = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", listen)).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        before = rss_kib(proxy.pid)
        request = (
            b"POST /mcp HTTP/1.1\r\nhost: proxy.test\r\ncontent-type: application/json\r\n"
            b"accept: application/json, text/event-stream\r\ncontent-length: 2\r\n\r\n{}"
        )
        for _ in range(clients):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", listen))
            s.sendall(request)
            sockets.append(s)
        # Until the resident set stops growing (at most 20 s).
        last, deadline = rss_kib(proxy.pid), time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            now = rss_kib(proxy.pid)
            if now - last < 64:
                break
            last = now
        after = rss_kib(proxy.pid)
        print(f"clients {clients}: proxy RSS {before} KiB before, {after} KiB after; "
              f"{(after - before) / clients:.0f} KiB per slow reader")
    finally:
        for s in sockets:
            s.close()
        proxy.kill()
        proxy.wait()
        backend.close()


asyncio.run(main())
