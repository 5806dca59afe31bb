"""A seeded generator of voice-assistant commands, the text of the built-in synthetic corpus.

Every sentence is lower-case letters, spaces and apostrophes: numbers and times are spelled out
("set an alarm for seven thirty five pm"), so transcripts fit the default character tokenizer.
The grammar is data: templates with `{slot}`s, and each slot a tuple of phrases. Every phrase can be
drawn, so the vocabulary is exactly the words of the templates and the slot phrases.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_words(n: int) -> str:
    """Spell 0 <= n <= 999 in words: 35 -> "thirty five", 120 -> "one hundred twenty"."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_words covers 0..999; got {n}.")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    return _ONES[hundreds] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


def clock_time_words(hour: int, minute: int) -> str:
    """A 12-hour clock time as spoken, without am/pm: (7, 5) -> "seven oh five", (7, 0) -> "seven o'clock"."""
    if minute == 0:
        return f"{number_words(hour)} o'clock"
    if minute < 10:
        return f"{number_words(hour)} oh {number_words(minute)}"
    return f"{number_words(hour)} {number_words(minute)}"


def _phrases(*items: str) -> tuple[str, ...]:
    return tuple(items)


def _times() -> tuple[str, ...]:
    out = []
    for hour in range(1, 13):
        for minute in range(60):
            spoken = clock_time_words(hour, minute)
            out += [f"{spoken} am", f"{spoken} pm"]
            if minute:
                out.append(spoken)  # "at seven thirty" without am/pm is common
    out += ["noon", "midnight", "half past seven", "quarter past six", "quarter to eight", "half past nine"]
    return tuple(out)


def _durations(adjective: bool) -> tuple[str, ...]:
    # "a timer for twenty minutes" but "a twenty minute timer"
    out = []
    for unit, limit in (("second", 60), ("minute", 100), ("hour", 13)):
        for n in range(1, limit):
            plural = "" if adjective or n == 1 else "s"
            out.append(f"{number_words(n)} {unit}{plural}")
    if not adjective:
        out += ["an hour", "half an hour", "an hour and a half", "a minute", "a few minutes"]
        out += [f"one hour and {number_words(m)} minutes" for m in (5, 10, 15, 20, 30, 45)]
    return tuple(out)


_SLOTS: dict[str, tuple[str, ...]] = {
    "time": _times(),
    "duration": _durations(adjective=False),
    "duration_adj": _durations(adjective=True),
    "small_number": tuple(number_words(n) for n in range(1, 21)),
    "percent": tuple(number_words(n) for n in range(5, 101, 5)),
    "temperature": tuple(number_words(n) for n in range(55, 86)),
    "day": _phrases(
        "today", "tonight", "tomorrow", "tomorrow morning", "this afternoon", "this evening", "this weekend",
        "on monday", "on tuesday", "on wednesday", "on thursday", "on friday", "on saturday", "on sunday",
        "next week",
    ),
    "room": _phrases(
        "kitchen", "living room", "bedroom", "bathroom", "office", "hallway", "garage", "dining room",
        "basement", "nursery", "guest room", "porch", "garden", "attic",
    ),
    "on_off": _phrases("on", "off"),
    "up_down": _phrases("up", "down"),
    "color": _phrases(
        "red", "blue", "green", "yellow", "purple", "orange", "pink", "warm white", "cool white",
    ),
    "contact": _phrases(
        "mom", "dad", "grandma", "grandpa", "my sister", "my brother", "alex", "sarah", "james", "maria",
        "david", "emma", "olivia", "noah", "liam", "sophia", "michael", "jessica", "daniel", "laura", "peter",
        "anna", "the office", "the doctor", "the dentist", "doctor brown", "uncle joe", "aunt lucy",
    ),
    "phone_kind": _phrases("mobile", "home phone", "work phone", "speaker"),
    "message": _phrases(
        "i'm running late", "i'll be home soon", "i'm on my way", "call me back", "see you tonight",
        "don't forget the keys", "dinner is ready", "happy birthday", "i love you",
        "what time is the meeting", "can you pick up the kids", "i'm at the station",
    ),
    "city": _phrases(
        "london", "paris", "berlin", "madrid", "rome", "tokyo", "new york", "chicago", "boston", "seattle",
        "denver", "dallas", "miami", "toronto", "sydney", "dublin", "cambridge", "edinburgh", "amsterdam",
        "vienna", "lisbon", "oslo", "san francisco", "los angeles", "mexico city", "cape town", "singapore",
        "mumbai", "cairo", "san diego",
    ),
    "item": _phrases(
        "milk", "eggs", "bread", "butter", "cheese", "apples", "bananas", "oranges", "coffee", "tea", "sugar",
        "rice", "pasta", "tomatoes", "potatoes", "onions", "carrots", "chicken", "fish", "yogurt", "cereal",
        "orange juice", "peanut butter", "olive oil", "paper towels", "toilet paper", "dish soap",
        "toothpaste", "shampoo", "batteries", "light bulbs", "dog food", "cat food", "flour", "honey",
        "garlic", "lemons", "strawberries", "ice cream", "chocolate",
    ),
    "list_name": _phrases("shopping", "grocery", "to do", "packing", "christmas", "hardware store"),
    "task": _phrases(
        "take out the trash", "call mom", "water the plants", "feed the cat", "walk the dog", "pay the rent",
        "buy milk", "take my medicine", "pick up the kids", "book a table", "send the report",
        "charge my phone", "lock the door", "check the oven",
    ),
    "genre": _phrases(
        "jazz", "rock", "pop", "classical", "country", "hip hop", "blues", "folk", "reggae", "dance",
        "relaxing", "upbeat", "piano", "chill",
    ),
    "artist": _phrases(
        "the beatles", "queen", "taylor swift", "adele", "bob marley", "miles davis", "coldplay",
        "ed sheeran", "elvis", "beyonce", "mozart", "bach", "johnny cash", "the rolling stones",
    ),
    "playlist": _phrases(
        "workout", "morning", "dinner party", "road trip", "focus", "sleep", "favorite", "party",
    ),
    "media_action": _phrases(
        "pause", "stop the music", "resume", "skip this song", "play the next song", "go back",
        "play the previous song", "shuffle my music", "repeat this song", "what song is this",
        "who sings this song",
    ),
    "device": _phrases("tv", "fan", "heater", "coffee machine", "air conditioner", "radio", "dishwasher"),
    "unit_pair": _phrases(
        "ounces in a pound", "feet in a mile", "inches in a foot", "minutes in a day", "days in a year",
        "cups in a liter", "grams in a kilo", "seconds in an hour",
    ),
}

# Intent families are drawn uniformly, then a template within the family, so the many timer and
# alarm variants do not crowd out the rarer commands.
_INTENTS: dict[str, tuple[str, ...]] = {
    "timer": (
        "set a timer for {duration}", "start a timer for {duration}", "set a {duration_adj} timer",
        "start a {duration_adj} timer", "timer for {duration}", "cancel the timer", "pause the timer",
        "how much time is left on my timer", "add {duration} to the timer",
    ),
    "alarm": (
        "set an alarm for {time}", "set an alarm for {time} {day}", "wake me up at {time}",
        "wake me up at {time} {day}", "cancel my alarm for {time}", "turn off the alarm",
        "snooze the alarm for {duration}", "what alarms do i have {day}", "change my alarm to {time}",
    ),
    "music": (
        "play some {genre} music", "play {genre} music in the {room}", "play songs by {artist}",
        "play my {playlist} playlist", "play {artist} in the {room}", "{media_action}",
        "turn the volume {up_down}", "set the volume to {small_number}", "play something by {artist}",
    ),
    "lights": (
        "turn {on_off} the lights in the {room}", "turn the {room} lights {on_off}",
        "turn {on_off} the {room} lights", "dim the {room} lights to {percent} percent",
        "set the {room} lights to {color}", "make the lights in the {room} brighter",
        "switch {on_off} all the lights", "turn {on_off} the {device}",
        "turn {on_off} the {device} in the {room}",
    ),
    "call": (
        "call {contact}", "call {contact} on {phone_kind}", "send a message to {contact} saying {message}",
        "text {contact} {message}", "tell {contact} {message}", "video call {contact}",
        "read my messages from {contact}", "hang up",
    ),
    "weather": (
        "what's the weather in {city}", "what's the weather like {day}", "what's the weather in {city} {day}",
        "will it rain in {city} {day}", "will it snow {day}", "how hot will it be in {city} {day}",
        "do i need an umbrella {day}", "what's the temperature outside", "is it windy in {city}",
    ),
    "lists": (
        "add {item} to my {list_name} list", "add {item} and {item} to my {list_name} list",
        "put {item} on the {list_name} list", "remove {item} from my {list_name} list",
        "what's on my {list_name} list", "clear my {list_name} list", "do i have {item} on my list",
    ),
    "clock": (
        "what time is it", "what time is it in {city}", "what's the date today", "what day is it",
        "what's the time", "how long until {time}", "what's the date {day}",
    ),
    "home": (
        "set the thermostat to {temperature} degrees", "turn the heating {up_down}",
        "make it warmer in the {room}", "make it cooler in the {room}",
        "what's the temperature in the {room}", "lock the front door", "is the back door locked",
        "close the garage door",
    ),
    "reminder": (
        "remind me to {task} at {time}", "remind me to {task} {day}", "remind me in {duration} to {task}",
        "remind me to {task} {day} at {time}", "what are my reminders for {day}",
        "what's on my calendar {day}", "schedule a meeting with {contact} {day} at {time}",
    ),
    "question": (
        "how many {unit_pair}", "what's {small_number} plus {small_number}",
        "what's {small_number} times {small_number}", "how far is {city} from {city}",
        "tell me a joke", "good morning", "good night", "thank you", "stop", "never mind",
    ),
}

_SLOT_RE = re.compile(r"\{(\w+)\}")


def _check_grammar() -> None:
    for templates in _INTENTS.values():
        for template in templates:
            for slot in _SLOT_RE.findall(template):
                if slot not in _SLOTS:  # a typo in the tables above, not user input
                    raise KeyError(f"Template {template!r} uses unknown slot {slot!r}.")


_check_grammar()


def sample_sentence(rng: np.random.Generator) -> str:
    """Draw one command; the same generator state gives the same sentence."""
    intents = list(_INTENTS)
    templates = _INTENTS[intents[int(rng.integers(len(intents)))]]
    template = templates[int(rng.integers(len(templates)))]

    def fill(match: re.Match) -> str:
        options = _SLOTS[match.group(1)]
        return options[int(rng.integers(len(options)))]

    return _SLOT_RE.sub(fill, template)


def sentences(n: int, seed: int = 0) -> list[str]:
    """`n` commands from one seeded generator (for sampling text without synthesis)."""
    rng = np.random.default_rng(seed)
    return [sample_sentence(rng) for _ in range(n)]


@lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Every word the grammar can produce."""
    words: set[str] = set()
    for templates in _INTENTS.values():
        for template in templates:
            words.update(_SLOT_RE.sub(" ", template).split())
    for options in _SLOTS.values():
        for phrase in options:
            words.update(phrase.split())
    return frozenset(words)
