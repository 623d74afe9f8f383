from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inferd.service.metrics import Metrics


def fake_sysfs(root: Path) -> Path:
    def write(rel: str, text: str) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    write("class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write("class/thermal/thermal_zone0/temp", "61234\n")
    write("class/thermal/thermal_zone1/type", "gpu-thermal\n")
    write("class/thermal/thermal_zone1/temp", "garbage\n")  # unreadable: skipped
    write("class/thermal/thermal_zone2/temp", "45000\n")  # no type file: named after the zone
    write("class/thermal/thermal_zone10/type", "cpu-thermal\n")  # a second zone of the same type
    write("class/thermal/thermal_zone10/temp", "59000\n")
    write("devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "600000\n")
    write("devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", "1800000\n")
    write("devices/system/cpu/cpu1/cpufreq/cpuinfo_max_freq", "1800000\n")  # no current: skipped
    (root / "devices/system/cpu/cpu2").mkdir(parents=True)  # offline core, no cpufreq
    (root / "devices/system/cpu/cpufreq").mkdir(parents=True)  # not a core
    return root


def samples(registry) -> dict:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_temperatures_and_frequencies_from_a_sysfs_tree(tmp_path):
    reg = CollectorRegistry()
    Metrics(reg, sysfs=fake_sysfs(tmp_path))
    got = samples(reg)
    temps = {k[1][0][1]: v for k, v in got.items() if k[0] == "inferd_device_temperature_celsius"}
    assert temps == {"cpu-thermal": 61.234, "thermal_zone2": 45.0, "cpu-thermal1": 59.0}
    assert got[("inferd_cpu_frequency_hertz", (("cpu", "0"),))] == 600e6
    assert got[("inferd_cpu_frequency_max_hertz", (("cpu", "0"),))] == 1.8e9
    assert got[("inferd_cpu_frequency_max_hertz", (("cpu", "1"),))] == 1.8e9
    assert ("inferd_cpu_frequency_hertz", (("cpu", "1"),)) not in got


def test_a_missing_sysfs_is_not_an_error(tmp_path):
    reg = CollectorRegistry()
    Metrics(reg, sysfs=tmp_path / "nothing-here")
    got = samples(reg)
    assert not [k for k in got if k[0].startswith(("inferd_device", "inferd_cpu"))]
    assert ("process_resident_memory_bytes", ()) in got  # the standard process collector
    build = next(k for k in got if k[0] == "inferd_build_info")
    assert {"version", "python", "onnxruntime", "litert"} <= {name for name, _ in build[1]}


def test_buckets_are_configurable_and_the_registry_is_not_global(tmp_path):
    import prometheus_client

    reg = CollectorRegistry()
    m = Metrics(reg, buckets=[0.001, 0.01, 0.1], sysfs=None)
    m.inference_seconds.labels("x").observe(0.005)
    got = samples(reg)
    les = sorted(dict(k[1])["le"] for k in got if k[0] == "inferd_inference_seconds_bucket")
    assert les == ["+Inf", "0.001", "0.01", "0.1"]
    assert got[("inferd_inference_seconds_bucket", (("le", "0.01"), ("model", "x")))] == 1
    assert b"inferd_" not in generate_latest(prometheus_client.REGISTRY)
