"""The training loop shared by every model: epochs, accumulation, CV, logging, checkpoints.

Per epoch every rank iterates its own share of the data. Before each micro-batch the loop fetches
the *next* batch and all ranks agree (one CPU all-reduce of a flag) whether every rank still has
one; the epoch ends for all ranks as soon as one runs out, so uneven shards never leave a rank
waiting in a collective, every rank takes the same number of optimizer steps, and the last
micro-batch of an epoch is known in advance (it closes the accumulation window early).

Per optimizer step nothing is read back to the host except the gradient-norm finiteness flag
(see ``engine.py``); losses, norms and frame counts accumulate on their devices and are read
once per ``log_interval``. Throughput is frames per second of the first length key present in
the batch among ``latent_len``, ``speech_token_len``, ``audio_len`` (latent frames, speech
tokens or audio samples), summed over ranks. Batches carrying ``ref_self_crop`` (docs/contracts.md)
add ``data/ref_self_crop_share`` to each log window, with a warning when it exceeds 20%.

Checkpoints (every ``save_per_step`` steps, at every ``save_per_epoch``-th epoch end and when
training stops) hold everything an exact resume needs: weights, optimizer(s), scheduler(s), scaler,
EMA, step, epoch, batches consumed in the epoch, and every rank's RNG states. CV runs at each checkpoint (and every
``cv_per_step`` steps) on the unwrapped model under a fixed seed, split across ranks, with sums
reduced once at the end; its metrics land in ``step_S.yaml`` beside the checkpoint.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from tqdm import tqdm

from speech.dataset.dataset import DataListError

from . import faults
from .checkpoint import checkpoint_name, prune_checkpoints, read_metrics, write_metrics
from .data import LoaderConf, count_frames, count_items, epoch_batches, skipped_items, to_device
from .distributed import DistInfo, all_gather_object, all_min_flag, all_sum_cpu, barrier
from .ema import EMA
from .engine import Engine
from .logger import RunLogger
from .options import TrainConf
from .rng import capture_rng, derive_seed, fork_all_rng, restore_rng

__all__ = ["Trainer"]

log = logging.getLogger(__name__)

_END = object()
_CV_SEED = 7919
#: Warn when more than this share of a log window's speaker references was cut from the item itself.
REF_SELF_CROP_WARN = 0.2


class _Window:
    """What accumulates between two log lines (device tensors until the log step); it spans epoch
    ends, so every step is logged once."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: Counter = Counter()
        self.norms: dict[str, list[torch.Tensor]] = {}
        self.frames = 0
        self.items = 0
        self.skipped: Counter = Counter()
        self.ref_self_crops = 0  # items whose reference came from themselves (batch key ref_self_crop)
        self.ref_items = 0
        self.t0 = time.perf_counter()

    def add_losses(self, prefix: str, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            key = prefix + k
            self.sums[key] = self.sums[key] + v if key in self.sums else v.clone()
            self.counts[key] += 1


def _finite_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of the finite entries (a skipped step's inf/NaN norm is counted, not averaged)."""
    finite = torch.isfinite(values)
    return torch.where(finite, values, 0.0).sum() / finite.sum().clamp_min(1)


class Trainer:
    """Runs epochs of an :class:`~speech.trainer.engine.Engine` over a dataset; see the module doc."""

    def __init__(self, engine: Engine, train_set: Any, cv_set: Any | None, loader: LoaderConf, conf: TrainConf,
                 info: DistInfo, model_dir: str | Path, logger: RunLogger, config_text: str = "",
                 ema: EMA | None = None, config_unresolved: str | None = None):
        self.engine, self.train_set, self.cv_set = engine, train_set, cv_set
        self.loader, self.conf, self.info = loader, conf, info
        self.model_dir = Path(model_dir)
        self.logger, self.config_text, self.ema = logger, config_text, ema
        self.config_unresolved = config_unresolved
        self.pin_memory = loader.pin_memory and info.device.type == "cuda"
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.last_cv: dict[str, float] | None = None
        self.last_train: dict[str, float] = {}
        self._cv_step: int | None = None
        self._saved_at: tuple[int, int, int] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._resumed_from: Path | None = None
        self._stop = False
        self._due_at_epoch_end: str | None = None  # "save" / "cv": a step interval that ended an epoch
        self._window = _Window()
        self._ref_warned = False

    # --- resume ------------------------------------------------------------------------------
    def resume(self, path: Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (weights, optimizers, position, RNG)."""
        ckpt = self.engine.load(path)
        state = ckpt["trainer"]
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        if int(state.get("world_size", 1)) != self.info.world_size or \
                int(state.get("num_workers", 0)) != self.loader.num_workers:
            log.warning("checkpoint was written with %s ranks x %s workers, now %d x %d: the data split differs, "
                        "so the resumed data position is approximate", state.get("world_size"),
                        state.get("num_workers"), self.info.world_size, self.loader.num_workers)
        rngs = state.get("rng") or []
        if len(rngs) == self.info.world_size:
            self._pending_rng = rngs[self.info.rank]
        else:
            log.warning("checkpoint holds RNG states of %d ranks, this run has %d: RNG not restored",
                        len(rngs), self.info.world_size)
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            else:
                log.warning("%s has no EMA weights: EMA restarts from the current weights", path)
        self._saved_at = (self.step, self.epoch, self.batch_in_epoch)
        self._resumed_from = Path(path)
        if self.info.is_main:
            log.info("resumed from %s: step %d, epoch %d, %d batches into the epoch", path, self.step, self.epoch,
                     self.batch_in_epoch)

    # --- main loop ---------------------------------------------------------------------------
    def fit(self) -> None:
        """Train until ``max_epoch`` epochs or ``max_steps`` steps, checkpointing on the way."""
        t0 = time.perf_counter()
        start_step = self.step
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)
            self._pending_rng = None
        self._repair_resumed_checkpoint()
        faults.set_step(self.step)
        faults.point("start")
        while self.epoch < self.conf.max_epoch and not self._reached_max_steps():
            finished = self._train_epoch()
            if finished:
                self.epoch += 1
                self.batch_in_epoch = 0
            every = self.conf.save_per_epoch
            last = self._stop or self.epoch >= self.conf.max_epoch  # _stop: max_steps reached
            due, self._due_at_epoch_end = self._due_at_epoch_end, None  # a step interval ending on the epoch's end
            if last or due == "save" or (every and self.epoch % every == 0):
                self._off_clock(self.save_checkpoint)
            elif due == "cv":
                self._off_clock(self.run_cv)
            if self._stop:
                break
        self.engine._select_group(None)
        if self.info.is_main:
            cv = f", last CV loss {self.last_cv['loss']:.4f}" if self.last_cv and "loss" in self.last_cv else ""
            log.info("done: %d steps (%d this run) in %.1f s, %d epoch(s) completed, %d step(s) skipped for "
                     "non-finite gradients%s", self.step, self.step - start_step, time.perf_counter() - t0,
                     self.epoch, self.engine.skipped_steps, cv)

    def _repair_resumed_checkpoint(self) -> None:
        """Finish what a kill may have cut short after the resumed checkpoint was renamed into
        place: its YAML (CV runs on fixed seeds, so the metrics are those the save would have
        written, and the training stream is untouched) and the pruning that followed, so
        ``keep_best`` ranks it and the folder ends as an uninterrupted run's would."""
        path, self._resumed_from = self._resumed_from, None
        if path is None:
            return
        missing = self.cv_set is not None and all_gather_object(not read_metrics(path).get("cv"), self.info)[0]
        cv = self.run_cv() if missing else None
        if self.info.is_main:
            if missing:
                write_metrics(path, {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                                     "cv": cv, "train": None})
                log.info("wrote the missing CV metrics of %s", path)
            removed = prune_checkpoints(self.model_dir, self.conf.keep_last, self.conf.keep_best,
                                        self.conf.best_metric)
            if removed:
                log.info("removed %d old checkpoint(s) a killed run had not pruned yet", len(removed))
        barrier(self.info)

    def _off_clock(self, fn: Any) -> Any:
        """Run CV/checkpointing without counting its time in the training throughput."""
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self._window.t0 += time.perf_counter() - t0

    def _reached_max_steps(self) -> bool:
        return self.conf.max_steps > 0 and self.step >= self.conf.max_steps

    def _synchronized(self, batches: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
        """``(batch, is_last)`` pairs, ending on every rank as soon as one rank runs dry."""
        it = iter(batches)
        nxt = next(it, _END)
        alive = all_min_flag(nxt is not _END, self.info)
        while alive:
            cur = nxt
            nxt = next(it, _END)
            alive = all_min_flag(nxt is not _END, self.info)
            if not alive and nxt is not _END:
                log.info("rank %d: another rank ran out of data, the rest of this rank's epoch %d is not used",
                         self.info.rank, self.epoch)
            yield cur, not alive

    def _train_epoch(self) -> bool:
        """One (possibly resumed) epoch; True when its data ran out, False when stopped early."""
        engine, conf = self.engine, self.conf
        engine.train()
        batches = epoch_batches(self.train_set, self.epoch, self.loader, conf.seed, self.info.rank,
                                skip=self.batch_in_epoch, pin_memory=self.pin_memory)
        bar = tqdm(desc=f"epoch {self.epoch}", unit="batch", initial=self.batch_in_epoch, dynamic_ncols=True,
                   disable=not self.info.is_main, mininterval=1.0, leave=False)
        micro = 0
        try:
            for batch, is_last in self._synchronized(batches):
                micro += 1
                boundary = micro == conf.accum_grad or is_last
                w = self._window
                w.frames += count_frames(batch)
                w.items += count_items(batch)
                w.skipped.update(skipped_items(batch))
                ref_flags = batch.get("ref_self_crop")
                if isinstance(ref_flags, torch.Tensor):
                    w.ref_self_crops += int(ref_flags.sum())
                    w.ref_items += ref_flags.numel()
                batch = to_device(batch, self.info.device, non_blocking=self.pin_memory)
                for group in engine.groups:
                    losses = engine.forward_backward(batch, group, self.step, boundary)
                    w.add_losses(f"{group}/" if engine.multi_group else "", losses)
                    if boundary:
                        norm, _ = engine.optimizer_step(group)
                        w.norms.setdefault(group, []).append(norm)
                self.batch_in_epoch += 1
                bar.update()
                if not boundary:
                    continue
                engine.end_iteration()
                micro = 0
                self.step += 1
                faults.set_step(self.step)
                if self.ema is not None:
                    self.ema.update(engine.module)
                if self.step % conf.log_interval == 0:
                    self._log_train(bar)
                faults.point("step")
                if self._reached_max_steps():
                    self._stop = True
                    return is_last
                due = ("save" if conf.save_per_step and self.step % conf.save_per_step == 0 else
                       "cv" if conf.cv_per_step and self.step % conf.cv_per_step == 0 else None)
                if is_last:
                    # fit() saves or runs CV once the epoch has ended, so a checkpoint resumes at the
                    # next epoch's first batch rather than at the end of this one
                    self._due_at_epoch_end = due
                    return True
                if due == "save":
                    self._off_clock(self.save_checkpoint)
                elif due == "cv":
                    self._off_clock(self.run_cv)
        finally:
            bar.close()
        if self.batch_in_epoch == 0:  # the same on every rank: _synchronized ends all ranks together
            # Every later epoch would be empty too: fail now instead of "training" to max_epoch with no steps.
            raise DataListError(
                f"epoch {self.epoch} produced no training batches on rank {self.info.rank}: the training data "
                "is empty or every item was skipped (e.g. wav paths that do not resolve from the index's folder; "
                "the data pipeline's warnings above say why)")
        return True

    # --- logging -------------------------------------------------------------------------------
    def _log_train(self, bar: tqdm | None = None) -> None:
        """Read the window's device tensors once, reduce counters over ranks, log (collective)."""
        w, engine = self._window, self.engine
        keys = sorted(w.sums)
        groups = list(w.norms)
        flat = [w.sums[k] for k in keys] + [_finite_mean(torch.stack(w.norms[g])) for g in groups]
        values = torch.stack([v.to(torch.float32) for v in flat]).tolist() if flat else []
        elapsed = max(time.perf_counter() - w.t0, 1e-9)
        counters = all_gather_object({"frames": w.frames, "items": w.items, "skipped": dict(w.skipped),
                                      "ref": (w.ref_self_crops, w.ref_items)}, self.info)
        if self.info.is_main:
            frames = sum(c["frames"] for c in counters)
            skipped: Counter = Counter()
            for c in counters:
                skipped.update(c["skipped"])
            metrics = {f"train/{k}": values[i] / w.counts[k] for i, k in enumerate(keys)}
            for i, g in enumerate(groups):
                suffix = f"/{g}" if engine.multi_group else ""
                metrics[f"train/grad_norm{suffix}"] = values[len(keys) + i]
                metrics[f"train/lr{suffix}"] = engine.lr(g)
            metrics["train/frames_per_s"] = frames / elapsed
            metrics["train/utts_per_s"] = sum(c["items"] for c in counters) / elapsed
            metrics["train/skipped_steps"] = float(engine.skipped_steps)
            metrics["data/skipped_items"] = float(sum(skipped.values()))
            for reason, n in skipped.items():
                metrics[f"data/skipped/{reason}"] = float(n)
            ref_items = sum(c["ref"][1] for c in counters)
            if ref_items:
                share = sum(c["ref"][0] for c in counters) / ref_items
                metrics["data/ref_self_crop_share"] = share
                if share > REF_SELF_CROP_WARN and not self._ref_warned:
                    log.warning("step %d: %.0f%% of the speaker references of the last %d items were cut from the "
                                "item itself (no other utterance of its speaker at hand; over %.0f%%): keep each "
                                "speaker's utterances together in the index (tools/prepare_data.py sorts by speaker) "
                                "or raise speaker_reference's lookahead", self.step, 100 * share, ref_items,
                                100 * REF_SELF_CROP_WARN)
                self._ref_warned = share > REF_SELF_CROP_WARN  # warn again only after it has fallen back
            metrics["train/epoch"] = float(self.epoch)
            self.logger.scalars(metrics, self.step)
            self.last_train = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("train/")}
            main_loss = metrics.get("train/loss", metrics.get(f"train/{engine.groups[0]}/loss", float("nan")))
            lr = engine.lr(engine.groups[0])
            if bar is not None:
                bar.set_postfix(loss=f"{main_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            losses = " ".join(f"{k} {values[i] / w.counts[k]:.4f}" for i, k in enumerate(keys))
            log.info("epoch %d step %d | %s | lr %.3e | grad_norm %.3f | %.0f frames/s | skipped %d",
                     self.epoch, self.step, losses, lr, values[len(keys)] if groups else float("nan"),
                     metrics["train/frames_per_s"], engine.skipped_steps)
        self._window = _Window()

    # --- cross-validation ------------------------------------------------------------------------
    @torch.no_grad()
    def run_cv(self) -> dict[str, float] | None:
        """Mean of every scalar the model returns over the CV set (item-weighted, all ranks)."""
        if self.cv_set is None:
            return None
        if self._cv_step == self.step and self.last_cv is not None:
            return self.last_cv
        engine, module = self.engine, self.engine.module
        was_training = module.training
        module.eval()
        sums: dict[str, torch.Tensor] = {}
        counts: Counter = Counter()
        first = None
        t0 = time.perf_counter()
        with fork_all_rng(derive_seed(self.conf.seed, _CV_SEED), self.info.device), engine.autocast():
            cv_batches = epoch_batches(self.cv_set, 0, self.loader, self.conf.seed, self.info.rank,
                                       pin_memory=self.pin_memory)
            for batch in cv_batches:
                n = count_items(batch)
                if first is None:
                    first = batch
                batch = to_device(batch, self.info.device, non_blocking=self.pin_memory)
                for group in engine.groups:
                    out = engine._scalars(engine._call(module, batch, group, self.step))
                    prefix = f"{group}/" if engine.multi_group else ""
                    for k, v in out.items():
                        key = prefix + k
                        sums[key] = sums[key] + v * n if key in sums else v * n
                        counts[key] += n
        all_keys = sorted(set().union(*all_gather_object(sorted(sums), self.info)))
        zero = torch.zeros((), device=self.info.device)
        local = torch.stack([sums.get(k, zero).float() for k in all_keys]).cpu() if all_keys else torch.zeros(0)
        total = all_sum_cpu(torch.cat([local.double(), torch.tensor([float(counts[k]) for k in all_keys],
                                                                     dtype=torch.float64)]), self.info)
        n_keys = len(all_keys)
        metrics = {k: float(total[i] / total[n_keys + i]) for i, k in enumerate(all_keys) if total[n_keys + i] > 0}
        if engine.multi_group and f"{engine.groups[0]}/loss" in metrics:
            metrics["loss"] = metrics[f"{engine.groups[0]}/loss"]
        if self.info.is_main:
            self.logger.scalars({f"cv/{k}": v for k, v in metrics.items()}, self.step)
            log.info("cv step %d | %s | %.1f s", self.step, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                     time.perf_counter() - t0)
            if metrics and self.conf.best_metric not in metrics and self.conf.keep_best and self._cv_step is None:
                log.warning("train_conf.best_metric %r is not a CV metric (%s): keep_best keeps no checkpoint for its "
                            "score", self.conf.best_metric, ", ".join(metrics))
            self._log_media(module, first)
        module.train(was_training)
        self.last_cv, self._cv_step = metrics, self.step
        return metrics

    def _log_media(self, module: torch.nn.Module, batch: Any) -> None:
        """Rank 0: the model's ``media(batch)`` (audio, images) on the first CV batch."""
        if batch is None or not hasattr(module, "media"):
            return
        try:
            with torch.no_grad(), fork_all_rng(derive_seed(self.conf.seed, _CV_SEED + 1), self.info.device):
                items = module.media(to_device(batch, self.info.device))
        except Exception as exc:  # media are a convenience; a failure must not kill the run
            log.warning("model.media() failed at step %d: %s", self.step, exc)
            return
        self.logger.media(items or {}, self.step)

    # --- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """CV, then a checkpoint of the current position (collective); skips an identical re-save."""
        position = (self.step, self.epoch, self.batch_in_epoch)
        if self._saved_at == position:
            return None
        cv = self.run_cv()
        rngs = all_gather_object(capture_rng(), self.info)
        trainer_state = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "world_size": self.info.world_size, "num_workers": self.loader.num_workers,
                         "seed": self.conf.seed, "rng": rngs}
        extra = {"config": self.config_text, "ema": self.ema.state_dict() if self.ema is not None else None,
                 "trainer": trainer_state, "config_unresolved": self.config_unresolved}
        path = self.model_dir / checkpoint_name(self.step, directory=self.engine.checkpoint_is_dir)
        faults.point("save:begin")
        self.engine.save(path, extra)
        faults.point("save:written")
        if self.info.is_main:
            write_metrics(path, {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                                 "cv": cv, "train": self.last_train or None})
            faults.point("save:metrics")
            removed = prune_checkpoints(self.model_dir, self.conf.keep_last, self.conf.keep_best,
                                        self.conf.best_metric)
            faults.point("save:pruned")
            log.info("saved %s%s", path, f" (removed {len(removed)} old)" if removed else "")
        barrier(self.info)
        self._saved_at = position
        return path
