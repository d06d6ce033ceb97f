"""``recstack-rank`` / ``python -m rank_service``: run the rank service."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rank_service.server import serve
from recstack.core.config import RANK_PORT, OptionGroup, OrtOptions, RankOptions
from recstack.runtime.server import cli_main


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(
        argv,
        prog="recstack-rank",
        default_port=RANK_PORT,
        description="ONNX Runtime ranking of fused user-item vectors.",
        groups=[OptionGroup(RankOptions, "rank"), OptionGroup(OrtOptions, "onnx runtime (ranker)")],
        serve=serve,
        module="rank_service",
    )


if __name__ == "__main__":
    sys.exit(main())
