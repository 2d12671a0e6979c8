"""``python -m serving.healthcheck``: exit 0 when the local server is ready (the image's HEALTHCHECK).

Asks MLServer's V2 readiness endpoint (all models loaded) on ``MLSERVER_HTTP_PORT`` (default 8080).
Standard library only (plus the constants module), so it costs little every few seconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from serving.protocol import READY_PATH


def main() -> int:
    port = os.environ.get("MLSERVER_HTTP_PORT", "8080")
    url = f"http://127.0.0.1:{port}{READY_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"not ready: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
