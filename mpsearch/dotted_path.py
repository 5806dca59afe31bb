"""Objects a study YAML names by `package.module:attribute` (a model factory, a task adapter).

The module is imported as Python imports any module, with one addition: the folder mpsearch runs in is
searched last (as uvicorn and gunicorn do for their `module:app`), so a `my_models.py` beside the study
needs no install. A Ray worker runs its trials in that folder too, so it finds the module the same way
when the folder is shared; on other nodes the module must be installed or on PYTHONPATH.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

from mpsearch.errors import ConfigError

IMPORT_HINT = ("install its package, or run mpsearch from the folder that holds the module or with PYTHONPATH "
               "naming that folder (with search.backend ray: on every Ray node, since workers import it by "
               "this path)")


def load_object(spec: str, key: str) -> Any:
    """The object `spec` ('package.module:attribute', dots allowed after the colon) names; a module that
    cannot be imported or a missing attribute is one ConfigError naming the YAML `key` and the fix."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"{key} '{spec}': no module named '{exc.name}' can be imported; {IMPORT_HINT}.") \
                from None
        raise ConfigError(f"{key} '{spec}': importing '{module_name}' failed: {raised(exc)}; install what the "
                          "module imports.") from None
    except Exception as exc:  # noqa: BLE001  (the user's module: whatever it raises is one line)
        raise ConfigError(f"{key} '{spec}': importing '{module_name}' failed: {raised(exc)}; fix the module.") \
            from None
    for depth, part in enumerate(attribute.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attribute.split(".")[:depth]])
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            listed = f" (it has {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})" if names else ""
            raise ConfigError(f"{key} '{spec}': '{where}' has no attribute '{part}'{listed}; fix the name after "
                              "the colon.")
        obj = getattr(obj, part)
    return obj


def raised(exc: BaseException) -> str:
    """`Type: first line of the message (file:line)` of an exception from the user's code, innermost frame."""
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    message = text.strip().splitlines()[0] if text and text.strip() else ""
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        at = f" ({os.path.basename(exc.filename)}:{exc.lineno})"
    else:
        at = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}{': ' + message if message else ''}{at}"
