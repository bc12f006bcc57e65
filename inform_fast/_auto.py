"""Make ``import inform_fast`` enough for the Transformers Auto classes, without importing
Transformers (or torch) at that moment.

``inform_fast.configuration`` registers the "inform" model type with ``AutoConfig`` when it is
imported. ``install()`` arranges for that import to happen right after Transformers' Auto-config
module (``transformers.models.auto.configuration_auto``) is executed, whoever imports it and
whenever: at once if it is already imported, else through a one-shot import hook. The hook only
wraps that one module's loader; it runs the registration after the module body has run, so the
names it needs exist, and it never lets a failure there break Transformers' import (a warning
says what went wrong instead).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

TARGET = "transformers.models.auto.configuration_auto"
CONFIG_MODULE = "inform_fast.configuration"


def _register() -> None:
    # inform_fast.configuration registers itself at its end; if it is being imported right now
    # (it imports the Auto-config module), that end is still to come
    if CONFIG_MODULE not in sys.modules:
        try:
            importlib.import_module(CONFIG_MODULE)
        except Exception as error:  # never break the user's `import transformers`
            warnings.warn(f"inform_fast could not register its model type with transformers: {type(error).__name__}: {error}; "
                          "import inform_fast.modeling to load InfoRM checkpoints with the Auto classes", stacklevel=2)


class _RegisterAfterExec(importlib.abc.Loader):
    """The target's own loader, then ``_register``."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name):  # get_source, get_filename, ... of the wrapped loader
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        _uninstall()  # one shot; also keeps the search below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Finder)]


def install() -> None:
    """Register now if Transformers' Auto-config module is imported, else when it is."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
