#!/usr/bin/env bash
# Refresh the explorer's third-party files from the npm registry (run by hand, then commit).
# The API embeds these files in the binary, so the console works with no network.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund graphiql@3.9.0 react@18.3.1 react-dom@18.3.1 graphql-ws@5.16.2 >/dev/null
cd node_modules
cp graphiql/graphiql.min.js graphiql/graphiql.min.css react/umd/react.production.min.js \
   react-dom/umd/react-dom.production.min.js graphql-ws/umd/graphql-ws.min.js "$here/"
{
    echo "Third-party files in this directory, shipped unmodified and served by the API from the binary."
    echo "Refresh them with api/assets/update.sh."
    echo
    for p in graphiql react react-dom graphql-ws; do
        v=$(node -p "require('./$p/package.json').version")
        echo "================ $p $v (npm) ================"
        cat "$p"/LICENSE*
        echo
    done
} > "$here/THIRD_PARTY_LICENSES.txt"
