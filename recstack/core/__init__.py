"""The core every process shares, without grpc or ONNX Runtime: bundles, domain objects,
domain errors, the wire vector layout, ranker features, storage, deadlines, sharding, the
core lifecycle (versions, leases, hot swap), options with their defaults, and metrics."""
