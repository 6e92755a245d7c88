"""One MCP server replica built with the Python SDK (`mcp` 2.3.0), for mcp-affinity's e2e tests.

    python py_replica.py --name p1 --mode streamable|sse [--task-seconds 0.6] [--port P]

- streamable: stateful Streamable HTTP at /mcp (legacy-era clients get an Mcp-Session-Id);
  the same endpoint serves 2026-07-28 clients sessionless.
- sse: legacy HTTP+SSE (2024-11-05): GET /sse, POST /messages/?session_id=<hex>.

Binds 127.0.0.1 on an OS-assigned port (or --port, to come back where a killed replica was) and prints `LISTENING <port>` on stdout once the
socket listens. Exits when its stdin closes, so it cannot outlive the test that started it.

Tools:
- whoami: {"replica", "count", "session"}; `count` counts the calls of this session here.
- slow_job: with a client that declares the io.modelcontextprotocol/tasks extension (2026-07-28
  era), answers at once with a task handle (resultType "task", taskId "<replica>-<hex>") and
  finishes in the background (no sooner than --task-seconds, and not before `tasks/get` has
  answered it twice, so that every client polls it at least twice however slow the machine);
  `tasks/get` on any other replica does not know the task.
"""

import argparse
import asyncio
import collections
import datetime
import json
import os
import socket
import sys
import threading
import traceback
import uuid
from typing import Any

import uvicorn
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import RequestParams
from pydantic import BaseModel, ConfigDict

TASKS = "io.modelcontextprotocol/tasks"

parser = argparse.ArgumentParser()
parser.add_argument("--name", required=True)
parser.add_argument("--mode", choices=["streamable", "sse"], default="streamable")
parser.add_argument("--task-seconds", type=float, default=0.6)
parser.add_argument("--port", type=int, default=0)
args = parser.parse_args()
NAME = args.name

calls: dict[str, int] = collections.defaultdict(int)
tasks: dict[str, dict[str, Any]] = {}
# Per task: set once `tasks/get` has answered it twice.
polled_twice: dict[str, asyncio.Event] = {}
polls: dict[str, int] = collections.defaultdict(int)


def timestamp() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TaskIdParams(RequestParams):
    model_config = ConfigDict(extra="allow")
    taskId: str


async def get_task(ctx: Any, params: TaskIdParams) -> dict[str, Any]:
    task = tasks.get(params.taskId)
    if task is None:
        raise MCPError(code=-32602, message=f"task {params.taskId} unknown on replica {NAME}")
    answer = {**task, "servedBy": NAME}
    polls[params.taskId] += 1
    if polls[params.taskId] >= 2:
        polled_twice[params.taskId].set()
    return answer


class Tasks(Extension):
    """The smallest io.modelcontextprotocol/tasks server: slow_job becomes a task, tasks/get
    reports it (mcp 2.3.0 has the extension hooks, not a tasks implementation)."""

    identifier = TASKS

    def methods(self):
        return [MethodBinding(method="tasks/get", params_type=TaskIdParams, handler=get_task)]

    async def intercept_tool_call(self, params, ctx, call_next):
        meta = getattr(params, "meta", None) or {}
        if isinstance(meta, BaseModel):
            meta = meta.model_dump(by_alias=True)
        capabilities = meta.get("io.modelcontextprotocol/clientCapabilities") or {}
        if params.name != "slow_job" or TASKS not in (capabilities.get("extensions") or {}):
            return await call_next(ctx)
        task_id = f"{NAME}-{uuid.uuid4().hex}"
        task = {
            "resultType": "complete",
            "taskId": task_id,
            "status": "working",
            "createdAt": timestamp(),
            "lastUpdatedAt": timestamp(),
            "ttlMs": 60000,
            "pollIntervalMs": 150,
        }
        tasks[task_id] = task
        polled_twice[task_id] = asyncio.Event()

        async def finish():
            await asyncio.sleep(args.task_seconds)
            try:
                await asyncio.wait_for(polled_twice[task_id].wait(), timeout=30)
            except asyncio.TimeoutError:
                pass  # nobody polls it: finish anyway
            result = await call_next(ctx)
            if isinstance(result, BaseModel):
                result = result.model_dump(by_alias=True, exclude_none=True)
            task.update(status="completed", lastUpdatedAt=timestamp(), result=result)

        asyncio.get_running_loop().create_task(finish())
        return {**task, "resultType": "task"}


server = MCPServer(f"replica-{NAME}", extensions=[Tasks()])


def session_of(ctx: Context) -> str:
    headers = ctx.headers or {}
    if session := headers.get("mcp-session-id"):
        return session
    request = ctx.request_context.request
    params = getattr(request, "query_params", None) or {}
    if session := params.get("session_id"):
        return f"sse:{session}"
    return "none"  # 2026-07-28: no session


@server.tool()
async def whoami(ctx: Context) -> str:
    """This replica's name and the session's call count here."""
    session = session_of(ctx)
    calls[session] += 1
    return json.dumps({"replica": NAME, "count": calls[session], "session": session})


@server.tool()
async def slow_job(ctx: Context) -> str:
    """A job that becomes a task for clients that support tasks."""
    return json.dumps({"replica": NAME, "job": "done"})


class QuietAfterResponse:
    """Keeps a keep-alive connection usable when the app fails after its response is complete.

    `mcp` 2.3.0 answers a notification or response POST with 202 and only then hands the
    message to its session; if the client's DELETE ended the session meanwhile, that raises
    (`ClosedResourceError`) after the 202 went out, and uvicorn then closes the connection. A
    proxy that had just reused the connection (its response was complete) sees its next
    request, often another client's, reset: a 502 the server caused. This wrapper logs such a
    late exception instead, as a server that handled its own error would. An exception before
    the response is complete still reaches uvicorn (500, or the connection closed).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        complete = False

        async def watch(message: Any) -> None:
            nonlocal complete
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if not complete:
                raise
            print("after a complete response:", traceback.format_exc(limit=2), file=sys.stderr)


def exit_when_stdin_closes() -> None:
    sys.stdin.read()
    os._exit(0)


def main() -> None:
    app = server.sse_app() if args.mode == "sse" else server.streamable_http_app()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(256)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(QuietAfterResponse(app), log_level="warning", lifespan="on")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
