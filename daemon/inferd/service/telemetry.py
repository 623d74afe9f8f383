"""Device telemetry read from sysfs at scrape time: temperatures and CPU frequencies.

Throttling shows as the current frequency dropping below the maximum while the temperature
climbs. The sysfs root is injectable so tests use a fake tree; missing or unreadable files
are skipped, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _natural(p: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


class DeviceCollector(Collector):
    def __init__(self, sysfs: str | Path = "/sys") -> None:
        self.root = Path(sysfs)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        temps = GaugeMetricFamily(
            "inferd_device_temperature_celsius", "Thermal zone temperature.", labels=["zone"]
        )
        seen: dict[str, int] = {}
        for zone in sorted((self.root / "class" / "thermal").glob("thermal_zone*"), key=_natural):
            milli = _read_int(zone / "temp")
            if milli is None:
                continue
            try:
                name = (zone / "type").read_text().strip() or zone.name
            except OSError:
                name = zone.name
            if name in seen:  # several zones of one type: keep them apart
                seen[name] += 1
                name = f"{name}{seen[name]}"
            else:
                seen[name] = 0
            temps.add_metric([name], milli / 1000.0)
        yield temps
        cur = GaugeMetricFamily("inferd_cpu_frequency_hertz", "Current CPU frequency.", labels=["cpu"])
        top = GaugeMetricFamily("inferd_cpu_frequency_max_hertz", "Maximum CPU frequency.", labels=["cpu"])
        cpus = (self.root / "devices" / "system" / "cpu").glob("cpu[0-9]*")
        for cpu in sorted(cpus, key=_natural):
            freq = cpu / "cpufreq"
            khz = _read_int(freq / "scaling_cur_freq")
            if khz is None:
                khz = _read_int(freq / "cpuinfo_cur_freq")
            if khz is not None:
                cur.add_metric([cpu.name.removeprefix("cpu")], khz * 1000.0)
            max_khz = _read_int(freq / "cpuinfo_max_freq")
            if max_khz is not None:
                top.add_metric([cpu.name.removeprefix("cpu")], max_khz * 1000.0)
        yield cur
        yield top
