"""Outside the request path: the demo, the service launcher (processes on loopback, used by
the demo, benches and tests) and the bundle release tool (publish, fetch, follow)."""
