#!/usr/bin/env bash
# Installs the real MCP SDK peers that the end-to-end tests run against, idempotently:
#   - a Python venv with the `mcp` package (pinned 2.3.0) and `prometheus_client` (pinned
#     0.26.0: its OpenMetrics parser checks the router's exposition)
#   - the TypeScript SDK `@modelcontextprotocol/sdk` (pinned 1.32.2 in tests/e2e/package.json,
#     exact tree in tests/e2e/package-lock.json) via `npm ci`
# into target/e2e/ (or $MCP_AFFINITY_E2E_DIR). Prints the environment the tests read:
#   MCP_AFFINITY_PYTHON=<venv>/bin/python   MCP_AFFINITY_NODE_DIR=<dir with node_modules>
# Usage: tests/e2e/setup.sh            (then: cargo test --all-features)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${MCP_AFFINITY_E2E_DIR:-$repo/target/e2e}"
mcp_version="2.3.0"
prometheus_version="0.26.0"
mkdir -p "$dir"

venv="$dir/venv"
if "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$mcp_version')" 2>/dev/null; then
    echo "python: mcp==$mcp_version already in $venv"
else
    echo "python: creating $venv with mcp==$mcp_version"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$mcp_version"
fi
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus_client') != '$prometheus_version')" 2>/dev/null; then
    echo "python: installing prometheus_client==$prometheus_version"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "prometheus_client==$prometheus_version"
fi

node_dir="$dir/node"
mkdir -p "$node_dir"
if cmp -s "$here/package-lock.json" "$node_dir/package-lock.json" \
    && [ -f "$node_dir/node_modules/@modelcontextprotocol/sdk/package.json" ]; then
    echo "node: @modelcontextprotocol/sdk already in $node_dir"
else
    echo "node: npm ci in $node_dir"
    cp "$here/package.json" "$here/package-lock.json" "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "MCP_AFFINITY_PYTHON=$venv/bin/python"
echo "MCP_AFFINITY_NODE_DIR=$node_dir"
