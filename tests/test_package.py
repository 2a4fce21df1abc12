"""The package surface: lazy imports, the seed's names, one error hierarchy."""

import builtins
import json
import subprocess
import sys

import pytest

import llmds
from llmds import errors

# (scipy is absent on purpose: numba imports it by itself when it is installed)
HEAVY = ["torch", "transformers", "fastapi", "matplotlib", "Stemmer", "sentence_transformers"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_llmds_is_stdlib_only():
    mods = _modules_after("import llmds")
    assert "numpy" not in mods
    assert not {m for m in mods if m.split(".")[0] in HEAVY}


def test_core_structures_do_not_pull_optional_packages():
    code = "import llmds\n" + "\n".join(
        f"llmds.{name}" for name in ("KVCache", "PagedAllocator", "TokenLRU", "IndexedHeap",
                                     "Scheduler", "AdmissionController", "CountMinSketch",
                                     "InvertedIndex", "HNSW", "RetrievalPipeline", "Timer")
    )
    mods = _modules_after(code)
    assert not {m for m in mods if m.split(".")[0] in HEAVY}


def test_every_exported_name_resolves():
    for name in llmds.__all__:
        assert getattr(llmds, name) is not None
    with pytest.raises(AttributeError):
        llmds.NoSuchThing  # noqa: B018


def test_error_hierarchy():
    assert issubclass(errors.ValidationError, errors.LLMDSError)
    assert issubclass(errors.ValidationError, ValueError)
    assert issubclass(errors.CapacityError, errors.LLMDSError)
    assert issubclass(errors.CapacityError, ValueError)
    assert issubclass(errors.NotFoundError, KeyError)
    assert issubclass(errors.StateError, RuntimeError)
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__:
            assert not hasattr(builtins, name), f"{name} shadows a builtin"
    assert str(errors.NotFoundError("request 3 is unknown")) == "request 3 is unknown"


def test_every_core_error_class_lives_in_llmds_errors():
    """Each exception class of the core modules is defined in (or re-exported from) llmds.errors."""
    import importlib
    import pkgutil

    from llmds.scheduling.indexed_heap import IndexedHeap

    assert "EmptyHeapError" in errors.__all__
    assert llmds.EmptyHeapError is errors.EmptyHeapError
    assert issubclass(errors.EmptyHeapError, errors.StateError)
    assert issubclass(errors.EmptyHeapError, IndexError)
    with pytest.raises(errors.EmptyHeapError):
        IndexedHeap().pop()
    public = {getattr(errors, n) for n in errors.__all__}
    heavy = ("llmds.cli", "llmds.engine", "llmds.kv_arena", "llmds.server")  # torch, fastapi
    for info in pkgutil.walk_packages(llmds.__path__, "llmds."):
        if info.name.startswith(heavy):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__.startswith("llmds"):
                assert obj in public, f"{info.name}.{name} is not in llmds.errors"
