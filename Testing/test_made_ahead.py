"""Items made in a thread ahead of their loop: the same items in order, errors where they happened, an early stop
that ends the thread; training with a synthesis thread gives the same weights."""
import threading
import time
from dataclasses import replace

import pytest
import torch

from RegistrationMisalignmentLib.checkpoint import load_model
from RegistrationMisalignmentLib.made_ahead import made_ahead
from RegistrationMisalignmentLib.model import ModelConfig
from RegistrationMisalignmentLib.sources import source_from_image
from RegistrationMisalignmentLib.training import TrainConfig, train, uses_synthesis_thread


def test_items_come_in_order_made_by_another_thread_at_most_ahead_items_early():
    made, used = [], []

    def make(index):
        made.append((index, threading.current_thread()))
        return index * 10

    for item in made_ahead(make, range(6), ahead=2):
        time.sleep(0.02)  # the thread fills the queue meanwhile
        used.append(item)
        assert len(made) <= len(used) + 3  # two waiting in the queue, one being made
    assert used == [0, 10, 20, 30, 40, 50]
    assert [index for index, _ in made] == list(range(6))
    assert all(thread is not threading.main_thread() for _, thread in made)


def test_an_error_is_raised_in_the_loop_in_place_of_its_item():
    def make(index):
        if index == 3:
            raise ValueError("source 3 is unreadable")
        return index

    used = []
    with pytest.raises(ValueError, match="source 3 is unreadable"):
        for item in made_ahead(make, range(6), ahead=2):
            used.append(item)
    assert used == [0, 1, 2]


def test_stopping_the_loop_early_ends_the_thread():
    made = []
    before = threading.active_count()
    items = made_ahead(made.append, range(1000), ahead=2)
    next(items)
    items.close()
    assert threading.active_count() == before and len(made) < 10


def test_training_with_a_synthesis_thread_gives_the_same_weights(small_phantom, tmp_path, monkeypatch):
    import RegistrationMisalignmentLib.training as training
    threads_started = []
    monkeypatch.setattr(training, "made_ahead", lambda *args: threads_started.append(args) or made_ahead(*args))
    sources = [source_from_image("phantom-small", *small_phantom)]
    model = ModelConfig(features=4, hidden=4)
    config = TrainConfig(steps=3, batch_size=2, out_size=8, validate_every=3, validation_samples=2)
    assert not uses_synthesis_thread(config, torch.device("cpu"))
    assert uses_synthesis_thread(config, torch.device("cuda"))  # the default on a GPU
    for name, thread in (("plain", False), ("thread", True)):
        train(sources, model, replace(config, synthesis_thread=thread), tmp_path / name, device="cpu", progress=False,
              log=lambda m: None)
    assert len(threads_started) == 1  # only the run that asked for it
    a = load_model(tmp_path / "plain" / "weights.safetensors").state_dict()
    b = load_model(tmp_path / "thread" / "weights.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
