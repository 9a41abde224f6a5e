"""Training loop: synthetic pairs on the fly, loss on every step of the hierarchy, checkpoints and resume."""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import export_weights, load_model, sha256_of, training_settings_of
from .errors import InputError
from .devices import CONVOLUTION_LAYOUT, in_convolution_layout, machine_description, resolve_device
from .evaluation import lung_truth_and_prediction
from .made_ahead import made_ahead
from .metrics import classification_report, confusion_matrix
from .model import MisalignmentNet, ModelConfig, check_output_size
from .synthesis import IGNORE, check_source_extent, make_batch, make_samples

LEVEL_LOSS_WEIGHTS = {4: 0.5, 2: 0.5, 1: 1.0}
VALIDATION_SEED = 10 ** 9
LOADER_PREFETCH = 4  # batches each loader worker prepares ahead
STATE_NAME = "training_state.pt"  # the resumable checkpoint in a run folder
WEIGHTS_NAME = "weights.safetensors"  # the exported weights in a run folder
# what an interrupted save can leave in a run folder before its first checkpoint (save_state, write_history,
# export_weights write a temporary file, then rename it)
INTERRUPTED_SAVES = (STATE_NAME + ".tmp", "history.json.tmp", ".weights.safetensors.tmp")
SYNTHESIS_AHEAD = 2  # batches a synthesis thread in the training process makes ahead of the step


@dataclass
class TrainConfig:
    """Training hyper-parameters; stored with every checkpoint."""

    steps: int = 2000
    batch_size: int = 4
    out_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    validate_every: int = 100
    validation_samples: int = 32
    seed: int = 0
    ct_paths: list = field(default_factory=list)
    # their content fingerprints (sources.ct_fingerprint) when the run started: empty when not read (yet), as in runs
    # before they were recorded, which are resumed by the CTs' paths
    ct_fingerprints: list = field(default_factory=list)
    phantom_seeds: list = field(default_factory=lambda: [0, 1])
    source_files: list = field(default_factory=list)  # files written by cache-sources
    source_files_sha256: list = field(default_factory=list)  # their contents when the run started ("": not there)
    phantom_fraction: float = 0.3
    loader_workers: int = 0  # >0: synthesise batches in this many processes while the device trains
    loader_device: str = "cpu"  # where those processes synthesise: "cpu", or "cuda" (each launches its own GPU work)
    init_weights: str = ""  # fine-tuning: the weights file training starts from ("" = random initialisation)
    init_weights_sha256: str = ""
    # probability that one image of a training pair gets its lungs' density from another breathing state,
    # independent of the residual, as in a well registered inhale/exhale pair (0 = off, as in runs before it)
    density_change: float = 0.0
    # synthesis in the training process made in a thread, SYNTHESIS_AHEAD batches ahead of the steps: None = on CUDA
    # only; on 2 CPU cores it was 7-23 % faster (BENCHMARKS.md), `--synthesis-thread on` uses it there
    synthesis_thread: Optional[bool] = None
    # the `registration-misalignment train ...` command lines of the run: the one that started it ("" when not
    # recorded: runs before they were, or started from Python), then any other that resumed it (a larger --steps)
    commands: list = field(default_factory=list)


def pick_source(sources: list, index: int, seed: int, phantom_fraction: float):
    """Choose the source of sample `index` reproducibly (phantoms drawn with `phantom_fraction`)."""
    rng = np.random.default_rng([seed, index])
    phantoms = [s for s in sources if s.name.startswith("phantom")]
    real = [s for s in sources if not s.name.startswith("phantom")]
    pool = phantoms if (phantoms and (not real or rng.random() < phantom_fraction)) else real
    return pool[rng.integers(len(pool))]


def sample_specs(sources, train: TrainConfig, first_index: int, count: int, base_seed: int) -> list:
    """(source, seed) of the samples with indices from `first_index` (reproducible)."""
    return [(pick_source(sources, i, base_seed, train.phantom_fraction), base_seed * 10 ** 7 + i)
            for i in range(first_index, first_index + count)]


def sample_batch(sources, config: ModelConfig, train: TrainConfig, first_index: int, count: int, device,
                 base_seed: int):
    """Generate `count` samples with indices from `first_index` (reproducible), a training batch at a time."""
    specs = sample_specs(sources, train, first_index, count, base_seed)
    return [sample for start in range(0, count, train.batch_size)
            for sample in make_samples(specs[start:start + train.batch_size], config, train.out_size, device,
                                       density_change=train.density_change)]


class _StepBatches(torch.utils.data.Dataset):
    """The training batch of each step, synthesised on `device`; `to_host`: handed over in host memory (loader
    workers: a process hands tensors to the training loop through shared host memory)."""

    def __init__(self, sources, config: ModelConfig, train: TrainConfig, device="cpu", to_host: bool = False):
        self.sources, self.config, self.train = sources, config, train
        self.device, self.to_host = torch.device(device), to_host

    def __len__(self) -> int:
        return self.train.steps

    def __getitem__(self, step: int):
        train = self.train
        batch = make_batch(sample_specs(self.sources, train, step * train.batch_size, train.batch_size, train.seed),
                           self.config, train.out_size, self.device, train.density_change)
        return tuple({lv: x.cpu() for lv, x in part.items()} for part in batch) if self.to_host else batch


def _start_worker(worker_id: int) -> None:
    """A loader worker shares the cores (one torch thread) and moves its copy of the sources to its device once."""
    torch.set_num_threads(1)
    batches = torch.utils.data.get_worker_info().dataset
    batches.sources = [source.to(batches.device) for source in batches.sources]


def uses_synthesis_thread(train: TrainConfig, device: torch.device) -> bool:
    """Whether synthesis in the training process runs in a thread ahead of the steps (see TrainConfig)."""
    return device.type == "cuda" if train.synthesis_thread is None else train.synthesis_thread


def training_batches(sources, config: ModelConfig, train: TrainConfig, first_step: int, device):
    """Yield (inputs, targets) on `device` for every step from `first_step`: made here, or by loader workers."""
    if train.loader_workers <= 0:
        batches = _StepBatches(sources, config, train, device)
        steps = range(first_step, train.steps)
        if uses_synthesis_thread(train, device):
            yield from made_ahead(batches.__getitem__, steps, SYNTHESIS_AHEAD)
        else:
            yield from (batches[step] for step in steps)
        return
    loader_device = resolve_device(train.loader_device)
    loader = torch.utils.data.DataLoader(_StepBatches(sources, config, train, loader_device, to_host=True),
                                         batch_size=None, sampler=range(first_step, train.steps),
                                         num_workers=train.loader_workers, prefetch_factor=LOADER_PREFETCH,
                                         pin_memory=device.type == "cuda", worker_init_fn=_start_worker,
                                         # spawned, not forked: CUDA cannot start in a forked process, and a fork
                                         # of a process with torch threads running can deadlock
                                         multiprocessing_context="spawn")
    for inputs, targets in loader:
        yield ({lv: x.to(device, non_blocking=True) for lv, x in inputs.items()},
               {lv: t.to(device, non_blocking=True) for lv, t in targets.items()})


def hierarchy_loss(logits: dict, targets: dict) -> torch.Tensor:
    """Class-balanced cross-entropy summed over the steps of the hierarchy (a constant 0 when no voxel is labelled)."""
    total = torch.zeros((), device=next(iter(logits.values())).device)
    for lv, out in logits.items():
        target = targets[lv]
        n_classes = out.shape[1]
        counts = torch.bincount(target[target != IGNORE].flatten(), minlength=n_classes).float()
        if counts.sum() == 0:
            continue
        weights = (counts.sum() / (n_classes * counts.clamp_min(1.0))).clamp(0.2, 10.0)
        total = total + LEVEL_LOSS_WEIGHTS[lv] * F.cross_entropy(out, target, weight=weights, ignore_index=IGNORE)
    return total


def training_step(model: MisalignmentNet, optimizer, inputs: dict, targets: dict) -> torch.Tensor:
    """One optimiser step on a batch; returns its loss (not read back, so the host does not wait for the device)."""
    loss = hierarchy_loss(model(in_convolution_layout(inputs)), targets)
    if loss.requires_grad:  # a batch without a labelled voxel (possible in small batches) teaches nothing
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss


@torch.no_grad()
def validate(model: MisalignmentNet, samples: list) -> dict:
    """Metrics of the finest step over lung voxels of validation samples."""
    model.eval()
    cm = np.zeros((3, 3), dtype=np.int64)
    for sample in samples:
        cm += confusion_matrix(*lung_truth_and_prediction(model, sample))
    model.train()
    return classification_report(cm)


def save_state(path: Path, model, optimizer, step: int, model_config: ModelConfig, train: TrainConfig, history,
               validation: dict):
    """Write the resumable training state atomically (tensors and plain data only), with the step's validation."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "model_config": json.dumps(model_config.to_dict()), "train_config": json.dumps(asdict(train)),
                "history": json.dumps(history), "validation": json.dumps(validation),
                "machine": machine_description()}, tmp)
    os.replace(tmp, path)


def save_checkpoint(out_dir: Path, model, optimizer, step: int, model_config: ModelConfig, train: TrainConfig,
                    history: list, validation: dict) -> str:
    """Save the training state, the weights and the history at `step`, in that order; returns the weights' sha256."""
    save_state(out_dir / STATE_NAME, model, optimizer, step, model_config, train, history, validation)
    sha = export_weights(model, out_dir / WEIGHTS_NAME, extra={"steps": step})
    write_history(out_dir / "history.json", history)
    return sha


def write_history(path: Path, history: list) -> None:
    """Write the validation history as JSON atomically (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, path)


def fine_tuning_config(weights_path, **requested) -> ModelConfig:
    """The architecture of the weights to fine-tune (uncalibrated), checking any `requested` option agrees."""
    initial = load_model(weights_path).config
    for option, value in requested.items():
        if value is not None and value != getattr(initial, option):
            raise InputError(f"--{option} {value} differs from the {getattr(initial, option)} of {weights_path}; "
                             "leave it out when fine-tuning (the architecture comes from the weights)")
    return initial.uncalibrated()


TILE_SETTINGS = ("seed", "out_size", "phantom_fraction")  # with the training data: what draws tile i


def warn_if_same_tiles(train: TrainConfig) -> None:
    """Warn when a fine-tune would draw the training tiles its starting weights were trained on: tile i of a run is
    drawn from its seed, tile size and training data alone (`sample_specs`), whatever its batch size."""
    earlier = training_settings_of(train.init_weights)
    if earlier is not None and draws_the_same_tiles(earlier, asdict(train)):
        logging.getLogger("RegistrationMisalignment").warning(
            f"--seed {train.seed} is the seed {train.init_weights} was trained with, on the same training data and "
            "--out-size: this fine-tune repeats its training tiles (the same crops and fields, whatever the batch "
            "size; only --density-change can change their augmentation); give another --seed for new ones")


def draws_the_same_tiles(earlier: dict, asked: dict) -> bool:
    """Whether two runs' settings (TrainConfig dictionaries; older ones may lack entries) draw the same tiles."""
    defaults = asdict(TrainConfig())
    return (all(earlier.get(key, defaults[key]) == asked[key] for key in TILE_SETTINGS)
            and list(earlier.get("phantom_seeds", [])) == list(asked["phantom_seeds"])
            and _names(earlier, "ct_paths") == _names(asked, "ct_paths") and _same_sources_files(earlier, asked))


def _names(settings: dict, key: str) -> list:
    """The file names of the paths a run's settings hold under `key`."""
    return [Path(path).name for path in settings.get(key, [])]


def _same_sources_files(earlier: dict, asked: dict) -> bool:
    """Whether two runs' sources files are the same, in order: by sha256 where both recorded it, else by name."""
    before, now = _names(earlier, "source_files"), _names(asked, "source_files")
    if len(before) != len(now):
        return False
    hashes_before = earlier.get("source_files_sha256") or [""] * len(before)
    hashes_now = asked["source_files_sha256"] or [""] * len(now)
    return all(a == b if a and b else x == y for x, y, a, b in zip(before, now, hashes_before, hashes_now))


def start_from_weights(model: MisalignmentNet, weights_path) -> None:
    """Copy the tensors of a weights file into `model` (fine-tuning); the architectures must match."""
    initial = load_model(weights_path)
    if initial.config.uncalibrated() != model.config.uncalibrated():
        raise InputError(f"{weights_path}: its architecture differs from the model being trained; "
                         "fine-tune with the architecture stored in the weights")
    model.load_state_dict(initial.state_dict())


RESUMED_SETTINGS = ("batch_size", "out_size", "learning_rate", "seed", "density_change")  # --steps may grow
# the training data, file by file, in order: each by the contents recorded when the run started (a CT's fingerprint,
# a sources file's sha256), else by path
RESUMED_FILES = {"ct_paths": ("--ct", "ct_fingerprints"), "source_files": ("--sources", "source_files_sha256")}


def check_same_run(out_dir: Path, state: dict, model_config: ModelConfig, train_config: TrainConfig,
                   cts_read: bool = True) -> None:
    """Raise InputError, naming what differs, unless a stored run has the architecture, training data, starting
    weights and training settings asked for (only the number of steps may grow on resuming); a CT whose fingerprint
    the run recorded is compared once it is read (`cts_read`; until then it may be anywhere)."""
    def plain(values: dict) -> dict:
        return json.loads(json.dumps(values))  # as stored: lists for tuples, text for dictionary keys
    stored_model = plain(ModelConfig(**json.loads(state["model_config"])).to_dict())
    asked_model = plain(model_config.to_dict())
    stored_train, asked_train = json.loads(state["train_config"]), plain(asdict(train_config))
    differing = [f"{key} {stored_model.get(key)} (asked {asked_model[key]})" for key in asked_model
                 if stored_model.get(key) != asked_model[key]]
    differing += [f"--{key.replace('_', '-')} {stored_train.get(key)} (asked {asked_train[key]})"
                  for key in RESUMED_SETTINGS if key in stored_train and stored_train[key] != asked_train[key]]
    files = _file_verdicts(stored_train, asked_train, cts_read)
    differing += _differing_data(stored_train, asked_train, files)
    if asked_train["steps"] < stored_train["steps"]:
        differing.append(f"--steps {stored_train['steps']} (asked {asked_train['steps']}: only more may be asked)")
    if differing:
        raise InputError(f"{out_dir} holds a run started with {', '.join(differing)}; resume it with the options it "
                         "was started with, or train in a new --out folder")
    changed = _changed_files(stored_train, asked_train, files)
    if changed:
        raise InputError(f"{out_dir}: the contents (sha256) of {' and '.join(changed)} changed since the run started; "
                         "resume it with the files it started with, or train in a new --out folder")


def _file_verdicts(stored: dict, asked: dict, cts_read: bool) -> dict:
    """For each option of RESUMED_FILES, the verdict on each file asked against the run's, in order (`_file_verdict`),
    or None when their number differs."""
    verdicts = {}
    for key, (_, contents) in RESUMED_FILES.items():
        before, now = _resolved(stored.get(key, [])), _resolved(asked[key])
        unread = None if key == "ct_paths" and not cts_read else ""
        verdicts[key] = None if len(before) != len(now) else [
            _file_verdict(*pair) for pair in zip(before, now, _recorded(stored, key, contents, ""),
                                                 _recorded(asked, key, contents, unread))]
    return verdicts


def _resolved(paths) -> list:
    """Absolute paths (relative ones: from the current folder)."""
    return [str(Path(path).resolve()) for path in paths]


def _recorded(settings: dict, key: str, contents_key: str, missing) -> list:
    """The contents that a run's settings recorded for its files under `key`, or `missing` for each when none."""
    recorded, count = list(settings.get(contents_key) or []), len(settings.get(key, []))
    return recorded if len(recorded) == count else [missing] * count


def _file_verdict(before: str, now: str, before_contents: str, now_contents: Optional[str]) -> str:
    """"same" file as the run's, "changed" (its path, other contents) or "other": by the contents where both are
    known, else by path; a file whose contents the run recorded but that is not read yet (None) counts as the same."""
    if before_contents and now_contents:
        return "same" if before_contents == now_contents else "changed" if before == now else "other"
    if before_contents and now_contents is None:
        return "same"
    return "same" if before == now else "other"


def _differing_data(stored: dict, asked: dict, files: dict) -> list:
    """What differs between a stored run's training data and starting weights and those asked for, as options (the
    files as `_file_verdicts` judged them)."""
    differing = []
    for key, (option, _) in RESUMED_FILES.items():
        if files[key] is None or "other" in files[key]:
            before, now = _resolved(stored.get(key, [])), _resolved(asked[key])
            differing.append(f"{option} {' '.join(before) or 'none'} (asked {' '.join(now) or 'none'})")
    before, now = list(stored.get("phantom_seeds", [])), list(asked["phantom_seeds"])
    if len(before) != len(now):
        differing.append(f"--phantoms {len(before)} (asked {len(now)})")
    elif before != now:  # the command line gives seeds 0..N-1, the Python API any
        differing.append(f"phantom seeds {before} (asked {now})")
    if (stored.get("init_weights_sha256", "") != asked["init_weights_sha256"]
            and not _same_path(stored.get("init_weights"), asked["init_weights"])):
        differing.append(f"--init-weights {stored.get('init_weights') or 'none (random weights)'} "
                         f"(asked {asked['init_weights'] or 'none'})")
    return differing


def _same_path(before: str, now: str) -> bool:
    """Whether two stored paths name the same file (relative ones: from the current folder)."""
    return bool(before and now) and Path(before).resolve() == Path(now).resolve()


def _changed_files(stored: dict, asked: dict, files: dict) -> list:
    """The training data files and starting weights, at the paths a stored run started with, whose contents differ
    from those it recorded then (runs from before they were recorded: their starting weights only)."""
    changed = [f"{option} {path}" for key, (option, _) in RESUMED_FILES.items()
               for path, verdict in zip(asked[key], files[key] or []) if verdict == "changed"]
    if stored.get("init_weights_sha256", "") != asked["init_weights_sha256"]:  # at the same path (else refused)
        changed.append(f"--init-weights {asked['init_weights']}")
    return changed


def with_fingerprints(train: TrainConfig) -> TrainConfig:
    """`train` with the sha256 of each of its sources files, computed once (kept when already there; "" for a file
    that is not there, which loading it then names)."""
    if len(train.source_files_sha256) == len(train.source_files):
        return train
    return replace(train, source_files_sha256=[sha256_of(path) if Path(path).is_file() else ""
                                               for path in train.source_files])


def with_recorded_commands(train: TrainConfig, state: Optional[dict]) -> TrainConfig:
    """`train` with the command lines its stored run recorded (the one that started it first, "" when that was not
    recorded), then its own command line when it is another: a resumed run keeps the command that started it."""
    if state is None:
        return train
    recorded = json.loads(state["train_config"]).get("commands") or [""]
    return replace(train, commands=recorded + [command for command in train.commands if command not in recorded])


def check_not_a_file(out_dir: Path) -> None:
    """Raise InputError when the run folder to train in is a file."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; give a run folder (new, or one to resume)")


def check_run_folder(out_dir) -> None:
    """Raise InputError for a run folder that is a file, or that holds something but no training state to resume
    from (a finished run whose state was deleted, other files): training there would overwrite it. An empty folder,
    or one with only what an interrupted save left, is a new run's."""
    out_dir = Path(out_dir)
    check_not_a_file(out_dir)
    if not out_dir.is_dir() or (out_dir / STATE_NAME).exists():
        return
    held = sorted(path.name for path in out_dir.iterdir() if path.name not in INTERRUPTED_SAVES)
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise InputError(f"--out {out_dir} holds {shown} but no {STATE_NAME} to resume from; training there would "
                         "overwrite it: choose a new --out folder")


def check_before_loading_sources(out_dir, model_config: ModelConfig, train_config: TrainConfig,
                                 cts_read: bool = False) -> Optional[dict]:
    """The checks `train` makes of its settings, its run folder and a run to resume, made before the sources are
    loaded (which takes seconds per CT), so that a wrong option is reported at once, and again with the CTs read
    (`cts_read`: their fingerprints are compared then); returns the run's training state (on the CPU), None for a
    new run."""
    check_output_size(train_config.out_size)
    check_run_folder(out_dir)
    state_path = Path(out_dir) / STATE_NAME
    if not state_path.exists():
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    check_same_run(Path(out_dir), state, model_config, train_config, cts_read)
    return state


def is_finished(state: Optional[dict], out_dir, train_config: TrainConfig) -> bool:
    """Whether a run's training state has trained the steps asked and recorded its result beside its weights (older
    states did not record it): `train` then returns that result without loading, synthesising or validating."""
    return (state is not None and state["step"] >= train_config.steps and "validation" in state
            and (Path(out_dir) / WEIGHTS_NAME).is_file())


def recorded_result(state: dict, out_dir: Path, device) -> dict:
    """What `train` returned when a finished run ended, from its training state and weights."""
    return {"validation": json.loads(state["validation"]), "sha256": sha256_of(out_dir / WEIGHTS_NAME),
            "steps": state["step"], "finished": True, "history": json.loads(state["history"]), "device": str(device),
            "machine": state["machine"]}


def learning_rate(train: TrainConfig, step: int) -> float:
    """Linear warm-up over 50 steps, then cosine decay to 5 % of the peak."""
    if step < 50:
        return train.learning_rate * (step + 1) / 50
    progress = (step - 50) / max(1, train.steps - 50)
    return train.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(sources: list, model_config: ModelConfig, train_config: TrainConfig, out_dir, device="auto",
          progress: bool = True, log=print, time_limit_s: Optional[float] = None) -> dict:
    """Train (or resume) in `out_dir`; returns the final validation metrics and writes the exported weights. A run
    that has trained its steps returns its recorded result at once (nothing synthesised, validated or written).

    With `time_limit_s`, training stops after the first step that ends past that many seconds of this call, with the
    checkpoint saved there (rerunning resumes)."""
    train_config, out_dir = with_fingerprints(train_config), Path(out_dir)
    # given sources, the CTs were read: compared by the fingerprints in `train_config` (none given: by path)
    stored = check_before_loading_sources(out_dir, model_config, train_config, cts_read=bool(sources))
    device = resolve_device(device)
    if is_finished(stored, out_dir, train_config):
        log(f"{out_dir}: already finished at step {stored['step']}; its recorded result, nothing trained again (a "
            "larger --steps trains on)")
        return recorded_result(stored, out_dir, device)
    train_config = with_recorded_commands(train_config, stored)
    if train_config.loader_workers > 0:
        if train_config.loader_device == "cuda" and not torch.cuda.is_available():  # refused before any work
            raise InputError("--loader-device cuda: no CUDA GPU is available here; leave it out to synthesise on the "
                             "CPU")
    if not sources:
        raise InputError("no training data: no source to draw training pairs from (give CTs, phantoms or a sources "
                         "file)")
    for source in sources:
        check_source_extent(source, train_config.out_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, optimizer, step, history = _starting_point(model_config, train_config, stored, device, log)
    if train_config.loader_workers <= 0:  # synthesis here: the sources where the samples are made
        sources = [source.to(device) for source in sources]
    validation = sample_batch(sources, model_config, train_config, 0, train_config.validation_samples, device,
                              base_seed=VALIDATION_SEED + train_config.seed)
    bar = tqdm(total=train_config.steps, initial=step, disable=not progress or None, desc="training",
               unit="step")  # None: no bar when stderr is not a terminal (logs get the validation lines)
    started = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)  # resumed: time keeps counting
    deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
    metrics = sha = None
    model.train()
    for inputs, targets in training_batches(sources, model_config, train_config, step, device):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(train_config, step)
        loss = training_step(model, optimizer, inputs, targets)
        step += 1
        bar.update(1)
        if not bar.disable:  # reading the loss waits for the device: only when someone watches
            bar.set_postfix(loss=f"{loss.item():.3f}")
        out_of_time = deadline is not None and time.perf_counter() >= deadline and step < train_config.steps
        if step % train_config.validate_every == 0 or step == train_config.steps or out_of_time:
            metrics = validate(model, validation)
            history.append({"step": step, "loss": loss.item(), "accuracy": metrics["accuracy"],
                            "average_f1": metrics["average_f1"],
                            "seconds": time.perf_counter() - started})
            log(f"step {step}: loss {loss.item():.3f} val accuracy {metrics['accuracy']:.3f} "
                f"avg F1 {metrics['average_f1']:.3f}")
            sha = save_checkpoint(out_dir, model, optimizer, step, model_config, train_config, history, metrics)
        if out_of_time:
            log(f"time limit reached at step {step} of {train_config.steps}: checkpoint saved; the same command "
                "resumes")
            break
    bar.close()
    if metrics is None:  # no step here: a finished run that recorded no result (older) or lost its weights
        metrics = validate(model, validation)
        sha = export_weights(model, out_dir / WEIGHTS_NAME, extra={"steps": step})
    return {"validation": metrics, "sha256": sha, "steps": step, "finished": step >= train_config.steps,
            "history": history, "device": str(device), "machine": machine_description()}


def _starting_point(model_config: ModelConfig, train_config: TrainConfig, state: Optional[dict], device,
                    log) -> tuple:
    """The model and optimiser to train, with the step and validation history they are at: resumed from the run's
    training state (as already read, on the CPU; copied to the device here), started from --init-weights, or new."""
    torch.manual_seed(train_config.seed)
    model = MisalignmentNet(model_config).to(device, memory_format=CONVOLUTION_LAYOUT)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.learning_rate,
                                  weight_decay=train_config.weight_decay)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        log(f"resuming from step {state['step']}")
        return model, optimizer, state["step"], json.loads(state["history"])
    if train_config.init_weights:
        start_from_weights(model, train_config.init_weights)
        log(f"fine-tuning from {train_config.init_weights}")
        warn_if_same_tiles(train_config)
    return model, optimizer, 0, []
