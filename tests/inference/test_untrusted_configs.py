"""A checkpoint cannot run code: every loader refuses a config that came with a model file (stored
inside the checkpoint, or ``config.yaml`` / ``config.unresolved.yaml`` beside it) when it names
code outside the allow-list, in one line, before the payload runs; ``--trust_config`` loads a
benign non-allow-listed config with a warning. Also: a top-level override at load time reaches the
model through the unresolved text the trainer saves.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from dac_vae import extract_dac_latents
from dac_vae import inference as dac_inference
from dac_vae.checkpoint import CodecLoadError, load_codec
from dac_vae.safe_config import UntrustedConfigError
from speech.flow import evaluate as flow_evaluate
from speech.inference import InferenceError, load_model
from speech.inference import main as tts_main
from speech.tokenizer.own import OwnFSQTokenizer
from speech.trainer.checkpoint import config_beside
from tools import extract_fsq

from .conftest import REPO, save_like_trainer

MODEL_KEY = {"llm": "llm", "flow": "flow", "codec": "dac_vae", "fsq": "fsq"}
PAYLOADS = {  # name -> (YAML value, the tag the refusal names)
    "apply": ('!apply:os.system ["touch {marker}"]', "!apply:os.system"),
    "new": ('!new:subprocess.Popen [["touch", "{marker}"]]', "!new:subprocess.Popen"),
    "module": ("!module:os", "!module:os"),
    "name": ("!name:builtins.eval", "!name:builtins.eval"),
}


def inject(text: str, key: str, line: str) -> str:
    """``text`` with ``evil: <line>`` added as the first argument of the ``key:`` model."""
    match = re.search(rf"^{key}: !new:[^\n]*\n(\s+)", text, flags=re.MULTILINE)
    assert match, f"no {key}: model in the config"
    return text[: match.end(1)] + f"evil: {line}\n" + match.group(1) + text[match.end(1):]


def plant(system: dict, which: str, variant: str, folder: Path, line: str, where: str | None = None) -> Path:
    """A copy of the ``which`` checkpoint whose config carries ``line``: stored inside it, in a
    ``config.yaml`` beside it, or in a ``config.unresolved.yaml`` beside a clean ``config.yaml``."""
    original = system[which]
    ckpt = torch.load(original, weights_only=True)
    folder.mkdir(parents=True)
    key = MODEL_KEY[which]
    resolved = (original.parent / "config.yaml").read_text()
    unresolved = (original.parent / "config.unresolved.yaml").read_text()
    poison = (lambda t: inject(t, key, line)) if where is None else (lambda t: t + f"{where}: {line}\n")
    if variant == "stored":
        ckpt["config"], ckpt["config_unresolved"] = poison(resolved), poison(unresolved)
    else:
        ckpt.pop("config"), ckpt.pop("config_unresolved")
        if variant == "beside":
            (folder / "config.yaml").write_text(poison(resolved))
        else:
            (folder / "config.yaml").write_text(resolved)
            (folder / "config.unresolved.yaml").write_text(poison(unresolved))
    path = folder / "final.pt"
    torch.save(ckpt, path)
    return path


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# Each loader: (model it loads, variants it reads) -> a function(system, ckpt, tmp, capsys, trust) -> message.
def _library(which: str):
    def load(system, ckpt, tmp, capsys, trust=False):
        try:
            if which in ("llm", "flow"):
                unused = {"latent_stats": None, "speaker_checkpoint": None}
                over = {**unused, "flow": unused} if which == "flow" else {}  # as the Synthesizer does
                load_model(ckpt, which, overrides=over, trust_config=trust)
            elif which == "fsq":
                OwnFSQTokenizer.from_checkpoint(ckpt, trust_config=trust)
            else:
                from speech.inference import _config_file

                with _config_file(ckpt, None, "codec") as path:
                    load_codec(path, ckpt, trust_config=trust)
        except (InferenceError, UntrustedConfigError, CodecLoadError) as exc:
            return "error: " + str(exc)
        return None

    return load


def _tts_cli(which: str):
    def load(system, ckpt, tmp, capsys, trust=False):
        models = {k: str(system[k]) for k in ("llm", "flow", "codec")}
        models[which] = str(ckpt)
        args = ["--llm", models["llm"], "--flow", models["flow"], "--codec", models["codec"], "--device", "cpu",
                "--quiet", "--max_len_ratio", "2", "--n_steps", "2", "--text", "Hi there.",
                "--prompt_wav", str(system["prompt"]), "--out", str(tmp / "out.wav")] + (["--trust_config"] * trust)
        code = tts_main(args)
        err = capsys.readouterr().err
        return None if code == 0 else (code, one_line(err))

    return load


def _codec_cli(module):
    def load(system, ckpt, tmp, capsys, trust=False):
        common = ["--config", str(config_beside(ckpt.parent)), "--checkpoint", str(ckpt),
                  "--output_dir", str(tmp / "o"), "--device", "cpu", "--quiet"] + (["--trust_config"] * trust)
        if module is dac_inference:
            code = module.main(["roundtrip", *common, "--inputs", str(system["prompt"])])
        else:
            code = module.main([*common, "--index", str(system["index"]), "--num_workers", "0"])
        err = capsys.readouterr().err
        return None if code == 0 else (code, one_line(err))

    return load


def _extract_fsq(system, ckpt, tmp, capsys, trust=False):
    args = ["--tokenizer", "own", "--checkpoint", str(ckpt), "--index", str(system["index"]), "--out_dir",
            str(tmp / "tok"), "--num_workers", "0", "--device", "cpu"] + (["--trust_config"] * trust)
    code = extract_fsq.main(args)
    err = capsys.readouterr().err
    return None if code == 0 else (code, one_line(err.strip().splitlines()[-1]))


def _flow_evaluate(system, ckpt, tmp, capsys, trust=False):
    code = flow_evaluate.main(["--checkpoint", str(ckpt), "--data", str(tmp / "none.list"), "--device", "cpu"])
    err = capsys.readouterr().err
    return None if code == 0 else (code, one_line(err))


LOADERS = {
    "llm": ("llm", _library("llm")),
    "flow": ("flow", _library("flow")),
    "codec": ("codec", _library("codec")),
    "fsq": ("fsq", _library("fsq")),
    "tts_cli_llm": ("llm", _tts_cli("llm")),
    "tts_cli_flow": ("flow", _tts_cli("flow")),
    "tts_cli_codec": ("codec", _tts_cli("codec")),
    "dac_vae_inference_cli": ("codec", _codec_cli(dac_inference)),
    "extract_dac_latents_cli": ("codec", _codec_cli(extract_dac_latents)),
    "extract_fsq_cli": ("fsq", _extract_fsq),
    "flow_evaluate_cli": ("flow", _flow_evaluate),
}
CLI_NEEDS_CONFIG = {"dac_vae_inference_cli", "extract_dac_latents_cli"}  # --config is required: no stored variant
CASES = [
    (loader, variant, payload)
    for loader in LOADERS
    for variant in ("stored", "beside", "unresolved_beside")
    for payload in {"stored": PAYLOADS, "beside": ["apply", "new", "module"], "unresolved_beside": ["apply"]}[variant]
    if not (variant == "stored" and loader in CLI_NEEDS_CONFIG)
]


@pytest.fixture(scope="module")
def system(tiny_system, tmp_path_factory):
    """The tiny system plus a one-line index of a corpus clip (for the extraction CLIs)."""
    index = tmp_path_factory.mktemp("untrusted") / "index.jsonl"
    index.write_text(json.dumps({"utt": "slt_000", "spk": "slt", "wav": str(tiny_system["prompt"]),
                                 "text": "x", "duration": 3.0}) + "\n")
    return {**tiny_system, "index": index}


@pytest.mark.parametrize("loader, variant, payload", CASES, ids=["-".join(c) for c in CASES])
def test_every_loader_refuses_a_config_naming_code_outside_the_allow_list(system, tmp_path, capsys, loader,
                                                                           variant, payload):
    which, load = LOADERS[loader]
    marker = tmp_path / "marker"
    value, tag = PAYLOADS[payload]
    ckpt = plant(system, which, variant, tmp_path / "model", value.format(marker=marker))
    result = load(system, ckpt, tmp_path, capsys)
    assert result is not None, "loaded"
    code, message = result if isinstance(result, tuple) else (2, result)
    assert code == 2 and len(message.splitlines()) == 1, message
    assert f"refused '{tag}" in message and f"key '{MODEL_KEY[which]}.evil'" in message, message
    assert "--trust_config" in message
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["llm", "flow", "codec", "fsq", "extract_fsq_cli", "dac_vae_inference_cli",
                                    "tts_cli_codec"])
def test_trust_config_loads_a_benign_config_outside_the_allow_list(system, tmp_path, capsys, caplog, loader):
    which, load = LOADERS[loader]
    ckpt = plant(system, which, "beside", tmp_path / "model", "!apply:os.path.join [a, b]", where="benign")
    assert load(system, ckpt, tmp_path, capsys) is not None  # refused without the opt-in
    with caplog.at_level(logging.WARNING):
        assert load(system, ckpt, tmp_path, capsys, trust=True) is None
    assert any("--trust_config" in r.getMessage() for r in caplog.records)


def test_top_level_override_reaches_the_model_through_the_unresolved_text(tiny_system, tmp_path):
    """The flow trained with a latent statistics file that is gone by now: overriding the top-level
    key alone is enough with the unresolved text (beside the checkpoint, or stored inside it); the
    resolved text of older checkpoints baked the path into the model's own arguments, so there
    only the nested override the loaders still add helps."""
    over = {"latent_stats": None, "speaker_checkpoint": None}
    _, built = load_model(tiny_system["flow"], "flow", overrides=over)  # config.unresolved.yaml beside
    assert built["latent_stats"] is None
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "final.pt").write_bytes(tiny_system["flow"].read_bytes())  # no config beside: the stored text
    load_model(alone / "final.pt", "flow", overrides=over)

    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"mean": [0.0] * 80, "std": [1.0] * 80}))
    old = save_like_trainer(tmp_path / "old", REPO / "configs/tiny/flow.yaml", "flow", {"latent_stats": str(stats)},
                            unresolved=False)
    stats.unlink()
    with pytest.raises(InferenceError, match="stats.json"):
        load_model(old, "flow", overrides=over)
    load_model(old, "flow", overrides={**over, "flow": over})  # the nested override, for old checkpoints
