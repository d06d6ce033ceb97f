"""Generated gRPC stubs for recstack.v1 (do not edit)."""
