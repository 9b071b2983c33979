"""SC09 reads the digit folders of Speech Commands written here; mu-law against its formula."""
import math

import numpy as np
import pytest
import soundfile
import torch
from test_speech import write_sc

from ssmkit.errors import DataError
from ssmkit.tasks.sc09 import SC09, SC09_WORDS, mu_law_decode, mu_law_encode


def mu_law_by_hand(x: float, mu: int = 255) -> int:
    y = math.copysign(math.log(1 + mu * abs(x)) / math.log(1 + mu), x)
    return math.floor((y + 1) / 2 * mu + 0.5)


def test_mu_law_against_the_formula():
    xs = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    q = mu_law_encode(xs)
    assert q.tolist() == [mu_law_by_hand(float(x)) for x in xs]
    assert int(mu_law_encode(torch.tensor([0.0]))) == 128 and q.min() == 0 and q.max() == 255
    for k in (0, 1, 64, 127, 128, 200, 255):
        y = 2 * k / 255 - 1
        assert abs(float(mu_law_decode(torch.tensor([k]))) - math.copysign((256 ** abs(y) - 1) / 255, y)) < 1e-6
    # decode then encode is the identity on the 256 classes; encode then decode errs by at most half a step
    assert torch.equal(mu_law_encode(mu_law_decode(torch.arange(256))), torch.arange(256))
    err = (mu_law_decode(q).double() - xs).abs()
    step = (mu_law_decode((q + 1).clamp(max=255)).double() - mu_law_decode((q - 1).clamp(min=0)).double()).abs() / 2
    assert (err <= step + 1e-6).all()


def test_sc09_clips_minmax_mulaw_shifted(tmp_path):
    base = write_sc(tmp_path, words=SC09_WORDS)
    task = SC09(data_dir=str(tmp_path))
    assert task.seq_len == 16000 and task.vocab_size == 256 and task.start_token == 128
    assert task.main_metric == "bits_per_sample" and task.generative
    train, val, test = (task.dataset(s) for s in ("train", "val", "test"))
    assert len(train) == len(val) == len(test) == 10
    x, y = train[3]  # "three", speaker 0: a 12000-sample clip, padded
    wav, sr = soundfile.read(base / "three" / "spk0_nohash_0.wav", dtype="float64")
    padded = np.zeros(16000)
    padded[: len(wav)] = wav
    scaled = 2 * (padded - padded.min()) / (padded.max() - padded.min()) - 1
    assert y.tolist() == [mu_law_by_hand(float(v)) for v in scaled]
    assert x[0] == 128 and torch.equal(x[1:], y[:-1])
    raw = SC09(minmax=False, data_dir=str(tmp_path)).dataset("train")[3][1]
    assert raw.tolist() == [mu_law_by_hand(float(v)) for v in padded.astype(np.float32)]


def test_prompts_and_wav_samples(tmp_path):
    write_sc(tmp_path, words=SC09_WORDS)
    task = SC09(data_dir=str(tmp_path))
    p = task.prompts(3, seed=0)
    assert p.shape == (3, 4001) and (p[:, 0] == 128).all()
    samples = torch.cat([p, torch.randint(0, 256, (3, 100))], 1)
    files = task.save_samples(samples, tmp_path / "out", prompt_len=4001)
    assert len(files) == 3
    wav, sr = soundfile.read(files[2], dtype="float32")
    assert sr == 16000 and len(wav) == 4100
    assert np.allclose(wav, mu_law_decode(samples[2, 1:]).numpy(), atol=1e-4)  # 16-bit PCM rounding


def test_check_data_and_options(tmp_path):
    with pytest.raises(DataError, match=r"validation_list\.txt.*ssmkit data download speechcommands"):
        SC09(data_dir=str(tmp_path)).check_data()
    write_sc(tmp_path)  # the ten SC10 words only: no digit folders
    with pytest.raises(DataError, match="zero"):
        SC09(data_dir=str(tmp_path)).check_data()
    with pytest.raises(ValueError, match="minmax"):
        SC09(minmax="yes")


def test_generate_writes_wavs(tmp_path, monkeypatch):
    from test_lm import train_and_generate

    write_sc(tmp_path / "data", words=SC09_WORDS)
    result = train_and_generate(tmp_path, monkeypatch, {"name": "sc09"}, "--num-samples", "2", "--max-new-tokens", "50",
                                "--out", str(tmp_path / "wav"))
    assert result.exit_code == 0, result.output
    wav, sr = soundfile.read(tmp_path / "wav" / "sample_001.wav")
    assert sr == 16000 and len(wav) == 4000 + 50
