"""speech.config: hyperpyyaml loading with dotted key=value overrides."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dac_vae.safe_config import UntrustedConfigError

from speech.config import (ConfigError, load_config, load_model_config, parse_overrides, resolve_config_text,
                           unresolved_config_text)

YAML = """
sample_rate: 24000
name: base
train_conf:
  max_epoch: 2
  lr: 0.1
  betas: [0.9, 0.99]
model: !new:torch.nn.Linear
  in_features: 4
  out_features: !ref <train_conf[max_epoch]>
"""


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    return path


def test_parse_overrides_nested_and_typed():
    over = parse_overrides(["a.b=1", "a.c=1e-4", "d=[2, 3]", "e=text", "f=true", "g=null"])
    assert over == {"a": {"b": 1, "c": 1e-4}, "d": [2, 3], "e": "text", "f": True, "g": None}
    assert isinstance(over["a"]["c"], float)


def test_overrides_reach_references(cfg: Path):
    conf = load_config(cfg, ["train_conf.max_epoch=5", "sample_rate=16000", "train_conf.betas=[0.8,0.9]"])
    assert conf["sample_rate"] == 16000
    assert conf["train_conf"] == {"max_epoch": 5, "lr": 0.1, "betas": [0.8, 0.9]}
    assert isinstance(conf["model"], torch.nn.Linear) and conf["model"].out_features == 5


def test_no_overrides_keeps_file_values(cfg: Path):
    conf = load_config(cfg)
    assert conf["train_conf"]["max_epoch"] == 2 and conf["name"] == "base"


def test_resolved_text_rebuilds_the_same_config(cfg: Path, tmp_path: Path):
    text = resolve_config_text(cfg, ["train_conf.lr=0.5"])
    saved = tmp_path / "saved.yaml"
    saved.write_text(text)
    assert load_config(saved)["train_conf"]["lr"] == 0.5


@pytest.mark.parametrize("bad", ["train_conf.max_epochs=3", "nokey=1", "noequals"])
def test_bad_overrides_fail_with_one_line(cfg: Path, bad: str):
    with pytest.raises(ConfigError) as err:
        load_config(cfg, [bad])
    assert "\n" not in str(err.value)


def test_an_empty_mapping_takes_free_form_arguments(tmp_path: Path):
    """``time_sampler_args: {}`` is a slot for arguments the file cannot list: a dict or dotted override
    fills it; keys of a non-empty mapping are still checked."""
    path = tmp_path / "c.yaml"
    path.write_text("args: {}\nfixed: {a: 1}\nused: !ref <args>\n")
    assert load_config(path, ["args={mean: -0.8, std: 0.8}"])["used"] == {"mean": -0.8, "std": 0.8}
    assert load_config(path, ["args.mean=0.5"])["used"] == {"mean": 0.5}
    assert load_config(path)["used"] == {}
    with pytest.raises(ConfigError, match="fixed.b does not match"):
        load_config(path, ["fixed.b=2"])


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_unresolved_text_keeps_references_so_a_load_time_override_reaches_them(cfg: Path, tmp_path: Path):
    """The trainer saves both texts; a top-level override at load time reaches the model only
    through the unresolved one (the resolved one has the training-time value baked in)."""
    resolved = tmp_path / "config.yaml"
    resolved.write_text(resolve_config_text(cfg, ["train_conf.max_epoch=3"]))
    unresolved = tmp_path / "config.unresolved.yaml"
    unresolved.write_text(unresolved_config_text(cfg, ["train_conf.max_epoch=3"]))
    assert "!ref <train_conf[max_epoch]>" in unresolved.read_text()
    assert load_model_config(unresolved)["model"].out_features == 3  # the training-time override is kept
    assert load_model_config(unresolved, ["train_conf.max_epoch=7"])["model"].out_features == 7
    assert load_model_config(resolved, ["train_conf.max_epoch=7"])["model"].out_features == 3


def test_unresolved_text_is_none_for_a_config_with_includes(tmp_path: Path):
    (tmp_path / "part.yaml").write_text("a: 1\n")
    main = tmp_path / "main.yaml"
    main.write_text("part: !include:part.yaml\nb: 2\n")
    assert unresolved_config_text(main, ["b=3"]) is None
    with pytest.raises(ConfigError, match="does not match any key"):
        unresolved_config_text(main, ["c=3"])


def test_model_config_is_allow_listed_and_trust_lifts_it(tmp_path: Path):
    path = tmp_path / "config.yaml"
    marker = tmp_path / "marker"
    model = "model: !new:torch.nn.Linear {in_features: 1, out_features: 1}\n"
    path.write_text(model + f'x: !apply:os.system ["touch {marker}"]\n')
    with pytest.raises(UntrustedConfigError, match=r"refused '!apply:os.system' at key 'x'"):
        load_model_config(path)
    assert not marker.exists()
    path.write_text(model + "x: !apply:os.path.join [a, b]\n")
    assert load_model_config(path, trust_config=True)["x"] == "a/b"
    assert load_config(path)["x"] == "a/b"  # the user's own config (train.py --config) loads as before
