#!/usr/bin/env bash
# The test command: provision the system packages the tests use (when root with apt), then run pytest.
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -m "not browser" tests/test_api.py   # any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)  # "not a digit" rule, --data fashion-mnist
[ -x /usr/bin/chromium ] || need+=(chromium chromium-driver)  # the demo's browser tests (never `playwright install`)
# the feedback store's PostgreSQL tests start their own throw-away cluster with initdb and pg_ctl
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
# the fonts of the real-world "fonts" set and the rendered letters of the "not a digit" rule
fonts=$("$PY" -c 'from digitlab.data.fonts import FONTS; print(" ".join(sorted({f[0] for f in FONTS})))' 2>/dev/null \
        || echo fonts-dejavu-core)
for p in $fonts; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]}" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
  else
    echo "warning: cannot install ${need[*]} (not root with apt); the tests that need them will fail" >&2
  fi
fi

# Two workers, whole files each (module fixtures start once); one torch thread per worker so the two share the
# cores instead of oversubscribing them. Later arguments win: `-n 0` runs in this process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m pytest -n "${DIGITLAB_TEST_WORKERS:-2}" --dist loadfile "$@"
