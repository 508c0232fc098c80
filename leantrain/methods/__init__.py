"""Method families, one sub-package each (with a README.md method card). Importing registers them."""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
