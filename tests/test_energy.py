"""Energy meter: CPU-seconds always, GPU joules only where NVML has a counter."""

from __future__ import annotations

import time

from fedsem_app import protocol as p
from fedsem_app.clients import energy
from fedsem_app.clients.energy import EnergyMeter, EnergyReading


def test_cpu_seconds_count_work_not_sleep():
    meter = EnergyMeter.start()
    time.sleep(0.2)  # wall time passes, the CPU idles
    idle = meter.stop()
    with EnergyMeter() as busy_meter:
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:
            pass
    busy = busy_meter.reading
    assert idle.wall_seconds >= 0.2 and idle.cpu_seconds < 0.1
    assert busy.cpu_seconds >= 0.2
    assert busy.peak_rss_bytes > 1_000_000  # a Python process holds more than 1 MB


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
