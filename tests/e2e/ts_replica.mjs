// One MCP server replica built with the TypeScript SDK (@modelcontextprotocol/sdk 1.32.2), for
// mcp-affinity's e2e tests.
//
//   node ts_replica.mjs NAME [PORT]
//
// Streamable HTTP at /mcp (sessions from randomUUID) and legacy HTTP+SSE at GET /sse with
// POST /messages?sessionId=<uuid> (camelCase, LF line endings). Tool `whoami` returns
// {"replica", "count"}, `count` counting the calls of the session. Listens on 127.0.0.1 with an
// OS-assigned port (or PORT, to come back where a killed replica was), prints
// `LISTENING <port>`, and exits when its stdin closes.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';

const name = process.argv[2] ?? 'ts';
const streamable = new Map();
const legacy = new Map();

// One McpServer per session, so the counter is the session's.
function sessionServer() {
  const server = new McpServer({ name: `replica-${name}`, version: '0.0.0' });
  let count = 0;
  server.tool('whoami', 'replica name and the session call count', async () => ({
    content: [{ type: 'text', text: JSON.stringify({ replica: name, count: ++count }) }],
  }));
  return server;
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      try { resolve(body ? JSON.parse(body) : undefined); } catch (e) { reject(e); }
    });
    req.on('error', reject);
  });
}

function fail(res, status, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32000, message } }));
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname === '/mcp') {
      const session = req.headers['mcp-session-id'];
      const body = req.method === 'POST' ? await readJson(req) : undefined;
      let transport = session && streamable.get(session);
      if (!transport) {
        if (session) return fail(res, 404, 'Session not found');
        if (req.method !== 'POST' || body?.method !== 'initialize') return fail(res, 400, 'No session');
        transport = new StreamableHTTPServerTransport({
          sessionIdGenerator: () => randomUUID(),
          onsessioninitialized: (id) => streamable.set(id, transport),
        });
        transport.onclose = () => transport.sessionId && streamable.delete(transport.sessionId);
        await sessionServer().connect(transport);
      }
      return await transport.handleRequest(req, res, body);
    }
    if (url.pathname === '/sse' && req.method === 'GET') {
      const transport = new SSEServerTransport('/messages', res);
      legacy.set(transport.sessionId, transport);
      res.on('close', () => legacy.delete(transport.sessionId));
      return await sessionServer().connect(transport);
    }
    if (url.pathname === '/messages' && req.method === 'POST') {
      const transport = legacy.get(url.searchParams.get('sessionId'));
      if (!transport) return fail(res, 404, 'Session not found');
      return await transport.handlePostMessage(req, res, await readJson(req));
    }
    res.writeHead(404).end();
  } catch (e) {
    if (!res.headersSent) fail(res, 500, String(e));
  }
});

server.listen(Number(process.argv[3] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
