"""The regularisers a point can train with: a registry of components, looked up by name.

An entry tells the rest of forgetbench what it needs to know about one regulariser, without
importing torch: its name in a suite (``sweep.regularizer``), how reports title it, the fp32
state it keeps per parameter (what the memory planner counts), the settings a state it
estimates from data depends on (part of its points' ids and the key of that state's cache
in the run directory, as EWC's Fisher is), a check on the suite, and the component that the
recipe builds. As torchtune instantiates the components a config names, ``component`` is a
callable or the ``"module:function"`` path of one, imported only when a point trains.

A component is called with a ``forgetbench.train.regularizers.Setup`` (the model's trainable
parameters and their names, the tokenizer, the process group, the suite and point, the cache
directory) and returns an object with a method for each form it is applied in
(``sweep.regularizer_form``; ``forms`` in its entry lists them):

- ``penalty_(lam) -> float``, the ``coupled`` form (λ·penalty in the loss): add the
  penalty's gradient to each parameter's ``.grad`` in place (after FSDP has reduced them:
  sharded tensors stay sharded), before clipping and the optimizer, and return its value;
- ``pull_(lam, lrs) -> float``, the ``decoupled`` form: after the optimizer's step, move each
  parameter toward what the penalty wants at the rate λ × that parameter's learning rate
  (``lrs``, one per parameter), outside Adam's normalisation as AdamW's weight decay is, and
  return the penalty's value before the pull;
- ``summary``: a dict merged into the point's training summary (EWC: ``{"fisher": ...}``).

A new regulariser is a component and one :func:`register` call; the suite schema, point ids,
the recipe, the planner and the reports read the registry.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forgetbench.datafiles import source_fingerprint

NONE = "none"  # plain training: no entry, no state
# how a regulariser acts (train/regularizers.py explains both): ``decoupled``, a pull toward
# the base weights after the optimizer's step, whose strength λ·lr Adam's normalisation
# cannot undo; ``coupled``, λ·penalty added to the loss, as most EWC code does
FORMS = ("decoupled", "coupled")
DEFAULT_FORM = "decoupled"


@dataclass(frozen=True)
class Regularizer:
    name: str                 # its value in sweep.regularizer
    title: str                # how tables and legends name it: "L2-SP", "EWC"
    state_bytes: int          # fp32 state per parameter (θ0: 4; θ0 and a Fisher: 8), for the planner
    component: str | Callable[[Any], Any]  # builds it in the recipe (see the module docstring)
    # a state estimated from data, cached per run under this name (runs/<suite>/<cache>/<hash>/)
    # and its settings, which its points' ids include; None: the state is the weights alone
    cache: str | None = None
    identity: Callable[[Any], dict[str, Any]] | None = None
    # what the suite must provide for it: a message for the user, or None
    check: Callable[[Any], str | None] | None = None
    # the forms its component implements (``pull_`` for decoupled, ``penalty_`` for coupled)
    forms: tuple[str, ...] = ("coupled",)


_REGISTRY: dict[str, Regularizer] = {}


def register(entry: Regularizer) -> Regularizer:
    """Make ``entry`` available to suites by its name; registering a name again replaces it."""
    if entry.name == NONE:
        raise ValueError(f"{NONE!r} is plain training, not a regulariser name")
    if (entry.cache is None) != (entry.identity is None):
        raise ValueError(f"regulariser {entry.name!r}: a cache needs an identity, and an identity a cache")
    if not entry.forms or not set(entry.forms) <= set(FORMS):
        raise ValueError(f"regulariser {entry.name!r}: forms must be some of {FORMS}, not {entry.forms}")
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """``none``, then every registered regulariser in the order registered (the reports' order)."""
    return [NONE, *_REGISTRY]


def get(name: str) -> Regularizer | None:
    """The entry of ``name``; None for ``none``. An unknown name is a bug here: suites are
    validated against :func:`names` when they load."""
    return None if name == NONE else _REGISTRY[name]


def state_bytes(name: str) -> int:
    entry = get(name)
    return 0 if entry is None else entry.state_bytes


def title(name: str) -> str:
    entry = get(name)
    return "none" if entry is None else entry.title


# ---------------------------------------------------------------- the built-in ones

def _fisher_data(suite: Any) -> Any:
    return suite.data.fisher or suite.data.replay


def _fisher_identity(suite: Any) -> dict[str, Any]:
    """What EWC's Fisher depends on besides the model (with it, the key of its cache)."""
    t = suite.train
    return {"data": source_fingerprint(_fisher_data(suite)), "ewc": t.ewc.model_dump(mode="json"),
            "seed": t.seed, "max_seq_len": t.max_seq_len, "dtype": t.dtype,
            # the rows as chat turns are other rows (off: the key Fishers had before)
            **({"chat_template": True} if t.chat_template else {})}


def _fisher_check(suite: Any) -> str | None:
    if _fisher_data(suite) is None:
        return "needs general data for its Fisher: set data.fisher (or data.replay)"
    return None


register(Regularizer(
    name="l2", title="L2-SP", state_bytes=4,
    component="forgetbench.train.regularizers:l2_sp", forms=FORMS))
register(Regularizer(
    name="ewc", title="EWC", state_bytes=8,
    component="forgetbench.train.regularizers:ewc",
    cache="fisher", identity=_fisher_identity, check=_fisher_check, forms=FORMS))
