"""dac_vae.safe_config: a config that came with a model file builds only allow-listed classes.

Each refusal is one line naming the tag, the target and the YAML key, raised before anything is
imported or built (a marker file the payload would create never appears); ``trust=True`` builds
anything, with a warning.
"""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from dac_vae.safe_config import UntrustedConfigError, build_config, check_config_text, check_targets


def payloads(marker) -> dict[str, tuple[str, str, str]]:
    """name -> (config text, tag expected in the message, key expected in the message)."""
    return {
        "apply_os_system": (f'a: 1\nllm:\n  backbone: !apply:os.system ["touch {marker}"]\n', "!apply:os.system",
                            "llm.backbone"),
        "new_popen": (f'x: !new:subprocess.Popen [["touch", "{marker}"]]\n', "!new:subprocess.Popen", "x"),
        "name_eval": ("x: !name:builtins.eval\n", "!name:builtins.eval", "x"),
        "new_path_touch": (f"x: !new:pathlib.Path.touch [{marker}]\n", "!new:pathlib.Path.touch", "x"),
        "module": ("x: !module:os\n", "!module:os", "x"),
        "python_tag": (f'x: !!python/object/apply:os.system ["touch {marker}"]\n',
                       "python/object/apply:os.system", "x"),
        "tag_directive": (f'%TAG !x! tag:yaml.org,2002:python/object/apply:\n---\nc: !x!os.system ["touch {marker}"]\n',
                          "python/object/apply:os.system", "c"),
        "tuple": (f't: (!!python/object/apply:os.system ["touch {marker}"], 1)\n', "python/object/apply", "t[0]"),
        "quoted_tuple": (f't: "(!!python/object/apply:os.system [touch {marker}], 1)"\n', "python/object/apply",
                         "t[0]"),
        "include": ("x: !include:other.yaml\n", "!include:other.yaml", "x"),
        "applyref": (f'x: !applyref:os.system ["touch {marker}"]\n', "!applyref:os.system", "x"),
        "private_ref": ("a: 1\nb: !ref <a.__class__>\n", "!ref <a.__class__>", "b"),
        "power": ("a: 9\nb: !ref <a> ** <a> ** <a> ** <a>\n", "!ref <a> ** <a>", "b"),
        "getattr_private": ("x: !apply:getattr [1, __class__]\n", "!apply:getattr", "x"),
        "tagged_key": (f'? !apply:os.system ["touch {marker}"]\n: 3\n', "!apply:os.system", "<key 0>"),
        "in_list": ("p:\n  - !new:torch.nn.Linear {in_features: 1, out_features: 1}\n  - !name:os.system\n",
                    "!name:os.system", "p[1]"),
        "unknown_prefix": ("x: !new:torchaudio.transforms.MelSpectrogram {}\n",
                           "!new:torchaudio.transforms.MelSpectrogram", "x"),
        "torch_outside_nn": ("x: !name:torch.load\n", "!name:torch.load", "x"),
    }


@pytest.mark.parametrize("name", list(payloads("M")))
def test_refused_with_one_line_before_anything_runs(name, tmp_path):
    marker = tmp_path / "marker"
    text, tag, key = payloads(marker)[name]
    with pytest.raises(UntrustedConfigError) as info:
        build_config(text, source="ckpt.yaml")
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith("ckpt.yaml: ")
    assert tag in message and f"key '{key}'" in message and "--trust_config" in message, message
    assert not marker.exists()


def test_refused_config_imports_nothing(tmp_path):
    """The tag check runs on the node tree: a refused target's module is never imported (and
    dac_vae, codec loading included, never imports speech)."""
    code = (
        "import sys\nfrom dac_vae.safe_config import build_config, UntrustedConfigError\n"
        "try:\n    build_config('x: !new:xml.dom.minidom.Document {}\\n')\nexcept UntrustedConfigError:\n    pass\n"
        "build_config('x: !new:torch.nn.Linear {in_features: 1, out_features: 1}\\n')\n"
        "print('xml.dom.minidom' in sys.modules, any(m.split('.')[0] == 'speech' for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize("target", [
    "dac_vae.checkpoint.Path",  # pathlib.Path, merely imported by an allowed module
    "dac_vae.safe_config.pydoc.locate",  # a module attribute of an allowed module, then a function of it
    "torch.nn.modules.module.torch.load",
])
def test_allowed_prefix_aliasing_something_else_is_refused(target):
    with pytest.raises(UntrustedConfigError, match=rf"refused '!name:{target}' at key 'x'"):
        check_targets(f"x: !name:{target}\n", "c.yaml")


def test_allowed_config_builds_with_references_tuples_and_attributes():
    text = (
        "dim: 3\n"
        "layer: !new:torch.nn.Linear {in_features: !ref <dim>, out_features: 2}\n"
        "width: !ref <layer.in_features>\n"  # hyperpyyaml writes this as !apply:getattr
        "shape: (1, 2)\n"
        "copy: !copy <dim>\n"
        "optim: !name:torch.optim.AdamW {lr: 0.1}\n"
        "codec_layer: !name:dac_vae.layers\n"
    )
    with pytest.raises(UntrustedConfigError, match="!name: must name a class or function"):
        build_config(text)  # a module, even an allowed one, is not a class or function
    built = build_config(text.replace("codec_layer: !name:dac_vae.layers\n", ""), {"dim": 5})
    assert isinstance(built["layer"], torch.nn.Linear) and built["layer"].in_features == 5
    assert built["width"] == 5 and built["shape"] == (1, 2) and built["copy"] == 5


def test_project_factories_may_be_applied_and_nothing_else():
    assert check_config_text("b: !apply:speech.llm.model.build_qwen2 {config: {}}\n") == [
        ("apply", "speech.llm.model.build_qwen2", "b")]
    with pytest.raises(UntrustedConfigError, match="may be applied"):
        check_config_text("b: !apply:speech.trainer.checkpoint.atomic_write_text [x, y]\n")


def test_trust_builds_anything_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="dac_vae.safe_config"):
        built = build_config("p: !apply:os.path.join [a, b]\n", trust=True, source="mine.yaml")
    assert built["p"] == "a/b"
    assert any("mine.yaml" in r.message and "--trust_config" in r.message for r in caplog.records)


def test_not_yaml_is_one_line():
    with pytest.raises(UntrustedConfigError, match=r"^c.yaml: not valid YAML"):
        check_config_text("a: [1\n", "c.yaml")


def test_the_payloads_are_live_when_trusted(tmp_path):
    """What the refusals above prevent: the same text, trusted, runs the command."""
    marker = tmp_path / "marker"
    build_config(payloads(marker)["apply_os_system"][0], trust=True)
    assert marker.exists()
