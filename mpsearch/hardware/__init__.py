"""Hardware profiles and the roofline latency/memory model (calibration lives in hardware.calibrate)."""

from mpsearch.hardware.differentiable import expected_latency, expected_memory
from mpsearch.hardware.latency import LatencyReport, RooflineLatencyModel, SiteLatency, Workload, latency
from mpsearch.hardware.profile import HardwareProfile, load_profile, shipped_profiles
from mpsearch.hardware.report import format_latency_table

__all__ = [
    "HardwareProfile", "LatencyReport", "RooflineLatencyModel", "SiteLatency", "Workload", "expected_latency",
    "expected_memory", "format_latency_table", "latency", "load_profile", "shipped_profiles",
]
