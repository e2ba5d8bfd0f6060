#!/usr/bin/env python3
"""Compile the proxy's request path with mypyc: ``make native`` runs this.

    .venv/bin/python scripts/build_native.py [--check]

Compiles :data:`plait.proxy.native.MODULES` (one mypyc group, ``-O3``) and puts the
extension modules in ``src/plait/proxy/_compiled/`` with ``stamp.json`` (the
interpreter, the module list and the digest of the sources: see
:mod:`plait.proxy.native`, which decides at import whether to use them). The folder is
replaced only once the build succeeded. Needs a C compiler and the interpreter's headers
(Debian: ``gcc``, ``python3.11-dev``; ``scripts/install-debian-deps`` installs them).

``--check`` builds nothing: it exits 0 when the compiled modules are there and current
for this interpreter and these sources, 1 (saying why) when not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
os.environ["PLAIT_PURE"] = "1"  # import the loader without loading what it would load

from plait.proxy import native  # noqa: E402

OPT_LEVEL = "3"  # the C compiler's -O
# Smaller in memory, not slower: only PyInit_* is exported (modules and their shared
# library find each other through capsules, not symbols), no unwind tables (C code: no
# exceptions to unwind), and relative relocations packed (DT_RELR, glibc 2.36+). The
# library's resident size went from about 1.4 to 1.0 MB.
CFLAGS = ["-fvisibility=hidden", "-fno-asynchronous-unwind-tables"]
LDFLAGS = ["-Wl,-z,pack-relative-relocs"]


def build(out: Path, opt_level: str = OPT_LEVEL) -> None:
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        sys.exit(f"build_native: {header} is missing: install the headers (python3.11-dev)")
    if shutil.which(sysconfig.get_config_var("CC").split()[0]) is None:
        sys.exit(
            "build_native: no C compiler ({}): install gcc".format(sysconfig.get_config_var("CC"))
        )
    from mypyc.build import mypycify
    from setuptools import Distribution

    for name, flags in (("CFLAGS", CFLAGS), ("LDFLAGS", LDFLAGS)):
        os.environ[name] = " ".join([os.environ.get(name, ""), *flags]).strip()

    digest = native.source_digest()  # before compiling: what the compiler reads
    sources = [f"src/plait/proxy/{name}.py" for name in native.MODULES]
    with tempfile.TemporaryDirectory(prefix="plait-native-") as tmp:
        work = Path(tmp)
        os.chdir(ROOT)
        extensions = mypycify(
            sources,
            opt_level=opt_level,
            group_name=native.GROUP,
            target_dir=str(work / "c"),
        )
        dist = Distribution({"name": "plait-native", "ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(work / "lib")  # type: ignore[attr-defined]
        cmd.build_temp = str(work / "obj")  # type: ignore[attr-defined]
        cmd.parallel = os.cpu_count() or 1  # type: ignore[attr-defined]
        dist.run_command("build_ext")
        staged = work / "out"
        staged.mkdir()
        built = sorted((work / "lib" / "plait" / "proxy").glob("*.so"))
        for so in built:
            shutil.copy2(so, staged / so.name)
        stamp = {
            "interpreter": native.interpreter(),
            "modules": list(native.MODULES),
            "sources": digest,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staged / "stamp.json").write_text(json.dumps(stamp, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(staged, out)
    print(f"build_native: {len(built)} extension modules in {out.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/build_native.py", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only say whether the build is current")
    p.add_argument(
        "--opt-level", default=OPT_LEVEL, help=f"the C compiler's -O (default {OPT_LEVEL})"
    )
    a = p.parse_args(argv)
    if a.check:
        del os.environ["PLAIT_PURE"]
        why = native.why_not()
        print("current" if why is None else why)
        return 0 if why is None else 1
    t0 = time.monotonic()
    build(native.COMPILED_DIR, a.opt_level)
    print(f"build_native: took {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
