"""MCP clients under steady load, built with the Python SDK (`mcp` 2.3.0), for mcp-affinity's
crash and fleet tests.

    python py_soak.py URL --mode streamable|sse [--workers N] [--every MS] [--keep] [--tokens]
                          [--timeout S]

- N workers each open a session and call `whoami` in a loop; when a call fails, the worker
  reports the error and starts a new session (as an application would). With `--keep`, it
  calls again in the same session instead (the session's transport is still up: a request
  failed on its way), and starts over only after 3 failures in a row.
- A starter opens a new short session every MS milliseconds (initialize, one call, close).
- With `--tokens` (legacy SSE), each worker session reports the session id it was given.
- It runs until its stdin closes, then prints a summary and exits 0: the test judges. A line
  `mark` on stdin is answered {"mark": n}: starters numbered n and up start after it.

One JSON object per line:
- {"worker", "session", "call", "replica", "count"}: a reply;
- {"worker", "session", "error", "kind"}: a failed call; kind "gone" for what tells a client
  its session is over (404 "Session not found"/"Session terminated", a cut SSE stream), "other"
  for anything else (a 502, a 503, a timeout);
- {"starter", "replica"} or {"starter", "error", "kind", "phase"}: a short session, "phase"
  saying whether it failed to start ("initialize") or later ("call": its replica died after
  minting it);
- {"worker", "session", "token"}: with `--tokens`, the session id of a worker's session;
- {"ready": true} once every worker has had a reply; {"summary": {...}} last.
"""

import argparse
import asyncio
import json
import sys
import threading

import anyio

from mcp import Client
from mcp.client.sse import sse_client

parser = argparse.ArgumentParser()
parser.add_argument("url")
parser.add_argument("--mode", choices=["streamable", "sse"], default="streamable")
parser.add_argument("--workers", type=int, default=9)
parser.add_argument("--every", type=int, default=25)
parser.add_argument("--keep", action="store_true", help="retry a failed call in the same session")
parser.add_argument("--tokens", action="store_true", help="report each worker session's id (SSE)")
parser.add_argument("--timeout", type=float, default=10.0, help="seconds a call may take")
args = parser.parse_args()

CALL_TIMEOUT = args.timeout


STOPPING = False
# The number of the next short session.
NEXT_STARTER = 0


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def failed(counts: dict, error: BaseException, **fields) -> None:
    # Cancellation at the end (possibly wrapped in an exception group) is not a failure.
    if STOPPING:
        return
    counts["errors"] += 1
    emit(**fields, error=describe(error), kind=kind_of(error))


def describe(error: BaseException) -> str:
    # Task groups wrap what happened inside them: say what that was.
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe(e) for e in error.exceptions)
    return f"{type(error).__name__}: {error}"


def kind_of(error: BaseException) -> str:
    text = describe(error)
    # 404 answers, or a cut SSE stream (a response stream ended early, the session's stream
    # closed, the write side broken).
    gone = (
        "Session not found",
        "Session terminated",
        "Connection closed",
        "ClosedResourceError",
        "BrokenResourceError",
        "SSE stream ended without a response",
    )
    return "gone" if any(g in text for g in gone) else "other"


def client(started=None) -> Client:
    """A client; `started(id)` is called once the session exists on a replica (with SSE, when
    its stream's endpoint event came; with Streamable HTTP, once initialized)."""
    if args.mode == "sse":
        return Client(sse_client(args.url, on_session_created=lambda sid: started and started(sid)))
    return Client(args.url, mode="legacy")


async def whoami(c) -> dict:
    with anyio.fail_after(CALL_TIMEOUT):
        result = await c.call_tool("whoami", {})
    return json.loads(result.content[0].text)


async def worker(no: int, ready: asyncio.Event, pending: list, counts: dict) -> None:
    session = 0
    while True:
        call = 0

        def created(sid: str, session: int = session) -> None:
            if args.tokens:
                emit(worker=no, session=session, token=sid)

        try:
            async with client(created) as c:
                failures = 0
                while True:
                    try:
                        reply = await whoami(c)
                    except Exception as e:  # noqa: BLE001
                        if not args.keep or STOPPING:
                            raise
                        failed(counts, e, worker=no, session=session)
                        failures += 1
                        if failures >= 3:
                            break
                        await asyncio.sleep(0.02)
                        continue
                    failures = 0
                    emit(worker=no, session=session, call=call, replica=reply["replica"], count=reply["count"])
                    counts["ok"] += 1
                    if call == 0 and session == 0:
                        pending[0] -= 1
                        if pending[0] == 0:
                            ready.set()
                    call += 1
                    await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - report everything, let the test judge
            failed(counts, e, worker=no, session=session)
            if STOPPING:
                raise
        session += 1


async def starter(counts: dict) -> None:
    global NEXT_STARTER
    tasks = set()

    async def short(n: int) -> None:
        phase = "initialize"

        def started(_sid=None):
            nonlocal phase
            phase = "call"

        try:
            async with client(started) as c:
                phase = "call"
                reply = await whoami(c)
                emit(starter=n, replica=reply["replica"], count=reply["count"])
                counts["started"] += 1
        except BaseException as e:  # noqa: BLE001
            failed(counts, e, starter=n, phase=phase)

    while True:
        task = asyncio.create_task(short(NEXT_STARTER))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        NEXT_STARTER += 1
        await asyncio.sleep(args.every / 1000)


async def main() -> None:
    counts = {"ok": 0, "errors": 0, "started": 0}
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def read_stdin() -> None:
        # `mark` lines are answered; stop when stdin closes: the test says so, or died.
        for line in sys.stdin:
            if line.strip() == "mark":
                loop.call_soon_threadsafe(lambda: emit(mark=NEXT_STARTER))
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_stdin, daemon=True).start()
    ready = asyncio.Event()
    pending = [args.workers]
    tasks = [asyncio.create_task(worker(i, ready, pending, counts)) for i in range(args.workers)]
    await ready.wait()
    emit(ready=True)
    tasks.append(asyncio.create_task(starter(counts)))
    await stop.wait()
    global STOPPING
    STOPPING = True
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    emit(summary=counts)


asyncio.run(main())
sys.exit(0)
