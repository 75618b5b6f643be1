"""What the node is: GPUs from NVML (pynvml), honest CPU figures where there is none."""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass, field

from schemas.events import DeviceUsage, GpuDevice

# FP16 dense tensor throughput by compute capability, GFLOP/s per SM per MHz (NVIDIA specs:
# e.g. H100 SXM 989.5 TFLOP/s at 132 SMs x 1830 MHz). Unknown architectures get the lowest.
_FP16_PER_SM_MHZ = {9: 4.096, 8: 2.048, 7: 1.024}


@dataclass(frozen=True)
class Hardware:
    """The node as its registration describes it (`lattice.gpu.GpuDevice` per GPU)."""

    devices: tuple[GpuDevice, ...]
    driver_version: str | None
    cuda_version: str | None
    cpu_model: str
    cpu_cores: int
    ram_bytes: int
    runtimes: tuple[str, ...] = field(default=())

    @property
    def device_name(self) -> str:
        return self.devices[0].name if self.devices else self.cpu_model

    @property
    def memory_bytes(self) -> int:
        """What models can use: VRAM with GPUs, RAM without."""
        return sum(d.vram_bytes for d in self.devices) or self.ram_bytes


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _nvml_devices() -> tuple[tuple[GpuDevice, ...], str | None, str | None]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: a CPU node
        return (), None, None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            sms = pynvml.nvmlDeviceGetNumGpuCores(handle) // 128 if major >= 8 else 0
            clock = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
            per = _FP16_PER_SM_MHZ.get(major, 0.5)
            devices.append(
                GpuDevice(
                    index=i,
                    name=str(pynvml.nvmlDeviceGetName(handle)),
                    uuid=str(pynvml.nvmlDeviceGetUUID(handle)),
                    vram_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    compute_capability=f"{major}.{minor}",
                    peak_fp16_gflops=max(1, int(sms * clock * per)),
                )
            )
        return tuple(devices), str(driver), f"{cuda // 1000}.{cuda % 1000 // 10}"
    finally:
        pynvml.nvmlShutdown()


def _torch_runtime(devices: tuple[GpuDevice, ...]) -> str | None:
    """torch's runtime here. Imported only where there is a GPU to ask it about: the
    import alone costs seconds of CPU, and a worker starts with the devnet's other
    processes on the same cores (training jobs import it when they run)."""
    if importlib.util.find_spec("torch") is None:
        return None
    if not devices:
        return "torch-cpu"
    import torch

    return "torch-" + ("cuda" if torch.cuda.is_available() else "cpu")


def probe() -> Hardware:
    import onnxruntime as ort

    devices, driver, cuda = _nvml_devices()
    runtimes = ["onnxruntime-" + ("cuda" if devices else "cpu")]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        runtimes = ["onnxruntime-cpu"]
    torch_runtime = _torch_runtime(devices)
    if torch_runtime is not None:
        runtimes.append(torch_runtime)
    return Hardware(
        devices=devices,
        driver_version=driver,
        cuda_version=cuda,
        cpu_model=_cpu_model(),
        cpu_cores=os.cpu_count() or 1,
        ram_bytes=_ram_bytes(),
        runtimes=tuple(runtimes),
    )


def usage() -> list[DeviceUsage]:
    """Live utilisation per GPU, for heartbeats; empty on a CPU node."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        out: list[DeviceUsage] = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            out.append(
                DeviceUsage(
                    index=i,
                    utilisation_pct=int(rates.gpu),
                    vram_used_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).used),
                    temperature_c=int(pynvml.nvmlDeviceGetTemperature(handle, 0)),
                    power_mw=int(pynvml.nvmlDeviceGetPowerUsage(handle)),
                )
            )
        return out
    finally:
        pynvml.nvmlShutdown()
