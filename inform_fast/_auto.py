"""Make ``import inform_fast`` enough for the Transformers Auto classes, without importing
Transformers (or torch) at that moment.

``inform_fast.configuration`` registers the "inform" model type with ``AutoConfig`` when it is
imported, ``inform_fast.modeling`` the model class with ``AutoModel`` and
``AutoModelForSequenceClassification``. ``install()`` arranges for each of those imports to
happen right after the Transformers module it registers with is executed
(``transformers.models.auto.configuration_auto``, ``...modeling_auto``), whoever imports it and
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

# Transformers module -> the inform_fast module that registers with it when imported
TARGETS = {
    "transformers.models.auto.configuration_auto": "inform_fast.configuration",
    "transformers.models.auto.modeling_auto": "inform_fast.modeling",
}


def _register(module: str) -> None:
    # a registering module imports its Transformers module itself; if it is being imported right
    # now, its registration (at its end) is still to come
    if module not in sys.modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # never break the user's `import transformers`
            warnings.warn(f"inform_fast could not register its model with transformers: {type(error).__name__}: {error}; "
                          "import inform_fast.modeling to load InfoRM checkpoints with the Auto classes", stacklevel=2)


class _RegisterAfterExec(importlib.abc.Loader):
    """The target's own loader, then ``_register``."""

    def __init__(self, loader, module: str):
        self._loader = loader
        self._module = module

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register(self._module)

    def __getattr__(self, name):  # get_source, get_filename, ... of the wrapped loader
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, target: str):
        self.target = target

    def find_spec(self, fullname, path, target=None):
        if fullname != self.target:
            return None
        _uninstall(self.target)  # one shot; also keeps the search below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterExec(spec.loader, TARGETS[fullname])
        return spec


def _uninstall(target: str) -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not (isinstance(finder, _Finder) and finder.target == target)]


def install() -> None:
    """Register now with each Transformers module already imported, else when it is."""
    for target, module in TARGETS.items():
        if target in sys.modules:
            _register(module)
        elif not any(isinstance(finder, _Finder) and finder.target == target for finder in sys.meta_path):
            sys.meta_path.insert(0, _Finder(target))
