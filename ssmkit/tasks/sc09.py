"""SC09: unconditional speech generation on the ten digit words of Speech Commands (task ``sc09``).

The clips are read from the Speech Commands v0.02 folders the classification tasks read
(``tasks/speech.py``: ``<data>/SpeechCommands/speech_commands_v0.02/{zero,...,nine}/*.wav``, split by
``validation_list.txt`` and ``testing_list.txt``), 16 kHz, padded or cut to one second (L = 16000). As the
reference's audio loaders do, each clip is min-max scaled to [-1, 1] (``minmax: true``) and mu-law
quantised to 8 bits (256 classes):

    y = sign(x) ln(1 + mu |x|) / ln(1 + mu),  q = floor((y + 1) / 2 * mu + 0.5),  mu = 255;
    decoding: y = 2 q / mu - 1,  x = sign(y) ((1 + mu)^|y| - 1) / mu.

The input is the sequence shifted right by one behind the start token 128 (mu-law silence). The metric is
the negative log-likelihood in bits per audio sample (``bits_per_sample``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ssmkit.tasks._shared import check_split
from ssmkit.tasks.base import TASKS
from ssmkit.tasks.generative import GenerativeTask, shift_right
from ssmkit.tasks.speech import SOURCE_RATE, _SpeechCommands

SC09_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BITS = 8
MU = 2**BITS - 1


def mu_law_encode(x: torch.Tensor, mu: int = MU) -> torch.Tensor:
    """Waveform in [-1, 1] -> LongTensor of mu-law classes 0..mu."""
    x = x.clamp(-1.0, 1.0).double()
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.floor((y + 1) / 2 * mu + 0.5).long()


def mu_law_decode(q: torch.Tensor, mu: int = MU) -> torch.Tensor:
    """Mu-law classes 0..mu -> float32 waveform in [-1, 1]."""
    y = 2 * q.double() / mu - 1
    return (torch.sign(y) * (torch.pow(1.0 + mu, y.abs()) - 1) / mu).float()


def minmax_scale(x: torch.Tensor) -> torch.Tensor:
    """x scaled to [-1, 1] by its own minimum and maximum (a constant clip becomes silence)."""
    lo, hi = x.min(), x.max()
    return torch.zeros_like(x) if hi <= lo else 2 * (x - lo) / (hi - lo) - 1


class _DigitClips(_SpeechCommands):
    """The Speech Commands reader (folders, split lists, WAV decoding) for the ten digit words."""

    name = "sc09"
    words = SC09_WORDS


class _ClipDataset(torch.utils.data.Dataset):
    def __init__(self, task: SC09, paths: list[Path]):
        self.task, self.paths = task, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return shift_right(self.task.quantize(self.task.clips.read(self.paths[i])), self.task.start_token)


@TASKS.register("sc09", description="SC09 unconditional audio: spoken digits, 16 kHz 8-bit mu-law (L=16000), NLL in bits")
class SC09(GenerativeTask):
    name = "sc09"
    vocab_size = d_input = d_output = MU + 1
    start_token = (MU + 1) // 2  # mu-law of 0.0
    bits_name = "bits_per_sample"
    seq_len = SOURCE_RATE  # one second

    def __init__(self, minmax: bool = True, data_dir: str | None = None):
        if not isinstance(minmax, bool):
            raise ValueError(f"task option minmax={minmax!r} must be true or false")
        self.minmax = minmax
        self.clips = _DigitClips(data_dir=data_dir)

    def check_data(self) -> None:
        self.clips.check_data()

    def quantize(self, wav: torch.Tensor) -> torch.Tensor:
        """(16000,) waveform -> (16000,) mu-law classes (after min-max scaling when ``minmax``)."""
        return mu_law_encode(minmax_scale(wav) if self.minmax else wav)

    def dataset(self, split: str, seed: int = 0) -> _ClipDataset:
        check_split(split)
        self.check_data()
        return _ClipDataset(self, [path for path, _ in self.clips._split_items(split)])

    # --- generation hooks ---
    prompt_length = 1 + SOURCE_RATE // 4  # the start token and the first quarter second

    def prompts(self, n: int, seed: int = 0) -> torch.Tensor:
        test = self.dataset("test")
        return torch.stack([test[i][0][: self.prompt_length] for i in self._pick(len(test), n, seed)])

    def save_samples(self, samples: torch.Tensor, out: Path, prompt_len: int) -> list[Path]:
        """One 16 kHz WAV per sample (``sample_000.wav``, ...), the start token dropped, mu-law decoded."""
        import soundfile

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, row in enumerate(samples):
            wav = mu_law_decode(row[1:].clamp(0, MU).cpu()).numpy().astype(np.float32)
            path = out / f"sample_{i:03d}.wav"
            soundfile.write(str(path), wav, SOURCE_RATE)
            paths.append(path)
        return paths
