"""``ssmkit generate RUN``: samples from a trained generative run.

    ssmkit generate RUN [--prompt TEXT | --prompt-file F] [--num-samples N] [--max-new-tokens N]
                        [--temperature T] [--top-k K] [--top-p P] [--seed S] [--out PATH]

- ``lm``: the prompt text (or, without one, test windows) is continued; the text goes to stdout, or to the
  file ``--out``.
- density tasks and ``sc09``: the task's prompts (the top half of test images / the start of test clips)
  are completed and written by the task (a PNG grid / WAV files) into the folder ``--out``, by default
  ``<run>/samples/<checkpoint>-seed<S>`` (a fresh folder; an existing one is never written into).
A rich progress bar shows tokens/s on a terminal; one summary line (tokens/s and which step ran) goes
to stderr. Bad input (a classification run, a prompt the vocabulary cannot encode, a model without a
recurrent step) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import click
import torch
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ssmkit.errors import UserError, read_utf8
from ssmkit.generation import generate
from ssmkit.generation.sampling import check_sampling
from ssmkit.recipe import _size, physical_memory_bytes
from ssmkit.runs.load import load


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no GPU is visible; use --device cpu")
    return device


#: The largest --seed: torch generators take unsigned 64-bit seeds.
MAX_SEED = 2**64 - 1


def _check_utf8(text: str, what: str) -> None:
    """Command-line text that was not UTF-8 arrives with its bad bytes as lone surrogates (U+DC80..U+DCFF)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        char = text[e.start]
        byte = f"byte 0x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else f"U+{ord(char):04X}"
        raise UserError(f"{what} is not valid UTF-8 text ({byte} at character {e.start}); give UTF-8 text, or "
                        "write the prompt to a UTF-8 file and pass --prompt-file") from None


def _prompt_text(prompt: str | None, prompt_file: Path | None) -> str | None:
    if prompt is not None and prompt_file is not None:
        raise UserError("give --prompt or --prompt-file, not both")
    if prompt_file is None:
        if prompt is not None:
            _check_utf8(prompt, "--prompt")
        return prompt
    return read_utf8(prompt_file, label=f"--prompt-file {prompt_file}", fix="give a UTF-8 text file")


def _prompts(task, text: str | None, n: int, seed: int) -> torch.Tensor:
    """(n, Lp) prompt ids: the encoded text repeated n times, or the task's own prompts."""
    if text is None:
        return task.prompts(n, seed)
    if not hasattr(task, "encode"):
        raise UserError(f"task {task.name!r} takes no text prompt (its prompts are test samples); drop --prompt")
    ids = task.encode(text)
    if ids.numel() == 0:
        raise UserError("the prompt encodes to no tokens; give some text")
    return ids.reshape(1, -1).expand(n, -1)


def _check_out(out: Path | None, is_text: bool) -> None:
    """Refuses an --out that cannot be written, before any token is generated: an existing file or non-empty
    folder (never written over), a missing folder for a text file, a file in the way of a samples folder."""
    if out is None:
        return
    if out.exists() and (is_text or not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists; give a new path (samples are never written over)")
    if is_text and not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it or give another path")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {out}: {parent} is a file, not a folder")


def _available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (Linux MemAvailable on CPU), None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory_bytes()


def _state_bytes(model) -> int:
    """The recurrent state of one sequence, in bytes (every tensor of ``model.default_state(1)``)."""
    try:
        state = model.default_state(1)
    except (TypeError, ValueError, RuntimeError, NotImplementedError):
        return 0
    stack, total = [state], 0
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack += list(item.values())
        elif isinstance(item, (list, tuple)):
            stack += list(item)
    return total


def _check_memory(loaded, n: int, prompt_len: int, new: int, device: torch.device) -> None:
    """Refuses a generation whose tokens, states and scores clearly exceed the free memory (--num-samples 10**9,
    --max-new-tokens 10**11) with one line saying how many samples would fit, before anything is allocated."""
    available = _available_memory(device)
    if available is None:
        return
    recipe, vocab = loaded.recipe.model, max(1, int(getattr(loaded.task, "d_output", 1) or 1))
    width = recipe.d_model * (recipe.expand ** len(recipe.pool_factors) if recipe.backbone == "sashimi" else 1)
    per_sample = (16 * (prompt_len + new)  # the new tokens, stacked, and the output with the prompt
                  + prompt_len * (64 * width + 4 * vocab)  # the prompt's forward: FFT buffers and every position's scores
                  + _state_bytes(loaded.model) * 3 + 16 * vocab)  # the state (and its next), a step's scores
    if recipe.mixer.get("name") == "attn":  # a key/value cache grows per token
        per_sample += 8 * width * recipe.n_layers * (prompt_len + new)
    fixed = 200 * new  # one small tensor per generated position
    need = n * per_sample + fixed
    if need <= available:
        return
    fits = max(0, (available - fixed) // per_sample)
    advice = (f"at most about {fits:,} samples fit at once (--num-samples)" if fits >= 1
              else "lower --max-new-tokens")
    raise UserError(f"--num-samples {n:,} x ({prompt_len:,} prompt + {new:,} new tokens) needs about {_size(need)} "
                    f"for tokens, states and scores, more than the {_size(available)} free on {device.type}; {advice}")


def _free_folder(base: Path) -> Path:
    """``base`` or ``base-2``, ``base-3``, ...: the first that does not exist yet."""
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("generating"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )


def _write_text(task, samples: torch.Tensor, out: Path | None, console: Console) -> None:
    """lm: the decoded samples to stdout, or to the new file ``out``."""
    texts = [task.decode(row) for row in samples]
    body = texts[0] if len(texts) == 1 else "\n".join(f"===== sample {i} =====\n{t}" for i, t in enumerate(texts))
    if out is None:
        click.echo(body)
        return
    try:
        out.write_text(body + "\n", encoding="utf-8")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write it ({e.strerror})") from None
    console.print(f"wrote {out}")


def _run(loaded, prompts: torch.Tensor, new: int, console: Console, **sampling):
    """``generate`` under a progress bar (tokens/s on a terminal)."""
    n = prompts.shape[0]
    with _bar(console) as bar:
        job = bar.add_task("generate", total=new, tps="-")
        started = {}

        def progress(done: int) -> None:
            started.setdefault("t", time.perf_counter())
            elapsed = time.perf_counter() - started["t"]
            tps = f"{done * n / elapsed:,.0f}" if elapsed > 0 else "-"
            bar.update(job, completed=done, tps=tps)

        return generate(loaded.model, prompts, new, progress=progress, **sampling)


def generate_command(
    run: Path = typer.Argument(..., help="a run directory (of a generative task) or one of its checkpoints"),
    prompt: str = typer.Option(None, "--prompt", help="text to continue (lm)"),
    prompt_file: Path = typer.Option(None, "--prompt-file", help="read the prompt text from this file (lm)"),
    num_samples: int = typer.Option(1, "--num-samples", min=1, help="sequences to generate"),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1,
                                       help="tokens to add (default: up to the training length)"),
    temperature: float = typer.Option(1.0, "--temperature", help="0 is greedy; >1 flatter, <1 sharper"),
    top_k: int = typer.Option(None, "--top-k", help="sample among the k most likely tokens only"),
    top_p: float = typer.Option(None, "--top-p", help="sample within the smallest set of probability >= p"),
    seed: int = typer.Option(0, "--seed", min=0, max=MAX_SEED,
                             help="seed of the sampling and of the choice of prompts (0 to 2^64-1)"),
    out: Path = typer.Option(None, "--out", help="lm: a text file (default stdout); images/audio: a new folder"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or latest (for a run directory)"),
    compile: str = typer.Option("auto", "--compile", help="the step: auto, aot, inductor or none"),
    device: str = typer.Option("auto", "--device", help="auto (a GPU if visible), cpu, cuda, cuda:N"),
):
    """Generate from a trained lm / density / sc09 run: text, image completions or audio."""
    if not math.isfinite(temperature):
        raise UserError(f"--temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    check_sampling(temperature, top_k, top_p)
    if checkpoint not in ("best", "latest"):
        raise UserError(f"unknown --checkpoint {checkpoint!r}; choose best or latest")
    text = _prompt_text(prompt, prompt_file)
    where = _device(device)
    loaded = load(run, which=checkpoint, device=where)
    task = loaded.task
    if not getattr(task, "generative", False):
        raise UserError(f"{run} is a run of task {task.name!r}, which predicts labels, not sequences; "
                        "ssmkit generate needs a generative task (lm, a density task, sc09)")
    is_text = hasattr(task, "decode")
    _check_out(out, is_text)
    if text is None:  # the task's own prompts: check the memory before drawing them
        _check_memory(loaded, num_samples, task.seq_len, max_new_tokens or 1, where)
    prompts = _prompts(task, text, num_samples, seed)
    Lp = prompts.shape[1]
    # A prompt that begins with the start token holds one position more than the sequence it starts.
    full = task.seq_len + (getattr(task, "start_token", None) is not None)
    new = max_new_tokens or max(1, full - Lp)
    _check_memory(loaded, num_samples, Lp, new, where)

    console = Console(stderr=True, highlight=False, markup=False)
    result = _run(loaded, prompts, new, console, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  compile=compile)
    samples = result.tokens.cpu()
    console.print(f"generated {num_samples} x {new} tokens after a {Lp}-token prompt: "
                  f"{result.tokens_per_s:,.0f} tokens/s (step: {result.step}; {result.step_note})")
    if is_text:
        _write_text(task, samples, out, console)
        return
    folder = out or _free_folder(loaded.run_dir / "samples" / f"{loaded.checkpoint.name}-seed{seed}")
    for path in task.save_samples(samples, folder, Lp):
        click.echo(str(path))
