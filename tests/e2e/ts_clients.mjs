// Concurrent MCP clients built with the TypeScript SDK (@modelcontextprotocol/sdk 1.32.2), for
// mcp-affinity's e2e tests.
//
//   node ts_clients.mjs URL --sessions N --calls C --mode streamable|sse
//
// Opens N sessions at once, calls `whoami` C times in each, ends each session (Streamable HTTP:
// DELETE; SSE: closes the stream). Prints one JSON object per line:
// {"client", "call", "replica", "count"} per reply, {"client", "call", "error"} on failure, and a
// last {"summary": {"ok", "errors"}}. Exits 0 even if calls failed: the test judges.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';

const argv = process.argv.slice(2);
const url = new URL(argv[0]);
const flag = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : fallback;
};
const sessions = Number(flag('--sessions', '4'));
const calls = Number(flag('--calls', '3'));
const mode = flag('--mode', 'streamable');
const summary = { ok: 0, errors: 0 };
const emit = (fields) => process.stdout.write(JSON.stringify(fields) + '\n');

async function one(client_no) {
  const transport = mode === 'sse' ? new SSEClientTransport(url) : new StreamableHTTPClientTransport(url);
  const client = new Client({ name: 'e2e-ts', version: '0.0.0' });
  let call = -1;
  try {
    await client.connect(transport);
    for (call = 0; call < calls; call++) {
      const result = await client.callTool({ name: 'whoami', arguments: {} });
      emit({ client: client_no, call, ...JSON.parse(result.content[0].text) });
      summary.ok++;
    }
    if (mode !== 'sse') await transport.terminateSession();
  } catch (e) {
    summary.errors++;
    emit({ client: client_no, call, error: `${e?.constructor?.name}: ${e?.message}` });
  } finally {
    await client.close().catch(() => {});
  }
}

await Promise.all(Array.from({ length: sessions }, (_, i) => one(i)));
emit({ summary });
process.exit(0);
