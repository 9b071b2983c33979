"""Speech Commands v0.02: SC10 (ten words) and SC35 (all words), raw 16 kHz waveforms or MFCCs.

Files: the official release unpacked as torchaudio does, ``<data>/SpeechCommands/speech_commands_v0.02/
<word>/<speaker>_nohash_<n>.wav`` with ``validation_list.txt`` and ``testing_list.txt`` (paths relative to
that folder); every other file of the chosen words is training data. Clips are read with ``soundfile``
(torchaudio's loader needs torchcodec), zero-padded or cut to one second (L = 16000).

Zero-shot resolution change (S4 paper, Table 5): ``sample_rate: 8000`` resamples the audio to 8 kHz
(L = 8000); ``Task.rate`` is then 16000 / 8000 = 2, and the loop or ``ssmkit eval`` must call
``model.set_rate(task.rate)`` so each layer's kernel is sampled at twice its step size.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ssmkit.errors import DataError
from ssmkit.tasks._shared import ClassificationTask, check_split, read_text, require_files
from ssmkit.tasks.base import TASKS, data_root
from ssmkit.tasks.download import fetch_hint

SC10_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SC35_WORDS = ("backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
              "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
              "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero")
SOURCE_RATE = 16000
SAMPLE_RATES = (16000, 8000, 4000)


class _SpeechDataset(torch.utils.data.Dataset):
    def __init__(self, task, items: list[tuple[Path, int]]):
        self.task, self.items = task, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return self.task.features(self.task.read(path)), torch.tensor(label)


class _SpeechCommands(ClassificationTask):
    encoder = "linear"
    words: tuple[str, ...] = ()

    def __init__(self, sample_rate: int = 16000, mfcc: bool = False, n_mfcc: int = 20, data_dir: str | None = None):
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"task option sample_rate={sample_rate!r} is not allowed; choose one of "
                             f"{', '.join(map(str, SAMPLE_RATES))} (the data is recorded at 16000)")
        if not isinstance(mfcc, bool):
            raise ValueError(f"task option mfcc={mfcc!r} must be true or false")
        if mfcc and sample_rate != SOURCE_RATE:
            raise ValueError("task option sample_rate must stay 16000 with mfcc=true (the zero-shot rate change is for raw audio)")
        if not isinstance(n_mfcc, int) or n_mfcc < 1:
            raise ValueError(f"task option n_mfcc={n_mfcc!r} must be a positive integer")
        self.sample_rate, self.mfcc, self.n_mfcc = sample_rate, mfcc, n_mfcc
        self.root = (Path(data_dir) if data_dir else data_root()) / "SpeechCommands" / "speech_commands_v0.02"
        self.d_input = n_mfcc if mfcc else 1
        self.d_output = len(self.words)
        self._mfcc = None

    @property
    def rate(self) -> float:
        """Step-size factor for ``model.set_rate``: 16000 / sample_rate (2 for the 8 kHz zero-shot test)."""
        return SOURCE_RATE / self.sample_rate

    @property
    def length(self) -> int:
        return self.sample_rate  # one second

    def check_data(self) -> None:
        how = fetch_hint("speechcommands", self.root.parent.parent)  # the release unpacks to <root>/SpeechCommands/...
        require_files([self.root / "validation_list.txt", self.root / "testing_list.txt"]
                      + [self.root / w for w in self.words], f"{self.name} data", how)

    def _split_items(self, split: str) -> list[tuple[Path, int]]:
        lists = {}
        for name, file in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
            lists[name] = {line.strip() for line in read_text(self.root / file).splitlines() if line.strip()}
        items = []
        for label, word in enumerate(self.words):
            for wav in sorted((self.root / word).glob("*.wav")):
                rel = f"{word}/{wav.name}"
                which = "val" if rel in lists["val"] else "test" if rel in lists["test"] else "train"
                if which == split:
                    items.append((wav, label))
        if not items:
            raise DataError(f"{self.name}: no {split} clips of {', '.join(self.words[:3])}... under {self.root}; "
                            "check the word folders and validation_list.txt/testing_list.txt")
        return items

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        check_split(split)
        self.check_data()
        return _SpeechDataset(self, self._split_items(split))

    def read(self, path: Path) -> torch.Tensor:
        """One clip -> (16000,) float32 at 16 kHz, padded with zeros or cut."""
        import soundfile

        try:
            wav, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as e:  # libsndfile raises its own error type for broken files
            raise DataError(f"{path}: cannot read this WAV file ({type(e).__name__}: {e})") from None
        if sr != SOURCE_RATE or wav.shape[1] != 1:
            raise DataError(f"{path}: expected mono 16000 Hz audio, got {wav.shape[1]} channel(s) at {sr} Hz")
        if not np.isfinite(wav).all():  # a float WAV can hold NaN/inf, which would train every weight to NaN
            first = int(np.flatnonzero(~np.isfinite(wav[:, 0]))[0])
            raise DataError(f"{path}: sample {first} is {wav[first, 0]} (a NaN or infinite value); replace or delete this file")
        out = np.zeros(SOURCE_RATE, np.float32)
        n = min(len(wav), SOURCE_RATE)
        out[:n] = wav[:n, 0]
        return torch.from_numpy(out)

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """(16000,) waveform -> (L, 1) raw samples at ``sample_rate`` or (T, n_mfcc) MFCC frames."""
        if self.mfcc:
            if self._mfcc is None:
                import torchaudio

                # torchaudio's defaults (n_fft 400, 128 mels), as in the S4 code: a few of the 128 mel filters
                # fall between FFT bins and are empty, which torchaudio warns about on every construction.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
                    self._mfcc = torchaudio.transforms.MFCC(sample_rate=SOURCE_RATE, n_mfcc=self.n_mfcc, log_mels=True)
            return self._mfcc(wav).transpose(0, 1)  # (T, n_mfcc)
        if self.sample_rate != SOURCE_RATE:
            import torchaudio

            wav = torchaudio.functional.resample(wav, SOURCE_RATE, self.sample_rate)
        return wav[: self.length].unsqueeze(-1)  # (L, 1)


@TASKS.register("sc10", description="Speech Commands, 10 words, raw 16 kHz audio (L=16000); sample_rate=8000 for the zero-shot test")
class SC10(_SpeechCommands):
    name = "sc10"
    words = SC10_WORDS


@TASKS.register("sc35", description="Speech Commands, all 35 words, raw 16 kHz audio (L=16000) or MFCC")
class SC35(_SpeechCommands):
    name = "sc35"
    words = SC35_WORDS
