"""Tiny Stage 1 models and batches shared by the LM tests."""

from __future__ import annotations

import pytest
import torch

from speech.llm import SpeakerExtractor, SpeechLM, build_qwen2
from speech.tokenizer.fsq import FSQLinear

SPEECH_VOCAB = 50  # a small speech vocabulary keeps the tests fast; eos = 50, fill = 52
FSQ_LEVELS = [5, 5, 2]  # make_lm(fsq_levels=FSQ_LEVELS): the same 50 ids through their FSQ digits
TEXT_VOCAB = 40


def tiny_backbone_config(**over) -> dict:
    cfg = {
        "vocab_size": TEXT_VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
        "initializer_range": 0.2,
    }  # a larger init than 0.02, so positions and attention visibly matter
    cfg.update(over)
    return cfg


def make_lm(seed: int = 0, head_scale: float = 1.0, **kwargs) -> SpeechLM:
    torch.manual_seed(seed)
    speaker = SpeakerExtractor(
        sample_rate=16000,
        n_fft=256,
        hop_length=64,
        n_mels=20,
        channels=16,
        conv_layers=1,
        attention_layers=1,
        heads=2,
        ffn_dim=32,
        dim=12,
    )
    model = SpeechLM(build_qwen2(config=tiny_backbone_config()), speaker, speech_token_size=SPEECH_VOCAB, **kwargs)
    with torch.no_grad():  # head_scale > 1 sharpens logits, so greedy argmax never hinges on rounding
        head = model.speech_head
        if isinstance(head, FSQLinear):  # fsq_levels: its digit rows start at zero; make them count here
            head.digits.digits.weight.normal_(std=0.2)
            head.digits.digits.weight.mul_(head_scale)
            head = head.linear
        head.weight.mul_(head_scale)
    return model.eval()


def make_batch(text_len, speech_len, ref_len, seed: int = 1, garbage: bool = True) -> dict:
    """A padded batch; padding holds random (in-range) ids and noise, which must never matter."""
    g = torch.Generator().manual_seed(seed)
    b = len(text_len)
    text_len, speech_len, ref_len = (torch.tensor(x) for x in (text_len, speech_len, ref_len))
    text = torch.randint(0, TEXT_VOCAB, (b, int(text_len.max())), generator=g)
    speech = torch.randint(0, SPEECH_VOCAB, (b, int(speech_len.max())), generator=g)
    ref = 0.1 * torch.randn(b, int(ref_len.max()), generator=g)
    if not garbage:
        for i in range(b):
            text[i, text_len[i] :] = 0
            speech[i, speech_len[i] :] = 0
            ref[i, ref_len[i] :] = 0
    return {
        "text_token": text,
        "text_token_len": text_len,
        "speech_token": speech,
        "speech_token_len": speech_len,
        "ref_audio": ref,
        "ref_audio_len": ref_len,
    }


@pytest.fixture
def lm() -> SpeechLM:
    return make_lm()
