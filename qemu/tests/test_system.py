"""inferd.service on arm64 Debian bookworm under qemu-system (TCG), driven from the host.

The package is installed offline in the guest, the unit runs under the guest's real systemd with
all its hardening (MemoryDenyWriteExecute=yes included), and frames go in over the forwarded
ZeroMQ router port. The tests run in file order: install, hardening, x86 equality, metrics,
MemoryDenyWriteExecute, a tcp endpoint, then the ones that disturb the service (kill -9, reload,
a failed reload, the watchdog, worker processes and their memory), each restoring the test config
after itself. install.sh's own
upgrade and rollback paths are tested in ARM root filesystems by test_install.py.
"""

from __future__ import annotations

import json
import os
import shlex
import time

import numpy as np
import onnx
import pytest
from conftest import GUEST_MODELS, INSTALL, MODEL_ENTRIES, MODELS, TEST_CONFIG, save_artifact, version

pytestmark = [pytest.mark.qemu, pytest.mark.timeout(1200)]

SOURCE = "qemu-e2e"


def frames(n: int = 8, seed: int = 2024) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def output_scale(path) -> float | None:
    """The scale of the DequantizeLinear feeding the graph output (a QDQ model's last step)."""
    model = onnx.load(str(path))
    out = model.graph.output[0].name
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if out in node.output and node.op_type == "DequantizeLinear":
            return float(np.ravel(inits[node.input[1]])[0])
    return None


def test_package_installs_offline_and_the_service_starts_on_the_default_config(installed):
    state = installed["default_state"]
    assert state["Type"] == "notify"
    assert state["User"] == "inferd"
    assert state["UnitFileState"] == "enabled"
    # Type=notify: "active (running)" is only reached through READY=1 from the daemon.
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), (
        f"the packaged unit on the default config: {state}; journal:\n{installed['journal']}"
    )


def test_the_packaged_default_config_stays_under_90_mb_at_ready(installed):
    """A small board's budget (issue #14): RSS at READY=1 on the config the package installs. Both
    runtimes loaded measured 100.5 MB here; the default now loads LiteRT only (onnxruntime's import
    alone is ~20 MB, its session and arena more) and says how to add an ONNX model."""
    rss_mb = installed["rss_kb"] / 1024
    save_artifact("rss_default.json", {"rss_mb": round(rss_mb, 1)})
    assert rss_mb <= 90, f"RSS at ready {rss_mb:.1f} MB"


def test_service_is_active_through_ready_and_hardened(guest, service):
    state = service.show(
        "ActiveState", "SubState", "Type", "NotifyAccess", "StatusText", "MemoryDenyWriteExecute", "User",
        "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic",
    )  # fmt: skip
    assert state["ActiveState"] == "active" and state["SubState"] == "running"
    assert state["Type"] == "notify" and state["NotifyAccess"] == "main"
    assert state["MemoryDenyWriteExecute"] == "yes"
    assert state["User"] == "inferd"
    assert state["StatusText"], "inferd sends STATUS= while it starts and serves"
    started = int(state["ExecMainStartTimestampMonotonic"])
    active = int(state["ActiveEnterTimestampMonotonic"])
    save_artifact("startup.json", {"ready_after_s": (active - started) / 1e6, "status": state["StatusText"]})
    pid = service.main_pid()
    seccomp = guest.ssh(f"grep -E '^(Seccomp|NoNewPrivs):' /proc/{pid}/status").stdout
    assert "Seccomp:\t2" in seccomp and "NoNewPrivs:\t1" in seccomp, seccomp


def test_results_equal_the_x86_results(infer, reference):
    """Same model, same frames: the arm64 guest's results against this host's, model by model."""
    report: dict[str, dict] = {}
    xs = frames()
    for name in ("onnx_float", "onnx_qdq", "onnx_uint8", "tflite"):
        diffs, exact, t0 = [], 0, time.monotonic()
        for i, x in enumerate(xs):
            result = infer(x, model=name)
            assert result.ok, (name, i, result.header)
            (theirs,) = result.outputs
            (ours,) = reference(name, x)
            assert theirs.dtype == ours.dtype and theirs.shape == ours.shape, (name, theirs, ours)
            d = np.abs(theirs.astype(np.float64) - ours.astype(np.float64))
            diffs.append(float(d.max()))
            exact += bool(np.array_equal(theirs, ours))
        report[name] = {
            "frames": len(xs),
            "bit_exact": exact,
            "max_abs_diff": max(diffs),
            "seconds_per_frame": (time.monotonic() - t0) / len(xs),
        }
    scale = output_scale(MODELS / "classifier_int8.onnx")
    report["onnx_qdq"]["output_scale"] = scale
    save_artifact("equality.json", report)
    print("x86 vs arm64 guest:", report)
    # Measured (cortex-a72 TCG guest vs x86_64 host): onnx_qdq, onnx_uint8 and the int8 TFLite model
    # bit-exact on every frame; the float ONNX model within 3.4e-6 (different SIMD summation order).
    assert report["onnx_float"]["max_abs_diff"] <= 1e-4
    assert report["onnx_qdq"]["max_abs_diff"] <= (scale or 1e-4) * 1.001  # at most one quantization step
    assert report["onnx_uint8"]["max_abs_diff"] <= 1e-4
    assert report["tflite"]["max_abs_diff"] <= 1  # int8 output: at most one quantization step


def test_metrics_scrape_counts_our_frames(infer, scrape):
    before = scrape()["inferd_frames_received"]
    count = {s.labels.get("source"): s.value for s in before.samples if s.name.endswith("_total")}.get(
        "scrape", 0
    )
    for x in frames(3, seed=5):
        assert infer(x, model="tflite", source="scrape").ok
    after = scrape()
    samples = {
        s.labels.get("source"): s.value
        for s in after["inferd_frames_received"].samples
        if s.name.endswith("_total")
    }
    assert samples.get("scrape") == count + 3, samples
    assert samples.get(SOURCE, 0) >= 8 * 4  # test_results_equal_the_x86_results' frames, when it ran first


def test_memory_deny_write_execute_lets_onnxruntime_and_litert_run(guest, service, infer):
    """The unit has MemoryDenyWriteExecute=yes: both runtimes must load and infer under it."""
    assert service.show("MemoryDenyWriteExecute")["MemoryDenyWriteExecute"] == "yes"
    pid = service.main_pid()
    maps = guest.ssh(f"cat /proc/{pid}/maps").stdout
    assert "onnxruntime" in maps and ("litert" in maps or "tensorflow" in maps.lower()), "runtimes not loaded"
    assert not [line for line in maps.splitlines() if line.split()[1].startswith("rwx")], "a W+X mapping"
    for model in ("onnx_qdq", "tflite"):
        assert infer(frames(1, seed=9)[0], model=model).ok


def test_a_tcp_endpoint_on_a_given_address_starts_under_the_unit(guest, service):
    """The README's own example binds tcp://127.0.0.1:5555: libzmq resolves it with getifaddrs(),
    a netlink socket (the unit has AF_NETLINK since this test found it missing)."""
    try:
        service.write_config(TEST_CONFIG.replace("tcp://*:5555", "tcp://127.0.0.1:5555"))
        proc = guest.ssh("systemctl restart inferd", check=False, timeout=240)
        state = service.show("ActiveState", "SubState")
        assert proc.returncode == 0 and state["ActiveState"] == "active", (state, service.journal(8))
    finally:
        service.restore()


def test_kill_9_is_followed_by_a_restart_and_serving_again(guest, service, infer):
    old = service.show("MainPID", "NRestarts")
    guest.ssh("systemctl kill -s KILL inferd")
    t0 = time.monotonic()
    state = service.wait_active(timeout=300, not_pid=int(old["MainPID"]))
    seconds = time.monotonic() - t0
    assert int(state["NRestarts"]) == int(old["NRestarts"]) + 1
    result = infer(frames(1, seed=11)[0], model="tflite")
    assert result.ok
    save_artifact("restart.json", {"seconds_to_active_again": seconds, "state": state})


def test_systemctl_reload_swaps_a_model_without_losing_a_frame(guest, service, reference):
    import threading

    from inferd.client import InferClient

    frame = frames(1, seed=21)[0]
    results: list = []
    stop = threading.Event()

    def stream() -> None:
        with InferClient(f"tcp://127.0.0.1:{guest.ports['router']}", timeout=120, source="reload") as c:
            while not stop.is_set():
                try:
                    results.append(c.infer(frame, model="onnx_qdq").outputs[0])
                except Exception as e:  # recorded, and asserted on below
                    results.append(e)

    service.write_config(TEST_CONFIG.replace("classifier_int8.onnx", "classifier_float.onnx"))
    t = threading.Thread(target=stream)
    t.start()
    try:
        time.sleep(2)
        state = service.reload()
        time.sleep(3)
    finally:
        stop.set()
        t.join(180)
    try:
        assert state["ActiveState"] == "active", state
        errors = [r for r in results if isinstance(r, Exception)]
        assert not errors and len(results) >= 2, (errors, len(results))
        old, new = reference("onnx_qdq", frame)[0], None
        from inferd.config import parse_config
        from inferd.engine.models import load_model

        entry = parse_config(TEST_CONFIG.replace("/var/lib/inferd/models", str(MODELS))).models[0]
        entry = entry.model_copy(update={"path": MODELS / "classifier_float.onnx"})
        new = load_model(entry, MODELS).predict([frame])[0][0]
        kinds = [
            "old" if np.array_equal(r, old) else "new" if np.allclose(r, new, atol=1e-5) else "?"
            for r in results
        ]
        assert "?" not in kinds and kinds[-1] == "new", kinds
        assert kinds == sorted(kinds, key=lambda k: k == "new")  # one swap, no frame lost
        assert "reloaded:" in service.journal()
    finally:
        service.restore()


def test_a_failed_reload_fails_systemctl_reload_and_keeps_serving(guest, service, infer):
    """Fleet tooling reads `systemctl reload`'s exit code: ExecReload (`inferd reload`) waits for
    the daemon's verdict. The state directory stays empty of runtime droppings meanwhile."""
    pid = service.main_pid()
    service.write_config(TEST_CONFIG + "bogus_key: 1\n")
    try:
        proc = guest.ssh("systemctl reload inferd", check=False, timeout=240)
        assert proc.returncode != 0, proc
        journal = service.journal(lines=60)
        assert "inferd reload: failed:" in journal and "unknown key 'bogus_key'" in journal, journal
        state = service.wait_active(timeout=60)
        assert state["ActiveState"] == "active" and service.main_pid() == pid  # never restarted
        assert infer(frames(1, seed=31)[0], model="tflite").ok  # still serving the old config
    finally:
        service.restore()
    service.reload()  # the good config again: systemctl reload succeeds
    leftovers = guest.ssh("find /var/lib/inferd -mindepth 1 -not -path '/var/lib/inferd/models*'").stdout
    assert leftovers.strip() == "", leftovers  # no ~/.cache/Microsoft telemetry store on the card


def test_a_hung_model_trips_the_watchdog_and_systemd_restarts_it(guest, service, infer):
    """A real model kept inside one inference (a 2048-frame batch under TCG takes many seconds):
    the daemon stops pinging after service.hang_after_s, systemd's WatchdogSec= ends it."""
    import threading

    from inferd.client import InferClient

    config = TEST_CONFIG.replace(
        'bind: "tcp://*:5555"}', 'bind: "tcp://*:5555", max_message_bytes: 300000000}'
    )
    service.write_config(config + "service: {hang_after_s: 1}\n")
    service.dropin("watchdog.conf", "[Service]\nWatchdogSec=3\n")  # restarts with both
    old = service.show("MainPID", "NRestarts")
    batch = np.random.default_rng(5).standard_normal((2048, 3, 64, 64)).astype(np.float32)

    def send() -> None:
        try:
            with InferClient(f"tcp://127.0.0.1:{guest.ports['router']}", timeout=120, source="hang") as c:
                c.infer(batch, model="onnx_float")
        except Exception:  # the daemon is killed mid-inference: no answer is expected
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        state = service.wait_active(timeout=300, not_pid=int(old["MainPID"]))
        assert int(state["NRestarts"]) == int(old["NRestarts"]) + 1, state
        journal = service.journal(400)
        assert "Watchdog timeout" in journal or "watchdog" in journal.lower(), journal[-3000:]
        assert "not pinging systemd: model onnx_float stuck in one inference" in journal, journal[-3000:]
        assert infer(frames(1, seed=3)[0], model="tflite").ok  # serving again
        save_artifact("watchdog.json", {"state": state})
    finally:
        service.remove_dropin("watchdog.conf", restart=False)
        service.restore()


# --- worker processes: a model's instances in processes of their own (models[].instances > 1) ----------
# Each test runs the int8 TFLite model alone (the packaged default's runtime, LiteRT) on the test
# config's endpoints, and restores the test config after itself.

WORKER_MODEL = "tflite"
# Every process of the unit's cgroup, read in the guest (as root: ProtectProc=invisible hides the
# unit's processes from other users, not from root outside the unit): argv, parent, CPU ticks, thread
# names, seccomp/no_new_privs, and Rss/Pss from smaps_rollup.
UNIT_PROCS = r"""
import json, os, sys
out = []
for pid in open(f"/sys/fs/cgroup{sys.argv[1]}/cgroup.procs").read().split():
    try:
        raw = open(f"/proc/{pid}/cmdline", "rb").read()
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
        mem = {}
        for line in open(f"/proc/{pid}/smaps_rollup"):
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                mem[key.lower() + "_kb"] = int(value.split()[0])
        threads = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                threads.append(open(f"/proc/{pid}/task/{tid}/comm").read().strip())
            except OSError:
                pass
    except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
        continue
    out.append({"pid": int(pid), "ppid": int(stat[1]), "cpu_ticks": int(stat[11]) + int(stat[12]),
                "argv": argv, "threads": sorted(threads), "seccomp": status["Seccomp"].strip(),
                "no_new_privs": status["NoNewPrivs"].strip(), **mem})
print(json.dumps(out))
"""


def workers_config(instances: int, workers: str) -> str:
    """The test config with the int8 TFLite model alone, `instances` of it run by `workers` (said
    explicitly: `auto` also weighs the board's cores, and this guest has 2)."""
    entry = MODEL_ENTRIES[WORKER_MODEL].replace("DIR", GUEST_MODELS)
    models = f"models:\n  - {{name: {WORKER_MODEL}, {entry}, instances: {instances}, workers: {workers}}}\n"
    return models + TEST_CONFIG[TEST_CONFIG.index("endpoints:") :]


def unit_processes(guest, service) -> list[dict]:
    cgroup = service.show("ControlGroup")["ControlGroup"]  # /system.slice/inferd.service
    return json.loads(guest.ssh(f"python3 -c {shlex.quote(UNIT_PROCS)} {shlex.quote(cgroup)}").stdout)


def workers_of(procs: list[dict], model: str = WORKER_MODEL) -> list[dict]:
    """`python -m inferd.engine.child MODEL INDEX` processes, by INDEX."""
    out = []
    for p in procs:
        argv = p["argv"]
        if "inferd.engine.child" in argv and argv[argv.index("inferd.engine.child") + 1 :][:1] == [model]:
            out.append(p)
    return sorted(out, key=lambda p: p["argv"][-1])


def connected(worker: dict, model: str = WORKER_MODEL) -> bool:
    """A worker process has said hello to the daemon once its tally thread runs (engine/child.py
    starts it right after the hello, once the model is loaded and warmed up)."""
    return f"tally:{model}"[:15] in worker["threads"]


def wait_for(what: str, check, timeout: float = 180, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)


def infer_concurrently(
    guest, xs: np.ndarray, clients: int = 2, source: str = "workers", seconds: list | None = None
) -> list:
    """xs over `clients` router connections at once (so each worker process gets frames: a worker
    holds one batch, max_batch 1 here); the outputs in the order of xs (each request's seconds
    appended to `seconds`)."""
    from concurrent.futures import ThreadPoolExecutor

    from inferd.client import InferClient

    def run(indexes) -> list:
        out = []
        with InferClient(f"tcp://127.0.0.1:{guest.ports['router']}", timeout=120, source=source) as c:
            for i in indexes:
                sent = time.monotonic()
                result = c.infer(xs[i], model=WORKER_MODEL, timeout=120)
                assert result.ok, (i, result.header)
                out.append((i, result.outputs[0], round(time.monotonic() - sent, 2)))
        return out

    with ThreadPoolExecutor(clients) as pool:
        parts = pool.map(run, [range(k, len(xs), clients) for k in range(clients)])
        done = sorted((answer for part in parts for answer in part), key=lambda answer: answer[0])
    if seconds is not None:
        seconds += [s for _, _, s in done]
    return [out for _, out, _ in done]


def check_against_x86(outs: list, xs: np.ndarray, reference) -> int:
    """Each output within one int8 quantization step of this host's (as the threads' results are:
    test_results_equal_the_x86_results); the number of bit-exact ones."""
    exact = 0
    for i, (theirs, x) in enumerate(zip(outs, xs, strict=True)):
        (ours,) = reference(WORKER_MODEL, x)
        assert theirs.dtype == ours.dtype and theirs.shape == ours.shape, (i, theirs, ours)
        assert np.abs(theirs.astype(int) - ours.astype(int)).max() <= 1, (i, theirs, ours)
        exact += bool(np.array_equal(theirs, ours))
    return exact


def test_two_instances_run_in_two_worker_processes_and_a_killed_one_is_replaced(
    guest, service, infer, scrape, reference
):
    """`instances: 2, workers: processes` under the hardened unit: two `python -m inferd.engine.child`
    processes in the unit's cgroup (children of MainPID, under its seccomp filter), each with its two
    inherited socketpairs to the daemon and nothing bound on the file system, answers equal to
    x86's; `kill -9` of one worker: the unit stays active with the same MainPID,
    inferd_worker_restarts_total{model} becomes 1, a new process replaces it and serves (alone,
    while the other is killed in turn), and both are back after."""
    report: dict = {}
    t0 = time.monotonic()
    try:
        service.write_config(workers_config(2, "processes"))
        state = service.restart()
        report["restart_to_active_s"] = round(time.monotonic() - t0, 1)
        main = int(state["MainPID"])
        procs = unit_processes(guest, service)
        workers = workers_of(procs)
        assert [w["argv"][-1] for w in workers] == ["0", "1"], procs
        assert {p["pid"] for p in procs} == {main, *(w["pid"] for w in workers)}, procs  # nothing else
        for w in workers:
            assert w["ppid"] == main, (main, w)
            assert (w["seccomp"], w["no_new_privs"]) == ("2", "1"), w  # the unit's filter, inherited
        report["workers_at_ready"] = workers
        assert f"model {WORKER_MODEL}: 2 worker process(es) ready" in service.journal(100)
        # The workers' lines (engine/channel.py): two socketpairs each, inherited from the daemon;
        # nothing bound on the file system that another process could connect to.
        bound = guest.ssh("awk '$8 ~ /inferd-workers-/ {print $8}' /proc/net/unix").stdout.split()
        assert bound == [], bound
        for w in workers:  # (its stdout and stderr are journald's stream sockets: fds 1 and 2)
            listed = f"find /proc/{w['pid']}/fd -mindepth 1 -lname 'socket:*' -printf '%f\\n'"
            fds = sorted(int(fd) for fd in guest.ssh(listed).stdout.split())
            report.setdefault("socket_fds_per_worker", []).append(fds)
        lines = [len([fd for fd in fds if fd > 2]) for fds in report["socket_fds_per_worker"]]
        assert lines == [2, 2], report

        xs = frames(6, seed=41)
        report["seconds_per_request"] = []  # 2 clients at once
        outs = infer_concurrently(guest, xs, seconds=report["seconds_per_request"])
        report["bit_exact_before"] = check_against_x86(outs, xs, reference)
        now = {w["pid"]: w["cpu_ticks"] for w in workers_of(unit_processes(guest, service))}
        report["cpu_ticks_during_frames"] = [now.get(w["pid"], 0) - w["cpu_ticks"] for w in workers]
        assert sample(scrape(), "inferd_worker_restarts", model=WORKER_MODEL) == 0

        # kill -9 of worker 0
        old = service.show("MainPID", "NRestarts")
        victim = workers[0]
        guest.ssh(f"kill -9 {victim['pid']}")
        t2 = time.monotonic()

        def replaced() -> list[dict] | None:
            now = workers_of(unit_processes(guest, service))
            fresh = [w for w in now if w["pid"] not in {v["pid"] for v in workers}]
            return now if len(now) == 2 and fresh and all(connected(w) for w in now) else None

        after = wait_for("a connected replacement of worker 0", replaced, timeout=240)
        report["replacement_connected_after_s"] = round(time.monotonic() - t2, 1)
        assert sample(scrape(), "inferd_worker_restarts", model=WORKER_MODEL) == 1
        state = service.show("ActiveState", "SubState", "MainPID", "NRestarts")
        assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
        assert state["MainPID"] == old["MainPID"] and state["NRestarts"] == old["NRestarts"], (old, state)
        new = next(w for w in after if w["pid"] != workers[1]["pid"])
        assert new["argv"][-1] == "0" and new["ppid"] == main and new["seccomp"] == "2", new
        assert after[1]["pid"] == workers[1]["pid"]  # the other worker was not touched
        journal = service.journal(100)
        assert "worker process 0 killed by signal 9" in journal, journal[-3000:]
        report["worker_0_pids"] = [victim["pid"], new["pid"]]

        # served again, by both
        xs = frames(4, seed=43)
        report["seconds_per_request_after"] = []
        outs = infer_concurrently(guest, xs, seconds=report["seconds_per_request_after"])
        report["bit_exact_after"] = check_against_x86(outs, xs, reference)
        # by the replacement alone: worker 1 killed too, a frame sent while its own replacement
        # loads (seconds under TCG)
        guest.ssh(f"kill -9 {workers[1]['pid']}")
        time.sleep(1)
        x = frames(1, seed=47)
        result = infer(x[0], model=WORKER_MODEL, source="workers-alone", timeout=120)
        assert result.ok, result.header
        check_against_x86([result.outputs[0]], x, reference)
        report["worker_1_replacement_connected_when_answered"] = any(
            connected(w) for w in workers_of(unit_processes(guest, service)) if w["argv"][-1] == "1"
        )

        def both_back() -> list[dict] | None:
            now = workers_of(unit_processes(guest, service))
            fresh = workers[1]["pid"] not in {w["pid"] for w in now}
            return now if len(now) == 2 and fresh and all(connected(w) for w in now) else None

        final = wait_for("two connected workers again", both_back, timeout=240)
        assert sample(scrape(), "inferd_worker_restarts", model=WORKER_MODEL) == 2
        assert service.main_pid() == main
        report["final_workers"] = [w["pid"] for w in final]
    finally:
        save_artifact("workers.json", report)
        print("worker processes (arm64 guest):", json.dumps(report, default=str)[:2000])
        service.restore()


def test_memory_of_worker_processes_pss_and_rss_at_ready(guest, service, scrape):
    """The unit's memory at READY=1 with the TFLite model at 1 instance (a thread), 2 and 3 (worker
    processes): summed over every process of the unit's cgroup, PSS (each shared page split between
    the processes that map it: what the unit really costs) and RSS (shared pages counted in each).
    An extra instance must cost less PSS than the whole one-instance daemon: the worker processes
    share pages (the interpreter, libraries, the model file) instead of each being a daemon. The
    daemon's own inferd_worker_resident_memory_bytes{model,index} (read from /proc under the unit's
    ProtectProc=invisible) agrees with smaps_rollup's Rss."""
    report: dict = {}
    try:
        for instances, mode in ((1, "threads"), (2, "processes"), (3, "processes")):
            service.write_config(workers_config(instances, mode))
            t0 = time.monotonic()
            state = service.restart()
            seconds = time.monotonic() - t0
            procs = unit_processes(guest, service)
            workers = workers_of(procs)
            assert len(workers) == (0 if mode == "threads" else instances), procs
            assert len(procs) == 1 + len(workers), procs
            main = next(p for p in procs if p["pid"] == int(state["MainPID"]))
            family = scrape().get("inferd_worker_resident_memory_bytes")
            exported = {
                x.labels["index"]: x.value / 1024
                for x in (family.samples if family else [])
                if x.labels.get("model") == WORKER_MODEL
            }
            assert sorted(exported) == [w["argv"][-1] for w in workers], exported
            for w in workers:  # the same pages counted: within a few percent of smaps_rollup's Rss
                assert abs(exported[w["argv"][-1]] - w["rss_kb"]) <= 0.1 * w["rss_kb"], (exported, w)
            report[f"instances_{instances}"] = {
                "workers": mode,
                "processes": len(procs),
                "restart_to_active_s": round(seconds, 1),
                "pss_mb": round(sum(p["pss_kb"] for p in procs) / 1024, 1),
                "rss_mb": round(sum(p["rss_kb"] for p in procs) / 1024, 1),
                "daemon_pss_mb": round(main["pss_kb"] / 1024, 1),
                "daemon_rss_mb": round(main["rss_kb"] / 1024, 1),
                "worker_pss_mb": [round(w["pss_kb"] / 1024, 1) for w in workers],
                "worker_rss_mb": [round(w["rss_kb"] / 1024, 1) for w in workers],
            }
    finally:
        service.restore()
    one, two, three = (report[f"instances_{n}"] for n in (1, 2, 3))
    for key in ("pss_mb", "rss_mb"):
        report[f"extra_instance_{key}"] = {
            "1_to_2": round(two[key] - one[key], 1),
            "2_to_3": round(three[key] - two[key], 1),
            "mean_1_to_3": round((three[key] - one[key]) / 2, 1),
        }
    save_artifact("rss_workers.json", report)
    print("memory at ready (arm64 guest, TFLite model, MB):", json.dumps(report, indent=1))
    assert one["pss_mb"] < two["pss_mb"] < three["pss_mb"], report
    for config in (one, two, three):
        assert config["pss_mb"] <= config["rss_mb"], report
    for config in (two, three):  # a worker's own pages are partly shared with the others
        assert sum(config["worker_pss_mb"]) < sum(config["worker_rss_mb"]), report
    extra = report["extra_instance_pss_mb"]
    assert extra["2_to_3"] < one["pss_mb"], report  # one more worker process < the whole daemon
    assert extra["mean_1_to_3"] < one["pss_mb"], report


# --- inferd capture and MQTT: the package's camera process and results to a broker --------------------
# Last in the file: the capture instance streams for the rest of the session once started, and the
# MQTT test restarts inferd on a config of its own (restored after).

CAPTURE = "inferd-capture@demo"
CLIP = "/var/lib/inferd/clips/demo.mp4"
# To the pull endpoint the packaged default config has (and TEST_CONFIG keeps), as the unit's user
# inferd; 64x64 (the example models' input) at 4 frames a second of a looped H.264 clip.
CAPTURE_YAML = f"""url: {CLIP}
to: ipc:///run/inferd/frames.sock
source: demo
model: tflite
size: 64x64
fps: 4
loop: true
metrics: 127.0.0.1:9465
"""
MQTT_SECTION = """mqtt:
  broker: "mqtt://127.0.0.1:1883"
  device_id: qemu
  models:
    tflite: {mode: every}
"""


def unit_show(guest, unit: str, *props: str) -> dict[str, str]:
    out = guest.ssh(f"systemctl show {unit} -p {','.join(props)}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_journal(guest, unit: str, lines: int = 80, priority: str | None = None) -> str:
    extra = f" -p {priority}" if priority else ""
    return guest.ssh(f"journalctl -u {unit} --no-pager -q -o cat -n {lines}{extra}", check=False).stdout


def wait_unit_active(guest, unit: str, timeout: float = 300) -> dict[str, str]:
    """Until ActiveState=active; a Type=notify unit gets there only through READY=1."""
    deadline, state = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        state = unit_show(
            guest, unit, "ActiveState", "SubState", "MainPID", "StatusText", "NRestarts", "Result"
        )
        if state["ActiveState"] == "active":
            return state
        if state["ActiveState"] == "failed":
            break
        time.sleep(1)
    raise AssertionError(f"{unit} not active: {state}\n--- journal ---\n{unit_journal(guest, unit)}")


def guest_metrics(guest, port: int) -> dict:
    """A metrics endpoint the guest does not forward (the capture's own), read inside the guest."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    script = f"import urllib.request; print(urllib.request.urlopen({url!r}).read().decode())"
    text = guest.ssh(f"python3 -c {shlex.quote(script)}").stdout
    return {m.name: m for m in text_string_to_metric_families(text)}


def sample(families: dict, name: str, **labels) -> float | None:
    """The value of family `name`'s `_total` (or plain) sample with these labels."""
    family = families.get(name)
    for s in family.samples if family else []:
        if s.name in (name, f"{name}_total") and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def test_the_package_ships_the_capture_unit_and_enables_no_instance(guest, installed):
    """inferd-capture@.service and an example camera config come with the package; nothing runs
    or is enabled until the admin enables an instance; the unit verifies in the guest."""
    where = "/lib/systemd/system" if INSTALL == "deb" else "/etc/systemd/system"
    assert guest.ssh(f"test -f '{where}/inferd-capture@.service'", check=False).returncode == 0
    assert guest.ssh("ls /etc/inferd/capture").stdout.split() == ["example.yaml.sample"]
    units = guest.ssh("systemctl list-units --all --plain --no-legend 'inferd-capture@*'").stdout
    enabled = guest.ssh("find /etc/systemd/system -path '*.wants/inferd-capture@*'").stdout
    assert units.strip() == "" and enabled.strip() == "", (units, enabled)
    proc = guest.ssh(f"systemd-analyze verify {CAPTURE}.service 2>&1", check=False)
    problems = [line for line in proc.stdout.splitlines() if "inferd-capture" in line]
    assert proc.returncode == 0 and problems == [], proc.stdout
    if INSTALL == "deb":  # a conffile (kept when edited), as /etc/inferd/inferd.yaml
        conffiles = guest.ssh("dpkg-query -W -f='${Conffiles}' inferd").stdout
        assert "/etc/inferd/capture/example.yaml.sample" in conffiles, conffiles
    # The venv has PyAV (FFmpeg inside its wheel) and paho-mqtt, and the sample is a valid config.
    script = (
        "import json, av, paho.mqtt.client as mqtt; from pathlib import Path; "
        "from inferd.capture.config import load_capture_config as load; "
        "c = load(Path('/etc/inferd/capture/example.yaml.sample'), {}); "
        "print(json.dumps({'av': av.__version__, 'ffmpeg': av.library_versions['libavcodec'], "
        "'paho': mqtt.CallbackAPIVersion.VERSION2.name, 'url': c.url, 'to': c.to}))"
    )
    versions = json.loads(guest.ssh(f"/opt/inferd/bin/python -c {shlex.quote(script)}").stdout)
    save_artifact("capture_versions.json", versions)
    assert versions["to"] == "ipc:///run/inferd/frames.sock" and versions["paho"] == "VERSION2", versions


@pytest.fixture(scope="module")
def capture(guest, service, tmp_path_factory):
    """inferd-capture@demo started for real on a short H.264 clip encoded here with PyAV."""
    from tests.capture.media import encode_video

    clip = encode_video(tmp_path_factory.mktemp("clip") / "demo.mp4", ["red", "green", "blue"], 10, fps=10)
    guest.ssh(f"install -d -o inferd -g inferd -m 0750 {os.path.dirname(CLIP)}")
    guest.put(clip, CLIP)
    guest.ssh(f"chown inferd:inferd {CLIP} && chmod 0640 {CLIP}")
    guest.write("/etc/inferd/capture/demo.yaml", CAPTURE_YAML)
    t0 = time.monotonic()
    # --no-block: TimeoutStartSec=infinity (a camera may take its time): the wait is ours, bounded.
    guest.ssh(f"systemctl start --no-block {CAPTURE}")
    state = wait_unit_active(guest, CAPTURE)
    log_seconds = time.monotonic() - t0
    save_artifact("capture_start.json", {"seconds_to_active": log_seconds, "state": state})
    yield {"state": state, "seconds": log_seconds, "clip_bytes": clip.stat().st_size}
    guest.ssh(f"systemctl stop {CAPTURE}", check=False, timeout=120)


def test_a_capture_instance_streams_a_video_into_inferd_under_its_hardening(guest, capture, scrape):
    """`systemctl start inferd-capture@demo`: active through READY=1 (sent after the first frame),
    inferd counts the frames of source "demo", the unit's sandbox lets PyAV/FFmpeg run (seccomp,
    NoNewPrivileges, MemoryDenyWriteExecute: no W+X mapping) and its journal is clean."""
    state = unit_show(
        guest, CAPTURE, "ActiveState", "SubState", "Type", "User", "StatusText", "MemoryDenyWriteExecute",
        "NRestarts", "MainPID",
    )  # fmt: skip
    assert (state["ActiveState"], state["SubState"], state["Type"]) == ("active", "running", "notify"), state
    assert state["User"] == "inferd" and state["MemoryDenyWriteExecute"] == "yes", state
    assert state["StatusText"].startswith("streaming"), state
    first = sample(scrape(), "inferd_frames_received", source="demo") or 0
    time.sleep(6)
    families = scrape()
    received = sample(families, "inferd_frames_received", source="demo") or 0
    assert first > 0 and received > first, (first, received)  # still flowing, at ~4 frames a second
    assert not sample(families, "inferd_frames_rejected", source="demo"), "frames refused by inferd"
    assert (sample(families, "inferd_inferences", model="tflite", status="ok") or 0) > 0
    own = guest_metrics(guest, 9465)
    sent, errors = sample(own, "inferd_capture_frames_sent"), sample(own, "inferd_capture_decode_errors")
    assert sent and sent >= received - 1 and errors == 0, (sent, errors, received)
    pid = int(state["MainPID"])
    status = guest.ssh(f"grep -E '^(Seccomp|NoNewPrivs):' /proc/{pid}/status").stdout
    assert "Seccomp:\t2" in status and "NoNewPrivs:\t1" in status, status
    maps = guest.ssh(f"cat /proc/{pid}/maps").stdout
    assert "libavcodec" in maps, "FFmpeg (PyAV's libavcodec) is not loaded"
    assert not [line for line in maps.splitlines() if line.split()[1].startswith("rwx")], "a W+X mapping"
    journal = unit_journal(guest, CAPTURE, 200)
    assert "first frame sent to ipc:///run/inferd/frames.sock" in journal, journal
    warnings = unit_journal(guest, CAPTURE, 200, priority="warning")
    assert state["NRestarts"] == "0" and warnings.strip() == "", warnings
    save_artifact(
        "capture.json",
        {"start": capture, "received": received, "sent": sent, "journal": journal.splitlines()[-10:]},
    )


def test_results_of_captured_frames_reach_mqtt_with_a_retained_online_status(guest, service, capture, scrape):
    """Debian's mosquitto in the guest (installed in the image, started here); inferd's mqtt section
    added to the test config: the capture's frames come out as MQTT messages, and the availability
    topic holds a retained `online`. The capture instance rides through inferd's restart."""
    guest.ssh("systemctl start mosquitto")
    t0 = time.monotonic()
    try:
        service.write_config(TEST_CONFIG + MQTT_SECTION)
        service.restart()
        # Connected first: a retained message is flagged retained only for a later subscriber.
        deadline = time.monotonic() + 60
        while sample(scrape(), "inferd_mqtt_connected") != 1:
            assert time.monotonic() < deadline, service.journal(30)
            time.sleep(1)
        status = guest.ssh(
            "mosquitto_sub -h 127.0.0.1 -t inferd/qemu/status --retained-only -C 1 -W 60 -F '%r %p'",
            timeout=90,
        ).stdout.strip()
        assert status == "1 online", status  # retain flag 1, payload online
        out = guest.ssh(
            "mosquitto_sub -h 127.0.0.1 -t inferd/qemu/tflite/demo -C 3 -W 120", timeout=150
        ).stdout
        messages = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(messages) == 3, out
        for m in messages:
            assert (m["model"], m["source"]) == ("tflite", "demo"), m
            assert m["outputs"][0]["shape"] == [1, 10] and m["latency_ms"] > 0, m
        assert [m["seq"] for m in messages] == sorted(m["seq"] for m in messages), messages
        families = scrape()
        assert sample(families, "inferd_mqtt_connected") == 1
        assert (sample(families, "inferd_mqtt_messages", result="sent") or 0) >= 3
        capture_state = unit_show(guest, CAPTURE, "ActiveState", "NRestarts")
        assert capture_state == {"ActiveState": "active", "NRestarts": "0"}, capture_state
        save_artifact("mqtt.json", {"seconds": time.monotonic() - t0, "status": status, "messages": messages})
    finally:
        service.restore()
        guest.ssh("systemctl stop mosquitto", check=False)


def test_a_package_upgrade_restarts_the_running_capture_instance(guest, service, capture):
    """The .deb's postinst as dpkg runs it on an upgrade (`configure OLD_VERSION`): inferd restarted,
    the running inferd-capture@ instance restarted too (a new process on the new code, active again
    through READY=1), and still no instance enabled."""
    if INSTALL != "deb":
        pytest.skip("the .deb's maintainer scripts (install.sh restarts running captures likewise)")
    before = unit_show(guest, CAPTURE, "MainPID", "ActiveState")
    assert before["ActiveState"] == "active", before
    t0 = time.monotonic()
    out = guest.ssh(f"/var/lib/dpkg/info/inferd.postinst configure {version()} 2>&1", timeout=400).stdout
    state = wait_unit_active(guest, CAPTURE)
    assert state["MainPID"] != before["MainPID"], (before, state, out)
    service.wait_active()
    enabled = guest.ssh("find /etc/systemd/system -path '*.wants/inferd-capture@*'").stdout
    assert enabled.strip() == "", enabled
    save_artifact(
        "capture_upgrade.json", {"seconds": time.monotonic() - t0, "before": before, "after": state}
    )


def test_removing_the_package_stops_the_capture_instance_cleanly(guest, capture):
    """The .deb's prerm on `remove` stops every inferd-capture@ instance, then inferd. SIGTERM: the
    capture stops reading, logs its totals and exits 0 (no restart, no failure). With the bundle:
    `systemctl stop`."""
    deb = INSTALL == "deb"
    cmd = "/var/lib/dpkg/info/inferd.prerm remove" if deb else f"systemctl stop {CAPTURE}"
    proc = guest.ssh(f"{cmd} 2>&1", check=False, timeout=120)
    state = unit_show(guest, CAPTURE, "ActiveState", "Result", "ExecMainStatus")
    clean = {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert proc.returncode == 0 and state == clean, (proc.stdout, state, unit_journal(guest, CAPTURE, 20))
    assert "stopped:" in unit_journal(guest, CAPTURE, 20)
    if deb:
        assert unit_show(guest, "inferd", "ActiveState")["ActiveState"] == "inactive"
