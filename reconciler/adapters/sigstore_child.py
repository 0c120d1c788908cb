"""Child process of `reconciler.adapters.sigstore_verifier`: one verification, then exit.

Reads a JSON request on stdin, writes a JSON answer on stdout, exits 0 only when the release
verified. Lives in its own process so the daemon never imports sigstore (see sigstore_verifier.py).
"""

from __future__ import annotations

import json
import sys

from reconciler.adapters.sigstore_verifier import verify_request


def main() -> int:
    try:
        request = json.loads(sys.stdin.buffer.read())
        answer = verify_request(request)
    except Exception as exc:  # fail closed, and say why
        answer = {"ok": False, "reason": "invalid_signature", "message": f"verifier: {exc}"}
    sys.stdout.write(json.dumps(answer))
    return 0 if answer.get("ok") is True else 1


if __name__ == "__main__":
    raise SystemExit(main())
