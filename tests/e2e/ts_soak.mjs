// MCP clients under steady load, built with the TypeScript SDK (@modelcontextprotocol/sdk
// 1.32.2), for mcp-affinity's crash and fleet tests.
//
//   node ts_soak.mjs URL --mode streamable|sse [--workers N] [--every MS] [--keep] [--tokens]
//                                               [--timeout MS]
//
// N workers each open a session and call `whoami` in a loop; when a call fails, the worker
// reports the error and starts a new session (with --keep: calls again in the same session,
// and starts over only after 3 failures in a row). A starter opens a new short session every
// MS milliseconds. It runs until its stdin closes, then prints a summary and exits 0; a line
// `mark` on stdin is answered {"mark": n}: starters numbered n and up start after it. Lines,
// as JSON: {"worker", "session", "call", "replica", "count"}; {"worker", "session", "error",
// "kind", "marks"} with kind "gone" (404: the session is over; a closed SSE stream) or "other",
// and `marks` how many `mark` lines had come when the session's run of failures began (a
// failure that shows after a mark may come from a request made before it: the answer's body is
// read after its head, and a `mark` can be read in between);
// {"starter", "replica"} or {"starter", "error", "kind", "phase"} (phase "initialize": it failed
// to start; "call": its replica died after minting it); with --tokens, {"worker", "session",
// "token"}: the session id a worker's session was given (again, with the next session number,
// when the SDK moves to a new session by itself); {"ready": true}; {"summary"} last.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';

const argv = process.argv.slice(2);
const url = new URL(argv[0]);
const flag = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : fallback;
};
const mode = flag('--mode', 'streamable');
const workers = Number(flag('--workers', '9'));
const every = Number(flag('--every', '25'));
const keep = argv.includes('--keep');
const tokens = argv.includes('--tokens');
const timeout = Number(flag('--timeout', '10000'));
const summary = { ok: 0, errors: 0, started: 0 };
const emit = (fields) => process.stdout.write(JSON.stringify(fields) + '\n');
let stopping = false;
let marks = 0;

const kindOf = (e) => {
  const text = `${e?.constructor?.name}: ${e?.message}`;
  return e?.code === 404 || /\b404\b|Session not found|Connection closed|SSE stream disconnected/.test(text)
    ? 'gone'
    : 'other';
};

// Whether a session exists on a replica: with SSE, once the stream's endpoint event came (the
// SDK keeps it in a private field); with Streamable HTTP, once initialize answered.
const started = (transport) => Boolean(transport?._endpoint || transport?.sessionId);

async function open(onTransport = () => {}) {
  const transport = mode === 'sse' ? new SSEClientTransport(url) : new StreamableHTTPClientTransport(url);
  onTransport(transport);
  const client = new Client({ name: 'e2e-ts-soak', version: '0.0.0' });
  await client.connect(transport);
  return client;
}

async function whoami(client) {
  const result = await client.callTool({ name: 'whoami', arguments: {} }, undefined, { timeout });
  return JSON.parse(result.content[0].text);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let pending = workers;
let markReady;
const ready = new Promise((resolve) => { markReady = resolve; });

// The session id a client was given: Streamable HTTP's header, or the legacy SSE endpoint's
// `sessionId` (the SDK keeps the endpoint in a private field).
const sessionOf = (transport) => transport?.sessionId ?? transport?._endpoint?.searchParams.get('sessionId');

async function worker(no) {
  for (let session = 0; !stopping; session++) {
    let client;
    let transport;
    // When this session's run of failures began (or, before any call, its start).
    let since = marks;
    try {
      client = await open((t) => { transport = t; });
      let token = sessionOf(transport);
      if (tokens) emit({ worker: no, session, token });
      for (let call = 0, failures = 0; !stopping; call++) {
        let reply;
        if (failures === 0) since = marks;
        try {
          reply = await whoami(client);
        } catch (e) {
          if (!keep || stopping || ++failures >= 3) throw e;
          summary.errors++;
          emit({ worker: no, session, error: `${e?.constructor?.name}: ${e?.message}`, kind: kindOf(e), marks: since });
          call--;
          await sleep(20);
          continue;
        }
        failures = 0;
        if (tokens && sessionOf(transport) !== token) {
          // The SDK moved on to a new session by itself: its SSE stream ended, the EventSource
          // connected again and took the new stream's endpoint.
          token = sessionOf(transport);
          session++;
          call = 0;
          emit({ worker: no, session, token });
        }
        emit({ worker: no, session, call, ...reply });
        summary.ok++;
        if (session === 0 && call === 0 && --pending === 0) markReady();
        await sleep(20);
      }
    } catch (e) {
      if (stopping) return;
      summary.errors++;
      emit({ worker: no, session, error: `${e?.constructor?.name}: ${e?.message}`, kind: kindOf(e), marks: since });
    } finally {
      await client?.close().catch(() => {});
    }
  }
}

async function short(no) {
  let client;
  let transport;
  try {
    client = await open((t) => { transport = t; });
    emit({ starter: no, ...(await whoami(client)) });
    summary.started++;
  } catch (e) {
    if (stopping) return;
    summary.errors++;
    const phase = started(transport) ? 'call' : 'initialize';
    emit({ starter: no, error: `${e?.constructor?.name}: ${e?.message}`, kind: kindOf(e), phase });
  } finally {
    await client?.close().catch(() => {});
  }
}

const running = Array.from({ length: workers }, (_, i) => worker(i));
await ready;
emit({ ready: true });
const starts = [];
let no = 0;
const ticker = setInterval(() => starts.push(short(no++)), every);
await new Promise((resolve) => {
  let pendingInput = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    const lines = (pendingInput + chunk).split('\n');
    pendingInput = lines.pop();
    for (const line of lines) {
      if (line.trim() === 'mark') {
        marks++;
        emit({ mark: no });
      }
    }
  });
  process.stdin.on('end', resolve);
  process.stdin.on('close', resolve);
  process.stdin.resume();
});
stopping = true;
clearInterval(ticker);
await Promise.race([Promise.allSettled([...running, ...starts]), sleep(3000)]);
emit({ summary });
process.exit(0);
