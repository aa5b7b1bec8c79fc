#!/usr/bin/env bash
# Rebuild the web app into ethostral_serve/web/static (commit the result).
set -euo pipefail
cd "$(dirname "$0")"
npm ci
npm run build
