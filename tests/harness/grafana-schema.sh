#!/usr/bin/env bash
# The JSON schema of Grafana's classic dashboard model, generated from the TypeScript types of
# npm's @grafana/schema with ts-json-schema-generator (pinned; cached outside the repo). Prints
# the schema's path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
GRAFANA_SCHEMA_VERSION=13.2.3
GENERATOR_VERSION=2.10.0
TYPESCRIPT_VERSION=5.9.3
DIR="$LLMSERVE_CACHE/grafana-schema-$GRAFANA_SCHEMA_VERSION"
OUT="$DIR/dashboard.schema.json"
if [[ ! -s "$OUT" ]]; then
  command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm)"
  mkdir -p "$DIR"
  log "@grafana/schema $GRAFANA_SCHEMA_VERSION -> $OUT"
  [[ -f "$DIR/package.json" ]] || (cd "$DIR" && npm init -y >/dev/null)
  (cd "$DIR" && npm install --no-audit --no-fund --silent \
    "@grafana/schema@$GRAFANA_SCHEMA_VERSION" "ts-json-schema-generator@$GENERATOR_VERSION" "typescript@$TYPESCRIPT_VERSION" >&2)
  (cd "$DIR" && npx ts-json-schema-generator --no-type-check --type Dashboard \
    --path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts -o "$OUT.tmp" >&2)
  mv "$OUT.tmp" "$OUT"
fi
echo "$OUT"
