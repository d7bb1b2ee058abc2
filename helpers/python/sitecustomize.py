"""koala's sitecustomize: starts the automatic request context for asyncio
(koala_context, next to this file) when libkoala.so is active, then runs
the sitecustomize this one hides, if there is one further on sys.path.
Without the library it only does the latter. Never raises.
"""


def _koala_start():
    import os

    if not os.environ.get("KOALA_MODE"):
        return  # the library is not active: nothing is imported
    try:
        import koala_context

        koala_context.install()
    except Exception:  # the service must start whatever happens here
        pass


def _chain():
    """Runs the next sitecustomize on sys.path (the user's, or the
    distribution's), as Python would have without this one."""
    import os
    import sys

    try:
        import importlib.machinery
        import importlib.util

        here = os.path.dirname(os.path.abspath(__file__))
        rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
    except Exception as error:  # as site.py does for a failing sitecustomize
        print(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{error!r}", file=sys.stderr)


_koala_start()
_chain()
