"""``recstack-gateway`` / ``python -m gateway``: run the Recommend gateway."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway.server import serve
from recstack.core.config import GATEWAY_PORT, GatewayOptions, OptionGroup
from recstack.runtime.server import cli_main


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(
        argv,
        prog="recstack-gateway",
        default_port=GATEWAY_PORT,
        description="Recommend: recall then rank, under the caller's deadline.",
        groups=[OptionGroup(GatewayOptions, "gateway")],
        serve=serve,
        module="gateway",
    )


if __name__ == "__main__":
    sys.exit(main())
