"""Language modelling on text files (task ``lm``): your own files, or the WikiText-103 layout.

Your own text: ``files:`` (one glob, file or folder, cut by ``split`` fractions, default 0.9/0.05/0.05 by
position; or ``{train: ..., valid: ..., test: ...}``), at ``level: byte``, ``word`` or ``tokenizer``
(``tokenizer:`` a ``tokenizers`` JSON file or a Hugging Face tokenizer folder), documents joined by
``separator``; tokenised once in a streaming pass into a memory-mapped cache, so a corpus larger than memory
works (``tasks/text_corpus.py`` says how). Everything below (windows, adaptive softmax, metrics) is shared.

WikiText layout: ``<data>/<corpus>/wiki.{train,valid,test}.tokens`` (``corpus`` defaults to ``wikitext-103``, the
folder the official ``wikitext-103-v1.zip`` unpacks to), or with ``raw: true`` the byte-level release,
``<data>/<corpus>-raw/wiki.{train,valid,test}.raw``. ``ssmkit data generate text`` writes a small synthetic
corpus in the same layout (``<data>/synthetic-text``), for CPU runs and tests.

Levels:
- ``byte``: every byte of the file is a token (V = 256; the main metric is bits per byte).
- ``word``: as the reference (Transformer-XL's vocabulary, used by the S4 code): each line is split on
  whitespace and ends with ``<eos>`` (blank lines too); the vocabulary is ``<eos>`` followed by every word of
  the training file in decreasing count (ties in order of first appearance), so WikiText-103 gives
  V = 267,735 with its own ``<unk>`` word. A validation/test word missing from the vocabulary becomes
  ``<unk>`` when the vocabulary has one, else it is an error naming the word. With ``adaptive: true`` (the
  default) the output is ``torch.nn.AdaptiveLogSoftmaxWithLoss`` with the reference's cutoffs
  [19997, 39997, 199997] and div_value 4 (cutoffs at or beyond V - 1 are dropped; none left means a plain
  softmax), and with ``tie_adaptive: true`` (the default) the input embedding is the adaptive input tied to
  it (``TiedAdaptiveEmbedding``), as the reference's model, so WikiText-103's embedding costs ~36M parameters
  at d = 1024 instead of 274M.

Each split is one contiguous token stream cut into windows of ``seq_len`` inputs: window i reads
tokens[i L : i L + L + 1] (x = its first L, y = its last L), so consecutive windows share one boundary
token and no target is predicted twice. Windows are items of a map-style dataset: Accelerate's sampler
gives each process, and the DataLoader each worker, disjoint windows. Training uses the full windows;
validation and test add the last partial window (x padded with 0, y with IGNORE_INDEX), so an evaluation
scores every token of the split but the first.

The adaptive head keeps the generation contract (``model(x (B, L))`` gives (B, L, V) log-probs, ``step``
(B, V) log-probs) and stays cheap in training: the datasets of an adaptive task yield x as (2, L), the
tokens stacked over their targets, and for such an input the wrapped model returns the (B, L) log-prob of
each target (``AdaptiveLogSoftmaxWithLoss.forward``, which evaluates a tail cluster only for the tokens in
it), which the loss negates.

WikiText word streams and the vocabulary are cached next to the files (``ssmkit-cache/``, keyed by the files'
sizes and modification times); an unwritable folder just means no cache.
"""
from __future__ import annotations

import hashlib
import os
import random
from array import array
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ssmkit.errors import DataError, RecipeError, UserError
from ssmkit.tasks._shared import IGNORE_INDEX, check_choice, check_split, require_files
from ssmkit.tasks.base import TASKS, data_root
from ssmkit.tasks.download import fetch_hint
from ssmkit.tasks.generative import GenerativeTask, check_causal
from ssmkit.tasks.text_corpus import TextCorpus

SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}
EOS, UNK = "<eos>", "<unk>"
WT103_CUTOFFS = (19997, 39997, 199997)  # the S4 code's adaptive softmax (Transformer-XL's, minus its offsets)


class WindowDataset(torch.utils.data.Dataset):
    """Length-L windows of one token stream (numpy array): item i is (x, y) = (s[iL : iL+L], s[iL+1 : iL+L+1]).

    ``partial``: also the last, shorter window, padded to L (x with 0, y with IGNORE_INDEX).
    ``pairs``: x is (2, L), the inputs stacked over the targets (the adaptive head's training input).
    """

    def __init__(self, stream: np.ndarray, L: int, partial: bool, pairs: bool = False):
        if len(stream) < 2:
            raise DataError(f"a split of {len(stream)} token(s) has nothing to predict")
        self.stream, self.L, self.pairs = stream, L, pairs
        full, rest = divmod(len(stream) - 1, L)
        self.size = full + (1 if partial and rest else 0)
        if self.size == 0:
            raise DataError(f"a split of {len(stream)} tokens is shorter than one window of seq_len={L}; lower task.seq_len")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        s = torch.from_numpy(np.asarray(self.stream[i * self.L: i * self.L + self.L + 1], dtype=np.int64))
        x = torch.zeros(self.L, dtype=torch.long)
        y = torch.full((self.L,), IGNORE_INDEX, dtype=torch.long)
        n = len(s) - 1
        x[:n], y[:n] = s[:-1], s[1:]
        return (torch.stack([x, y]) if self.pairs else x), y


def read_lines(path: Path):
    """The file's lines, one at a time (split at "\\n" only, as Python reads text files)."""
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); word-level language modelling reads text files") from None


def words_of(lines):
    """The reference's tokenisation: each line split on whitespace, then ``<eos>``."""
    for line in lines:
        yield from line.split()
        yield EOS


class TiedAdaptiveEmbedding(nn.Module):
    """Adaptive input embeddings tied to an ``AdaptiveLogSoftmaxWithLoss`` (Transformer-XL's adaptive inputs with
    tied weights and projections, which the reference's WikiText-103 model uses): a shortlist token's vector is
    its row of the softmax head, a tail-cluster token's is its row of the cluster's output matrix (width
    d / div^(i+1)) mapped back to d by the transpose of the cluster's projection; all times sqrt(d). The
    softmax is held outside the module tree, so its parameters are registered (and saved) once."""

    def __init__(self, softmax: nn.AdaptiveLogSoftmaxWithLoss):
        super().__init__()
        object.__setattr__(self, "softmax", softmax)
        self.scale = softmax.in_features ** 0.5

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        sm, flat = self.softmax, ids.reshape(-1)
        weight = sm.head.weight
        out = torch.zeros(flat.numel(), sm.in_features, dtype=weight.dtype, device=weight.device)
        short = flat < sm.shortlist_size
        out = out.index_put((short.nonzero()[:, 0],), weight[flat[short]])
        for i, (lo, hi) in enumerate(zip(sm.cutoffs[:-1], sm.cutoffs[1:])):
            where = ((flat >= lo) & (flat < hi)).nonzero()[:, 0]
            if where.numel():
                proj, emb = sm.tail[i][0].weight, sm.tail[i][1].weight  # (d_i, d), (cluster size, d_i)
                out = out.index_put((where,), (emb[flat[where] - lo] @ proj).to(out.dtype))
        return (out * self.scale).view(*ids.shape, sm.in_features)


class AdaptiveLM(nn.Module):
    """A backbone whose decoder became the identity, under ``AdaptiveLogSoftmaxWithLoss``.

    ``forward(x (B, L))`` -> (B, L, V) log-probs (with ``state``/``return_state`` passed to the backbone);
    ``forward(pairs (B, 2, L))`` -> (B, L) log-prob of each target (0 where the target is padding), the
    cheap training path. ``step``, ``default_state``, ``setup_step``, ``set_rate`` pass through.
    ``tie``: the backbone's input embedding becomes :class:`TiedAdaptiveEmbedding` of the softmax.
    """

    def __init__(self, backbone: nn.Module, vocab_size: int, cutoffs: list[int], div_value: float, tie: bool = True):
        super().__init__()
        decoder = getattr(backbone, "decoder", None)
        if not isinstance(decoder, nn.Linear):
            raise RecipeError("the adaptive softmax replaces the backbone's final nn.Linear (decoder), which this model lacks; "
                              "set task.adaptive=false")
        narrowest = int(decoder.in_features // div_value ** len(cutoffs))
        if narrowest < 1:
            raise RecipeError(f"the adaptive softmax's last tail cluster would have width {decoder.in_features} // "
                              f"{div_value:g}^{len(cutoffs)} = 0; lower task.div_value, use fewer cutoffs or a wider model")
        backbone.decoder = nn.Identity()
        self.backbone = backbone
        self.head = nn.AdaptiveLogSoftmaxWithLoss(decoder.in_features, vocab_size, cutoffs, div_value=div_value)
        if tie:
            if not isinstance(getattr(backbone, "encoder", None), nn.Embedding):
                raise RecipeError("task.tie_adaptive replaces the backbone's nn.Embedding (encoder), which this model lacks; "
                                  "set task.tie_adaptive=false")
            backbone.encoder = TiedAdaptiveEmbedding(self.head)

    def forward(self, x: torch.Tensor, lengths=None, state=None, return_state: bool = False):
        if x.dim() == 3:  # (B, 2, L): tokens over targets
            tokens, target = x[:, 0], x[:, 1]
            h = self.backbone(tokens)  # (B, L, d)
            keep = target != IGNORE_INDEX
            out = h.new_zeros(target.shape, dtype=torch.float32)
            out[keep] = self.head(h[keep].float(), target[keep]).output
            return out
        if return_state or state is not None:
            h, states = self.backbone(x, state=state, return_state=True)
            out = self.head.log_prob(h.flatten(0, -2).float()).view(*h.shape[:-1], -1)
            return (out, states) if return_state else out
        h = self.backbone(x)
        return self.head.log_prob(h.flatten(0, -2).float()).view(*h.shape[:-1], -1)

    @torch.no_grad()
    def step(self, x: torch.Tensor, state):
        h, state = self.backbone.step(x, state)
        return self.head.log_prob(h.float()), state

    def default_state(self, *batch_shape, **kwargs):
        return self.backbone.default_state(*batch_shape, **kwargs)

    def setup_step(self) -> None:
        self.backbone.setup_step()

    def set_rate(self, rate: float) -> None:
        self.backbone.set_rate(rate)


@TASKS.register("lm", description="Language modelling on your own text files or WikiText-103: bytes (bits/byte), words or a tokenizer")
class LanguageModel(GenerativeTask):
    name = "lm"

    def __init__(self, corpus: str = "wikitext-103", level: str = "word", raw: bool = False, seq_len: int = 1024,
                 adaptive: bool = True, cutoffs: tuple = WT103_CUTOFFS, div_value: float = 4.0,
                 tie_adaptive: bool = True, data_dir: str | None = None, files=None, split: list | None = None,
                 tokenizer: str | None = None, separator: str = "\n"):
        check_choice("level", level, ("word", "byte", "tokenizer"))
        for key, v in (("raw", raw), ("adaptive", adaptive), ("tie_adaptive", tie_adaptive)):
            if not isinstance(v, bool):
                raise ValueError(f"task option {key}={v!r} must be true or false")
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
            raise ValueError(f"task option seq_len={seq_len!r} must be a positive integer")
        if not isinstance(corpus, str) or not corpus or "/" in corpus:
            raise ValueError(f"task option corpus={corpus!r} must be a folder name under the data root, e.g. wikitext-103")
        cutoffs = list(cutoffs)
        if not all(isinstance(c, int) and c > 0 for c in cutoffs) or cutoffs != sorted(set(cutoffs)):
            raise ValueError(f"task option cutoffs={cutoffs!r} must be increasing positive integers")
        if not isinstance(div_value, int | float) or div_value <= 1:
            raise ValueError(f"task option div_value={div_value!r} must be a number > 1")
        self.corpus, self.level, self.raw, self.seq_len = corpus, level, raw, seq_len
        self.adaptive_option, self.cutoffs_option, self.div_value = adaptive, cutoffs, float(div_value)
        self.tie_adaptive = tie_adaptive
        self.text: TextCorpus | None = None
        if files is not None:
            for key, value, default in (("corpus", corpus, "wikitext-103"), ("raw", raw, False), ("data_dir", data_dir, None)):
                if value != default:
                    raise ValueError(f"task option {key} is for the WikiText layout; task.files names your own files: "
                                     f"drop task.{key}")
            self.text = TextCorpus(files, split, level, tokenizer, separator)
        else:
            if level == "tokenizer" or tokenizer is not None or split is not None or separator != "\n":
                raise ValueError("task options level=tokenizer, tokenizer, split and separator are for your own files: "
                                 "give task.files (a glob, file or folder, or {train: ..., valid: ..., test: ...})")
        root = Path(data_dir) if data_dir else data_root()
        self.folder = root / (f"{corpus}-raw" if raw else corpus)
        self.bits_name = "bits_per_byte" if level == "byte" else "bits_per_token"
        self._vocab: list[str] | None = None
        self._index: dict[str, int] | None = None
        self._streams: dict[str, np.ndarray] = {}

    # --- files ---
    def path(self, split: str) -> Path:
        return self.folder / f"wiki.{SPLIT_FILES[split]}.{'raw' if self.raw else 'tokens'}"

    def where(self, split: str) -> str:
        """The split's source, for messages."""
        if self.text is None:
            return str(self.path(split))
        return f"the {'valid' if split == 'val' else split} split of task.files"

    def check_data(self) -> None:
        if self.text is not None:
            self.text.check()
            return
        if self.corpus == "wikitext-103":
            how = (fetch_hint("wikitext-103-raw" if self.raw else "wikitext-103", self.folder.parent)
                   + "; or give task.corpus=synthetic-text after `ssmkit data generate text`")
        else:
            how = (f"put WikiText-style wiki.train/valid/test files there, or run `ssmkit data generate text --out {self.folder}`"
                   " for a small synthetic corpus")
        require_files([self.path(s) for s in SPLIT_FILES], f"{self.name} data ({self.corpus})", how)

    # --- vocabulary and streams ---
    def _cache_key(self, *paths: Path) -> str:
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
        return hashlib.sha1(repr(stats).encode()).hexdigest()[:12]

    def _cached(self, name: str, make, load, save):
        """``load(path)`` of a cached file, else ``make()`` (saved with ``save(path, value)`` when the folder allows)."""
        path = self.folder / "ssmkit-cache" / name
        if path.exists():
            try:
                return load(path)
            except (OSError, ValueError):
                pass
        value = make()
        try:
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save(tmp, value)
            os.replace(tmp, path)
        except OSError:
            pass
        return value

    @property
    def vocab(self) -> list[str]:
        """Word level: the symbols by id (``<eos>`` first, then training words by decreasing count)."""
        if self.level == "byte":
            raise UserError("a byte-level task has no word vocabulary (its tokens are the 256 byte values)")
        if self._vocab is None and self.text is not None:
            self._vocab = self.text.vocab
            self._index = {w: i for i, w in enumerate(self._vocab)}
        if self._vocab is None:
            self.check_data()
            train = self.path("train")

            def make():
                counts = Counter()
                for line in read_lines(train):
                    counts.update(line.split())
                counts.pop(EOS, None)
                return [EOS] + [w for w, _ in counts.most_common()]

            self._vocab = self._cached(f"vocab-{self._cache_key(train)}.txt", make,
                                       lambda p: p.read_text(encoding="utf-8").split("\n"),
                                       lambda p, v: p.write_text("\n".join(v), encoding="utf-8"))
            self._index = {w: i for i, w in enumerate(self._vocab)}
        return self._vocab

    @property
    def vocab_size(self) -> int:
        if self.text is not None:
            return self.text.vocab_size
        return 256 if self.level == "byte" else len(self.vocab)

    @property
    def d_input(self) -> int:
        return self.vocab_size

    @property
    def d_output(self) -> int:
        return 1 if self.adaptive else self.vocab_size  # the adaptive head replaces the decoder (wrap_model)

    @property
    def cutoffs(self) -> list[int]:
        """The adaptive softmax's cutoffs that fit the vocabulary (below V - 1)."""
        return [c for c in self.cutoffs_option if c < self.vocab_size - 1]

    @property
    def adaptive(self) -> bool:
        return self.level == "word" and self.adaptive_option and bool(self.cutoffs)

    def _ids(self, words, where: str) -> np.ndarray:
        """Word ids (int32), streaming over ``words``; a word the vocabulary lacks becomes <unk> if it has one."""
        get, unk = self._index.get, self._index.get(UNK)
        ids, lost = array("i"), set()
        for w in words:
            i = get(w, unk)
            if i is None:
                lost.add(w)
            else:
                ids.append(i)
        if lost:
            lost = sorted(lost)
            raise DataError(f"{where}: {len(lost)} word(s) not in the training vocabulary and no {UNK} word to map them to, "
                            f"e.g. {', '.join(lost[:5])}; add them to the training file or use task.level=byte")
        return np.frombuffer(ids, dtype=np.int32) if ids else np.zeros(0, np.int32)

    def stream(self, split: str) -> np.ndarray:
        """The split as one token array (uint8 bytes or int32 word ids)."""
        check_split(split)
        if split not in self._streams and self.text is not None:
            self.check_data()
            self._streams[split] = self.text.stream(split)
        if split not in self._streams:
            self.check_data()
            path = self.path(split)
            if self.level == "byte":
                self._streams[split] = np.fromfile(path, dtype=np.uint8)
            else:
                vocab_key = self._cache_key(self.path("train"))
                self.vocab  # noqa: B018
                self._streams[split] = self._cached(
                    f"{SPLIT_FILES[split]}-{vocab_key}-{self._cache_key(path)}.npy",
                    lambda: self._ids(words_of(read_lines(path)), str(path)),
                    lambda p: np.load(p, allow_pickle=False), lambda p, v: np.save(p, v, allow_pickle=False))
        return self._streams[split]

    def dataset(self, split: str, seed: int = 0) -> WindowDataset:
        try:
            return WindowDataset(self.stream(split), self.seq_len, partial=split != "train",
                                 pairs=self.level == "word" and self.adaptive)
        except DataError as e:
            raise DataError(f"{self.where(split)}: {e}") from None

    def describe(self) -> str:
        """One line: the files, level, vocabulary and tokens per split (``ssmkit train --dry-run``, ``data check``)."""
        source = self.text.describe_files() if self.text is not None else str(self.folder)
        tokens = " / ".join(f"{len(self.stream(s)):,}" for s in ("train", "val", "test"))
        head = "adaptive softmax" if self.adaptive else "softmax"
        return (f"lm: {source}; level {self.level}, vocabulary {self.vocab_size:,}; train/valid/test {tokens} tokens; "
                f"windows of {self.seq_len}; {head}, metric {self.bits_name}")

    # --- model, loss ---
    def wrap_model(self, model: nn.Module) -> nn.Module:
        check_causal(model, self.name)
        if self.level == "word" and self.adaptive:
            return AdaptiveLM(model, self.vocab_size, self.cutoffs, self.div_value, tie=self.tie_adaptive)
        return model

    def token_nll(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() == target.dim():  # the adaptive head's target log-probs (0 at padding)
            return -output.float()
        return super().token_nll(output, target)

    # --- text <-> ids ---
    def encode(self, text: str) -> torch.Tensor:
        """Text -> token ids (L,): its UTF-8 bytes, or its words (each line ends with <eos>; unknown words
        become <unk> when the vocabulary has it, else UserError naming them)."""
        if self.level == "byte":
            return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
        if self.text is not None:
            return torch.from_numpy(self.text.encode(text))
        self.vocab  # noqa: B018
        words = list(words_of(text.split("\n")))[:-1]  # no <eos> after the last piece: the text goes on from there
        try:
            return torch.from_numpy(self._ids(words, "the prompt").astype(np.int64))
        except DataError as e:
            raise UserError(str(e).replace("add them to the training file or use task.level=byte",
                                           "use words of the training text")) from None

    def decode(self, ids: torch.Tensor) -> str:
        """Token ids -> text: bytes decoded as UTF-8 (bad sequences replaced), or words joined by spaces
        with <eos> as a line break."""
        ids = [int(i) for i in torch.as_tensor(ids).flatten()]
        if self.text is not None:
            return self.text.decode(ids)
        if self.level == "byte":
            return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
        vocab = self.vocab
        lines, line = [], []
        for i in ids:
            w = vocab[i] if 0 <= i < len(vocab) else UNK
            if w == EOS:
                lines.append(" ".join(line))
                line = []
            else:
                line.append(w)
        return "\n".join(lines + [" ".join(line)])

    # --- generation hooks ---
    @property
    def prompt_length(self) -> int:
        return max(1, self.seq_len // 2)

    def prompts(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` windows of ``seq_len // 2`` test tokens at offsets drawn with ``seed``."""
        s, Lp = self.stream("test"), self.prompt_length
        if len(s) < Lp:
            raise DataError(f"{self.where('test')}: {len(s)} tokens, fewer than one prompt of {Lp}")
        starts = self._pick(len(s) - Lp + 1, n, seed)
        return torch.stack([torch.from_numpy(np.asarray(s[i:i + Lp], dtype=np.int64)) for i in starts])

    def save_samples(self, samples: torch.Tensor, out: Path, prompt_len: int) -> list[Path]:
        """One text file, ``samples.txt``: each sample's prompt, then its continuation."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        parts = []
        for i, row in enumerate(samples):
            parts.append(f"===== sample {i} : prompt =====\n{self.decode(row[:prompt_len])}\n"
                         f"===== sample {i} : generated =====\n{self.decode(row[prompt_len:])}\n")
        path = out / "samples.txt"
        path.write_text("\n".join(parts), encoding="utf-8")
        return [path]


# --- a small synthetic corpus in the WikiText layout (``ssmkit data generate text``) ---
_NOUNS = ("river", "castle", "album", "station", "army", "church", "season", "bridge", "ship", "village", "king",
          "film", "song", "team", "island", "road", "battle", "school", "tower", "city")
_ADJS = ("old", "new", "large", "small", "northern", "southern", "famous", "first", "last", "main")
_VERBS = ("built", "crossed", "released", "defeated", "visited", "named", "joined", "won", "destroyed", "opened")
_NAMES = ("Anna", "Robert", "Maria", "John", "Elena", "Henry", "Louis", "Clara", UNK)  # WikiText has <unk> words too


def _sentence(rng: random.Random) -> str:
    noun = lambda: rng.choice(_NOUNS)  # noqa: E731
    adj, verb, name = rng.choice(_ADJS), rng.choice(_VERBS), rng.choice(_NAMES)
    year = str(rng.randrange(1850, 2010, 10))
    form = rng.randrange(4)
    if form == 0:
        return f"The {adj} {noun()} was {verb} by {name} in {year} ."
    if form == 1:
        return f"In {year} , {name} {verb} the {adj} {noun()} ."
    if form == 2:
        return f"{name} {verb} the {noun()} and the {noun()} , which were {adj} ."
    return f"The {noun()} of {name} was {verb} in {year} , and the {adj} {noun()} followed ."


def synthetic_text(n_paragraphs: int, seed: int) -> str:
    """Deterministic WikiText-like text: ``= Title =`` headings, blank lines, paragraphs of template sentences
    over a small vocabulary, with the WikiText spacing (" , ", " . ", a leading space per line)."""
    rng = random.Random(seed)
    lines = []
    for p in range(n_paragraphs):
        if p % 4 == 0:
            lines += [" ", f" = The {rng.choice(_ADJS)} {rng.choice(_NOUNS)} of {rng.choice(_NAMES)} = ", " "]
        lines.append(" " + " ".join(_sentence(rng) for _ in range(rng.randint(2, 5))) + " ")
    return "\n".join(lines) + "\n"


def write_synthetic_corpus(folder: Path, n_paragraphs: int = 4000, seed: int = 0) -> Path:
    """``wiki.{train,valid,test}.tokens`` (and the same text as ``<folder>-raw/wiki.*.raw``): the train split has
    ``n_paragraphs`` paragraphs, validation and test a twentieth each (at least 4)."""
    folder = Path(folder)
    raw = folder.with_name(folder.name + "-raw")
    small = max(4, n_paragraphs // 20)
    for i, (split, n) in enumerate((("train", n_paragraphs), ("valid", small), ("test", small))):
        text = synthetic_text(n, seed * 3 + i)
        for d, suffix in ((folder, "tokens"), (raw, "raw")):
            d.mkdir(parents=True, exist_ok=True)
            (d / f"wiki.{split}.{suffix}").write_text(text, encoding="utf-8")
    return folder
