"""Which convolution PyTorch would pick for each layer of one output box of the released network on the CPU, and
what it costs against oneDNN, which inference always uses (`devices.onednn_inference`).

PyTorch's own choice sends a single volume (batch of 1) whose N x C x D x H is at most 20480 to its reference
convolution ("slow_conv3d"); the dense map convolves one box at a time, so its coarse levels and small boxes fell
there. Rerun this after a torch upgrade to see whether the routing is still needed.

    python scripts/convolution_paths.py                   # a 72^3 box (the reference case's tile)
    python scripts/convolution_paths.py --box 40 72 72    # a box shrunk along z
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment"))

from RegistrationMisalignmentLib.benchmark import convolution_shapes  # noqa: E402
from RegistrationMisalignmentLib.devices import CONVOLUTION_LAYOUT, machine_description  # noqa: E402
from RegistrationMisalignmentLib.inference import MisalignmentPredictor  # noqa: E402

REFERENCE_LIMIT = 20480  # PyTorch's threshold on N x C x D x H below which one volume is not sent to oneDNN


def layer_inputs(model, box_zyx) -> list:
    """(input shape, weight shape) of every 3x3x3 convolution in one forward pass over a box."""
    return [(shape, weight) for shape, weight, _ in convolution_shapes(model, [box_zyx]) if weight[2:] == (3, 3, 3)]


def milliseconds(function, repeats: int) -> float:
    """Mean wall time of `function()` after one warm-up call."""
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return 1e3 * (time.perf_counter() - start) / repeats


def compare(model, box_zyx, repeats: int = 3) -> list:
    """Per layer: its input shape, whether PyTorch would pick the reference convolution, and both times (ms)."""
    rows = []
    for shape, weight in layer_inputs(model, box_zyx):  # random values: the time depends on the shapes only
        x = torch.randn(shape).contiguous(memory_format=CONVOLUTION_LAYOUT)
        w = torch.randn(weight).contiguous(memory_format=CONVOLUTION_LAYOUT)
        with torch.no_grad():
            own = milliseconds(lambda: F.conv3d(x, w), repeats)
            onednn = milliseconds(lambda: torch.mkldnn_convolution(x, w, None, (0,) * 3, (1,) * 3, (1,) * 3, 1),
                                  repeats)
        rows.append({"input_shape": list(shape), "pytorch_picks_reference": shape[0] * shape[1] * shape[2] * shape[3]
                     <= REFERENCE_LIMIT, "pytorch_ms": own, "onednn_ms": onednn})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, nargs=3, default=[72, 72, 72], metavar=("Z", "Y", "X"),
                        help="output box edges (multiples of 8)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model = MisalignmentPredictor.load(device="cpu").model
    rows = compare(model, args.box)
    total_own, total_onednn = sum(r["pytorch_ms"] for r in rows), sum(r["onednn_ms"] for r in rows)
    if args.json:
        print(json.dumps({"machine": machine_description(), "torch": torch.__version__, "threads":
                          torch.get_num_threads(), "box": args.box, "layers": rows,
                          "pytorch_ms": total_own, "onednn_ms": total_onednn}, indent=2))
        return
    print(f"{machine_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads, box {args.box}")
    for r in rows:
        path = "reference" if r["pytorch_picks_reference"] else "oneDNN"
        print(f"  {str(r['input_shape']):24} PyTorch's choice ({path:9}) {r['pytorch_ms']:7.2f} ms   "
              f"oneDNN {r['onednn_ms']:7.2f} ms")
    print(f"  all 3x3x3 layers: PyTorch's choice {total_own:.0f} ms, oneDNN {total_onednn:.0f} ms")


if __name__ == "__main__":
    main()
