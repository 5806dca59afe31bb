import numpy as np
import pytest

from mpsearch.data import espeak
from mpsearch.data.synth import TEST_VOICES, TRAIN_DEV_VOICES, WIDE_TRAIN_DEV_VOICES
from mpsearch.errors import DataError


def test_speaks_float32_audio_at_22050_hz():
    audio = espeak.synthesize("call mom on mobile", espeak.VoiceSettings("en-us+m3"))
    assert espeak.sample_rate() == 22050
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.4 < audio.size / 22050 < 5
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_faster_rate_gives_shorter_audio():
    text = "set an alarm for seven thirty five pm"
    slow = espeak.synthesize(text, espeak.VoiceSettings("en-us", rate=120))
    fast = espeak.synthesize(text, espeak.VoiceSettings("en-us", rate=220))
    assert fast.size < 0.8 * slow.size


@pytest.mark.parametrize("voice", sorted(set(TRAIN_DEV_VOICES + WIDE_TRAIN_DEV_VOICES + TEST_VOICES)))
def test_every_corpus_voice_exists(voice):
    assert np.abs(espeak.synthesize("hello", espeak.VoiceSettings(voice))).max() > 0.01


def test_unknown_voice_names_the_fix():
    with pytest.raises(DataError, match="no voice 'xx-nowhere'.*available_voices"):
        espeak.synthesize("hello", espeak.VoiceSettings("xx-nowhere"))
    # The engine still works after a failed voice change.
    assert espeak.synthesize("hello", espeak.VoiceSettings("en-us")).size > 0


def test_lists_installed_voices_and_variants():
    assert {"en-us", "en-gb-scotland", "en-029"} <= set(espeak.available_voices("en"))
    assert {"m1", "m3", "f2", "klatt4"} <= set(espeak.available_variants())


def test_audio_does_not_depend_on_what_was_spoken_before():
    # espeak-ng keeps C state across calls (pitch flutter, breath noise); the wrapper resets it.
    breathy = espeak.VoiceSettings("en-us+f5", rate=150, pitch=60)
    first = espeak.synthesize("turn on the lights", breathy)
    espeak.synthesize("what's the weather in paris tomorrow", espeak.VoiceSettings("en+m2"))
    again = espeak.synthesize("turn on the lights", breathy)
    assert np.array_equal(first, again)
