"""``recstack-recall`` / ``python -m recall_service``: run the recall service."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from recall_service.server import serve
from recstack.core.config import RECALL_PORT, OptionGroup, OrtOptions, RecallOptions
from recstack.runtime.server import cli_main


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(
        argv,
        prog="recstack-recall",
        default_port=RECALL_PORT,
        description="HNSW recall over a recstack bundle's item embeddings.",
        groups=[
            OptionGroup(RecallOptions, "recall"),
            OptionGroup(OrtOptions, "onnx runtime (encoder)"),
        ],
        serve=serve,
    )


if __name__ == "__main__":
    sys.exit(main())
