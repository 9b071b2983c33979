"""Speech Commands read from WAV files written with soundfile in the official layout."""
import numpy as np
import pytest
import soundfile
import torch

from ssmkit.errors import DataError
from ssmkit.tasks.speech import SC10, SC10_WORDS, SC35


def write_sc(root, words=SC10_WORDS, per_word=3):
    base = root / "SpeechCommands" / "speech_commands_v0.02"
    val, test = [], []
    t = np.arange(16000) / 16000
    for k, w in enumerate(words):
        (base / w).mkdir(parents=True)
        for i in range(per_word):
            n = 16000 if i else 12000  # one short clip, padded by the loader
            soundfile.write(base / w / f"spk{i}_nohash_0.wav", (0.1 * np.sin(2 * np.pi * (100 + 50 * k) * t[:n])).astype(np.float32), 16000)
        val.append(f"{w}/spk1_nohash_0.wav")
        test.append(f"{w}/spk2_nohash_0.wav")
    (base / "validation_list.txt").write_text("\n".join(val) + "\n")
    (base / "testing_list.txt").write_text("\n".join(test) + "\n")
    return base


def test_sc10_splits_padding_and_rate(tmp_path):
    base = write_sc(tmp_path)
    task = SC10(data_dir=str(tmp_path))
    assert task.rate == 1.0 and task.d_output == 10
    train, val, test = (task.dataset(s) for s in ("train", "val", "test"))
    assert len(train) == len(val) == len(test) == 10
    x, y = train[1]
    assert x.shape == (16000, 1) and int(y) == 1
    ref, _ = soundfile.read(base / "no" / "spk0_nohash_0.wav", dtype="float32")
    assert torch.allclose(x[:12000, 0], torch.from_numpy(ref)) and x[12000:].eq(0).all()
    half = SC10(sample_rate=8000, data_dir=str(tmp_path))
    assert half.rate == 2.0
    xh, _ = half.dataset("test")[0]
    assert xh.shape == (8000, 1)
    # a 100 Hz tone survives resampling: compare with the 16 kHz clip at every other sample
    full, _ = task.dataset("test")[0]
    assert torch.allclose(xh[100:7900, 0], full[200:15800:2, 0], atol=2e-3)


def test_mfcc_and_options(tmp_path):
    write_sc(tmp_path)
    x, _ = SC10(mfcc=True, data_dir=str(tmp_path)).dataset("val")[0]
    assert x.shape[1] == 20 and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="sample_rate"):
        SC10(sample_rate=11025)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match=r"validation_list.txt.*ssmkit data download speechcommands"):
        SC35(data_dir=str(tmp_path)).dataset("train")
    base = write_sc(tmp_path)
    (base / "yes" / "spk0_nohash_0.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(DataError, match=r"yes/spk0_nohash_0.wav: cannot read this WAV file"):
        SC10(data_dir=str(tmp_path)).dataset("train")[0]
