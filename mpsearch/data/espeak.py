"""Text to speech through the espeak-ng library that espeakng-loader ships, called with ctypes.

espeak-ng keeps global state, so a process has one synthesizer, and calls are serialised by a lock
(use processes, not threads, for parallelism). That state also leaks from one utterance into the
next, so each call reloads the library (dlclose, dlopen, initialise: about 1 ms) to make the audio
a function of text and settings alone. Another user of libespeak-ng in the same process would keep
the library loaded, and with it that leak.
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpsearch.errors import DataError

log = logging.getLogger(__name__)

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeakRATE, espeakPITCH, espeakRANGE
_POS_CHARACTER = 1
_CHARS_AUTO = 0
_EE_OK = 0

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class VoiceSettings:
    """How one utterance is spoken: `voice` is an espeak-ng name with an optional variant
    (`en-us+f2`), `rate` is words per minute (80-450), `pitch` and `pitch_range` are 0-100."""

    voice: str = "en-us"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


class _Engine:
    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise DataError("espeak-ng is missing; install it with `pip install espeakng-loader`.") from exc
        self.data_path = Path(espeakng_loader.get_data_path())
        self.lib_path = espeakng_loader.get_library_path()
        self._chunks: list[np.ndarray] = []
        # The CFUNCTYPE object must outlive every synthesis call, or the C side calls freed memory.
        self._callback = _SynthCallback(self._collect)
        libc_name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc_name) if libc_name else None
        self.lib: ctypes.CDLL | None = None
        self.sample_rate = self._load()

    def _load(self) -> int:
        try:
            lib = ctypes.CDLL(self.lib_path)
        except OSError as exc:
            raise DataError(f"Cannot load espeak-ng from {self.lib_path}: {exc}; "
                            "reinstall espeakng-loader.") from None
        _declare(lib)
        # espeak-ng looks for `espeak-ng-data` inside the given folder.
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path.parent).encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise DataError(f"espeak-ng failed to start with data {self.data_path}; "
                            "reinstall espeakng-loader.")
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        return int(rate)

    def _reset(self) -> None:
        # espeak-ng carries state from one utterance into the next in C statics that no API resets
        # (the pitch-flutter phase, its noise generator...), so audio would depend on what was
        # spoken before. Unloading the library and loading it again starts from clean statics;
        # it costs about a millisecond.
        if self.lib is not None:
            self.lib.espeak_Terminate()
            handle, self.lib = self.lib._handle, None
            unload = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
            if unload is not None:
                unload(handle)
        self._load()
        # Voices with breath or roughness draw noise from espeak's and libc's generators.
        if hasattr(self.lib, "espeak_ng_SetRandSeed"):
            self.lib.espeak_ng_SetRandSeed(1)
        if self._libc is not None:
            self._libc.srand(1)

    def _collect(self, wav, n, _events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep going

    def synthesize(self, text: str, settings: VoiceSettings) -> np.ndarray:
        self._reset()
        lib = self.lib
        if lib.espeak_SetVoiceByName(settings.voice.encode()) != _EE_OK:
            raise DataError(
                f"espeak-ng has no voice {settings.voice!r}; pick one of available_voices() "
                "with an optional variant from available_variants(), e.g. 'en-us+f2'."
            )
        lib.espeak_SetParameter(_RATE, int(settings.rate), 0)
        lib.espeak_SetParameter(_PITCH, int(settings.pitch), 0)
        lib.espeak_SetParameter(_RANGE, int(settings.pitch_range), 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_AUTO, None, None)
        if status != _EE_OK:
            raise DataError(f"espeak-ng failed (status {status}) on {text!r}; check the text is plain words.")
        lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        self._chunks = []
        return samples.astype(np.float32) / 32768.0


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]  # fmt: skip
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int
    if hasattr(lib, "espeak_ng_SetRandSeed"):
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _get_engine() -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine()
            log.debug("espeak-ng ready: %s Hz, data %s", _engine.sample_rate, _engine.data_path)
        return _engine


def sample_rate() -> int:
    """The rate (Hz) of the audio `synthesize` returns: 22050 for the shipped espeak-ng."""
    return _get_engine().sample_rate


def synthesize(text: str, settings: VoiceSettings = VoiceSettings()) -> np.ndarray:
    """Speak `text` and return float32 mono samples in [-1, 1) at `sample_rate()`.

    Deterministic: the same text and settings give the same samples in any process, whatever was
    spoken before (the library is reloaded for each call, see the module docstring)."""
    engine = _get_engine()
    with _engine_lock:
        return engine.synthesize(text, settings)


def _data_path() -> Path:
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


def available_variants() -> list[str]:
    """Variant names (`m3`, `f2`, `klatt`...) that can follow a voice after `+`."""
    folder = _data_path() / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def available_voices(prefix: str = "") -> list[str]:
    """Language voice names (`en-us`, `en-gb-scotland`...), lower-cased as espeak-ng matches them."""
    folder = _data_path() / "lang"
    names = (p.name.lower() for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else ()
    return sorted(n for n in names if n.startswith(prefix.lower()))
