#!/usr/bin/env bash
# The Guild's Federation gateway audit (graphql-hive/federation-gateway-audit
# on GitHub: 199 cases in 46 suites at the end of 2026, each a supergraph
# composed from graphql-yoga subgraphs with its queries and exact answers)
# run against our gateway, as its README runs Apollo Router, Hive Router and
# the others.
#
# The audit is not published to a package registry, so it is not run by
# .ci/run: AUDIT_DIR names a checkout of it, which this script changes (its
# package.json trimmed, its lock file removed, node_modules and
# gateways/revmesh added on the first run). Everything listens on loopback
# (subgraphs on 4200, the gateway on 4000).
#
#   AUDIT_DIR=/path/to/federation-gateway-audit bash tests/conformance/federation-audit.sh
#   AUDIT_DIR=… SUITE=requires-with-argument bash tests/conformance/federation-audit.sh   # one suite, with diffs
#
# Per suite a line of dots (passed) and Xs (failed), then the totals; the
# per-suite logs are in $AUDIT_DIR/gateways/revmesh/logs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${AUDIT_DIR:?set AUDIT_DIR to a checkout of graphql-hive/federation-gateway-audit}"
AUDIT_DIR="$(realpath "$AUDIT_DIR")"
cargo build --release -p graphql-gateway --bins
gateway="$(realpath "${CARGO_TARGET_DIR:-target}/release/graphql-gateway")"
command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
# The audit needs Node 22 (Promise.withResolvers); the npm package `node`
# brings that version's binary from the registry, cached.
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ]; then
  node22="$HOME/.cache/revmesh/node22"
  if [ ! -x "$node22/node_modules/.bin/node" ]; then
    mkdir -p "$node22"
    (cd "$node22" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --silent --no-audit --no-fund node@22)
  fi
  export PATH="$node22/node_modules/.bin:$PATH"
fi
if [ ! -d "$AUDIT_DIR/node_modules" ]; then
  # Only what running the audit needs: its dependencies, and of its
  # development ones tsx (which runs it) and graphql. The others serve the
  # gateways it compares (Apollo's, Hive's, Cosmo's CLI) and its releases, and
  # its lock file pins versions the registry no longer serves all of.
  (cd "$AUDIT_DIR" &&
    node -e '
      const fs = require("fs");
      const p = JSON.parse(fs.readFileSync("package.json"));
      const keep = ["tsx", "graphql", "typescript"];
      p.devDependencies = Object.fromEntries(Object.entries(p.devDependencies || {}).filter(([k]) => keep.includes(k)));
      delete (p.scripts || {}).postinstall;
      fs.writeFileSync("package.json", JSON.stringify(p, null, 2));' &&
    rm -f package-lock.json &&
    npm install --silent --no-audit --no-fund)
fi

dir="$AUDIT_DIR/gateways/revmesh"
mkdir -p "$dir"
# Started by the audit for each suite (its argument), in $dir: fetch the
# suite's supergraph from the audit's server, then serve it.
cat > "$dir/run.sh" <<EOF
npm start supergraph -- --cwd ./gateways/revmesh --test "\$1"
exec "$gateway" --supergraph ./supergraph.graphql --listen 127.0.0.1:4000
EOF
cd "$AUDIT_DIR"
common=(--cwd ./gateways/revmesh --run-script ./run.sh --graphql http://127.0.0.1:4000/graphql --healthcheck http://127.0.0.1:4000/health)
if [ -n "${SUITE:-}" ]; then
  npm start --silent -- test-suite --test "$SUITE" "${common[@]}"
else
  npm start --silent -- test "${common[@]}" --reporter dot
  cat ./gateways/revmesh/results.txt
fi
