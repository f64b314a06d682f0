"""OwnFSQTokenizer: loading trained checkpoints, batched tokenizing, and tools/extract_fsq.py
output interchangeable with the s3tokenizer backend's (file format, dtype, id range, 25 Hz)."""
from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

from speech.audio import load_audio, save_audio
from speech.config import resolve_config_text
from speech.dataset import read_index
from speech.tokenizer import SpeechTokenizer, SpeechTokenizerError, tokenizer_class
from speech.tokenizer.own import OwnFSQTokenizer, model_config_text
from tests.dataset.synth import write_corpus, write_index
from tools.extract_fsq import main as extract

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny" / "fsq.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny config's model (random weights) saved the way train.py saves a checkpoint."""
    text = resolve_config_text(TINY)
    model = load_hyperpyyaml(io.StringIO(model_config_text(text)))["fsq"].eval()
    folder = tmp_path_factory.mktemp("fsq_run")
    ckpt = folder / "step_000000010.pt"
    torch.save({"model": model.state_dict(), "config": text, "step": 10}, ckpt)
    (folder / "config.yaml").write_text(text)
    return model, ckpt


def _wavs(seconds: list[float], sr: int = 24000) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [0.2 * torch.randn(int(s * sr), generator=g) for s in seconds]


def test_model_config_text_keeps_only_the_model_and_what_it_refers_to():
    text = model_config_text(resolve_config_text(TINY))
    tree = load_hyperpyyaml(io.StringIO(text))
    assert set(tree) == {"fsq", "text_tokenizer"}  # data_pipeline, optim, scheduler, train_conf dropped
    assert tree["fsq"].vocab_size == tree["text_tokenizer"].vocab_size
    with pytest.raises(SpeechTokenizerError, match="no 'llm' entry"):
        model_config_text(resolve_config_text(TINY), "llm")


def test_backend_is_registered_and_loads_from_a_trainer_checkpoint(trained):
    model, ckpt = trained
    tok = tokenizer_class("own").from_checkpoint(ckpt)  # config read from inside the checkpoint
    assert isinstance(tok, SpeechTokenizer) and isinstance(tok, OwnFSQTokenizer)
    assert (tok.sample_rate, tok.token_rate, tok.codebook_size) == (24000, 25, 6561)
    wavs = _wavs([1.0, 0.37])
    ids = tok.tokenize(wavs)
    ref, ref_len = model.tokenize(torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), torch.tensor([24000, 8880]))
    for i, n in enumerate(ref_len.tolist()):
        assert torch.equal(ids[i], ref[i, :n])


@pytest.mark.parametrize("variant", ["config_beside", "explicit_config", "ddp_state_dict", "safetensors", "kwargs"])
def test_other_checkpoint_forms_give_the_same_tokens(trained, tmp_path, variant):
    model, ckpt = trained
    state = model.state_dict()
    config = None
    if variant == "config_beside":  # an older checkpoint without the config inside
        path = ckpt.parent / "plain.pt"
        torch.save({"model": state}, path)
    elif variant == "explicit_config":
        path, config = ckpt, TINY
    elif variant == "ddp_state_dict":
        path = tmp_path / "w.pt"
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
        config = TINY
    elif variant == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        config = TINY
    else:
        path = tmp_path / "w.pt"
        torch.save(state, path)
        # no mel_weight: the tiny config's mel head is a training loss, its weights are not needed
        config = dict(vocab_size=model.vocab_size, dim=128, heads=4, ffn_dim=256, pre_blocks=2, post_blocks=2,
                      conv_kernel=15, inter_ctc_weight=0.5)
        assert model.mel_head is not None
    wav = _wavs([0.8])
    expected = OwnFSQTokenizer(model).tokenize(wav)[0]
    assert torch.equal(OwnFSQTokenizer.from_checkpoint(path, config).tokenize(wav)[0], expected)


def test_weights_trained_without_the_mel_head_load_into_the_tiny_config(trained, tmp_path):
    """The mel head is a training loss: a checkpoint without it gives the same tokens under a config with it."""
    model, _ = trained
    assert model.mel_head is not None
    path = tmp_path / "no_mel.pt"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("mel_head.")}, path)
    wav = _wavs([0.8])
    expected = OwnFSQTokenizer(model).tokenize(wav)[0]
    assert torch.equal(OwnFSQTokenizer.from_checkpoint(path, TINY).tokenize(wav)[0], expected)


def test_tokens_are_int64_at_25_hz_and_batched_equals_one_by_one(trained):
    _, ckpt = trained
    tok = OwnFSQTokenizer.from_checkpoint(ckpt)
    seconds = [2.0, 0.04, 1.234, 0.5, 3.01]
    wavs = _wavs(seconds)
    batched = tok.tokenize(wavs)
    for wav, ids in zip(wavs, batched):
        assert ids.dtype == torch.int64 and ids.dim() == 1 and ids.device.type == "cpu"
        assert len(ids) == math.ceil(Fraction(wav.numel(), 24000) * 25) == tok.token_length(wav.numel())
        assert 0 <= int(ids.min()) and int(ids.max()) <= 6560
        assert torch.equal(tok.tokenize([wav])[0], ids)
    assert tok.tokenize([]) == []
    assert tok.tokenize([torch.zeros(0)])[0].numel() == 0
    with pytest.raises(ValueError, match="1-D"):
        tok.tokenize([torch.zeros(2, 100)])


def test_load_errors_are_one_line(trained, tmp_path):
    model, ckpt = trained
    with pytest.raises(SpeechTokenizerError, match="not found"):
        OwnFSQTokenizer.from_checkpoint(tmp_path / "missing.pt")
    lone = tmp_path / "lone.pt"
    torch.save(model.state_dict(), lone)
    with pytest.raises(SpeechTokenizerError, match="stores no config"):
        OwnFSQTokenizer.from_checkpoint(lone)
    with pytest.raises(SpeechTokenizerError, match="does not match"):
        OwnFSQTokenizer.from_checkpoint(lone, dict(vocab_size=model.vocab_size, dim=64, heads=2, ffn_dim=128))
    partial = {k: v for k, v in model.state_dict().items() if not k.startswith("post.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(SpeechTokenizerError, match="missing key"):
        OwnFSQTokenizer.from_checkpoint(tmp_path / "partial.pt", TINY)
    torch.save({**model.state_dict(), "bogus.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(SpeechTokenizerError, match=r"1 unexpected \(e.g. \['bogus.weight'\]\)"):
        OwnFSQTokenizer.from_checkpoint(tmp_path / "extra.pt", TINY)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpeechTokenizerError, match="cannot read"):
        OwnFSQTokenizer.from_checkpoint(tmp_path / "junk.pt", TINY)


@pytest.fixture
def s3_weights(tmp_path):
    torch.manual_seed(0)
    model = S3TokenizerV2("speech_tokenizer_v2_25hz", ModelConfig(n_audio_state=64, n_audio_head=1, n_audio_layer=1))
    path = tmp_path / "tiny_s3.pt"
    torch.save(model.eval().state_dict(), path)
    return path


def test_extract_fsq_own_writes_files_interchangeable_with_the_s3_backend(trained, s3_weights, tmp_path, capsys):
    _, ckpt = trained
    entries = write_corpus(tmp_path / "wavs", {"a": 3, "b": 2}, seconds=(0.3, 2.2))
    for e in entries:  # constant signals tokenize trivially; give the files some content
        n = round(e["duration"] * 24000)
        save_audio(e["wav"], 0.3 * torch.sin(torch.arange(n) * (0.01 + 0.003 * e["k"])), 24000)
    index = write_index(tmp_path / "index.jsonl", entries)
    common = ["--index", str(index), "--num_workers", "0", "--batch_seconds", "3"]
    assert extract(common + ["--tokenizer", "own", "--checkpoint", str(ckpt), "--out_dir", str(tmp_path / "own")]) == 0
    s3_args = ["--tokenizer", "s3", "--checkpoint", str(s3_weights), "--out_dir", str(tmp_path / "s3")]
    assert extract(common + s3_args) == 0
    assert capsys.readouterr().out.count("wrote 5 token files") == 2
    own_tok = OwnFSQTokenizer.from_checkpoint(ckpt)
    for e in read_index(index):
        own = torch.load(tmp_path / "own" / e["spk"] / f"{e['utt']}_fsq.pt", weights_only=True)
        s3 = torch.load(tmp_path / "s3" / e["spk"] / f"{e['utt']}_fsq.pt", weights_only=True)
        # Same file format: a 1-D integer tensor of the same dtype, ids in 0..6560, 25 Hz.
        assert own.dim() == s3.dim() == 1 and own.dtype == s3.dtype
        assert 0 <= int(own.min()) and int(own.max()) <= 6560
        wav, _ = load_audio(e["wav"], 24000)
        assert len(own) == math.ceil(Fraction(wav.numel(), 24000) * 25) and abs(len(own) - len(s3)) <= 1
        # ...holding exactly what the tokenizer computes for the utterance alone.
        assert torch.equal(own.long(), own_tok.tokenize([wav])[0])
