"""GPU and host stats. NVML is optional: without an NVIDIA GPU, the CPU is the scheduler's resource."""

from __future__ import annotations

import contextlib
import shutil
import time
from typing import Any

import psutil

_NO_NVML_UNTIL = 0.0
_RETRY_S = 60.0  # a box without a driver stays without one: do not dlopen NVML on every poll


def _nvml() -> Any:  # the pynvml module, or None (pynvml ships no types)
    global _NO_NVML_UNTIL
    if time.monotonic() < _NO_NVML_UNTIL:
        return None
    try:
        import pynvml
    except ImportError:
        _NO_NVML_UNTIL = time.monotonic() + _RETRY_S
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError has many subclasses: no driver, no device, ...
        _NO_NVML_UNTIL = time.monotonic() + _RETRY_S
        return None
    return pynvml


def gpu_report() -> list[dict[str, Any]]:
    """Every NVIDIA GPU with utilisation, memory, temperature, power and its compute processes.

    A process is `ours` when it carries our marker for this state dir; only the pids NVML lists are checked.
    """
    from engine.jobs.procs import marker_of_pid

    nv = _nvml()
    if nv is None:
        return []
    out: list[dict[str, Any]] = []
    try:
        count = nv.nvmlDeviceGetCount()
        for index in range(count):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            info: dict[str, Any] = {
                "index": index,
                "name": nv.nvmlDeviceGetName(handle),
                "mem_used": mem.used,
                "mem_total": mem.total,
                "mem_free": mem.free,
                "util": None,
                "temp": None,
                "power": None,
                "processes": [],
            }
            with contextlib.suppress(Exception):
                info["util"] = nv.nvmlDeviceGetUtilizationRates(handle).gpu
            with contextlib.suppress(Exception):
                info["temp"] = nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
            with contextlib.suppress(Exception):
                info["power"] = nv.nvmlDeviceGetPowerUsage(handle) / 1000.0
            with contextlib.suppress(Exception):
                for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                    name = ""
                    with contextlib.suppress(psutil.Error):
                        name = psutil.Process(proc.pid).name()
                    info["processes"].append(
                        {"pid": proc.pid, "name": name, "mem": proc.usedGpuMemory, "ours": marker_of_pid(proc.pid) is not None}
                    )
            out.append(info)
    finally:
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
    return out


def system_stats(dirs: list[str] | None = None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    disks = {}
    for d in dirs or []:
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(d)
            disks[d] = {"total": usage.total, "free": usage.free, "used": usage.used}
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "ram_total": vm.total,
        "ram_used": vm.total - vm.available,
        "disks": disks,
    }
