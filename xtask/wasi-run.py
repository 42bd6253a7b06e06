"""Runs a wasm32-wasip1 command module (a `cargo test --target wasm32-wasip1` test binary) on
wasmtime's Python package: cargo's runner for that target in `cargo xtask test`.

    python wasi-run.py MODULE.wasm [ARGS...]

wasmgate's own host runs proxy-wasm modules: its WASI is the subset filters use (no command
entry point, arguments or preopened folders), so libtest runs here instead. The module gets
its arguments, stdout and stderr, and the variables libtest reads; nothing else of the
environment and no files. The exit status is the module's. A test binary of a plugin also
imports the proxy-wasm host functions its adapter calls: the pure cores' tests never call
them, so each is defined to trap, naming itself, should one be called.
"""

import os
import sys

import wasmtime


def trapping(module: str, name: str):
    def call(*_args):
        raise wasmtime.Trap(f"{module}::{name} is a proxy-wasm host function: no host here")

    return call


def main() -> int:
    path = sys.argv[1]
    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    wasi = wasmtime.WasiConfig()
    wasi.argv = [os.path.basename(path)] + sys.argv[2:]
    wasi.env = [
        (name, value)
        for name, value in os.environ.items()
        if name.startswith("RUST_") or name == "NO_COLOR"
    ]
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    store.set_wasi(wasi)
    module = wasmtime.Module.from_file(engine, path)
    for item in module.imports:
        if item.module == "wasi_snapshot_preview1" or not isinstance(item.type, wasmtime.FuncType):
            continue
        linker.define_func(item.module, item.name, item.type, trapping(item.module, item.name))
    instance = linker.instantiate(store, module)
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exit:
        return exit.code
    except wasmtime.Trap as trap:
        print(f"wasi-run: {path} trapped: {trap}", file=sys.stderr)
        return 101
    return 0


if __name__ == "__main__":
    sys.exit(main())
