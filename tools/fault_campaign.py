#!/usr/bin/env python3
"""Kill a training run with SIGKILL again and again; check that resuming loses nothing.

    python tools/fault_campaign.py --kills 20 [--seed 0] [--engine torch_ddp|deepspeed] [--work_dir DIR]

Trains the toy model of the trainer tests (``tests/trainer/toy.yaml``, a few milliseconds a
step) with a checkpoint every ``--save_per_step`` steps, ``keep_last`` 2, ``keep_best`` 2 and
EMA, once uninterrupted and once with ``--kills`` SIGKILLs, each followed by a restart with
``--checkpoint last``; then compares the two final checkpoints bit for bit (weights, EMA,
optimizer moments, schedulers, RNG states) and the two checkpoint folders (same checkpoints
and metrics files kept, no leftovers). Exit status 0 only when everything is identical.

Where the kills land (seeded): each kill targets one of the trainer's fault points
(``speech.trainer.faults``) at a later optimizer step than the previous kill, chosen among the
points the uninterrupted run passed at that step: after the step, at each stage of the
checkpoint save (temp file written and not renamed, renamed but without its metrics YAML, in
the middle of pruning, between the two renames of a DeepSpeed folder...). A share of the
attempts (``--timer_share``) also gets a timer that kills the process from outside at a random
moment before that point, wherever it is (starting up, loading the checkpoint, training,
writing); every point pauses ``--delay`` seconds so such kills land inside saves too.

Each run is a forked copy of this process calling ``train.py``'s ``main`` (the imports are
paid once), started and killed like any process. Printed: kills survived, steps lost (steps
done after the newest complete checkpoint, so recomputed after the restart) and whether the
final weights are identical.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAVE_POINTS = ("save:", "write:", "prune:", "ds:")


@dataclass
class Attempt:
    """One start of train.py: how it ended and what its fault log says it did."""

    index: int
    status: int
    seconds: float
    killed_by: str | None  # "point", "timer" or None (ran to its end)
    target: tuple[str, int] | None
    events: list[tuple[str, int, float]] = field(default_factory=list)

    @property
    def start_step(self) -> int | None:
        return next((s for n, s, _ in self.events if n == "start"), None)

    @property
    def last_step_done(self) -> int | None:
        steps = [s for n, s, _ in self.events if n == "step"]
        return max(steps) if steps else None

    @property
    def last_point(self) -> str | None:
        return self.events[-1][0] if self.events else None

    @property
    def where(self) -> str:
        if not self.events:
            return "before the trainer started"
        name, step, _ = self.events[-1]
        if step < 0 or name == "start":
            return "while starting/resuming"
        return f"after {name}@{step}"


def read_events(path: Path) -> list[tuple[str, int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), float(parts[2])))
    return out


def child(argv: list[str], env: dict[str, str], log: Path) -> None:
    """In the forked process: point stdout/stderr at the attempt's log and run train.py's main."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(env)
        from speech.trainer import cli, faults

        faults.reset()
        code = cli.main(argv)
    except BaseException:  # noqa: BLE001 - report anything, never return into the parent's code
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start(index: int, argv: list[str], work: Path, target: tuple[str, int] | None, timer: float | None,
          delay: float, after_start: bool = False) -> Attempt:
    """Fork one run, kill it at ``target`` (from inside) or after ``timer`` seconds (from outside),
    counted from the fork or, with ``after_start``, from the trainer's ``start`` point."""
    events_path = work / f"events_{index:03d}.log"
    events_path.unlink(missing_ok=True)
    env = {"SPEECH_FAULT_LOG": str(events_path), "SPEECH_FAULT_DELAY": str(delay), "TQDM_DISABLE": "1"}
    if target is not None:
        env["SPEECH_FAULT_KILL"] = f"{target[0]}@{target[1]}"
    else:
        env["SPEECH_FAULT_KILL"] = ""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(argv, env, work / f"attempt_{index:03d}.log")
    killed_by = None
    armed_at = None if after_start else t0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if timer is not None and armed_at is None:
            started = next((t for n, _, t in read_events(events_path) if n == "start"), None)
            armed_at = started
        if timer is not None and armed_at is not None and time.monotonic() - armed_at >= timer:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            killed_by = "timer"
            break
        time.sleep(0.002)
    if killed_by is None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        killed_by = "point"
    events = [(n, s, t - t0) for n, s, t in read_events(events_path)]
    return Attempt(index, status, time.monotonic() - t0, killed_by, target, events)


def compare(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths at which two loaded checkpoints differ (tensors bit for bit)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where or "/"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where}/ keys {sorted(set(a) ^ set(b), key=str)[:4]}"]
        return [d for k in a for d in compare(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in compare(x, y, f"{where}[{i}]")]
    return [] if a == b else [where or "/"]


def load_final(model_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run: the torch file, or a DeepSpeed folder's model.pt + trainer.pt."""
    import torch

    from speech.trainer.checkpoint import resolve_checkpoint

    path = resolve_checkpoint("last", model_dir)
    if path is None:
        raise SystemExit(f"fault_campaign: no checkpoint in {model_dir}")
    if path.is_dir():
        state = {"model.pt": torch.load(path / "model.pt", weights_only=True),
                 "trainer.pt": torch.load(path / "trainer.pt", weights_only=True)}
    else:
        state = torch.load(path, weights_only=True)
    return path, state


def folder_listing(model_dir: Path) -> tuple[list[str], list[str]]:
    """(checkpoints and their YAML, hidden leftovers) of a model_dir."""
    names = sorted(p.name for p in model_dir.iterdir())
    return [n for n in names if n.startswith("step_")], [n for n in names if n.startswith(".")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fault_campaign.py", description=__doc__.split("\n\n")[0],
                                epilog="Exit status: 0 when the killed-and-resumed run ends bit-identical to the "
                                       "uninterrupted one, 1 otherwise, 2 for a usage error.")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to survive (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan (default 0)")
    p.add_argument("--engine", choices=["torch_ddp", "deepspeed"], default="torch_ddp",
                   help="training engine (deepspeed: ZeRO-2 folders with their rotation; slower)")
    p.add_argument("--save_per_step", type=int, default=1, help="checkpoint every N steps (default 1)")
    p.add_argument("--epochs", type=int, default=0,
                   help="epochs to train (3 steps each); default: enough for one kill per step")
    p.add_argument("--timer_share", type=float, default=0.5,
                   help="share of the attempts that also get a random outside timer (default 0.5)")
    p.add_argument("--delay", type=float, default=0.002, help="pause at every fault point, seconds (default 0.002)")
    p.add_argument("--work_dir", type=Path, help="keep the runs here (default: a temporary folder, removed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kills < 0 or args.save_per_step < 1 or not 0 <= args.timer_share <= 1 or args.delay < 0:
        print("fault_campaign.py: error: --kills >= 0, --save_per_step >= 1, --timer_share in [0, 1], --delay >= 0",
              file=sys.stderr)
        return 2
    os.chdir(REPO)  # the toy config names tests.trainer.toy
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["TQDM_DISABLE"] = "1"  # read by tqdm when it is imported
    # Paid once here instead of in every forked run (torch._dynamo: seconds, imported by optimizers).
    import hyperpyyaml  # noqa: F401
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401

    import speech.dataset  # noqa: F401
    import speech.trainer.loop  # noqa: F401
    import tests.trainer.toy  # noqa: F401

    if args.engine == "deepspeed":
        import deepspeed  # noqa: F401
    from speech.trainer import cli  # noqa: F401
    from tests.trainer.toy import write_corpus

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="fault_campaign_"))
    if args.work_dir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        return campaign(args, work, write_corpus)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def campaign(args: argparse.Namespace, work: Path, write_corpus: Any) -> int:
    steps_per_epoch = 3  # 12 utterances, batches of 2, accum_grad 2
    epochs = args.epochs or max(2, math.ceil((args.kills * args.save_per_step + 2) / steps_per_epoch))
    write_corpus(work / "data", [12])
    write_corpus(work / "data", [6], name="cv", seed=1)

    def argv(model_dir: Path) -> list[str]:
        out = ["--config", "tests/trainer/toy.yaml", "--trust_config", "--model", "toy", "--train_data", str(work / "data/train.list"),
               "--cv_data", str(work / "data/cv.list"), "--model_dir", str(model_dir), "--comet_disabled",
               "--checkpoint", "last", "--train_engine", args.engine, f"train_conf.max_epoch={epochs}",
               "train_conf.accum_grad=2", f"train_conf.save_per_step={args.save_per_step}", "train_conf.keep_last=2",
               "train_conf.keep_best=2", "train_conf.ema_decay=0.9", "train_conf.log_interval=1"]
        if args.engine == "deepspeed":
            out += ["--deepspeed_config", "configs/deepspeed/zero2.json"]
        return out

    print(f"fault campaign: toy model, {args.engine}, {epochs} epochs x {steps_per_epoch} steps, checkpoint every "
          f"{args.save_per_step} step(s), {args.kills} kills, seed {args.seed}", flush=True)
    ref = start(0, argv(work / "uninterrupted"), work, None, None, args.delay)
    if not (os.WIFEXITED(ref.status) and os.WEXITSTATUS(ref.status) == 0):
        print(f"the uninterrupted run failed (status {ref.status}); see {work / 'attempt_000.log'}:", file=sys.stderr)
        print((work / "attempt_000.log").read_text()[-3000:], file=sys.stderr)
        return 1
    total = ref.last_step_done or 0
    t_start = next((t for n, _, t in ref.events if n == "start"), 0.0)
    per_step = (ref.seconds - t_start) / max(total, 1)
    print(f"uninterrupted: {total} steps in {ref.seconds:.1f} s", flush=True)

    # The kill plan: distinct, increasing steps (so every restart reaches its target), a point the
    # uninterrupted run passed at that step, and for some attempts an earlier random timer.
    rng = random.Random(args.seed)
    by_step: dict[int, list[str]] = {}
    for name, step, _ in ref.events:
        if step >= 1 and name != "start" and name not in by_step.setdefault(step, []):
            by_step[step].append(name)
    steps = sorted(by_step)
    if args.kills > len(steps):
        print(f"fault_campaign.py: error: {args.kills} kills need at least that many steps; use --epochs",
              file=sys.stderr)
        return 2
    plan = [(rng.choice(by_step[s]), s) for s in sorted(rng.sample(steps, args.kills))]
    timers = [rng.random() < args.timer_share for _ in plan]
    fractions = [rng.random() for _ in plan]
    in_startup = [rng.random() < 0.25 for _ in plan]  # else the timer falls in the training part

    run_dir = work / "killed"
    attempts: list[Attempt] = []
    resumed_at = 0
    for i, target in enumerate(plan, 1):
        timer = None
        if timers[i - 1]:  # starting up / loading the checkpoint, or between the start and the target point
            f = fractions[i - 1]
            timer = f * t_start if in_startup[i - 1] else f * (target[1] - resumed_at + 1) * per_step
        a = start(i, argv(run_dir), work, target, timer, args.delay, after_start=not in_startup[i - 1])
        attempts.append(a)
        if a.killed_by is None:
            print(f"[{i:>3}/{len(plan)}] the run ended before its kill (status {a.status}): "
                  f"see {work / f'attempt_{i:03d}.log'}", file=sys.stderr)
            return 1
        begun = "not started" if a.start_step is None else f"from step {a.start_step}"
        how = (f"timer {timer:.2f} s {'into start-up' if in_startup[i - 1] else 'after training began'}"
               if a.killed_by == "timer" else f"point {target[0]}@{target[1]}")
        print(f"[{i:>3}/{len(plan)}] killed by {how} {a.where} ({begun}, last step done "
              f"{a.last_step_done if a.last_step_done is not None else '-'}, {a.seconds:.2f} s)", flush=True)
        resumed_at = target[1]  # the next run resumes at or before this step
    final = start(len(plan) + 1, argv(run_dir), work, None, None, args.delay)
    attempts.append(final)
    if not (os.WIFEXITED(final.status) and os.WEXITSTATUS(final.status) == 0):
        print(f"the last restart failed (status {final.status}):", file=sys.stderr)
        print((work / f"attempt_{len(plan) + 1:03d}.log").read_text()[-3000:], file=sys.stderr)
        return 1

    # Steps lost: done by a killed run after the checkpoint the next run resumed from.
    lost = []
    for a, nxt in zip(attempts, attempts[1:]):
        done = a.last_step_done
        if done is None:
            continue
        later = next((b.start_step for b in attempts[attempts.index(nxt):] if b.start_step is not None), 0)
        lost.append(max(0, done - later))
    ref_path, ref_state = load_final(work / "uninterrupted")
    got_path, got_state = load_final(run_dir)
    diffs = compare(ref_state, got_state)
    model_key = "/model.pt/model" if args.engine == "deepspeed" else "/model"
    model_diffs = [d for d in diffs if d == model_key or d.startswith(model_key + "/")]
    ref_list, ref_hidden = folder_listing(work / "uninterrupted")
    got_list, got_hidden = folder_listing(run_dir)
    inside = sum(1 for a in attempts[:-1] if a.start_step is not None and (a.last_point or "").startswith(SAVE_POINTS))
    by_timer = sum(1 for a in attempts[:-1] if a.killed_by == "timer")

    print()
    print(f"kills survived: {len(plan)}/{len(plan)} ({len(plan) - by_timer} at fault points, {by_timer} by timer; "
          f"{inside} inside checkpoint saves)")
    print(f"steps lost (recomputed after a restart): {sum(lost)} in all, at most {max(lost, default=0)} per kill, "
          f"of {total} steps")
    trainer = got_state["trainer.pt" if args.engine == "deepspeed" else "trainer"]
    if args.engine == "deepspeed":
        trainer = trainer["trainer"]
    print(f"final step: {trainer['step']} (uninterrupted: {total}); newest checkpoint {got_path.name} "
          f"(uninterrupted: {ref_path.name})")
    identical_weights = not model_diffs and ref_path.name == got_path.name
    print(f"final weights identical (bitwise): {'yes' if identical_weights else 'NO'}")
    print(f"whole final checkpoint identical (weights, EMA, optimizer, schedulers, RNG, position): "
          f"{'yes' if not diffs else 'NO: ' + ', '.join(diffs[:6])}")
    same_folder = ref_list == got_list and not got_hidden
    print(f"checkpoint folder like the uninterrupted run's: {'yes' if same_folder else 'NO'}"
          + ("" if same_folder else f" (kept {got_list} vs {ref_list}; leftovers {got_hidden})"))
    return 0 if identical_weights and not diffs and same_folder else 1


if __name__ == "__main__":
    raise SystemExit(main())
