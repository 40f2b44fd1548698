#!/usr/bin/env bash
# Install podspool with its test dependencies and the servers the tests start
# (rsyslog), then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
bash tests/install-servers.sh

# pytest exits 5 when it collected no test; with `set -e` that fails this script too.
exec python3 -m pytest "$@"
