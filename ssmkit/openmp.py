"""How the threads of ssmkit's CPU work wait: OpenMP's wait policy, set before torch loads its runtime.

torch's CPU ops (and ``at::parallel_for`` in ssmkit's extension, ``extensions/cauchy/``) run their parallel regions
on one OpenMP runtime: the ``libgomp.so.1`` bundled in torch's wheel (``torch/lib/``). The extension is linked
with ``-fopenmp`` and asks for ``libgomp.so.1`` by name; the dynamic loader hands it the copy torch already
loaded (same soname), so there is one runtime and one thread pool (``runtimes()`` lists what is mapped).

A libgomp thread that has finished its share of a parallel region, or waits for the next one, spins for
``GOMP_SPINCOUNT`` iterations before it sleeps: 300,000 by default (``OMP_WAIT_POLICY`` unset), which libgomp's
own comment estimates at 3 ms and which takes ~10-20 ms on CPUs with a slow ``pause`` instruction. On a machine
whose cores are all busy (data-loader workers, other jobs on a shared node) the spinning thread burns the time
slices its partner needs to finish, at every one of the hundreds of region ends of a layer step
(docs/performance.md, "Under contention"). ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once, which
fixes that but costs ~30% on an idle machine (a sleeping thread must be woken for the next region: the DLR and
SGConv layers took 147 ms instead of 115 ms). ssmkit's default is ``GOMP_SPINCOUNT=10000`` (about 1 ms of spinning,
then sleep): as fast as libgomp's default on an idle machine, and within 2-12% of PASSIVE under two busy processes,
where libgomp's default was 7-8x slower (measured 2026-12-07, docs/performance.md).

libgomp reads these variables once, when it is loaded (``import torch``), so ``apply_default()`` runs in
``ssmkit/__init__.py`` before anything imports torch. It sets ``GOMP_SPINCOUNT=10000`` only when the user
set neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT`` (a user's choice always wins) and only when torch is not
imported yet (then the runtime has read its settings already, and changing the environment would only make
``ssmkit doctor`` report a policy that is not in effect). Child processes inherit the setting, with
``SSMKIT_OMP_DEFAULT_SET=1`` next to it so that theirs is reported as ssmkit's default, not the user's.
``SSMKIT_OMP_DEFAULT=0`` turns the default off. Nothing here imports torch.
"""
from __future__ import annotations

import os
import sys

#: The spin count ssmkit sets when the user has not chosen how threads wait (about 1 ms at ~100 ns a pause).
DEFAULT_SPINCOUNT = "10000"
#: The spin count libgomp uses when neither variable is set (libgomp's env.c).
LIBGOMP_DEFAULT_SPINCOUNT = 300_000
_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

#: Set next to the default, so that a child process (which inherits both) knows the policy was ssmkit's.
_MARK = "SSMKIT_OMP_DEFAULT_SET"
#: What ``apply_default`` found and did: "ssmkit" (it set the default), "inherited" (a parent ssmkit process set it),
#: "user" (a variable was set), "off" (SSMKIT_OMP_DEFAULT=0), "late" (torch was imported before ssmkit), or None.
decision: str | None = None


def apply_default(environ=None, modules=None) -> str:
    """Sets ``GOMP_SPINCOUNT=10000`` unless the user chose how threads wait or torch has loaded libgomp already;
    returns (and records in ``decision``) what it did."""
    global decision
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if environ.get("SSMKIT_OMP_DEFAULT", "1") == "0":
        decision = "off"
    elif environ.get(_MARK) == "1" and environ.get("GOMP_SPINCOUNT") == DEFAULT_SPINCOUNT \
            and not environ.get("OMP_WAIT_POLICY"):
        decision = "inherited"
    elif any(environ.get(v) for v in _VARIABLES):
        decision = "user"
    elif "torch" in modules:
        decision = "late"
    else:
        environ["GOMP_SPINCOUNT"] = DEFAULT_SPINCOUNT
        environ[_MARK] = "1"
        decision = "ssmkit"
    return decision


def runtimes(maps: str = "/proc/self/maps") -> list[str]:
    """The OpenMP runtime libraries (GNU libgomp, LLVM libomp, Intel libiomp) mapped into this process,
    one path per file (empty where /proc is missing)."""
    try:
        with open(maps) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
        name = os.path.basename(path)
        if name.startswith(("libgomp", "libomp", "libiomp")) and ".so" in name and path not in found:
            found.append(path)
    return found


def wait_policy() -> str:
    """The waiting behaviour libgomp runs with, in words (from the variables it read when it was loaded)."""
    policy, spins = os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")
    if decision == "late":
        return ("libgomp's settings are unknown: torch was imported before ssmkit, so ssmkit's default "
                f"(GOMP_SPINCOUNT={DEFAULT_SPINCOUNT}) could not apply")
    who = {"ssmkit": "ssmkit's default", "inherited": "ssmkit's default, set by the parent process",
           "user": "set by the user", "off": "SSMKIT_OMP_DEFAULT=0",
           None: "ssmkit's default not applied"}[decision]
    if spins:
        text = f"GOMP_SPINCOUNT={spins}" + (f", OMP_WAIT_POLICY={policy}" if policy else "")
        if decision in ("ssmkit", "inherited"):
            text += " (waiting threads spin about 1 ms, then sleep)"
    elif policy:
        text = f"OMP_WAIT_POLICY={policy}" + (" (waiting threads sleep at once)" if policy.upper() == "PASSIVE" else "")
    else:
        text = f"libgomp's default wait (spin {LIBGOMP_DEFAULT_SPINCOUNT:,} times before sleeping)"
    return f"{text}; {who}"


def summary() -> dict:
    """The runtime(s) loaded, the wait policy in effect and why (for ``ssmkit doctor`` and the benchmarks)."""
    return {"runtimes": runtimes(), "wait_policy": wait_policy(), "decision": decision,
            **{v: os.environ.get(v) for v in _VARIABLES}}
