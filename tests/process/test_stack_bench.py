"""The three-service stack as processes (recstack.tools.procs.Stack) and the A/B bench on it."""

import json
import sys

import pytest

from bench import stack_bench
from recstack.tools.procs import ServiceProcess, Stack
from recstack.v1 import gateway_pb2, gateway_pb2_grpc


def test_stack_serves_recommend_and_stops_cleanly(bundle_dir, bundle, tmp_path):
    user = next(bundle.iter_user_histories())[0]
    stack = Stack(str(bundle_dir), tmp_path, {"rank": ["--no-batching"]}).start()
    try:
        assert [s.name for s in stack.services] == ["recall", "rank", "gateway"]
        stub = gateway_pb2_grpc.RecommendServiceStub(stack.gateway.channel())
        resp = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=3), timeout=30)
        assert len(resp.items) == 3 and resp.bundle_version == bundle.version
    finally:
        codes = stack.stop()
    assert codes == {"gateway": 0, "rank": 0, "recall": 0}
    # The variant's flags reached the service they were meant for.
    assert "--no-batching" in " ".join(stack.by_name("rank").proc.args)


def test_stack_bench_alternates_and_reports_cpu_per_service(bundle_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["--bundle", str(bundle_dir), "--a", "default", "--b", "floor", "--pairs", "1"]
    argv += ["--duration", "1.5", "--concurrency", "2", "--out", str(out)]
    assert stack_bench.main(argv) == 0
    report = json.loads(out.read_text())
    (a,), (b,) = report["runs"]["A"], report["runs"]["B"]
    for run in (a, b):
        assert run["requests"] > 0 and run["errors"] == 0
        assert run["achieved_rps"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
    assert set(a["cpu_ms_per_request"]) == {"recall", "rank", "gateway"}
    assert all(v > 0 for v in a["cpu_ms_per_request"].values())
    assert set(b["cpu_ms_per_request"]) == {"floor"}
    printed = capsys.readouterr().out
    assert "throughput A/B" in printed and "pair 1 B floor" in printed


def test_verdict_calls_overlapping_ranges_no_difference():
    a = {"median": 10.0, "min": 9.0, "max": 11.0}
    assert stack_bench.verdict(a, {"median": 12.0, "min": 10.5, "max": 13.0}, True) == (
        "no difference"
    )
    assert stack_bench.verdict(a, {"median": 14.0, "min": 12.0, "max": 15.0}, True) == "B better"
    assert stack_bench.verdict(a, {"median": 14.0, "min": 12.0, "max": 15.0}, False) == "A better"


def test_service_process_runs_the_named_source_tree(tmp_path):
    # A code A/B runs each side's servers from its own tree: the child must import the
    # tree's module, not this checkout's.
    tree = tmp_path / "tree"
    (tree / "probe").mkdir(parents=True)
    (tree / "probe" / "__main__.py").write_text(
        "import sys, probe\n"
        "args = sys.argv[1:]\n"
        "port_file = args[args.index('--port-file') + 1]\n"
        "open(port_file + '.who', 'w').write(probe.__file__)\n"
        "open(port_file, 'w').write('1')\n"
    )
    (tree / "probe" / "__init__.py").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    proc = ServiceProcess("probe", workdir=work, name="probe", source=tree)
    assert proc.wait_port(60) == 1
    assert proc.proc.wait(60) == 0
    assert (work / "probe.port.who").read_text() == str(tree / "probe" / "__init__.py")
    # Without a source the module is not importable (it lives only in that tree).
    other = ServiceProcess("probe", workdir=work, name="none")
    assert other.proc.wait(60) != 0
    assert "No module named probe" in other.log_path.read_text()
    assert sys.executable == proc.proc.args[0]


def test_stack_bench_rejects_same_sides_and_bad_sources(tmp_path):
    with pytest.raises(SystemExit):
        stack_bench.main(["--a", "default", "--b", "default"])
    with pytest.raises(SystemExit):
        stack_bench.main(["--a", "default", "--b", "default", "--b-source", str(tmp_path)])
