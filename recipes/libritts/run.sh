#!/usr/bin/env bash
# LibriTTS (or any corpus in the seed / Kaldi layout) with the full-size configs, on GPUs.
#
#   bash recipes/libritts/run.sh --corpus /path/LibriTTS --s3tokenizer /path/speech_tokenizer_v2.onnx \
#        --qwen /path/CosyVoice-BlankEN [--ngpu 8] [--stage 0] [--stop_stage 9]
#
# Stages (each reads only what an earlier stage wrote; paths are defined once below):
#   0 index the corpus (--train_split/--dev_split/--test_split: files of utterance ids named train.txt, dev.txt, test.txt)
#   1 FSQ tokens with s3tokenizer from a local weights file (or --tokenizer own --tokenizer_ckpt X)
#   2 train the DAC-VAE (skipped when --codec_ckpt names a trained one)
#   3 DAC-VAE latents            4 training indexes        5 train the Stage 1 LM
#   6 train the Stage 2 flow     7 average checkpoints     8 synthesize the test list
#   9 evaluate
# Nothing is downloaded: every pretrained asset comes from a local path given here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

stage=0
stop_stage=9
corpus=                      # corpus root: a tree of <utt>.wav + <utt>.txt (LibriTTS layout works), or Kaldi dirs
train_split=                 # optional files of utterance ids; without them every utterance goes to train
dev_split=
test_split=
exp=exp/libritts
ngpu=8
num_workers=4
tokenizer=s3                 # s3 | own
s3tokenizer=                 # local speech_tokenizer_v2 weights (.onnx or converted .pt) for --tokenizer s3
tokenizer_ckpt=              # an own FSQ tokenizer checkpoint for --tokenizer own
qwen=                        # local Qwen2 / CosyVoice-BlankEN directory (backbone + text tokenizer)
codec_ckpt=                  # a trained DAC-VAE checkpoint (its config.yaml beside it) to skip stage 2
speaker_rule=parent          # speaker from utt2spk, else the folder holding the audio
. recipes/lib.sh
parse_options "$@"
[ -n "$corpus" ] || { echo "$0: --corpus is required" >&2; exit 2; }

data=$exp/data               # stage 0: train/dev/test .jsonl + .list
tokens=$exp/tokens           # stage 1
codec_dir=$exp/dac_vae       # stage 2
latents=$exp/latents         # stage 3
index=$exp/index             # stage 4: <split>/data.list
llm_dir=$exp/llm             # stage 5
flow_dir=$exp/flow           # stage 6
synth=$exp/synth             # stage 8
eval_dir=$exp/eval           # stage 9
codec_ckpt=${codec_ckpt:-$codec_dir/final.pt}
codec_config=$(dirname "$codec_ckpt")/config.yaml
splits="train dev test"
launch() { torchrun --standalone --nproc_per_node "$ngpu" "$@"; }
train() {
  launch train.py --train_engine torch_ddp --num_workers "$num_workers" --prefetch 4 --pin_memory --use_amp "$@"
}

if run_stage 0 "index the corpus"; then
  split_args=()
  for s in $train_split $dev_split $test_split; do split_args+=("$s"); done
  python tools/prepare_data.py "$corpus" --out "$data" --speaker_rule "$speaker_rule" --num_workers 16 \
    ${split_args:+--split "${split_args[@]}"}
  for s in $splits; do [ -f "$data/$s.jsonl" ] && echo "$s.jsonl" > "$data/$s.list"; done
  [ -f "$data/train.jsonl" ] || { [ -f "$data/all.jsonl" ] && echo "all.jsonl" > "$data/train.list"; }
fi

if run_stage 1 "FSQ tokens ($tokenizer)"; then
  ckpt=$([ "$tokenizer" = s3 ] && echo "$s3tokenizer" || echo "$tokenizer_ckpt")
  require "$ckpt" "speech tokenizer weights (--s3tokenizer / --tokenizer_ckpt)"
  launch tools/extract_fsq.py --tokenizer "$tokenizer" --checkpoint "$ckpt" --out_dir "$tokens" \
    --index "$data"/*.jsonl --skip_existing
fi

if run_stage 2 "train the DAC-VAE"; then
  if [ -f "$codec_ckpt" ] && [ "$codec_ckpt" != "$codec_dir/final.pt" ]; then
    echo "using the given codec $codec_ckpt"
  else
    train --model dac_vae --config configs/dac_vae.yaml --model_dir "$codec_dir" \
      --train_data "$data/train.list" --cv_data "$data/dev.list"
    python tools/average_checkpoints.py --model_dir "$codec_dir" --num 1 --last --out "$codec_dir/final.pt"
  fi
fi

if run_stage 3 "DAC-VAE latents"; then
  require "$codec_ckpt" "DAC-VAE checkpoint"
  launch -m dac_vae.extract_dac_latents --config "$codec_config" --checkpoint "$codec_ckpt" \
    --index "$data/train.jsonl" --output_dir "$latents" --skip_existing
  launch -m dac_vae.extract_dac_latents --config "$codec_config" --checkpoint "$codec_ckpt" \
    --index "$data/dev.jsonl" "$data/test.jsonl" --output_dir "$latents" \
    --stats "$latents/eval_splits_stats.json" --skip_existing
fi

if run_stage 4 "training indexes"; then
  for s in $splits; do
    [ -f "$data/$s.jsonl" ] || continue
    python tools/generate_json_index.py --index "$data/$s.jsonl" --out "$index/$s" --num_shards 64 \
      --token_dir "$tokens" --latent_dir "$latents" --num_workers 16
  done
fi

if run_stage 5 "train the Stage 1 LM"; then
  train --model llm --config configs/llm.yaml --model_dir "$llm_dir" ${qwen:+--qwen_pretrain_path "$qwen"} \
    --train_data "$index/train/data.list" --cv_data "$index/dev/data.list"
fi

if run_stage 6 "train the Stage 2 flow"; then
  train --model flow --config configs/flow.yaml --model_dir "$flow_dir" \
    --train_data "$index/train/data.list" --cv_data "$index/dev/data.list" \
    latent_stats="$latents/latent2x_stats.json"
fi

if run_stage 7 "average the best 5 checkpoints"; then
  python tools/average_checkpoints.py --model_dir "$llm_dir" --num 5 --out "$llm_dir/final.pt"
  python tools/average_checkpoints.py --model_dir "$flow_dir" --num 5 --ema --out "$flow_dir/final.pt"
fi

if run_stage 8 "synthesize the test list"; then
  python recipes/demo/make_synth_list.py "$data/test.jsonl" --out "$synth/list.jsonl"
  python inference.py --llm "$llm_dir/final.pt" --flow "$flow_dir/final.pt" --codec "$codec_ckpt" \
    --flow_config "$flow_dir/config.yaml" --codec_config "$codec_config" \
    --list "$synth/list.jsonl" --out_dir "$synth" --device cuda --batch_size 16
fi

if run_stage 9 "evaluate"; then
  python tools/evaluate.py --ref_list "$synth/list.jsonl" --hyp_dir "$synth" --out_dir "$eval_dir" \
    --metrics wer,sim --device cuda
fi
