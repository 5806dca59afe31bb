"""The built-in corpus: voice-assistant commands spoken by espeak-ng voices, with noise.

Layout of `out_dir`:
    audio/<split>/<id>.wav      16 kHz mono 16-bit PCM
    train.jsonl dev.jsonl test.jsonl   manifests; `audio_filepath` relative to `out_dir`
    corpus.json                 seed, utterances, version and recipe; written last

Test speakers are unseen: `TEST_VOICES` share no variant (timbre) with `TRAIN_DEV_VOICES`, and
two of their accents are also absent from training.

Determinism: utterance `i` draws its text, voice settings, noise and silences from
`SeedSequence(seed, spawn_key=(i,))`, and `espeak.synthesize` depends on nothing spoken before,
so worker count, scheduling and resuming do not change a byte.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.fft import next_fast_len
from scipy.signal import firwin, resample_poly
from tqdm import tqdm

from mpsearch.artifacts import atomic_path, read_json, write_json
from mpsearch.data import espeak, grammar
from mpsearch.data.manifest import SAMPLE_RATE, Utterance, write_manifest
from mpsearch.errors import DataError

log = logging.getLogger(__name__)

CORPUS_VERSION = 1
SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}

# Speakers heard in training and development: 14 voices over 10 variants and 5 accents.
TRAIN_DEV_VOICES: tuple[str, ...] = (
    "en-us+m1", "en-us+f1", "en-us+m3", "en-us+f3",
    "en+m2", "en+f2", "en+m4",
    "en-gb-x-rp+m6", "en-gb-x-rp+f4",
    "en-gb-scotland+m5", "en-gb-scotland+f1",
    "en-029+m3", "en-029+f2",
    "en-gb-x-gbclan+m4",
)  # fmt: skip
# The wide set: 25 voices over 25 variants (the ten above, three Klatt models and twelve named ones) and
# the same 5 accents. Trained on it, the quickstart RNN-T's test WER on the unseen voices fell from 21%
# to 9%, but it needs ~2x the steps to start aligning (analysis/RESULTS.md, "Voice variety").
WIDE_TRAIN_DEV_VOICES: tuple[str, ...] = (
    "en-us+m1", "en+m2", "en-gb-x-rp+m3", "en-gb-scotland+m4", "en-029+m5", "en-gb-x-gbclan+m6",
    "en-us+f1", "en+f2", "en-gb-x-rp+f3", "en-gb-scotland+f4",
    "en-029+klatt", "en-gb-x-gbclan+klatt2", "en-us+klatt3",
    "en+Andy", "en-gb-x-rp+Annie", "en-gb-scotland+Alex", "en-029+Denis", "en-gb-x-gbclan+Michael",
    "en-us+adam", "en+anika", "en-gb-x-rp+david", "en-gb-scotland+linda", "en-029+paul",
    "en-gb-x-gbclan+steph", "en-us+victor",
)  # fmt: skip
VOICE_SETS: dict[str, tuple[str, ...]] = {"standard": TRAIN_DEV_VOICES, "wide": WIDE_TRAIN_DEV_VOICES}
# Speakers only in test: variants never used in either set, two accents never used in either.
TEST_VOICES: tuple[str, ...] = ("en-us-nyc+m7", "en-gb-x-gbcwmd+f5", "en-us+m8", "en+klatt4")

_MANIFEST_SUFFIX = ".jsonl"
# Starting worker processes costs about a second; by default each gets at least this many utterances.
_MIN_JOBS_PER_WORKER = 100
_PROGRESS_FILE = ".synth-in-progress.json"


@dataclass(frozen=True)
class CorpusRecipe:
    """The random ranges each utterance is drawn from; recorded in corpus.json."""

    rate_wpm: tuple[int, int] = (130, 200)
    pitch: tuple[int, int] = (30, 70)
    pitch_range: tuple[int, int] = (30, 80)
    snr_db: tuple[float, float] = (15.0, 35.0)
    noise_colors: tuple[str, ...] = ("white", "pink", "brown")
    lead_silence_s: tuple[float, float] = (0.05, 0.4)
    trail_silence_s: tuple[float, float] = (0.05, 0.4)
    peak_level: tuple[float, float] = (0.3, 0.9)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class _Plan:
    index: int
    utt_id: str
    split: str
    text: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    snr_db: float
    noise_color: str
    lead_s: float
    trail_s: float
    peak: float

    @property
    def relpath(self) -> str:
        return f"audio/{self.split}/{self.utt_id}.wav"


def split_sizes(utterances: int) -> dict[str, int]:
    """How many utterances each split gets: 10% dev and 10% test (at least one each), the rest train."""
    if utterances < len(SPLITS):
        raise DataError(f"A corpus needs at least {len(SPLITS)} utterances (one per split); "
                        f"got {utterances}.")
    dev = max(1, round(utterances * SPLIT_FRACTIONS["dev"]))
    test = max(1, round(utterances * SPLIT_FRACTIONS["test"]))
    return {"train": utterances - dev - test, "dev": dev, "test": test}


def _plan(seed: int, index: int, split: str, position: int, recipe: CorpusRecipe,
          train_voices: tuple[str, ...]) -> _Plan:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    voices = TEST_VOICES if split == "test" else train_voices
    # Round robin rather than random, so even a tiny split hears every one of its voices.
    voice = voices[position % len(voices)]
    return _Plan(
        index=index,
        utt_id=f"{split}-{index:06d}",
        split=split,
        text=grammar.sample_sentence(rng),
        voice=voice,
        rate=int(rng.integers(recipe.rate_wpm[0], recipe.rate_wpm[1] + 1)),
        pitch=int(rng.integers(recipe.pitch[0], recipe.pitch[1] + 1)),
        pitch_range=int(rng.integers(recipe.pitch_range[0], recipe.pitch_range[1] + 1)),
        snr_db=float(rng.uniform(*recipe.snr_db)),
        noise_color=recipe.noise_colors[int(rng.integers(len(recipe.noise_colors)))],
        lead_s=float(rng.uniform(*recipe.lead_silence_s)),
        trail_s=float(rng.uniform(*recipe.trail_silence_s)),
        peak=float(rng.uniform(*recipe.peak_level)),
    )


def _plans(seed: int, utterances: int, recipe: CorpusRecipe, train_voices: tuple[str, ...]) -> list[_Plan]:
    plans = []
    index = 0
    for split, size in split_sizes(utterances).items():
        for position in range(size):
            plans.append(_plan(seed, index, split, position, recipe, train_voices))
            index += 1
    return plans


def _colored_noise(rng: np.random.Generator, n: int, color: str) -> np.ndarray:
    if color == "white" or n < 2:
        return rng.standard_normal(n)
    # Shaped at a fast FFT length and cut: an FFT of an awkward (prime) length costs 10x more.
    size = next_fast_len(n, real=True)
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    # Pink noise has power ~1/f (amplitude 1/sqrt f), brown noise power ~1/f^2.
    spectrum /= np.sqrt(freqs) if color == "pink" else freqs
    return np.fft.irfft(spectrum, size)[:n]


def _active_power(speech: np.ndarray, frame: int = 320) -> float:
    # SNR is set against speech, not against espeak's pauses: mean power of the 20 ms frames within
    # 40 dB of the loudest one.
    usable = speech[: speech.size - speech.size % frame] if speech.size >= frame else speech
    energies = (usable.reshape(-1, min(frame, usable.size)) ** 2).mean(axis=1)
    return float(energies[energies >= energies.max() * 1e-4].mean())


@lru_cache(maxsize=1)
def _resampling_filter() -> np.ndarray:
    # resample_poly's own default filter for 441 -> 320, designed once rather than per call.
    return firwin(2 * 10 * 441 + 1, 1.0 / 441, window=("kaiser", 5.0))


def _render(plan: _Plan, seed: int) -> np.ndarray:
    speech = espeak.synthesize(
        plan.text, espeak.VoiceSettings(plan.voice, plan.rate, plan.pitch, plan.pitch_range)
    ).astype(np.float64)
    if speech.size == 0 or not np.any(speech):
        raise DataError(f"espeak-ng produced no audio for {plan.text!r} with voice {plan.voice}; "
                        "check the espeak-ng data files are intact.")
    if espeak.sample_rate() != 22050:
        raise DataError(f"espeak-ng speaks at {espeak.sample_rate()} Hz, not 22050 Hz; "
                        "install espeakng-loader 0.2.x.")
    speech = resample_poly(speech, 320, 441, window=_resampling_filter())  # 22050 Hz -> 16 kHz
    speech_power = _active_power(speech)
    lead = int(plan.lead_s * SAMPLE_RATE)
    audio = np.concatenate([np.zeros(lead), speech, np.zeros(int(plan.trail_s * SAMPLE_RATE))])
    # Noise has its own stream (spawn_key index, 1) so changing the plan's draws leaves it alone.
    noise_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(plan.index, 1)))
    noise = _colored_noise(noise_rng, audio.size, plan.noise_color)
    noise *= np.sqrt(speech_power / (np.mean(noise**2) * 10 ** (plan.snr_db / 10)))
    audio += noise
    audio *= plan.peak / np.max(np.abs(audio))
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def _synthesize_one(job: tuple[Path, int, _Plan]) -> tuple[int, float]:
    out_dir, seed, plan = job
    path = out_dir / plan.relpath
    # Audio is written atomically, so a file that exists is complete (left by an interrupted run).
    if path.is_file():
        try:
            return plan.index, sf.info(str(path)).frames / SAMPLE_RATE
        except (sf.LibsndfileError, RuntimeError):
            pass
    samples = _render(plan, seed)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), samples, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return plan.index, samples.size / SAMPLE_RATE


def _finished(out_dir: Path, record: dict) -> bool:
    corpus_file = out_dir / "corpus.json"
    if not corpus_file.is_file():
        return False
    try:
        previous = read_json(corpus_file)
    except (OSError, json.JSONDecodeError):
        return False
    if previous != record:
        raise DataError(
            f"{out_dir} already holds a corpus made with {json.dumps(previous, sort_keys=True)}; "
            "pick another --out folder or delete this one."
        )
    return all((out_dir / f"{split}{_MANIFEST_SUFFIX}").is_file() for split in SPLITS)


def _manifest_paths(out_dir: Path) -> dict[str, Path]:
    return {split: out_dir / f"{split}{_MANIFEST_SUFFIX}" for split in SPLITS}


def _start_or_resume(out_dir: Path, record: dict) -> None:
    """Keep audio left by an interrupted run with the same settings; remove any other."""
    marker = out_dir / _PROGRESS_FILE
    for previous in (marker, out_dir / "corpus.json"):
        try:
            if previous.is_file() and read_json(previous) == record:
                log.info("Resuming the corpus in %s", out_dir)
                write_json(marker, record)
                return
        except (OSError, json.JSONDecodeError):
            pass
    if (out_dir / "audio").exists():
        log.warning("Removing the corpus in %s left by a run with other settings", out_dir)
        shutil.rmtree(out_dir / "audio")
        for path in [*_manifest_paths(out_dir).values(), out_dir / "corpus.json"]:
            path.unlink(missing_ok=True)
    write_json(marker, record)


def _pool_context() -> multiprocessing.context.BaseContext:
    # Not fork: the caller may have threads (torch's), and forking a threaded process can deadlock.
    # A fork server forks clean workers from one process that has already imported scipy.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def _workers_can_start() -> bool:
    # Fork-server and spawn workers import the main script again; run from stdin (`python -`), that
    # import fails in every worker and the pool restarts them forever.
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.isfile(main_file)


def synthesize_corpus(
    out_dir: str | Path,
    utterances: int = 4000,
    seed: int = 0,
    workers: int | None = None,
    recipe: CorpusRecipe = CorpusRecipe(),
    voices: str = "standard",
) -> dict[str, Path]:
    """Build (or reuse) the synthetic corpus in `out_dir` and return split name -> manifest path.

    `voices` names the train/dev speakers (`VOICE_SETS`); test speakers are always `TEST_VOICES`.
    The same `seed`, `utterances`, `recipe` and `voices` give byte-identical manifests and audio on any
    number of `workers` (default: one per CPU, fewer for small corpora). An interrupted run
    resumes where it stopped."""
    if utterances < 1:
        raise DataError(f"The number of utterances must be positive; got {utterances}.")
    if voices not in VOICE_SETS:
        raise DataError(f"Unknown voice set '{voices}'; use one of {', '.join(VOICE_SETS)}.")
    out_dir = Path(os.path.abspath(out_dir))
    record = {"version": CORPUS_VERSION, "seed": int(seed), "utterances": int(utterances),
              "recipe": recipe.to_dict(), "sample_rate": SAMPLE_RATE}
    if voices != "standard":  # recorded only when not the standard set, so corpora made before still match
        record["voices"] = voices
    manifests = _manifest_paths(out_dir)
    if _finished(out_dir, record):
        log.info("Reusing the finished corpus in %s", out_dir)
        return manifests

    plans = _plans(seed, utterances, recipe, VOICE_SETS[voices])
    out_dir.mkdir(parents=True, exist_ok=True)
    _start_or_resume(out_dir, record)
    for split in SPLITS:
        (out_dir / "audio" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, seed, plan) for plan in plans]
    if workers is None:
        workers = min(os.cpu_count() or 1, max(1, len(jobs) // _MIN_JOBS_PER_WORKER))
    workers = max(1, min(workers, len(jobs)))
    if workers > 1 and not _workers_can_start():
        log.warning("Synthesizing in this process only: worker processes re-run the main script, and "
                    "%r is not a file; run from a script or module to use %d workers.",
                    getattr(sys.modules["__main__"], "__file__", None), workers)
        workers = 1
    log.info("Synthesizing %d utterances into %s with %d worker(s)", utterances, out_dir, workers)

    durations: dict[int, float] = {}
    progress = tqdm(total=len(plans), desc="synthesizing", unit="utt", disable=not sys.stderr.isatty())
    with progress:
        if workers == 1:
            for index, duration in map(_synthesize_one, jobs):
                durations[index] = duration
                progress.update()
        else:
            with _pool_context().Pool(workers) as pool:
                for index, duration in pool.imap_unordered(_synthesize_one, jobs, chunksize=16):
                    durations[index] = duration
                    progress.update()

    # Manifests last, so an interrupted run never leaves one naming audio that is not there.
    for split, path in manifests.items():
        write_manifest(path, [
            Utterance(out_dir / p.relpath, durations[p.index], p.text, p.voice)
            for p in plans if p.split == split
        ])
    write_json(out_dir / "corpus.json", record)
    (out_dir / _PROGRESS_FILE).unlink(missing_ok=True)
    log.info("Corpus ready in %s: %s", out_dir, split_sizes(utterances))
    return manifests
