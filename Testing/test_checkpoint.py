"""Weights files: round trip, sha256 against the model card, corrupt and code-executing files refused."""
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from RegistrationMisalignmentLib.checkpoint import card_path, export_weights, load_model, markdown_card_path
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.model import MisalignmentNet, ModelConfig


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(1)
    model = MisalignmentNet(ModelConfig(architecture="multires_cnn", features=4, hidden=4))
    path = tmp_path / "model.safetensors"
    sha = export_weights(model, path)
    card_path(path).write_text(json.dumps({"sha256": sha}))
    return model, path


def test_round_trip_restores_configuration_and_weights(saved):
    model, path = saved
    loaded = load_model(path)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_calibration_round_trips_and_old_files_without_it_load_uncalibrated(saved, tmp_path):
    model, _ = saved
    model.config.temperature, model.config.class_bias = 0.8, (0.0, -0.25, 0.5)
    export_weights(model, tmp_path / "calibrated.safetensors")
    loaded = load_model(tmp_path / "calibrated.safetensors").config
    assert (loaded.temperature, loaded.class_bias) == (0.8, (0.0, -0.25, 0.5))
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("temperature", "class_bias")}
    save_file(model.state_dict(), str(tmp_path / "old.safetensors"), metadata={"config": json.dumps(config)})
    old = load_model(tmp_path / "old.safetensors").config
    assert (old.temperature, old.class_bias) == (1.0, (0.0, 0.0, 0.0))


def test_the_same_weights_written_twice_are_the_same_bytes(tmp_path):
    model = MisalignmentNet(ModelConfig(features=4, hidden=4, temperature=0.8, class_bias=(0.0, 0.1, -0.2)))
    extra = {"steps": 12, "note": "x", "zeta": [1, 2], "alpha": {"b": 1, "a": 2}}  # several keys: any order
    first = export_weights(model, tmp_path / "a.safetensors", extra)
    second = export_weights(model, tmp_path / "b.safetensors", dict(reversed(list(extra.items()))))
    assert first == second
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = load_model(tmp_path / "b.safetensors")
    assert loaded.config.class_bias == (0.0, 0.1, -0.2)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_tampered_weights_fail_the_sha256_check(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sha256 does not match"):
        load_model(path)


def test_missing_truncated_and_foreign_files_give_clear_errors(saved, tmp_path):
    _, path = saved
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "absent.safetensors")
    card_path(path).unlink()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="not a valid weights file"):
        load_model(path)


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_that_would_run_code_is_refused_and_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"state": _Exploit()}))
    with pytest.raises(InputError, match="not a valid weights file"):
        load_model(evil)
    legacy = tmp_path / "evil.pt"
    torch.save({"state": _Exploit()}, legacy)
    with pytest.raises(InputError, match="not a valid weights file"):
        load_model(legacy)
    assert not (tmp_path / "PWNED").exists()


def test_weights_whose_names_share_the_part_before_a_dot_have_their_own_cards(tmp_path):
    first, second = tmp_path / "mine.v1.safetensors", tmp_path / "mine.v2.safetensors"
    for seed, path in ((1, first), (2, second)):
        torch.manual_seed(seed)
        sha = export_weights(MisalignmentNet(ModelConfig(features=4, hidden=4)), path)
        card_path(path).write_text(json.dumps({"weights": path.name, "sha256": sha}))
    assert (card_path(first).name, markdown_card_path(first).name) == ("mine.v1.card.json", "mine.v1.md")
    assert card_path(tmp_path / "misalignment_multires.safetensors").name == "misalignment_multires.card.json"
    assert load_model(first) and load_model(second)  # each checked against its own card


def test_a_card_named_up_to_the_first_dot_by_0_5_1_is_still_checked_when_it_names_the_weights(tmp_path):
    path = tmp_path / "mine.v1.safetensors"
    export_weights(MisalignmentNet(ModelConfig(features=4, hidden=4)), path)
    legacy = tmp_path / "mine.card.json"
    legacy.write_text(json.dumps({"weights": "mine.v2.safetensors", "sha256": "0" * 64}))
    assert load_model(path)  # another file's card
    legacy.write_text(json.dumps({"weights": path.name, "sha256": "0" * 64}))
    with pytest.raises(InputError, match="sha256 does not match"):
        load_model(path)


def test_a_weights_folder_is_refused_naming_the_weights_file_in_it(tmp_path):
    with pytest.raises(InputError, match=r"it is a folder: give the weights file in it \(.*weights.safetensors"):
        load_model(tmp_path)
