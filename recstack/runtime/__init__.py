"""The gRPC runtime of every service: server bootstrap (interceptors, health, reflection,
drain), the error-to-status mapping, auth, tracing and logs, worker processes, the method
contracts read from the protos, and the message <-> domain conversions."""
