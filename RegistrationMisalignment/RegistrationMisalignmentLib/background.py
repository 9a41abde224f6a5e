"""Prediction in a child process (keeps Slicer responsive): progress lines, cancel, results read back."""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import SimpleITK as sitk

from .errors import InputError
from .imageio import write_image
from .inference import PredictionResult
from .transforms import write_transform


def python_executable() -> str:
    """The Python that runs the engine: Slicer's PythonSlicer when present, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


class BackgroundPrediction:
    """Runs `predict` on a pair in a child process; call poll() periodically, cancel() to stop."""

    def __init__(self, fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image = None, weights=None,
                 device: str = "auto", progress=None, python: str = None, amp: bool = False,
                 transform: sitk.Transform = None, probabilities: bool = False):
        self.progress = progress or (lambda fraction, message: None)
        self.probabilities = probabilities  # written and read back only when asked for (12 bytes per voxel)
        self.folder = Path(tempfile.mkdtemp(prefix="registration-misalignment-"))
        self._lines = queue.Queue()
        self._errors = []
        self._stdout = []
        inputs = {"fixed": fixed, "moving": moving, "mask": mask}
        for name, image in inputs.items():
            if image is not None:
                write_image(image, self.folder / f"{name}.nrrd", compress=False)
        command = [python or python_executable(), "-m", "RegistrationMisalignmentLib", "predict",
                   "--fixed", str(self.folder / "fixed.nrrd"), "--moving", str(self.folder / "moving.nrrd"),
                   "--output", str(self.folder / "labels.nrrd"), "--device", device, "--json", "--progress-lines"]
        if probabilities:
            command += ["--probabilities", str(self.folder / "probabilities.nrrd")]
        if mask is not None:
            command += ["--mask", str(self.folder / "mask.nrrd")]
        if transform is not None:
            command += ["--transform", str(write_transform(transform, self.folder))]
        if weights is not None:
            command += ["--weights", str(weights)]
        if amp:
            command.append("--amp")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            # UTF-8, not the locale's encoding: Slicer may set "C"
                                            encoding="utf-8", errors="replace", env=env)
        except OSError as exc:
            self.cleanup()
            raise InputError(f"the prediction process could not be started ({exc.strerror or exc}): {command[0]}") \
                from None
        self._readers = [threading.Thread(target=self._read, args=(self.process.stderr, self._lines), daemon=True),
                         threading.Thread(target=self._collect, daemon=True)]
        for reader in self._readers:
            reader.start()
        self.cancelled = False

    def _read(self, stream, sink: queue.Queue) -> None:
        """Forward a stream's lines to a queue (reader thread)."""
        for line in stream:
            sink.put(line.rstrip("\n"))

    def _collect(self) -> None:
        """Keep the child's stdout (the JSON summary)."""
        self._stdout.append(self.process.stdout.read())

    def poll(self) -> bool:
        """Report queued progress on the caller's thread; True once the child has exited."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line.startswith("progress "):
                _, fraction, message = (line.split(" ", 2) + [""])[:3]
                self.progress(float(fraction), message)
            elif line.strip():
                self._errors.append(line)
        return self.process.poll() is not None

    def wait(self, timeout: float = None) -> None:
        """Block until the child exits, reporting progress."""
        self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        self.poll()

    def cancel(self) -> None:
        """Stop the child process and remove its files."""
        self.cancelled = True
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.cleanup()

    def result(self) -> PredictionResult:
        """The finished prediction; raises InputError with the child's own one-line reason on failure."""
        self.wait()
        try:
            if self.cancelled:
                raise InputError("prediction was cancelled")
            if not self.folder.is_dir():
                raise InputError("the result of this prediction was already taken; run it again for another copy")
            if self.process.returncode != 0:
                raise InputError(self._failure())
            summary = json.loads("".join(self._stdout))
            probabilities = sitk.ReadImage(str(self.folder / "probabilities.nrrd")) if self.probabilities else None
            return PredictionResult(sitk.ReadImage(str(self.folder / "labels.nrrd")), probabilities, summary)
        finally:
            self.cleanup()

    def _failure(self) -> str:
        """Why the child failed: its own one-line error, or else how it ended and its last message (not a warning)."""
        errors = [line for line in self._errors if line.startswith("error: ")]
        if errors:
            return errors[-1].replace("error: ", "", 1)
        code = self.process.returncode
        ended = f"was stopped by signal {-code}" if code < 0 else f"ended with exit status {code}"
        messages = [line for line in self._errors if not line.startswith("warning: ")]
        last = f"; its last message: {messages[-1].strip()}" if messages else ""
        return (f"the prediction process {ended} without an error of its own (out of memory? close other programs or "
                f"choose a smaller mask, then run again){last}")

    def cleanup(self) -> None:
        """Remove the temporary folder."""
        shutil.rmtree(self.folder, ignore_errors=True)
