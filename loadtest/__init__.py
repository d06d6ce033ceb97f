"""Load-testing harness for the recstack services (``python -m loadtest --help``).

Closed-loop concurrency sweeps, open-loop constant/step/ramp request rates measured from the
intended send time (corrected for coordinated omission), and an automatic search for the
highest rate that meets a p99 latency objective. Requests are drawn from a bundle's real
users, item titles and item vectors; results are HDR histograms, JSON and PNG plots.

Modules: ``clock`` and ``schedule`` (time and send plans), ``workload`` (request messages,
no network), ``targets`` (the only gRPC code), ``runner`` (closed and open loop), ``stats``,
``findmax`` (the search), ``report`` and ``plots`` (output), ``cli``.
"""
