"""Where metrics go: TensorBoard always, Comet when installed and not disabled (rank 0 only).

Comet runs online when an API key is configured (``COMET_API_KEY`` or ``~/.comet.config``) and
otherwise, or with ``--comet_offline``, as ``comet_ml.OfflineExperiment``: a local archive under
``model_dir/comet`` that ``comet upload`` can send later. Media from ``model.media(batch)``:
``"audio/NAME": (wav[S], sample_rate)`` and ``"image/NAME": HWC uint8 array or matplotlib figure``.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["RunLogger"]

log = logging.getLogger(__name__)


class RunLogger:
    """Scalars and media to TensorBoard (+ Comet); every method is a no-op when not enabled."""

    def __init__(self, model_dir: str | os.PathLike, enabled: bool = True, comet: bool = True,
                 comet_offline: bool = False, comet_project: str | None = None,
                 params: Mapping[str, Any] | None = None):
        self.enabled = enabled
        self.tb = None
        self.comet = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        model_dir = Path(model_dir)
        self.tb = SummaryWriter(str(model_dir / "tensorboard"))
        if comet:
            self.comet = _make_comet(model_dir, comet_offline, comet_project, params or {})

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``{"train/loss": 0.3, ...}`` at ``step``."""
        if not self.enabled:
            return
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, step)
        if self.comet is not None:
            self.comet.log_metrics(dict(metrics), step=step)

    def media(self, items: Mapping[str, Any], step: int) -> None:
        """Log the ``media()`` dict of a model (audio clips, images, figures)."""
        if not self.enabled:
            return
        for key, value in items.items():
            try:
                with warnings.catch_warnings():  # comet_ml probes arrays with os.stat (DeprecationWarning)
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._one_media(key, value, step)
            except Exception as exc:  # a broken plot must never stop training
                log.warning("could not log media %s: %s", key, exc)

    def _one_media(self, key: str, value: Any, step: int) -> None:
        if key.startswith("audio/"):
            wav, sample_rate = value
            wav = torch.as_tensor(wav).detach().float().cpu().reshape(-1).clamp(-1, 1)
            self.tb.add_audio(key, wav.unsqueeze(0), step, sample_rate=int(sample_rate))
            if self.comet is not None:
                self.comet.log_audio(wav.numpy(), sample_rate=int(sample_rate), file_name=key.replace("/", "_"),
                                     step=step)
        elif hasattr(value, "savefig"):  # a matplotlib figure
            self.tb.add_figure(key, value, step, close=False)
            if self.comet is not None:
                self.comet.log_figure(figure_name=key, figure=value, step=step)
            import matplotlib.pyplot as plt

            plt.close(value)
        else:
            image = np.asarray(value)
            self.tb.add_image(key, image, step, dataformats="HWC" if image.ndim == 3 else "HW")
            if self.comet is not None:
                self.comet.log_image(image, name=key.replace("/", "_"), step=step)

    def close(self) -> None:
        """Flush and close every sink (Comet offline writes its archive here)."""
        if self.tb is not None:
            self.tb.close()
        if self.comet is not None:
            self.comet.end()


def _make_comet(model_dir: Path, offline: bool, project: str | None, params: Mapping[str, Any]) -> Any:
    # Auto-logging hooks are not wanted (the trainer logs explicitly); saying so also silences
    # comet_ml's "import me before torch" warning.
    os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
    try:
        import comet_ml
    except ImportError:
        log.info("comet_ml is not installed: Comet logging is off")
        return None
    quiet = dict(log_code=False, log_graph=False, auto_param_logging=False, auto_metric_logging=False,
                 parse_args=False, auto_output_logging=False, log_env_details=False, log_git_metadata=False,
                 log_git_patch=False, log_env_gpu=False, log_env_host=False, log_env_cpu=False,
                 log_env_network=False, log_env_disk=False, display_summary_level=0)
    has_key = bool(comet_ml.get_config().get_string(None, "comet.api_key"))
    if offline or not has_key:
        directory = model_dir / "comet"
        directory.mkdir(parents=True, exist_ok=True)
        if not offline:
            log.info("no Comet API key configured: writing an offline Comet archive to %s", directory)
        experiment = comet_ml.OfflineExperiment(project_name=project, offline_directory=str(directory), **quiet)
    else:
        experiment = comet_ml.Experiment(project_name=project, **quiet)
    experiment.set_name(model_dir.name)
    experiment.log_parameters(_flatten(params))
    return experiment


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
