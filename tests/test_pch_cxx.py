"""scripts/pch-cxx, the compiler setup-venv.sh builds mmcv's ops with: same code, one header
parse."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PCH_CXX = Path(__file__).resolve().parent.parent / "scripts" / "pch-cxx"
pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="needs a C++ compiler")

HEADER = "#include <map>\n#include <string>\ninline int twice(int x) { return 2 * x; }\n"
SOURCE = ('#include "pytorch_cpp_helper.hpp"\n'
          "int f(int x) { std::map<std::string, int> m{{\"a\", x}}; return twice(m[\"a\"]); }\n")


def text_section(obj: Path) -> bytes:
    out = obj.with_suffix(".text")
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.text", str(obj), str(out)],
                   check=True)
    return out.read_bytes()


def compile_(cxx: list[str], tmp: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    # The shape of the compile lines torch's ninja build writes ("-c" twice included).
    return subprocess.run([*cxx, "-MMD", "-MF", str(tmp / f"{name}.d"), "-O2", "-fPIC",
                           f"-I{tmp / 'common'}", "-c", "-c", str(tmp / "src" / "op.cpp"),
                           "-o", str(tmp / f"{name}.o"), "-std=c++17", "-DEXT=_ext", *extra],
                          capture_output=True, text=True, check=True)


def test_precompiles_the_helper_once_and_compiles_the_same_code(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "common" / "pytorch_cpp_helper.hpp").write_text(HEADER)
    (tmp_path / "src" / "op.cpp").write_text(SOURCE)
    with_pch = compile_([str(PCH_CXX)], tmp_path, "pch", "-H")
    pch = tmp_path / "common" / "pytorch_cpp_helper.hpp.gch"
    assert pch.is_file()
    # g++ -H marks a precompiled header it used with "!".
    assert f"! {pch}" in with_pch.stderr
    compile_(["c++"], tmp_path, "plain")
    assert text_section(tmp_path / "pch.o") == text_section(tmp_path / "plain.o")
    mtime = pch.stat().st_mtime_ns
    compile_([str(PCH_CXX)], tmp_path, "again")
    assert pch.stat().st_mtime_ns == mtime  # built once


def test_other_invocations_go_straight_through(tmp_path):
    version = subprocess.run([str(PCH_CXX), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert version == subprocess.run(["c++", "--version"], capture_output=True, text=True,
                                     check=True).stdout
    # A failing compile fails with the compiler's own message and exit status.
    (tmp_path / "bad.cpp").write_text("int f( {\n")
    bad = subprocess.run([str(PCH_CXX), "-c", str(tmp_path / "bad.cpp"),
                          "-o", str(tmp_path / "bad.o")], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"})
    assert bad.returncode != 0 and "error" in bad.stderr


def test_refuses_to_call_itself():
    own = subprocess.run([str(PCH_CXX), "-v"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PARAX_BENCH_REAL_CXX": str(PCH_CXX)})
    assert own.returncode == 2
    assert "the real compiler (PARAX_BENCH_REAL_CXX=" in own.stderr
    assert "is pch-cxx itself" in own.stderr
