"""Per-layer instruction counts of an inbound ``chat_send``, from callgrind (``bench inbound --layers``).

Callgrind only sees C functions: in CPython 3.11 a Python-to-Python call runs inside the same
``_PyEval_EvalFrameDefault``, so no Python function of the engine has a cost of its own in a dump.
So the server process of ``--layers`` (and only it: the engine's code is not touched) routes each
layer's function through a C function of its own, compiled at start-up from :func:`c_source`
(``gcc -O0``: at -O2, identical function bodies are folded into one symbol and tail calls become
jumps, and callgrind would then see neither the name nor the call): the dump's inclusive cost of
that C symbol is the layer's cost, exactly and repeatably.

The trap is nesting: ``encode`` runs inside the room turn, ``unpackb`` inside ``decode``, and a
collection of the cyclic GC inside whatever allocated. Summing inclusive costs would count them
twice. So each layer has one C symbol per enclosing layer, ``L_<layer>__in__<outer>`` (``top`` when
no layer encloses it; the enclosing layer is a thread-local that the symbols set, so the LMDB writer
thread has its own), and a layer's own cost is the inclusive cost of all its symbols minus that of
the symbols ``L_<x>__in__<layer>`` directly inside it. GC is plain C (``gc_collect_main``): the dump
separates its contexts by their callers (``--separate-callers``, :data:`GC_DEPTH` deep) and each
collection is subtracted from the innermost layer on its call chain. Trio's share is split the same
way: each task step (the ``send`` into a woken task's coroutine: all async code between two awaits,
the room actor's loop, ``finish_turn``, the LMDB leader) goes through a symbol too, wrapped when
:meth:`Runner.reschedule` queues it, so the residual, the total minus every layer and GC, is what runs
outside every step: Trio's run loop itself, and the writer thread's loop around its transaction.

The wrappers cost instructions of their own, inside the rows (a C call, a thread-local swap, and
entering the Python function from C instead of the interpreter's inlined call: a few hundred per
call; a wake also wraps its step in Python, ~4 k): the total of a ``--layers`` run is 1–5 % above a
plain run's (``bench inbound`` without ``--layers``); the calls column says where the calls are.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sysconfig
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GC", "GC_DEPTH", "LAYERS", "Dump", "Layer", "c_source", "install", "layer_table", "parse_dump",
           "render", "top_exclusive", "valgrind_options"]


@dataclass(frozen=True)
class Layer:
    """One row of the table: ``targets`` are ``module:Class.attr`` (or ``module:attr``) whose calls it counts."""

    key: str
    title: str
    targets: tuple[str, ...]
    iterator: bool = False
    """The target returns an iterator (a generator) whose work runs in each ``next``: count the steps."""


LAYERS: tuple[Layer, ...] = (
    Layer("poll", "Trio I/O wait (`EpollIOManager.get_events` + `process_events`, user side)",
          ("trio._core._io_epoll:EpollIOManager.get_events", "trio._core._io_epoll:EpollIOManager.process_events")),
    Layer("steps", "task steps: async code between awaits (each `coro.send`; every async def's own work)",
          ("trio._core._run:Task.coro.send",)),
    Layer("reader", "reader pass glue (`Reader._read_ready`: epoll, `feed`, `resume`, `_on_frame`, `_dispatch`)",
          ("roost.reader:Reader._read_ready",)),
    Layer("recv", "socket read (`recv_now`, user side)", ("roost.outbox:SocketTransport.recv_now",)),
    Layer("frame", "WebSocket frame parse (`WebSocket.receive` steps: header, C mask)",
          ("roost.websocket:WebSocket.receive",), iterator=True),
    Layer("unpackb", "msgpack decode (C `msgpack.unpackb`, its `object_pairs_hook` inside)", ("msgpack:unpackb",)),
    Layer("decode", "schema walk (`codec.decode` minus `unpackb`: dict to ChatSend)", ("roost.connection:decode",)),
    Layer("rate", "rate limit (`Connection._take_token`)", ("roost.connection:Connection._take_token",)),
    Layer("handoff", "hand-off to the room (`Connection._to_room`: Request, `send_nowait`)",
          ("roost.connection:Connection._to_room",)),
    Layer("turn", "room turn minus encode (`RoomActor._turn`: chat.send, record, seq, replay)",
          ("roost.room:RoomActor._turn",)),
    Layer("encode", "encode (`room._packb`, `codec.encode`, `ws_frame`, `ws_head`)",
          ("roost.room:_packb", "roost.room:encode", "roost.room:ws_frame", "roost.room:ws_head")),
    Layer("writes", "durable records (`RoomState.take_writes`)", ("roost.state:RoomState.take_writes",)),
    Layer("plan", "store group plan and log record on the loop (`store.lmdb._plan`, `_pack_logged`, `encode_record`)",
          ("roost.store.lmdb:_plan", "roost.store.lmdb:_pack_logged", "roost.store.wal:encode_record")),
    Layer("txn", "store write in the writer thread (`Log.append`: the log record and its fdatasync; "
          "`LmdbStore._write_plan` without the log)",
          ("roost.store.wal:Log.append", "roost.store.lmdb:LmdbStore._write_plan")),
    Layer("checkpoint", "checkpoints: the log applied to LMDB in a thread (`LmdbStore._write_logged`)",
          ("roost.store.lmdb:LmdbStore._write_logged",)),
    Layer("flush", "fan-out flush (`RoomActor._flush`: Outbox.push, `send`)", ("roost.room:RoomActor._flush",)),
    Layer("wake", "task wake (`Runner.reschedule`, and wrapping the woken step)",
          ("trio._core._run:Runner.reschedule",)),
    Layer("clock", "`trio.current_time()` called by the engine", ("trio:current_time",)),
)
"""The layers, each a set of synchronous functions (an ``async def`` would count only the creation
of its coroutine: its work runs in the scheduler's ``send``)."""

GC = "gc_collect_main"
"""CPython's collector (a static function of gcmodule.c; the pyenv build keeps its symbol)."""

GC_DEPTH = 80
"""Callers kept in a GC context's name: enough to reach the enclosing layer's symbol."""

_TOP = "top"
_SYMBOL = re.compile(r"^L_(\w+?)__in__(\w+)$")


def valgrind_options() -> list[str]:
    """What ``--layers`` adds to the callgrind command line."""
    return [f"--separate-callers{GC_DEPTH}={GC}", "--compress-strings=no", "--compress-pos=no"]


def _symbol(inner: str, outer: str) -> str:
    return f"L_{inner}__in__{outer}"


def c_source(layers: Iterable[Layer] = LAYERS) -> str:
    """The C module ``_roost_layers``: ``wrap(target, index, iterator)`` returns a callable (or an
    iterator) that calls ``target`` through the symbol of layer ``index`` in the current layer."""
    keys = [layer.key for layer in layers]
    outers = [_TOP, *keys]
    lines = [
        "#define PY_SSIZE_T_CLEAN",
        "#include <Python.h>",
        "#include <stddef.h>",
        "static __thread int current = -1;",
        f"static unsigned long long calls[{len(keys)}][{len(outers)}];",
        "typedef PyObject *(*layer_fn)(PyObject *, PyObject *const *, size_t, PyObject *, int);",
        "static PyObject *run(PyObject *t, PyObject *const *a, size_t n, PyObject *k, int it) {",
        "    return it ? Py_TYPE(t)->tp_iternext(t) : PyObject_Vectorcall(t, a, n, k);",
        "}",
    ]
    for i, inner in enumerate(keys):
        for j, outer in enumerate(outers):
            lines += [
                f"static PyObject *{_symbol(inner, outer)}"
                "(PyObject *t, PyObject *const *a, size_t n, PyObject *k, int it) {",
                f"    int saved = current; PyObject *r; calls[{i}][{j}]++; current = {i};",
                "    r = run(t, a, n, k, it); current = saved; return r;",
                "}",
            ]
    table = ",\n".join("    {" + ", ".join(_symbol(inner, outer) for outer in outers) + "}" for inner in keys)
    lines += [
        f"static layer_fn table[{len(keys)}][{len(outers)}] = {{\n{table}\n}};",
        "typedef struct { PyObject_HEAD PyObject *target; int index; int iterator; vectorcallfunc vc; } Wrap;",
        "static PyObject *wrap_call(PyObject *self, PyObject *const *a, size_t n, PyObject *k) {",
        "    Wrap *w = (Wrap *)self; return table[w->index][current + 1](w->target, a, n, k, 0);",
        "}",
        "static PyObject *wrap_next(PyObject *self) {",
        "    Wrap *w = (Wrap *)self; return table[w->index][current + 1](w->target, NULL, 0, NULL, 1);",
        "}",
        "static PyObject *wrap_get(PyObject *self, PyObject *obj, PyObject *type) {",
        "    if (obj == NULL || obj == Py_None) { Py_INCREF(self); return self; }",
        "    return PyMethod_New(self, obj);",
        "}",
        "static void wrap_dealloc(PyObject *self) { Py_XDECREF(((Wrap *)self)->target); PyObject_Free(self); }",
        "static PyTypeObject WrapType = {",
        "    PyVarObject_HEAD_INIT(NULL, 0)",
        '    .tp_name = "_roost_layers.Wrap", .tp_basicsize = sizeof(Wrap),',
        "    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,",
        "    .tp_vectorcall_offset = offsetof(Wrap, vc), .tp_call = PyVectorcall_Call,",
        "    .tp_descr_get = wrap_get, .tp_dealloc = wrap_dealloc,",
        "};",
        "static PyTypeObject IterType = {",
        "    PyVarObject_HEAD_INIT(NULL, 0)",
        '    .tp_name = "_roost_layers.Iter", .tp_basicsize = sizeof(Wrap), .tp_flags = Py_TPFLAGS_DEFAULT,',
        "    .tp_iter = PyObject_SelfIter, .tp_iternext = wrap_next, .tp_dealloc = wrap_dealloc,",
        "};",
        "static PyObject *wrap(PyObject *m, PyObject *args) {",
        "    PyObject *target; int index, iterator;",
        '    if (!PyArg_ParseTuple(args, "Oip", &target, &index, &iterator)) return NULL;',
        f"    if (index < 0 || index >= {len(keys)}) {{ PyErr_SetString(PyExc_IndexError, \"layer\"); return NULL; }}",
        "    Wrap *w = PyObject_New(Wrap, iterator ? &IterType : &WrapType);",
        "    if (w == NULL) return NULL;",
        "    Py_INCREF(target); w->target = target; w->index = index; w->iterator = iterator; w->vc = wrap_call;",
        "    return (PyObject *)w;",
        "}",
        "static PyObject *counts(PyObject *m, PyObject *unused) {",
        f"    PyObject *out = PyList_New({len(keys)});",
        f"    for (int i = 0; out && i < {len(keys)}; i++) {{",
        "        unsigned long long s = 0;",
        f"        for (int j = 0; j < {len(outers)}; j++) s += calls[i][j];",
        "        PyList_SET_ITEM(out, i, PyLong_FromUnsignedLongLong(s));",
        "    }",
        "    return out;",
        "}",
        "static PyMethodDef methods[] = {",
        '    {"wrap", wrap, METH_VARARGS, NULL}, {"counts", counts, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}',
        "};",
        'static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_roost_layers", NULL, -1, methods};',
        "PyMODINIT_FUNC PyInit__roost_layers(void) {",
        "    if (PyType_Ready(&WrapType) < 0 || PyType_Ready(&IterType) < 0) return NULL;",
        "    return PyModule_Create(&module);",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _build(workdir: Path) -> Any:
    """Compile and import ``_roost_layers`` in ``workdir`` (needs gcc and Python's headers)."""
    source = workdir / "_roost_layers.c"
    source.write_text(c_source())
    target = workdir / f"_roost_layers{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    subprocess.run(["gcc", "-O0", "-g", "-fPIC", "-shared", f"-I{include}", "-o", str(target), str(source)],
                   check=True, capture_output=True, text=True)
    spec = importlib.util.spec_from_file_location("_roost_layers", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install(workdir: Path) -> Callable[[], dict[str, int]]:
    """Route every layer's targets through its C symbols (in this process, the bench server only).

    Returns a function giving the calls counted per layer (the check that each target is really on
    the path: a renamed engine function fails here, loudly, not as an empty row)."""
    native = _build(workdir)
    for index, layer in enumerate(LAYERS):
        for target in layer.targets:
            if layer.key == "steps":
                continue  # wrapped per wake, below (the send of each woken task's coroutine)
            module_name, _, path = target.partition(":")
            owner: Any = importlib.import_module(module_name)
            *parents, attr = path.split(".")
            for name in parents:
                owner = getattr(owner, name)
            original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            if not callable(original):
                raise TypeError(f"{target} is not callable")
            if layer.iterator:
                def steps(*args: Any, _original: Any = original, _index: int = index, **kwargs: Any) -> Any:
                    return native.wrap(_original(*args, **kwargs), _index, True)
                setattr(owner, attr, steps)
            elif layer.key == "wake":
                steps = next(i for i, other in enumerate(LAYERS) if other.key == "steps")

                def reschedule(runner: Any, task: Any, *rest: Any, _original: Any = original,
                               _steps: int = steps) -> None:
                    _original(runner, task, *rest)
                    task._next_send_fn = native.wrap(task._next_send_fn, _steps, False)
                setattr(owner, attr, native.wrap(reschedule, index, False))
            else:
                setattr(owner, attr, native.wrap(original, index, False))

    def counts() -> dict[str, int]:
        return dict(zip((layer.key for layer in LAYERS), native.counts(), strict=True))

    return counts


@dataclass
class Dump:
    """What :func:`parse_dump` reads from a callgrind dump (``--compress-strings`` either way)."""

    total: int = 0
    self_cost: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Exclusive instructions per function (GC contexts merged)."""
    objects: dict[str, str] = field(default_factory=dict)
    """The object file of each function (its ``ob=``)."""
    inclusive: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Inclusive instructions of the calls into each function name (contexts kept apart)."""
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Calls into each function name (contexts kept apart)."""


def parse_dump(text: str) -> Dump:
    """Read a callgrind dump: the total, each function's exclusive cost, each callee's inclusive cost.

    The format (callgrind's ``docs/cl-format``): ``fn=`` starts a function's cost lines (position,
    then the events: only ``Ir`` here); ``calls=`` announces that the next cost line is the
    inclusive cost of a call into ``cfn=``. Names may be compressed, ``(id) name`` once and ``(id)``
    after; ``ob=``/``cob=`` likewise."""
    dump = Dump()
    names: dict[str, str] = {}
    objects: dict[str, str] = {}
    fn = cfn = ob = ""
    in_call = False

    def name(value: str, table: dict[str, str]) -> str:
        value = value.strip()
        if value.startswith("("):
            ident, _, rest = value.partition(")")
            rest = rest.strip()
            if rest:
                table[ident] = rest
                return rest
            return table.get(ident, value)
        return value

    for line in text.splitlines():
        if not line:
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            parts = line.split()
            cost = int(parts[1]) if len(parts) > 1 else 0
            if in_call:
                dump.inclusive[cfn] += cost
                in_call = False
            else:
                dump.self_cost[fn.split("'", 1)[0]] += cost
            continue
        if line.startswith("fn="):
            fn = name(line[3:], names)
            dump.objects.setdefault(fn.split("'", 1)[0], ob)
        elif line.startswith("cfn="):
            cfn = name(line[4:], names)
        elif line.startswith("calls="):
            in_call = True
            dump.calls[cfn] += int(line[6:].split()[0])
        elif line.startswith("ob="):
            ob = name(line[3:], objects)
        elif line.startswith("cob="):
            name(line[4:], objects)
        elif line.startswith(("summary:", "totals:")):
            dump.total = max(dump.total, int(line.split()[1]))
    return dump


def layer_table(dump: Dump, messages: int) -> list[tuple[str, float, str, float | None]]:
    """Rows ``(title, Ir per message, functions, calls per message)``: every layer's own cost, GC,
    the residual, none counted twice (see the module docstring), then the total."""
    keys = [layer.key for layer in LAYERS]
    inclusive = dict.fromkeys(keys, 0)
    nested = dict.fromkeys(keys, 0)
    calls = dict.fromkeys(keys, 0)
    gc_calls = 0
    gc_total = gc_inside = gc_cut = 0
    gc_in = dict.fromkeys(keys, 0)
    for callee, cost in dump.inclusive.items():
        match = _SYMBOL.match(callee)
        if match and match.group(1) in inclusive:
            inner, outer = match.groups()
            inclusive[inner] += cost
            calls[inner] += dump.calls.get(callee, 0)
            if outer != _TOP:
                nested[outer] += cost
        elif callee.split("'", 1)[0] == GC:
            gc_total += cost
            gc_calls += dump.calls.get(callee, 0)
            for caller in callee.split("'")[1:]:  # nearest caller first: the innermost layer
                match = _SYMBOL.match(caller)
                if match and match.group(1) in gc_in:
                    gc_in[match.group(1)] += cost
                    gc_inside += cost
                    break
            else:
                if callee.count("'") >= GC_DEPTH:  # its chain was cut: a layer may enclose it unseen
                    gc_cut += cost
    rows: list[tuple[str, float, str, float | None]] = []
    layered = 0
    for layer in LAYERS:
        own = inclusive[layer.key] - nested[layer.key] - gc_in[layer.key]
        layered += own
        rows.append((layer.title, own / messages, ", ".join(layer.targets), calls[layer.key] / messages))
    where = f"{GC}; {gc_inside / max(gc_total, 1):.0%} of it inside the layers above (not in their rows)"
    if gc_cut:
        where += f"; {gc_cut / messages:,.0f} Ir/msg of it under call chains cut at {GC_DEPTH} callers"
    rows.append(("cyclic GC (`gc_collect_main`, wherever it ran)", gc_total / messages, where, gc_calls / messages))
    residual = dump.total - layered - gc_total
    rows.append(("residual: Trio's run loop between task steps (run queue, deadlines, `context.run`), "
                 "the writer thread's loop", residual / messages,
                 "total minus the rows above", None))
    rows.append(("**total**", dump.total / messages, "every thread of the server process", None))
    return rows


def top_exclusive(dump: Dump, messages: int, count: int = 15) -> list[tuple[str, str, float]]:
    """The ``count`` functions with the most exclusive instructions: ``(function, object, Ir/msg)``."""
    ranked = sorted(dump.self_cost.items(), key=lambda kv: -kv[1])[:count]
    return [(fn, Path(dump.objects.get(fn, "")).name, cost / messages) for fn, cost in ranked]


def render(rows: list[tuple[str, float, str, float | None]], *, title: str) -> str:
    """A markdown table: layer, Ir/msg, share of the total, calls per message, the functions in it.

    The calls column is the trap to read first: each call of a layer also costs the wrapper and
    the entry into a Python function from C (a few hundred instructions, inside the row)."""
    total = rows[-1][1] or 1.0
    out = [f"### {title}", "", "| layer | Ir/msg | share | calls/msg | functions |", "|---|--:|--:|--:|---|"]
    for name, per, functions, calls in rows:
        share = "100 %" if name == "**total**" else f"{100 * per / total:.1f} %"
        count = "" if calls is None else f"{calls:.2f}"
        out.append(f"| {name} | {per / 1000:,.1f} k | {share} | {count} | {functions} |")
    return "\n".join(out)
