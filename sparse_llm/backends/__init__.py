"""Backends of :class:`sparse_llm.SparseLinear`: an ordered list of small dispatch entries.

For each call the first entry whose ``applies(module, x2d)`` is true runs. The environment variable
``SPARSE_LLM_BACKEND`` (or the ``backend`` argument of :func:`linear`, or ``SparseLinear.backend``) forces one by
name; :func:`select` tells which entry a call would take. The reference entry is last and always applies: it
unpacks the weight and runs a dense matmul, so every device works (slowly).

Plans: a GPU entry can also ``bind`` a call, i.e. return the product as a function of ``x`` alone with its kernel,
configuration and the module's tensors resolved. :func:`linear` keeps that plan on the module per (input shape,
dtype, device, forced name), and :func:`run_plan` runs it directly at the next such call while the module still
holds the same ``values``, ``meta``, ``bias`` and cuSPARSELt state: an eager call then costs a dictionary lookup,
four identity checks and the extension's launch (bench/NOTES.md, sixteenth round). ``SPARSE_LLM_PLANS=0`` turns
plans off; compiled code never takes one.

Backend modules are imported lazily inside the entries: importing the package never builds or loads an extension.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparse_llm.format import unpack_2to4_reference

ENV_VAR = "SPARSE_LLM_BACKEND"
PLANS_ENV_VAR = "SPARSE_LLM_PLANS"
MAX_PLANS = 64  # per module: a new input shape past this many drops the old plans (prefill lengths vary)
USE_PLANS = os.environ.get(PLANS_ENV_VAR, "1") != "0"  # read once: tests and benchmarks set the attribute


@dataclass(frozen=True)
class Backend:
    """One way of computing ``x @ W.T + b`` for a SparseLinear ``module`` and a 2-D input ``x``."""

    name: str
    applies: Callable[[torch.nn.Module, torch.Tensor], bool]
    run: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    # Whether the backend can run the call at all, for forcing it by name; ``applies`` may add a choice (the
    # measured crossover by M) on top. None: same as ``applies``.
    supports: Callable[[torch.nn.Module, torch.Tensor], bool] | None = None
    # Why the backend cannot run a call (for the error when it is forced anyway).
    why_not: Callable[[torch.nn.Module, torch.Tensor], str] | None = None
    # The call bound to x alone (see the module's docstring), after any preparation ``run`` would do; None: such
    # calls always go through ``run``.
    bind: Callable[[torch.nn.Module, torch.Tensor], Callable[[torch.Tensor], torch.Tensor] | None] | None = None


def _reference_run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    weight = unpack_2to4_reference(module.values, module.meta)
    return F.linear(x, weight, module.bias)


REFERENCE = Backend("reference", applies=lambda module, x: True, run=_reference_run)


def _triton_small_supports(module: torch.nn.Module, x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and module.values.dtype == x.dtype


def _cusparselt_supports(module: torch.nn.Module, x: torch.Tensor) -> bool:
    from sparse_llm.backends import cusparselt

    return cusparselt.supports(module, x)


def _mma_supports(module: torch.nn.Module, x: torch.Tensor) -> bool:
    from sparse_llm.backends import sparse_mma
    from sparse_llm.backends._build import mma_status

    return sparse_mma.why_not(x, module.values) is None and mma_status()["available"]


def _mma_why_not(module: torch.nn.Module, x: torch.Tensor) -> str:
    from sparse_llm.backends import sparse_mma
    from sparse_llm.backends._build import mma_status

    return sparse_mma.why_not(x, module.values) or mma_status()["reason"]


def _gpu_why_not(module: torch.nn.Module, x: torch.Tensor) -> str:
    if not x.is_cuda:
        return "it needs a CUDA input"
    if x.dtype not in (torch.float16, torch.bfloat16) or module.values.dtype != x.dtype:
        return f"it needs float16/bfloat16 input and weight, got {x.dtype} and {module.values.dtype}"
    from sparse_llm.backends._build import extension_status

    return extension_status()["reason"]


def _module_cache(module: torch.nn.Module, attr: str) -> dict:
    """A per-module dict of dispatch decisions (plain attribute access: ``__dict__.setdefault`` broke the
    torch.compile graph at every call, bench/NOTES.md)."""
    cache = getattr(module, attr, None)
    if cache is None:
        cache = {}
        setattr(module, attr, cache)
    return cache


def _gpu_choice(module: torch.nn.Module, x: torch.Tensor) -> str | None:
    """The GPU backend that the measured crossover (``sparse_llm.tune``) picks for this call, or None."""
    # Cached per module and (M, dtype, device): dispatch is host time on every call. Only GPU choices are cached,
    # so a call the GPU backends cannot take (CPU input, weight of another dtype) is checked again each time.
    key = (x.shape[0], x.dtype, x.device)
    choices = _module_cache(module, "_sparse_llm_choice")
    choice = choices.get(key)
    if choice is None:
        if not _triton_small_supports(module, x):
            return None
        from sparse_llm import tune

        n, k = module.values.shape[0], 2 * module.values.shape[1]
        choice = choices[key] = tune.choose_backend(
            n, k, x.shape[0], x.dtype, x.device, _cusparselt_supports(module, x), _mma_supports(module, x)
        )
    return choice


def _prepared_config(module: torch.nn.Module, x: torch.Tensor, attr: str, tuned: Callable):
    """Shared by the kernels that read ``values`` + ``meta``: make ``values`` a view of cuSPARSELt's buffer (one
    copy of the weight) and return the kernel's configuration for this call's M, cached on the module (dispatch
    is host time on every call)."""
    from sparse_llm.backends import cusparselt

    key = (x.shape[0], x.dtype, x.device)
    configs = _module_cache(module, attr)
    entry = configs.get(key)
    if entry is None:  # the configuration, and whether cuSPARSELt holds the weight for calls like this one
        n, k = module.values.shape[0], 2 * module.values.shape[1]
        entry = configs[key] = (tuned(n, k, x.shape[0], x.dtype, x.device), cusparselt.supports(module, x))
    config, shared = entry
    if shared:
        cusparselt.ensure_prepared(module)  # cheap when current; compresses again after the weight changed
    return config


def _triton_small_run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from sparse_llm import tune
    from sparse_llm.backends import triton_small

    config = _prepared_config(module, x, "_sparse_llm_small_config", tune.small_config)
    bias = None if module.bias is None else module.bias.detach()
    if x.shape[-1] != 2 * module.values.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {2 * module.values.shape[1]}")
    # dtype and device were checked by ``supports``; the full checks cost microseconds per call
    return triton_small.spmm24_small(x, module.values, module.meta, bias, config, check=False)


def _checked_mma_config(n: int, k: int, m: int, dtype: torch.dtype, device: torch.device):
    """The tuned sparse tensor-core configuration for this call, checked once for the shape when it is cached."""
    from sparse_llm import tune
    from sparse_llm.backends import sparse_mma

    config = tune.mma_config(n, k, m, dtype, device)
    sparse_mma.check_config(m, n, k, config, device)
    return config


def _mma_operands(module: torch.nn.Module, x: torch.Tensor) -> tuple:
    """(values, meta, detached bias, configuration) of a sparse tensor-core call, after any preparation."""
    config = _prepared_config(module, x, "_sparse_llm_mma_config", _checked_mma_config)
    bias = module.bias
    return module.values, module.meta, None if bias is None else bias.detach(), config


def _mma_run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from sparse_llm.backends import sparse_mma

    # device, dtype and shape were checked by ``supports`` (``sparse_mma.why_not``), the configuration when cached
    return sparse_mma.run_checked(x, *_mma_operands(module, x))


def _mma_bind(module: torch.nn.Module, x: torch.Tensor):
    from sparse_llm.backends import sparse_mma

    return sparse_mma.bound(*_mma_operands(module, x), x.shape[0])


def _cusparselt_run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from sparse_llm.backends import cusparselt

    return cusparselt.run(module, x)


def _cusparselt_bind(module: torch.nn.Module, x: torch.Tensor):
    from sparse_llm.backends import cusparselt

    state = cusparselt.ensure_prepared(module)
    bias = module.bias
    if bias is not None and bias.dtype != x.dtype:
        return None  # ``run`` raises the error
    return cusparselt.bound(state, None if bias is None else bias.detach())


def _gpu_backend(name: str, run, supports, why_not, bind=None) -> Backend:
    """A GPU backend that applies when the per-M choice (tuned or default) names it."""
    return Backend(name, applies=lambda module, x: _gpu_choice(module, x) == name, run=run, supports=supports,
                   why_not=why_not, bind=bind)  # fmt: skip


SPARSE_MMA = _gpu_backend("sparse_mma", _mma_run, _mma_supports, _mma_why_not, _mma_bind)
# (no plan for the Triton kernel: its launcher's own host time, tens of microseconds, is the larger part)
TRITON_SMALL = _gpu_backend("triton_small", _triton_small_run, _triton_small_supports, _gpu_why_not)
CUSPARSELT = _gpu_backend("cusparselt", _cusparselt_run, _cusparselt_supports, _gpu_why_not, _cusparselt_bind)

# Ordered: the first entry that applies wins; the reference is last and always applies.
BACKENDS: list[Backend] = [SPARSE_MMA, TRITON_SMALL, CUSPARSELT, REFERENCE]


def status() -> dict:
    """Which backends can run here and, for the cuSPARSELt fast path, why it is off when it is (builds it once)."""
    from sparse_llm.backends._build import extension_status, mma_status, wgmma_status

    cuda = torch.cuda.is_available()
    ext = extension_status()
    mma = mma_status()
    wgmma = wgmma_status()
    return {
        "cuda": cuda,
        "device": torch.cuda.get_device_name() if cuda else None,
        "sparse_mma": mma["available"],
        "sparse_mma_reason": mma["reason"],
        # the sparse_mma backend's warpgroup kernel (wgmma.mma_async.sp): H100/H200 only
        "sparse_mma_wgmma": wgmma["available"],
        "sparse_mma_wgmma_reason": wgmma["reason"],
        "triton_small": cuda,
        "cusparselt": ext["available"],
        "cusparselt_reason": ext["reason"],
        "cusparselt_version": ext["cusparselt_version"],
        "order": names(),
    }


def names() -> list[str]:
    """Names of the registered backends, in dispatch order."""
    return [b.name for b in BACKENDS]


def get(name: str) -> Backend:
    """The backend called ``name``; a clear error lists the known ones."""
    for backend in BACKENDS:
        if backend.name == name:
            return backend
    raise ValueError(f"unknown SparseLinear backend {name!r}; known: {', '.join(names())}")


def _forced(module: torch.nn.Module, backend: str | None) -> str | None:
    """The backend name forced for a call: by argument, then the module's ``backend``, then the env var."""
    return backend or getattr(module, "backend", None) or os.environ.get(ENV_VAR) or None


def select(module: torch.nn.Module, x: torch.Tensor, backend: str | None = None) -> Backend:
    """The backend that a call with the 2-D input ``x`` takes (forced by argument, then env var, then order)."""
    forced = _forced(module, backend)
    if forced:
        chosen = get(forced)
        if not (chosen.supports or chosen.applies)(module, x):
            why = f": {chosen.why_not(module, x)}" if chosen.why_not else ""
            raise RuntimeError(
                f"SparseLinear backend {forced!r} was forced but cannot run this call "
                f"(input {tuple(x.shape)} {x.dtype} on {x.device}){why}"
            )
        return chosen
    for candidate in BACKENDS:
        if candidate.applies(module, x):
            return candidate
    raise RuntimeError("no SparseLinear backend applies")  # unreachable: the reference always applies


def linear(module: torch.nn.Module, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``F.linear(x, W, b)`` for a SparseLinear: flattens leading dims, dispatches, restores the shape; keeps a
    plan of the call where the chosen backend can bind one (see the module's docstring)."""
    x2d = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    chosen = select(module, x2d, backend)
    run = None
    if chosen.bind is not None and x2d.shape[0] > 0 and _plans_on():
        run = chosen.bind(module, x2d)  # after any preparation, so the plan holds the tensors the kernel reads
    if run is None:
        return _flattened(lambda x2d: chosen.run(module, x2d), x)
    plans = _module_cache(module, PLANS_ATTR)
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plans[_plan_key(module, x, backend)] = Plan(
        run, module.values, module.meta, module.bias, module.__dict__.get(_CUSPARSELT_STATE)
    )
    return _flattened(run, x)


def _flattened(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``run`` on ``x`` with its leading dims flattened, and the output's restored (no reshapes of a 2-D x:
    microseconds per call at decode)."""
    if x.dim() == 2:
        return run(x)
    out = run(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _plan_key(module: torch.nn.Module, x: torch.Tensor, backend: str | None) -> tuple:
    return x.shape, x.dtype, x.device, _forced(module, backend)


PLANS_ATTR = "_sparse_llm_plans"
# sparse_llm.backends.cusparselt.STATE_ATTR, spelled here: the backend modules are imported lazily (a test checks it)
_CUSPARSELT_STATE = "_sparse_llm_cusparselt"


@dataclass(frozen=True)
class Plan:
    """A bound call (``Backend.bind``) and the module's tensors and cuSPARSELt state it was bound to."""

    run: Callable[[torch.Tensor], torch.Tensor]
    values: torch.Tensor
    meta: torch.Tensor
    bias: torch.Tensor | None
    cusparselt_state: object


def _plans_on() -> bool:
    return USE_PLANS and not torch.compiler.is_compiling()


def run_plan(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The output of the module's plan for a call like ``x`` (same shape, dtype, device and forced backend) while
    the module still holds what the plan was bound to; None when there is none (the caller dispatches)."""
    if torch.compiler.is_compiling() or not USE_PLANS:
        return None
    plans = module.__dict__.get(PLANS_ATTR)
    if not plans:
        return None
    plan = plans.get(_plan_key(module, x, None))
    if plan is None:
        return None
    if not _holds(module, plan):
        plans.clear()  # all were bound to tensors the module no longer has: let them go
        return None
    return _flattened(plan.run, x)


def plan_of(module: torch.nn.Module, x: torch.Tensor, backend: str | None = None) -> Plan | None:
    """The plan that a call like ``x`` (forced to ``backend``, if given) would run now, or None (tests, reports)."""
    plan = module.__dict__.get(PLANS_ATTR, {}).get(_plan_key(module, x, backend))
    if plan is None or not _holds(module, plan):
        return None
    return plan


def _holds(module: torch.nn.Module, plan: Plan) -> bool:
    """Whether the module still has the tensors and cuSPARSELt state the plan was bound to (none of them replaced
    by ``load_state_dict``, ``.to()``, ``.half()`` or an assignment)."""
    buffers = module._buffers
    return (buffers.get("values") is plan.values and buffers.get("meta") is plan.meta and module.bias is plan.bias
            and module.__dict__.get(_CUSPARSELT_STATE) is plan.cusparselt_state)  # fmt: skip


def forget_plans(module: torch.nn.Module, prepared: bool = False) -> None:
    """Drop the module's plans and with them their references to its tensors (SparseLinear calls it when its tensors
    are converted, moved or loaded); ``prepared``: cuSPARSELt's compressed copy of the weight too (its tensors are
    about to be replaced: compiled code, which cannot check the copy against them, would otherwise keep using it)."""
    plans = module.__dict__.get(PLANS_ATTR)
    if plans:
        plans.clear()
    if prepared and module.__dict__.get(_CUSPARSELT_STATE) is not None:
        module.__dict__[_CUSPARSELT_STATE] = None
