"""GPU benchmark for a short device lease: the reference case in float32 and with --amp, written to $OUT.

The device has no SimpleITK, so it takes two back-to-back device calls (a 64 MiB carry limit each):
    pip download --no-deps --only-binary=:all: --python-version 3.12 SimpleITK -d carry/wheels      # here, once
    mkdir -p carry/reference && cp ../shared/data/thorax_nsclc_r01-001.nii.gz carry/reference/
    pip install --no-deps --target build/device-site carry/wheels/*.whl     # device call 1, carry=["carry/wheels"]
    PYTHONPATH=build/device-site OUT=$OUT python3 scripts/device_benchmark.py   # call 2, carry=["carry/reference"]
Settings: CT (default carry/reference/thorax_nsclc_r01-001.nii.gz; "phantom" for the demo phantom), DEVICE, BLOCKS.
"""
import json
import os
import time
from pathlib import Path

from device_env import setting

import torch  # noqa: E402

from RegistrationMisalignmentLib.benchmark import run_benchmark  # noqa: E402
from RegistrationMisalignmentLib.inference import MisalignmentPredictor  # noqa: E402


def main() -> None:
    """Benchmark the released model in float32 and in mixed precision; write device_benchmark.json under $OUT."""
    out = Path(os.environ.get("OUT", "runs/device"))
    out.mkdir(parents=True, exist_ok=True)
    ct = setting("CT", "carry/reference/thorax_nsclc_r01-001.nii.gz")
    ct = None if ct == "phantom" else ct
    device = setting("DEVICE", "auto")
    results = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    for name, amp in (("float32", False), ("amp", True)):
        predictor = MisalignmentPredictor.load(device=device, amp=amp)
        run_benchmark(predictor, ct, blocks=4)  # warm-up: CUDA context, cuDNN algorithm choice
        results[name] = run_benchmark(predictor, ct, blocks=setting("BLOCKS", 64))
        seconds = results[name]["seconds"]
        print(f"{name}: network {seconds['dense_network']:.2f} s, "
              f"end to end {seconds['end_to_end_without_read']:.2f} s,"
              f" {results[name]['speedup_dense_over_per_patch']:.1f}x over per-patch", flush=True)
        (out / "device_benchmark.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
