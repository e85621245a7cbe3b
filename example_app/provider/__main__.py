"""Run the demo provider alone: ``python -m example_app.provider``.

Registers ``demo-client`` / ``demo-secret`` for the redirect URI in
``DEMO_PROVIDER_REDIRECT_URI`` (default: the example app's callback on port 5000) and
serves on ``DEMO_PROVIDER_PORT`` (default 5001).
"""

from __future__ import annotations

import os

from .app import EXTENSION_KEY, create_provider_app
from .state import ProviderState


def main() -> None:
    port = int(os.environ.get("DEMO_PROVIDER_PORT", "5001"))
    app = create_provider_app({"ISSUER": f"http://127.0.0.1:{port}"})
    state: ProviderState = app.extensions[EXTENSION_KEY]
    state.register_client(
        "demo-client",
        "demo-secret",
        [
            os.environ.get(
                "DEMO_PROVIDER_REDIRECT_URI",
                "http://127.0.0.1:5000/api/services/zis/connections/oauth/callback",
            )
        ],
    )
    app.run("127.0.0.1", port, threaded=True)


if __name__ == "__main__":
    main()
