"""What the layers need to run under ``torch.compile``, ``torch.export``, CUDA graphs and
``torch.fx``.

Three rules keep every layer traceable by Dynamo with ``fullgraph=True`` and capturable in a
CUDA graph:

* Constants that depend only on shapes and options (characteristic matrices, mask means) are
  computed on the host with NumPy and cached. A traced call must not step into that code (NumPy
  calls such as ``ndarray.setflags`` break the trace), so each cache is reached through a
  function marked with :func:`host_constant`: Dynamo calls it at trace time and bakes its result
  into the graph as a constant.
* Device tensors of those constants are cached per device and dtype, so that after the first
  call no host-to-device copy (a synchronizing operation) happens; CUDA graphs are captured after
  a warm-up call, as usual.
* Random draws use torch's random operators on the default generator (which CUDA graphs and the
  compiler's random number functionalization know how to replay); no value is read back to the
  host and no shape depends on a draw.

DropBlock needs none of this: its mask is one operator (``dropblock/op.py``) whose host
computations stay outside any graph.

Under ``torch.fx.symbolic_trace`` a layer's input checks and control flow need real tensors, so
each layer is one node of the traced graph (:func:`fx_leaf`, :func:`fx_call`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.fx

__all__ = [
    "check_traceable_generator",
    "eager_only",
    "fx_call",
    "fx_leaf",
    "host_constant",
    "is_compiling",
    "module_call",
    "static_sizes",
]

Function = TypeVar("Function", bound=Callable[..., Any])


def host_constant(function: Function) -> Function:
    """Mark ``function`` as returning a constant for given arguments (shapes, options, devices).

    Eager calls are plain calls. Under ``torch.compile`` Dynamo calls the function at trace time
    instead of tracing into it, and the result (a Python number or a tensor) becomes a constant
    of the graph, guarded by the arguments. The function must be a plain Python function.
    """
    # what torch.compiler.assume_constant_result does, without importing the compiler stack at
    # import time (it would double the cost of ``import structdrop.nn``)
    function._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return function


def eager_only(function: Function) -> Function:
    """``function``, run eagerly when called from compiled code (a graph break), as
    ``torch.compiler.disable(function)``; the compiler stack is imported only once something is
    compiled, not when this module is."""
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling():
            return function(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(function))
        return disabled[0](*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def static_sizes(sizes: Any) -> tuple[int, ...]:
    """``sizes`` as plain ints, also when Dynamo traces them as symbolic sizes.

    The host constants are keyed by sizes (spatial shapes, widths), so they need concrete
    values: ``len(range(n))`` makes Dynamo guard on the exact value of ``n`` (a new size then
    recompiles, as a new shape does without dynamic shapes). Batch and channel sizes are not
    passed here and may stay symbolic.
    """
    return tuple(len(range(n)) for n in sizes)


def is_compiling() -> bool:
    """Whether the call is being traced by Dynamo or ``torch.export``."""
    return torch.compiler.is_compiling()


GENERATOR_MESSAGE = (
    "generator is not supported under torch.compile(fullgraph=True) (Dynamo cannot trace a "
    "torch.Generator); pass generator=None and seed with torch.manual_seed, compile without "
    "fullgraph, or call the layer eagerly"
)


def check_traceable_generator(generator: torch.Generator | None) -> None:
    """Break the graph, with a message that names the cause, for an explicit generator.

    Dynamo cannot put a ``torch.Generator`` into a graph. With ``fullgraph=True`` the message
    is the error; otherwise the random draws that take the generator run eagerly between two
    graphs, and the generator works.
    """
    if generator is not None and is_compiling():
        torch._dynamo.graph_break(msg=GENERATOR_MESSAGE)


def fx_call(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Record ``function`` as one ``call_function`` node of the ``torch.fx`` graph that the
    proxy among ``args`` and ``kwargs`` belongs to.

    A function registered with ``torch.fx.wrap`` is looked up, while a trace runs, as the
    tracer's patched wrapper; the node records the function that wrapper stands for.
    """
    function = getattr(function, "__wrapped__", function)
    proxy = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.fx.Proxy))
    return proxy.tracer.create_proxy("call_function", function, args, kwargs)


def module_call(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Under ``torch.fx`` tracing, ``module`` as one ``call_module`` node, else None.

    The traced graph then calls the layer itself, which keeps its training flag, generator and
    options live (and its input checks and control flow out of the graph). A layer traced as
    the root module is traced through its functional form instead (None here).
    """
    proxy = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.fx.Proxy)), None)
    if proxy is None:
        return None
    try:
        path = proxy.tracer.path_of_module(module)  # type: ignore[attr-defined]  # fx.Tracer only
    except NameError:
        return None
    if not path:
        return None
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    return proxy.tracer.create_proxy("call_module", path, args, kwargs)


Forward = TypeVar("Forward", bound=Callable[..., Any])


def fx_leaf(forward: Forward) -> Forward:
    """A layer's ``forward`` that is one ``call_module`` node under ``torch.fx`` tracing (see
    :func:`module_call`); a layer traced as the root module runs ``forward`` on the proxy."""

    @functools.wraps(forward)
    def wrapper(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, torch.fx.Proxy) for a in args):
            node = module_call(self, *args, **kwargs)
            if node is not None:
                return node
        return forward(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
