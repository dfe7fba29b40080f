"""What the layers need to run under ``torch.compile``, ``torch.export``, CUDA graphs and
``torch.fx``.

Three rules keep the layers of mask laws (:mod:`._masks`) traceable by Dynamo with
``fullgraph=True`` and capturable in a CUDA graph:

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

DropBlock's layers need none of the host constants: their mask is one operator
(``dropblock/op.py``) whose host computations stay outside any graph; they share the rule on
generators (:func:`check_traceable_generator`).

Under ``torch.fx.symbolic_trace`` a layer's input checks and control flow need real tensors, so
every layer and every function is one node of the traced graph, by one mechanism: its first
lines record the call as a node when its input is a ``torch.fx.Proxy`` (:func:`fx_node`).
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
    "fx_node",
    "host_constant",
    "is_compiling",
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


def fx_node(target: Any, *args: Any, **kwargs: Any) -> Any:
    """The ``torch.fx`` node of one call of ``target`` on ``args`` (among which a proxy), or
    None for a layer that is the traced module itself.

    A layer (an ``nn.Module``) that is a submodule of the traced module is a ``call_module``
    node: the traced graph calls the layer, which keeps its training flag, generator and
    options live (and its input checks and control flow out of the graph). The traced module
    itself has no path: None, and its ``forward`` goes on with the proxy, down to the
    function it calls. A function is a ``call_function`` node of itself.

    Every layer and function starts with
    ``if isinstance(input, torch.fx.Proxy): return fx_node(...)``: an eager call pays one
    ``isinstance``, nothing more.
    """
    proxy = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.fx.Proxy))
    tracer = proxy.tracer
    if isinstance(target, torch.nn.Module):
        try:
            path = tracer.path_of_module(target)  # type: ignore[attr-defined]  # fx.Tracer only
        except NameError:
            return None
        if not path:
            return None
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        return tracer.create_proxy("call_module", path, args, kwargs)
    return tracer.create_proxy("call_function", target, args, kwargs)
