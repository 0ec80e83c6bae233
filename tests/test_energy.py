"""Energy meter: CPU-seconds always, GPU joules only where NVML has a counter."""

from __future__ import annotations

import json
import subprocess
import sys

from fedsem_app import protocol as p
from fedsem_app.clients import energy
from fedsem_app.clients.energy import EnergyMeter, EnergyReading

# Metered in a fresh interpreter with a single thread: in the test process, other
# threads (torch's, a logger's) may work while the main thread sleeps, and the meter
# rightly counts them, so a bound on its sleep would depend on them.
METER_SCRIPT = """
import json, time
from fedsem_app.clients.energy import EnergyMeter

meter = EnergyMeter.start()
time.sleep(0.5)  # wall time passes, the CPU idles
idle = meter.stop()
with EnergyMeter() as busy_meter:
    deadline = time.thread_time() + 0.3  # 0.3 s of this thread's own CPU time
    while time.thread_time() < deadline:
        pass
busy = busy_meter.reading
print(json.dumps([idle.cpu_seconds, idle.wall_seconds, busy.cpu_seconds, busy.peak_rss_bytes]))
"""


def test_cpu_seconds_count_work_not_sleep():
    out = subprocess.run(
        [sys.executable, "-c", METER_SCRIPT], capture_output=True, text=True, check=True
    )
    idle_cpu, idle_wall, busy_cpu, peak_rss = json.loads(out.stdout.splitlines()[-1])
    # A sleeping single-threaded process: wall time, hardly any CPU time (relative bound).
    assert idle_wall >= 0.5 and idle_cpu < idle_wall / 10
    # The busy span holds at least its thread's 0.3 CPU-seconds: a lower bound that
    # nothing running beside it can break.
    assert busy_cpu >= 0.3 and busy_cpu > idle_cpu + 0.25
    assert peak_rss > 1_000_000  # a Python process holds more than 1 MB


def test_without_a_counter_energy_is_not_measured(monkeypatch):
    monkeypatch.setattr(energy, "gpu_energy_millijoules", lambda: None)
    reading = EnergyMeter.start().stop()
    assert reading.gpu_joules is None
    assert reading.energy_text() == "not measured"
    assert set(reading.as_metrics()) == {p.CPU_SECONDS}


def test_gpu_joules_are_the_counter_difference(monkeypatch):
    counter = iter([1_000_000, 1_250_500])  # millijoules at start and stop
    monkeypatch.setattr(energy, "gpu_energy_millijoules", lambda: next(counter))
    reading = EnergyMeter.start().stop()
    assert reading.gpu_joules == 250.5
    assert reading.as_metrics()[p.GPU_JOULES] == 250.5


def test_energy_text_of_a_measured_reading():
    assert EnergyReading(1.0, 2.0, 12.34, 0).energy_text() == "12.3 J"
