"""Evaluation toolkit: measure synthesised or reconstructed speech the way papers report it, offline.

- :mod:`speech.eval.codec`: multi-scale mel and multi-resolution STFT distances, SI-SDR, PESQ-WB, STOI;
- :mod:`speech.eval.asr` + :mod:`speech.eval.wer` + :mod:`speech.eval.text`: intelligibility (WER/CER
  with normalised text, mean of utterances as seed-tts-eval reports it, plus corpus WER);
- :mod:`speech.eval.speaker`: speaker similarity through a pluggable speaker encoder;
- :mod:`speech.eval.mos`: DNSMOS (optional); :mod:`speech.eval.rtf`: real-time factor;
- :mod:`speech.eval.evaluator`, :mod:`speech.eval.report`, :mod:`speech.eval.reflist`: what
  ``tools/evaluate.py`` runs; :mod:`speech.eval.degrade`: controlled degradations for calibration.

Modules are imported on demand (``from speech.eval.codec import CodecMetrics``) so that scoring
codec metrics never loads an ASR or a speaker model.
"""
