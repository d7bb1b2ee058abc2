"""koala automatic request context for asyncio: no change to the service.

Loaded by the sitecustomize next to it (`koala record` and `koala replay`
put this directory on PYTHONPATH). Under libkoala.so it tells the library,
before each asyncio callback or task step, which request the step works
for, so every call the step sends is attributed to that request's session
(docs/helper-hints.md). Without the library it does nothing at all: no
import of asyncio or ctypes, no patch.

Which request a step works for:
- every asyncio callback and task step runs through
  asyncio.events.Handle._run, inside the contextvars.Context of the
  handle: that is where the request context is read and, when it changes
  on this thread, handed to the library (`koala_context_set`, one
  function call through ctypes, no system call);
- a task created by a plain callback (a transport's connection_made, a
  reader callback) starts a new context: one per connection for servers
  built on asyncio protocols (aiohttp, asyncio.start_server), whose
  requests follow each other on it;
- a task created by a task, and a callback scheduled by a task, inherit
  its context (asyncio copies the contextvars into them): the handler's
  own tasks (gather, create_task) and its client libraries' callbacks
  work for the same request.
The library ties a context to a request when a step working for it writes
the request's response, and moves the calls it made before into that
session.
"""

import os
import sys
import threading

# Context ids stay clear of the small numbers hand-written hints use.
_FIRST_ID = 1 << 48

_state = threading.local()
_set_context = None
_var = None
_next_id = None


def install():
    """Patches asyncio when libkoala.so is active in this process; otherwise
    does nothing. Returns whether it patched (or will, at asyncio's import)."""
    global _set_context, _var, _next_id
    if _set_context is not None:
        return True
    # The library activates only with KOALA_MODE: without it, not even
    # ctypes is imported.
    if not os.environ.get("KOALA_MODE"):
        return False
    try:
        import ctypes

        function = ctypes.CDLL(None).koala_context_set
    except (OSError, AttributeError):
        return False  # libkoala.so is not loaded here
    function.argtypes = [ctypes.c_uint64]
    function.restype = ctypes.c_int
    if function(0) < 0:
        return False  # loaded, but passive
    import contextvars
    import itertools

    _var = contextvars.ContextVar("koala_request_context")
    _next_id = itertools.count(_FIRST_ID).__next__
    _set_context = function
    if "asyncio.events" in sys.modules:
        _patch(sys.modules["asyncio.events"])
    else:
        sys.meta_path.insert(0, _PatchOnImport())
    return True


class _PatchOnImport:
    """Patches asyncio.events right after it is imported: a service that
    never imports asyncio pays nothing."""

    def find_spec(self, name, path=None, target=None):
        if name != "asyncio.events":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        load = loader.exec_module

        def exec_module(module):
            load(module)
            _patch(module)

        loader.exec_module = exec_module
        return spec


def _patch(events):
    handle = events.Handle
    if getattr(handle._run, "_koala", False):
        return
    run = handle._run
    var = _var
    state = _state
    set_context = _set_context

    def _run(self):
        context = self._context
        mark = context.get(var)
        if mark is None or mark[1] != id(context):
            mark = _mark(self, context, mark)
        if getattr(state, "current", 0) != mark[0]:
            state.current = mark[0]
            set_context(mark[0])
        return run(self)

    _run._koala = True
    handle._run = _run


def _mark(handle, context, inherited):
    """First step run in `context`: choose its request context and store it
    there as (id, owner context, owner is a task)."""
    is_task = _is_task(getattr(handle._callback, "__self__", None))
    if inherited is None or (is_task and not inherited[2]):
        context_id = _next_id()  # a new context: see the module's doc
    else:
        context_id = inherited[0]
    mark = (context_id, id(context), is_task)
    context.run(_var.set, mark)
    return mark


def _is_task(owner):
    tasks = sys.modules.get("asyncio.tasks")
    if owner is None or tasks is None:
        return False
    kinds = tuple(
        kind for kind in (getattr(tasks, "Task", None), getattr(tasks, "_PyTask", None)) if kind
    )
    return isinstance(owner, kinds)
