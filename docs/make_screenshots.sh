#!/usr/bin/env bash
# Rebuild the README's screenshots of the Dagster UI: start `dagster dev` on a fresh
# DAGSTER_HOME, backfill 8 weeks of the bundled sample, run the latest week once more with
# tight warning limits (so the warning checks fail), and photograph the UI with headless
# Chromium (Debian's `chromium`). Run from the repository root with the venv installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DAGSTER_HOME="${DAGSTER_HOME:-$(mktemp -d)}"
PORT=${PORT:-3300}
WEEKS=2011-10-10,2011-10-17,2011-10-24,2011-10-31,2011-11-07,2011-11-14,2011-11-21,2011-11-28

.venv/bin/dagster dev -w workspace.yaml -p "$PORT" >"$DAGSTER_HOME/dev.log" 2>&1 &
DEV=$!
trap 'kill $DEV 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/server_info" >/dev/null; do sleep 2; done

if [ "${1:-}" != "--shoot-only" ]; then
.venv/bin/dagster job backfill -m rfm_assets.definitions -j rfm_job --partitions "$WEEKS" \
  --noprompt
# Wait for the 8 runs of the backfill.
.venv/bin/python - <<'EOF'
import time
import dagster as dg

instance = dg.DagsterInstance.get()
while True:
    runs = instance.get_run_records(dg.RunsFilter(job_name="rfm_job"))
    done = [r for r in runs if r.dagster_run.is_finished]
    if len(done) >= 8 and len(done) == len(runs):
        break
    time.sleep(5)
print("backfill runs:", {r.dagster_run.status.value for r in runs})
EOF

# The week after, with warning limits a real run would not use: the warning checks fail.
cat >"$DAGSTER_HOME/tight.yaml" <<'EOF'
resources:
  rfm_settings:
    config: {max_segment_share: 0.15, max_weekly_share_change: 0.005}
EOF
.venv/bin/dagster asset materialize -m rfm_assets.definitions --select '*' \
  --partition 2011-12-05 -c "$DAGSTER_HOME/tight.yaml" >/dev/null 2>&1
fi

# The UI greets a new instance with a newsletter dialog; mark it seen.
curl -sf -H 'Content-Type: application/json' -d '{"query": "mutation { setNuxSeen }"}' \
  "http://127.0.0.1:$PORT/graphql" >/dev/null

shoot() {  # shoot NAME URL-PATH
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,950 \
    --virtual-time-budget=20000 --screenshot="docs/$1.png" "http://127.0.0.1:$PORT$2" \
    >/dev/null 2>&1
}
shoot ui-lineage "/asset-groups/rfm"
shoot ui-partitions "/assets/customer_segments?view=partitions"
shoot ui-checks "/assets/segment_analytics?view=checks"
shoot ui-trends "/assets/segment_analytics?view=events"
shoot ui-segment-analytics "/assets/segment_analytics"
PORT=$PORT .venv/bin/python docs/shoot_picture.py
echo "screenshots in docs/ (DAGSTER_HOME=$DAGSTER_HOME)"
