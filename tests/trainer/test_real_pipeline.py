"""The trainer on the project's own data pipeline (speech.dataset.processors) and demo corpus:
a codec-style chain (filter → load_audio → random_crop → shuffle → batch → padding) whose
seeded processors, skip counter and padded batches must all survive an exact resume."""
from __future__ import annotations

import json

import pytest
import soundfile
import torch

from speech.trainer.cli import run

CONFIG = """\
sample_rate: 24000
max_duration: 0.0
codec: !new:tests.trainer.toy.ToyCodec
data_pipeline:
  - !name:speech.dataset.processors.filter_items
    max_duration: !ref <max_duration>
  - !name:speech.dataset.processors.load_audio
    sample_rate: !ref <sample_rate>
  - !name:speech.dataset.processors.random_crop
    seconds: 0.25
    sample_rate: !ref <sample_rate>
  - !name:speech.dataset.processors.shuffle
    buffer_size: 4
  - !name:speech.dataset.processors.batch
    batch_type: static
    batch_size: 2
  - !name:speech.dataset.processors.padding
optim: !name:torch.optim.AdamW
  lr: 0.01
train_conf:
  max_epoch: 2
  log_interval: 1
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, corpus_dir):
    """Index of 8 utterances of one demo voice; ``max_duration`` leaves out exactly the longest."""
    wavs = sorted((corpus_dir / "wavs" / "slt").glob("*.wav"))[:8]
    if len(wavs) < 8:
        pytest.skip("demo corpus not present")
    folder = tmp_path_factory.mktemp("real")
    items = [{"utt": w.stem, "spk": "slt", "wav": str(w), "text": w.with_suffix(".txt").read_text().strip(),
              "duration": soundfile.info(str(w)).duration} for w in wavs]
    (folder / "index.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (folder / "data.list").write_text("index.jsonl\n")
    durations = sorted(i["duration"] for i in items)
    (folder / "codec.yaml").write_text(CONFIG)
    return folder, (durations[-2] + durations[-1]) / 2


def test_real_pipeline_trains_logs_skips_and_resumes_exactly(corpus, tmp_path):
    folder, max_duration = corpus
    args = ["--config", str(folder / "codec.yaml"), "--trust_config", "--model", "codec", "--train_data", str(folder / "data.list"),
            "--cv_data", str(folder / "data.list"), "--comet_disabled", f"max_duration={max_duration}"]
    full = run(args + ["--model_dir", str(tmp_path / "full")])
    run(args + ["--model_dir", str(tmp_path / "split"), "train_conf.max_steps=5"])
    resumed = run(args + ["--model_dir", str(tmp_path / "split"), "--checkpoint", "last"])
    assert full.step == resumed.step == 8  # 7 utterances per epoch in batches of 2, 2 epochs
    for k, v in full.engine.module.state_dict().items():
        assert torch.equal(v, resumed.engine.module.state_dict()[k]), k

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "full" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert sum(e.value for e in events.Scalars("data/skipped_items")) == 2  # the longest clip, once per epoch
    frames = [e.value for e in events.Scalars("train/frames_per_s")]
    assert len(frames) == 8 and all(f > 0 for f in frames)  # audio_len samples per second
    assert full.last_cv is not None and {"loss", "l1"} <= set(full.last_cv)
