"""A small meter for CPU time and, where a counter exists, GPU energy.

Runs on the client.

What it measures, and what it does not:

* **CPU-seconds** of this process (user + system time of all its threads, from
  :func:`time.process_time`) over the metered span. This is work, not energy: a CPU
  without an energy counter we can read gives no joules, and we never turn seconds
  into joules with an assumed wattage.
* **GPU joules** from NVML's total-energy counter
  (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver loaded),
  summed over the visible GPUs, when ``pynvml`` (package ``nvidia-ml-py``, the
  optional extra ``fedsem[energy]``) imports and a GPU answers. The counter is
  per device, not per process: on a GPU shared with other work it includes that
  work. Otherwise the reading is ``None``, shown as "not measured".
* **Peak RSS** of the process so far (``resource.getrusage``; a high-water mark
  since the process started, not of the span).

:func:`energy_mod` meters every train and evaluate handler of the ClientApp and adds
the reading to the reply's metrics.
"""

from __future__ import annotations

import functools
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message, MetricRecord

from fedsem_app import protocol as p

NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class EnergyReading:
    """What one metered span cost.

    Attributes
    ----------
    cpu_seconds
        Process CPU time (user + system, all threads) over the span.
    wall_seconds
        Wall-clock time of the span.
    gpu_joules
        Energy of the visible GPUs over the span from NVML, or None where not measured.
    peak_rss_bytes
        Peak resident memory of the process so far (not only of the span).

    """

    cpu_seconds: float
    wall_seconds: float
    gpu_joules: float | None
    peak_rss_bytes: int

    def energy_text(self) -> str:
        """GPU energy as text for tables: joules, or "not measured"."""
        return NOT_MEASURED if self.gpu_joules is None else f"{self.gpu_joules:.1f} J"

    def as_metrics(self) -> dict[str, float]:
        """Metric entries for a client reply: CPU-seconds, and GPU joules only if measured."""
        metrics = {p.CPU_SECONDS: float(self.cpu_seconds)}
        if self.gpu_joules is not None:
            metrics[p.GPU_JOULES] = float(self.gpu_joules)
        return metrics


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (Linux reports kB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@functools.lru_cache(maxsize=1)
def _nvml_handles() -> tuple[Any, tuple[Any, ...]]:
    # Initialised once per process; () when pynvml is missing or no GPU answers.
    try:
        import pynvml
    except ImportError:
        return None, ()
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handles = tuple(pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count))
        for handle in handles:  # fails on GPUs without the counter (pre-Volta)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:  # noqa: BLE001 - no driver, no GPU or no counter: not measured
        return None, ()
    return pynvml, handles


def gpu_energy_millijoules() -> int | None:
    """Total NVML energy counter summed over the visible GPUs, or None where unavailable."""
    pynvml, handles = _nvml_handles()
    if not handles:
        return None
    try:
        return sum(int(pynvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in handles)
    except Exception:  # noqa: BLE001 - a GPU that stops answering mid-run: not measured
        return None


class EnergyMeter:
    """Meter CPU-seconds (and GPU joules where NVML has a counter) over a span.

    Use as ``meter = EnergyMeter.start(); ...; reading = meter.stop()`` or as a
    context manager (``with EnergyMeter() as meter: ...``, then ``meter.reading``).
    """

    def __init__(self) -> None:
        self.reading: EnergyReading | None = None
        self._reset()

    def _reset(self) -> None:
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        self._mj0 = gpu_energy_millijoules()

    @classmethod
    def start(cls) -> EnergyMeter:
        """Create a meter that starts counting now."""
        return cls()

    def stop(self) -> EnergyReading:
        """Return (and keep in :attr:`reading`) what the span since start cost."""
        mj1 = gpu_energy_millijoules()
        joules = None if self._mj0 is None or mj1 is None else (mj1 - self._mj0) / 1000.0
        self.reading = EnergyReading(
            cpu_seconds=time.process_time() - self._cpu0,
            wall_seconds=time.perf_counter() - self._wall0,
            gpu_joules=joules,
            peak_rss_bytes=peak_rss_bytes(),
        )
        return self.reading

    def __enter__(self) -> EnergyMeter:
        self._reset()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def energy_mod(msg: Message, context: Context, call_next) -> Message:
    """ClientApp mod: meter the handler and add what it cost to the reply's metrics.

    Registered outside :func:`fedsem_app.clients.mods.fault_mod`, so a stalling
    node's sleep is metered as its work. An error reply goes back as it is.
    """
    meter = EnergyMeter.start()
    reply = call_next(msg, context)
    reading = meter.stop()
    if reply.has_error():
        return reply
    if p.METRICS not in reply.content:
        reply.content[p.METRICS] = MetricRecord()
    reply.content[p.METRICS].update(reading.as_metrics())
    return reply
