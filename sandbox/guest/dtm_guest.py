"""The guest side of dtm-sandbox: CPython, pre-initialised, that runs one program per instance.

`scripts/fetch-python-wasm.sh` turns this module into a WebAssembly component with componentize-py
(pinned by version and sha256). componentize-py starts CPython, imports this module, and snapshots
the interpreter's memory after the import; the host instantiates a fresh copy-on-write copy of that
snapshot for every program, so start-up costs an instantiation instead of an interpreter boot.

Build time (the module body below), identical for every run and independent of any program:
* the whole standard library is compiled into an in-memory table served by a meta-path finder
  (the component has no file system at run time, and gets none: the host preopens nothing);
* the modules most programs import are imported once (`_PRELOADED`);
* everything alive is moved out of the garbage collector's reach (`gc.freeze`), so collections in
  a run do not touch, and copy, the snapshot's pages.

Run time (`Run.run`, called through `wasi:cli/run`): the driver protocol of `src/driver.rs`. One
line holding a fresh nonce, then the program's bytes, arrive on stdin; the program is compiled as
`<program>` and executed in a brand-new `__main__` module; only if that returns normally is the
`ok` completion record written to fd 1, else an `err` record with the exception's type and message.
"""

import gc
import importlib.machinery
import marshal
import os
import sys

# Directories of the standard library that are not compiled in: tests, GUI and packaging tools,
# and the two demo packages that print when imported.
_SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "__phello__",
        "ensurepip",
        "idlelib",
        "lib-dynload",
        "site-packages",
        "test",
        "tkinter",
        "turtledemo",
        "venv",
    }
)

# Imported at build time: what HumanEval/MBPP-style programs and the driver itself use most.
_PRELOADED = (
    "bisect",
    "collections",
    "collections.abc",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "json",
    "math",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "textwrap",
    "traceback",
    "typing",
)

# Longest exception message (bytes of UTF-8) put into the completion record.
_MAX_MESSAGE = 2000


def _compile_stdlib(root):
    """{module name: (is_package, file name, marshalled code)} for every module under `root`."""
    table = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _SKIP_DIRS
            and not d.startswith("config-")
            and os.path.exists(os.path.join(dirpath, d, "__init__.py"))
        )
        rel = os.path.relpath(dirpath, root)
        package = "" if rel == "." else rel.replace(os.sep, ".")
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            stem = filename[:-3]
            is_package = stem == "__init__"
            if is_package:
                name = package
            elif package:
                name = package + "." + stem
            else:
                name = stem
            if not name:
                continue
            path = os.path.join(dirpath, filename)
            with open(path, "rb") as f:
                source = f.read()
            code = compile(source, path, "exec", dont_inherit=True)
            table[name] = (is_package, path, marshal.dumps(code))
    return table


class _StdlibLoader:
    """Executes a module from the in-memory table."""

    @staticmethod
    def create_module(spec):
        return None

    @staticmethod
    def exec_module(module):
        exec(_StdlibLoader.get_code(module.__spec__.name), module.__dict__)

    @staticmethod
    def get_code(name):
        return marshal.loads(_STDLIB[name][2])

    @staticmethod
    def get_source(name):
        return None

    @staticmethod
    def is_package(name):
        return _STDLIB[name][0]


class _StdlibFinder:
    """Finds standard-library modules in the in-memory table (before the path-based finder)."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        entry = _STDLIB.get(name)
        if entry is None:
            return None
        is_package, filename, _ = entry
        spec = importlib.machinery.ModuleSpec(
            name, _StdlibLoader, origin=filename, is_package=is_package
        )
        spec.has_location = True
        if is_package:
            spec.submodule_search_locations = [os.path.dirname(filename)]
        return spec

    @staticmethod
    def invalidate_caches():
        pass


# The standard library's directory (`os` is frozen, and its `__file__` names a directory that
# componentize-py does not mount; `typing` is read from the real one).
_STDLIB = _compile_stdlib(os.path.dirname(importlib.machinery.PathFinder.find_spec("typing").origin))
sys.meta_path.insert(sys.meta_path.index(importlib.machinery.PathFinder), _StdlibFinder)
for _name in _PRELOADED:
    __import__(_name)
del _name

import random  # noqa: E402  (preloaded above; bound here for the per-run reseed)

from wit_world import exports  # noqa: E402  (componentize-py's bindings for wit/world.wit)


def _dtm_main():
    _write, _exit = os.write, os._exit
    data = sys.stdin.buffer.read()
    nl = data.index(b"\n")
    head = b"\n\x1edtm-done:" + data[:nl] + b":"
    src = data[nl + 1 :]
    del data, nl

    # The nonce lives only in this closure cell: not in any module's globals, the source, argv
    # or the environment, and stdin is drained.
    def _dtm_finish(tag, etype="", msg=""):
        for f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                f.flush()
            except BaseException:
                pass
        rec = b"".join(
            (
                head,
                tag,
                b":",
                etype.encode("utf-8", "backslashreplace").hex().encode(),
                b":",
                msg.encode("utf-8", "backslashreplace")[:_MAX_MESSAGE].hex().encode(),
                b"\n",
            )
        )
        while rec:
            try:
                n = _write(1, rec)
            except InterruptedError:
                continue
            rec = rec[n:]
        _exit(0 if tag == b"ok" else 1)

    mod = type(sys)("__main__")
    sys.modules["__main__"] = mod
    try:
        code = compile(src, "<program>", "exec")
        del src
        exec(code, mod.__dict__)
    except BaseException as e:
        try:
            etype = type(e).__qualname__
        except BaseException:
            etype = "BaseException"
        try:
            msg = str(e)
        except BaseException:
            msg = "<exception str() failed>"
        try:
            import traceback

            tb = e.__traceback__
            if tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            traceback.print_exception(type(e), e, tb, file=sys.__stderr__)
        except BaseException:
            pass
        _dtm_finish(b"err", etype, msg)
    else:
        _dtm_finish(b"ok")


class Run(exports.Run):
    def run(self) -> None:
        # What a fresh `python -c` in an empty environment would see; the build-time values
        # (componentize-py's environment and argv) are not the program's business.
        os.environ.clear()
        sys.argv[:] = ["-c"]
        # `random` was seeded when the snapshot was taken; reseed it from this run's random
        # source, as importing it in a fresh interpreter would.
        random.seed()
        _dtm_main()


gc.collect()
gc.freeze()
