#!/usr/bin/env bash
# The demo: the whole system trained and run on the embedded corpus (data/) with tiny configs, on CPU.
#
#   bash recipes/demo/run.sh [--stage 0] [--stop_stage 12] [--exp exp/demo] [--nj 2] [--flow_objective cfm|meanflow]
#                            [--codec dac_vae|flowae] [--codec_config FILE] [--corpus data] [--synth_test 0|1]
#                            [--fsq_levels "3 3 3 3 3 3 3 3"] [--fsq_overrides "fsq.mel_weight=0 ..."]
#                            [--codec_amp auto|0|1] [--pitch_smoothing 25]
#
# Stages (each reads only what an earlier stage wrote; paths are defined once below):
#   0 index the corpus          1 text BPE              2 train the FSQ speech tokenizer
#   3 FSQ tokens + alignments    4 train the DAC-VAE     5 extract DAC-VAE latents
#   6 training indexes           7 train the Stage 1 LM  8 train the Stage 2 flow
#   9 final checkpoints         10 synthesize the held-out speakers
#  11 evaluate                  12 write report.md
#
# Tiny CPU models make low-quality speech: the demo shows that every piece works end to end.
# For real quality run recipes/libritts/run.sh with the full-size configs on GPUs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

stage=0
stop_stage=12
exp=exp/demo
corpus=data
nj=2                 # torch threads / loader workers
asr=auto             # WER judge (stage 11): faster-whisper (Whisper base) when installed, else pocketsphinx
fsq_levels="3 3 3 3 3 3 3 3"   # the speech tokenizer's FSQ levels (3^8 = 6561 ids, the s3tokenizer vocabulary);
                     # stages 2, 7, 8 use them. Fewer ids are easier for the LM but carry less for the flow
                     # (dev, true tokens; STOI / WER): 6561 0.723 / 55%, 5^4 = 625 0.680 / 70%, 3^4 = 81 0.659 / 98%
fsq_overrides=       # more key=value overrides of configs/tiny/fsq.yaml (e.g. fsq.mel_weight=0)
fsq_steps=700        # training budgets (optimizer steps), sized for <= 25 minutes on 2 cores (idle: 24.0 min)
codec_steps=         # default 1500 for the harmonic frame-rate DAC-VAE (configs/tiny/dac_vae_harmonic.yaml, 0.5 s
                     # crops): ~7 minutes with codec_amp (~9 in fp32), as its 1.0 s crops x 750 steps took (dev
                     # PESQ-WB 1.53-1.75 vs 1.88-2.03 now, see the config); 750 for flowae
codec_amp=auto       # bf16 autocast in the codec's training (stage 4): auto = only where this CPU multiplies bf16
                     # faster than fp32 (native AVX512-BF16 or AMX; elsewhere it is emulated, ~100x slower); 1 | 0.
                     # Here (Zen 4, 2 threads) 1500 steps take 403-443 s instead of 528 s; dev round trip PESQ-WB /
                     # STOI / Whisper WER 2.015 / 0.893 / 37.3% vs fp32's 2.005 / 0.893 / 30.7% (one run each)
codec_config=        # default: configs/tiny/dac_vae_harmonic.yaml (frame-rate DAC-VAE with a pitch-excited comb;
                     # configs/tiny/dac_vae_frame.yaml: without it; configs/tiny/dac_vae.yaml is
                     # the DAC decoder, far slower to learn) or, with --codec flowae, configs/tiny/flowae.yaml
known_per_speaker=10 # held-out voices also speak this many trained sentences each (stage 10)
synth_test=0         # 1: stages 10-11 also speak and score the test split (seen voices, their test sentences,
                     # prompted by their training clips): for a corpus whose test sentences no training
                     # utterance contains (make_demo_corpus.py --hours; in data/ other voices train on them)
llm_steps=400        # ~11 passes over the 444 training utterances: at 150 the LM's lengths ignored the
                     # text (CV loss is lowest near 200 steps; the trained-sentence synthesis needs it
                     # to have learned its sentences). 800 steps (+~160 s): Whisper WER 103 -> 93%
                     # (seen voices, trained sentences), 102 -> 94% (held-out voices, trained sentences)
flow_steps=900       # dev, true tokens, ids embedded through their FSQ digits: STOI 0.721 at 900 steps, 0.719
                     # at 1100 (plain id table: 0.675 at 1100)
flow_width=128       # flow encoder dim / estimator channels (with 2 token blocks): dev STOI 0.556 -> 0.589, WER 124% -> 104%
flow_config=configs/tiny/flow_stream.yaml   # causal, streaming-trained: stage 10 also streams (configs/tiny/flow.yaml:
                     # no streaming; dev at 1200 steps CV 0.89 vs 1.12, STOI 0.525 vs 0.481, WER 124% vs 126%);
                     # it predicts data, not velocity (logit-normal times, lr 3e-3): dev STOI 0.604 -> 0.680;
                     # FSQ-digit token embedding (fsq_levels): 0.675 -> 0.719
pitch_smoothing=25   # stage 8, with the harmonic DAC-VAE: the flow smooths its sampled pitch (latent channel 0)
                     # over this many frames (0.5 s, causal; 0 = off). Dev, true tokens: STOI / WER 0.734 / 59%
                     # -> 0.751 / 53%; the synthesis' WER is unchanged (dev 95.5 -> 96.5%): its LM-made tokens limit it
flow_objective=cfm   # stage 8: cfm (10 guided Euler steps) | meanflow (one-step, configs/tiny/flow_meanflow.yaml)
sled_steps=0         # > 0: stage 13 trains the continuous AR (SLED) path that long, synthesizes and evaluates it
codec=dac_vae        # the codec the TTS renders with: dac_vae, or flowae (the flow-matching autoencoder)
. recipes/lib.sh
parse_options "$@"
# the token vocabulary the tokenizer, LM and flow share: prod(levels) ids, each embedded through its digits
if ! [[ "$fsq_levels" =~ ^\ *([2-9]|[1-9][0-9]+)(\ +([2-9]|[1-9][0-9]+))*\ *$ ]]; then
  echo "$0: --fsq_levels must be integers >= 2 separated by spaces, not '$fsq_levels'" >&2; exit 2
fi
case "$codec_amp" in auto|0|1) ;; *) echo "$0: --codec_amp must be auto, 0 or 1, not '$codec_amp'" >&2; exit 2 ;; esac
levels_yaml="[$(echo $fsq_levels | tr -s ' ' ',')]"
speech_vocab=$(( $(echo $fsq_levels | tr -s ' ' '*') ))
case $codec in  # the codec's CLIs and its latent files <utt>_latent$tag.pt
  dac_vae) codec_cli=dac_vae.inference; extract_cli=dac_vae.extract_dac_latents; tag=2x
    codec_config=${codec_config:-configs/tiny/dac_vae_harmonic.yaml}; codec_steps=${codec_steps:-1500} ;;
  flowae) codec_cli=flowae.inference; extract_cli=flowae.extract_latents; tag=fae
    codec_config=${codec_config:-configs/tiny/flowae.yaml}; codec_steps=${codec_steps:-750} ;;
  *) echo "--codec must be dac_vae or flowae, not $codec" >&2; exit 1 ;;
esac

splits="train dev test heldout"
data=$exp/data                      # stage 0: <split>.jsonl, <split>.list
bpe=$exp/bpe/tokenizer.json         # stage 1
fsq_dir=$exp/fsq                    # stage 2
tokens=$exp/tokens                  # stage 3: <spk>/<utt>_fsq.pt, <utt>_align.pt
codec_dir=$exp/$codec               # stage 4
latents=$exp/latents                # stage 5: <spk>/<utt>_latent2x.pt, latent2x_stats.json
index=$exp/index                    # stage 6: <split>/data.list
llm_dir=$exp/llm                    # stage 7
flow_dir=$exp/flow                  # stage 8
synth=$exp/synth                    # stage 10: <utt>.wav (held-out voices, their own unseen sentences)
synth_known=$exp/synth_known        # stage 10: <utt>.wav (held-out voices, sentences the LM trained on)
synth_test_dir=$exp/synth_test      # stage 10 with --synth_test 1: <utt>.wav (seen voices, test sentences)
eval_dir=$exp/eval                  # stage 11
stage_log=$exp/stage_times.tsv      # every stage's start time; report.md shows the durations
mkdir -p "$exp"; printf 'run\t%s\tstages %s-%s\n' "$(date +%s)" "$stage" "$stop_stage" >> "$stage_log"
# the run's end (also on failure), so a report regenerated later keeps the last stage's time
trap 'rc=$?; printf "end\t%s\texit status %s\n" "$(date +%s)" "$rc" >> "$stage_log"' EXIT
export OMP_NUM_THREADS=$nj
train() { python train.py --num_workers 0 --comet_disabled "$@"; }
# train_on_corpus MODEL CONFIG DIR [OVERRIDES]: a tiny model on the corpus audio, its last checkpoint as DIR/final.pt
train_on_corpus() {
  train --model "$1" --config "$2" --model_dir "$3" \
    --train_data "$data/train.list" --cv_data "$data/dev.list" "${@:4}"
  python tools/average_checkpoints.py --model_dir "$3" --num 1 --last --out "$3/final.pt"
}

if run_stage 0 "index the corpus ($corpus)"; then
  python tools/prepare_data.py "$corpus" --out "$data" \
    --split $(for s in $splits; do echo "$corpus/splits/$s.txt"; done)
  for s in $splits; do echo "$s.jsonl" > "$data/$s.list"; done
fi

if run_stage 1 "text BPE on the training transcripts"; then
  require "$data/train.jsonl" "corpus index"
  python tools/train_bpe.py "$data/train.jsonl" --vocab_size 512 --out "$bpe"
fi

if run_stage 2 "train the FSQ speech tokenizer ($fsq_steps steps)"; then
  require "$data/train.list" "corpus index"
  train_on_corpus fsq configs/tiny/fsq.yaml "$fsq_dir" train_conf.max_steps="$fsq_steps" \
    fsq.levels="$levels_yaml" $fsq_overrides
fi

if run_stage 3 "extract FSQ tokens and their text alignments"; then
  require "$fsq_dir/final.pt" "FSQ tokenizer"
  # --align: <utt>_align.pt (tokens per text character, the tokenizer's CTC alignment) for the LM's aligned layout
  python tools/extract_fsq.py --tokenizer own --checkpoint "$fsq_dir/final.pt" --out_dir "$tokens" \
    --index $(for s in $splits; do echo "$data/$s.jsonl"; done) --skip_existing --num_workers 0 --align
fi

if run_stage 4 "train the DAC-VAE ($codec_steps steps)"; then
  require "$data/train.list" "corpus index"
  # max_steps sets the whole schedule (KL warm-up, LR decay) of the frame-rate config
  if grep -q '^max_steps:' "$codec_config"; then steps_key=max_steps; else steps_key=train_conf.max_steps; fi
  if [ "$codec_amp" = auto ]; then  # a ~0.1 s probe: is a bf16 matmul faster than an fp32 one here?
    codec_amp=$(python -c 'from speech.trainer.engine import bf16_matmul_slowdown as s; print(int(s() < 0.8))')
  fi
  amp=(); if [ "$codec_amp" = 1 ]; then amp=(--use_amp); fi
  echo "codec training precision: $([ "$codec_amp" = 1 ] && echo 'bf16 autocast' || echo fp32)"
  # only the last checkpoint is used: no CV + save at each of its ~27 short epochs (~20 s)
  train_on_corpus "$codec" "$codec_config" "$codec_dir" "$steps_key=$codec_steps" train_conf.save_per_epoch=0 \
    "${amp[@]}"
fi

if run_stage 5 "extract DAC-VAE latents"; then
  require "$codec_dir/final.pt" "DAC-VAE"
  # statistics from the training split only; the other splits write theirs aside
  python -m $extract_cli --config "$codec_dir/config.yaml" --checkpoint "$codec_dir/final.pt" \
    --index "$data/train.jsonl" --output_dir "$latents" --skip_existing --num_workers 0 --quiet
  python -m $extract_cli --config "$codec_dir/config.yaml" --checkpoint "$codec_dir/final.pt" \
    --index "$data/dev.jsonl" "$data/test.jsonl" "$data/heldout.jsonl" --output_dir "$latents" \
    --stats "$latents/eval_splits_stats.json" --skip_existing --num_workers 0 --quiet
fi

if run_stage 6 "training indexes (text + tokens + latents)"; then
  for s in $splits; do
    python tools/generate_json_index.py --index "$data/$s.jsonl" --out "$index/$s" \
      --token_dir "$tokens" --latent_dir "$latents" --latent_suffix "_latent$tag.pt" --require tokens latents
  done
fi

if run_stage 7 "train the Stage 1 LM ($llm_steps steps)"; then
  require "$index/train/data.list" "training index"
  train --model llm --config configs/tiny/llm.yaml --model_dir "$llm_dir" \
    --train_data "$index/train/data.list" --cv_data "$index/dev/data.list" \
    text_tokenizer_path="$bpe" train_conf.max_steps=$llm_steps \
    speech_token_size=$speech_vocab fsq_levels="$levels_yaml"
fi

if run_stage 8 "train the Stage 2 flow ($flow_steps steps)"; then
  require "$index/train/data.list" "training index"
  # flow_config (default: the streaming config) trains CFM; meanflow its own config
  case "$flow_objective" in cfm) ;; meanflow) flow_config=configs/tiny/flow_meanflow.yaml ;;
    *) echo "$0: --flow_objective must be cfm or meanflow" >&2; exit 2 ;; esac
  # max_steps (a top-level key) also sets the LR schedule's length
  if grep -q '^max_steps:' "$flow_config"; then steps_key=max_steps; else steps_key=train_conf.max_steps; fi
  size=(); if grep -q '^width:' "$flow_config"; then size=(width=$flow_width token_blocks=2); fi
  if grep -q '^fsq_levels: *\[' "$flow_config"; then size+=(fsq_levels="$levels_yaml"); fi  # digit embedding
  # a harmonic codec's latent channel 0 is its pitch (the saved flow config carries the setting to inference)
  if grep -q '^pitch_smoothing:' "$flow_config" && grep -Eq '^ *harmonic: *true' "$codec_config"; then
    size+=(pitch_smoothing=$pitch_smoothing)
  fi
  train --model flow --config "$flow_config" --model_dir "$flow_dir" \
    --train_data "$index/train/data.list" --cv_data "$index/dev/data.list" \
    latent_stats="$latents/latent${tag}_stats.json" $steps_key=$flow_steps train_conf.max_epoch=1000 "${size[@]}" \
    speech_vocab=$speech_vocab \
    train_conf.save_per_epoch=2  # ~34 short epochs: half the CV + saves (stage 9 averages the best 2 of the last 3)
fi

if run_stage 9 "final checkpoints (average of the best 2 by CV best_metric; EMA for the flow)"; then
  python tools/average_checkpoints.py --model_dir "$llm_dir" --num 2 --out "$llm_dir/final.pt"
  python tools/average_checkpoints.py --model_dir "$flow_dir" --num 2 --ema --out "$flow_dir/final.pt"
fi

if run_stage 10 "synthesize the held-out speakers: their unseen sentences, and trained sentences"; then
  require "$llm_dir/final.pt" "LM"; require "$flow_dir/final.pt" "flow"
  # one held-out sentence streamed, if the flow is causal: first-chunk latency, RTF and the largest
  # difference to the offline synthesis, in $exp/stream/stream.rtf.json for report.md
  if grep -qi '^causal: *true' "$flow_dir/config.yaml"; then
    python recipes/demo/make_synth_list.py "$data/heldout.jsonl" --out "$exp/stream/list.jsonl"
    { read -r text; read -r prompt; } < <(python -c 'import sys; from speech.inference import read_list
r = read_list(sys.argv[1])[0]; print(r["text"]); print(r["prompt_wav"])' "$exp/stream/list.jsonl")
    python inference.py --llm "$llm_dir/final.pt" --flow "$flow_dir/final.pt" --codec "$codec_dir/final.pt" \
      --text "$text" --prompt_wav "$prompt" --out "$exp/stream/stream.wav" --seed 0 --stream --compare_offline
  fi
  # each held-out utterance is spoken in its speaker's voice, prompted by another clip of that speaker
  python recipes/demo/make_synth_list.py "$data/heldout.jsonl" --out "$synth/list.jsonl"
  # the same voices on sentences the LM trained on (zero-shot voice, known text)
  python recipes/demo/make_synth_list.py "$data/heldout.jsonl" --texts_from "$data/train.jsonl" \
    --per_speaker "$known_per_speaker" --out "$synth_known/list.jsonl"
  synth_dirs="$synth $synth_known"
  if [ "$synth_test" = 1 ]; then
    python recipes/demo/make_synth_list.py "$data/test.jsonl" --prompts_from "$data/train.jsonl" \
      --out "$synth_test_dir/list.jsonl"
    synth_dirs="$synth_dirs $synth_test_dir"
  fi
  for dir in $synth_dirs; do
    python inference.py --llm "$llm_dir/final.pt" --flow "$flow_dir/final.pt" --codec "$codec_dir/final.pt" \
      --list "$dir/list.jsonl" --out_dir "$dir" --seed 0
  done
fi

if run_stage 11 "evaluate: synthesis (WER, SIM), codec round trips, flow samples"; then
  require "$synth/list.jsonl" "synthesis"
  if [ "$synth_test" = 1 ]; then require "$synth_test_dir/list.jsonl" "test-split synthesis"; fi
  # Every WER comes with the same ASR's WER on the real recordings of the same sentences (the
  # "reference" row): what the judge itself gets wrong is not the model's fault. A synthesis also comes
  # with those recordings encoded and decoded by the codec that renders it: the most it can reach.
  score_tts() {  # LIST_DIR EVAL_NAME
    python tools/evaluate.py --ref_list "$1/list.jsonl" --hyp_dir "$1" --out_dir "$eval_dir/$2" --metrics wer,sim \
      --asr "$asr" --with_reference --codec_round_trip "$codec_dir/final.pt" --no_progress
  }
  score_synthesis() {
    score_tts "$synth" tts
    score_tts "$synth_known" tts_known
    if [ "$synth_test" = 1 ]; then score_tts "$synth_test_dir" tts_test; fi
  }
  score_components() {  # each model alone: the voices, the LM's probe, the tokens, the codec, the flow
    # does each cloned voice sound more like its own speaker than like the other held-out one?
    python recipes/demo/voice_match.py --real "$data/heldout.jsonl" --synth "$synth/list.jsonl" \
      "$synth_known/list.jsonl" --out "$eval_dir/voice_match.json"
    # does the LM read its text? next-id accuracy on its training utterances with the true and a random history
    python -m speech.llm.probe --checkpoint "$llm_dir/final.pt" --data "$index/train/data.list" \
      --out "$eval_dir/llm_probe.json"
    # how far apart are two voices' tokens for the same sentence (an LM can only copy one voice's sequence)?
    python -m speech.tokenizer.consistency --index "$data/train.jsonl" --token_dir "$tokens" --levels $fsq_levels \
      --out "$eval_dir/token_consistency.json"
    # the codec alone: test-split wavs encoded and decoded
    python -m $codec_cli roundtrip --config "$codec_dir/config.yaml" --checkpoint "$codec_dir/final.pt" \
      --inputs $(python recipes/demo/make_synth_list.py "$data/test.jsonl" --wav_paths) \
      --output_dir "$eval_dir/codec/wavs" --quiet
    python tools/evaluate.py --ref_list "$data/test.jsonl" --hyp_dir "$eval_dir/codec/wavs" \
      --out_dir "$eval_dir/codec" --metrics codec,wer --asr "$asr" --with_reference --no_progress
    # the flow alone: latents sampled from the dev split's true tokens vs the real latents, both decoded (the
    # codec on the real latents is the most the flow can reach: its WER bounds the flow's)
    python -m speech.flow.evaluate --config "$flow_dir/config.yaml" --checkpoint "$flow_dir/final.pt" \
      --data "$index/dev/data.list" --out_dir "$eval_dir/flow" --real_out "$eval_dir/flow_ceiling" --device cpu
    for part in flow flow_ceiling; do
      python -m $codec_cli decode --config "$codec_dir/config.yaml" --checkpoint "$codec_dir/final.pt" \
        --inputs "$eval_dir/$part" --output_dir "$eval_dir/$part/wavs" --quiet
    done
    python tools/evaluate.py --ref_list "$data/dev.jsonl" --hyp_dir "$eval_dir/flow/wavs" \
      "$eval_dir/flow_ceiling/wavs" --names flow_samples true_latents --out_dir "$eval_dir/flow" \
      --metrics codec,wer --asr "$asr" --with_reference --no_progress
  }
  # Two lanes at once, one thread each: every scorer runs single-threaded (evaluate.py --threads 1), so
  # one lane left the second core idle (this stage, the same figures: 277 s in one lane, 134 s in two)
  run_lanes score_synthesis score_components
fi

if run_stage 12 "report"; then
  python recipes/demo/report.py --exp "$exp" --codec_dir "$codec_dir" --out "$exp/report.md"
  echo "report: $exp/report.md"
  echo "try the models in a browser: speech-serve --llm $llm_dir/final.pt --flow $flow_dir/final.pt --codec $codec_dir/final.pt, then open http://127.0.0.1:8000/"
fi

# The continuous AR path beside the two-stage one, on the same latents, held-out list and judges:
#   bash recipes/demo/run.sh --stage 13 --stop_stage 13 --sled_steps 510   (after stages 0-12)
if [ "$sled_steps" -gt 0 ] && run_stage 13 "continuous AR (SLED) path: train ($sled_steps steps), synthesize, evaluate"; then
  require "$index/train/data.list" "training index"; require "$synth/list.jsonl" "synthesis list"
  train --model sled --config configs/tiny/sled.yaml --model_dir "$exp/sled" \
    --train_data "$index/train/data.list" --cv_data "$index/dev/data.list" text_tokenizer_path="$bpe" \
    latent_stats="$latents/latent2x_stats.json" train_conf.max_steps=$sled_steps train_conf.max_epoch=1000
  python tools/average_checkpoints.py --model_dir "$exp/sled" --num 2 --out "$exp/sled/final.pt"
  python inference.py --sled "$exp/sled/final.pt" --codec "$codec_dir/final.pt" \
    --list "$synth/list.jsonl" --out_dir "$exp/synth_sled" --seed 0
  python tools/evaluate.py --ref_list "$synth/list.jsonl" --hyp_dir "$exp/synth_sled" --out_dir "$eval_dir/tts_sled" \
    --metrics wer,sim --asr "$asr" --with_reference --no_progress
fi
