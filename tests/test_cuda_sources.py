"""Compile-check every CUDA source in kernels/ without a GPU: with nvcc, and with NVRTC (what CuPy uses).

* every ``kernels/*.cu`` is compiled by a CuPy launcher (``kernels/*_cupy.py``); the launcher's code,
  options and ``name_expressions`` are captured by calling its uncached module builder
  (``_module.__wrapped__``) against a recording stand-in for ``cupy.RawModule``, so both checks
  compile exactly what CuPy is given, and a new .cu or launcher is picked up by the glob;
* nvcc compiles each .cu with ``-Werror all-warnings`` and every template instance the launcher
  names (taking each kernel's address instantiates it);
* NVRTC, loaded with ctypes (no cuda-bindings, no CuPy, no GPU), compiles each .cu with the
  launcher's options plus what CuPy appends (``-ftz=true`` and an architecture; CuPy's ``-I``
  paths do not matter, the sources include nothing), resolves every name expression to a lowered
  name that is a PTX ``.entry``, and must log no warning (NVRTC has no ``-Werror``);
* the harness itself is checked: a copy with a syntax error, an unknown name expression and a
  warning must each be reported, with NVRTC's log (and nvcc must fail on a warning).

libnvrtc is taken from ``REFDIFF_NVRTC`` (a path: it must load, else the tests fail), else
``ctypes.util.find_library("nvrtc")``, else the pip wheels in the ``nvidia`` namespace package
(``pip install nvidia-cuda-nvrtc``: ``nvidia/cu13/lib/libnvrtc.so.13``,
``nvidia/cuda_nvrtc/lib/libnvrtc.so.12``), else the toolkit of ``CUDA_HOME``/``CUDA_PATH``/nvcc.
Tests skip, saying why, where nvcc or libnvrtc is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import glob
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
CU_SOURCES = sorted(KERNELS.glob("*.cu"))
LAUNCHERS = sorted(KERNELS.glob("*_cupy.py"))
#: Appended to a launcher's options, as cupy.cuda.compiler does (it picks the device's arch).
NVRTC_ARCH = "--gpu-architecture=compute_90"
CUPY_APPENDS = ("-ftz=true", NVRTC_ARCH)
NVCC_WERROR = ("-Werror", "all-warnings")
NVRTC_COMPILATION_ERROR = 6  # nvrtcResult NVRTC_ERROR_COMPILATION

cu_params = pytest.mark.parametrize("cu", CU_SOURCES, ids=[p.name for p in CU_SOURCES])


def test_kernels_folder_has_cuda_sources():
    assert CU_SOURCES, f"no .cu file under {KERNELS}"
    assert LAUNCHERS, f"no *_cupy.py launcher under {KERNELS}"


# --- what each launcher hands to cupy.RawModule -------------------------------


@dataclasses.dataclass(frozen=True)
class Build:
    launcher: str
    code: str
    options: tuple[str, ...]
    names: tuple[str, ...]


@functools.cache
def launcher_builds():
    """Every RawModule the launchers build: (builds, problems), without CuPy or a GPU."""
    modules, problems = {}, []
    for path in LAUNCHERS:  # imported first, with the real cupy (if any): they import none at module level
        try:
            modules[path.name] = importlib.import_module(f"refdiff.kernels.{path.stem}")
        except Exception as exc:  # pragma: no cover - reported by the test below
            problems.append(f"{path.name}: import failed: {exc!r}")
    calls = []

    class RecordingRawModule:
        def __init__(self, code=None, path=None, options=(), name_expressions=None, **kwargs):
            if code is None:
                code = Path(path).read_text()
            calls.append((code, tuple(options), tuple(name_expressions or ())))

        def compile(self, *args, **kwargs):
            pass

        def get_function(self, name):  # pragma: no cover
            raise AssertionError("a launcher's module builder should not look up kernels")

    stub = types.ModuleType("cupy")
    stub.RawModule = RecordingRawModule
    builds, missing = [], object()
    saved = sys.modules.get("cupy", missing)
    sys.modules["cupy"] = stub
    try:
        for name, module in modules.items():
            builder = getattr(getattr(module, "_module", None), "__wrapped__", None)
            if builder is None:
                problems.append(f"{name}: no functools.cache'd _module() building its cupy.RawModule "
                                "(follow the convention or teach tests/test_cuda_sources.py the new one)")  # fmt: skip
                continue
            calls.clear()
            try:
                builder()
            except Exception as exc:
                problems.append(f"{name}: _module() failed against a recording cupy.RawModule: {exc!r}")
                continue
            if not calls:
                problems.append(f"{name}: _module() built no cupy.RawModule")
            builds += [Build(name, code, options, names) for code, options, names in calls]
    finally:
        if saved is missing:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    return tuple(builds), tuple(problems)


def builds_for(cu: Path):
    """The launcher builds compiling ``cu``; without one, the bare source (a syntax check)."""
    text = cu.read_text()
    found = [b for b in launcher_builds()[0] if b.code == text]
    return found or [Build("(no launcher)", text, ("-std=c++17",), ())]


def test_every_cuda_source_has_a_launcher_naming_its_instances():
    builds, problems = launcher_builds()
    assert not problems, "\n".join(problems)
    texts = {cu.read_text(): cu.name for cu in CU_SOURCES}
    for b in builds:
        assert b.code in texts, f"{b.launcher} compiles code that is no kernels/*.cu verbatim"
        assert b.names, f"{b.launcher} gives {texts[b.code]} no name_expressions"
    unlaunched = sorted({cu.name for cu in CU_SOURCES} - {texts[b.code] for b in builds})
    assert not unlaunched, f"kernels/*.cu that no *_cupy.py launcher compiles: {unlaunched}"


# --- nvcc -------------------------------------------------------------------------------


def find_nvcc():
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")] + ["/usr/local/cuda"]
    fallbacks = [os.path.join(r, "bin", "nvcc") for r in roots if r]
    return shutil.which("nvcc") or next((p for p in fallbacks if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def nvcc():
    path = find_nvcc()
    if path is None:
        pytest.skip("nvcc not found (PATH, CUDA_HOME, CUDA_PATH, /usr/local/cuda): cannot compile-check kernels/*.cu")
    return path


def nvcc_compile(nvcc, tmp_path, code, names, options):
    """Compile ``code`` (plus one address per name expression) to an object: the CompletedProcess."""
    if names:
        refs = ", ".join(f"(const void*)&{name}" for name in names)
        code += f"\n// instantiate what CuPy asks for\nconst void* refdiff_instances[] = {{{refs}}};\n"
    src = tmp_path / "check.cu"
    src.write_text(code)
    cmd = [nvcc, *options, *NVCC_WERROR, "-c", str(src), "-o", str(tmp_path / "check.o")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@cu_params
def test_nvcc_compiles_every_instance(nvcc, cu, tmp_path):
    for b in builds_for(cu):
        proc = nvcc_compile(nvcc, tmp_path, b.code, b.names, b.options)
        assert proc.returncode == 0, f"nvcc {' '.join(proc.args[1:])} ({b.launcher}):\n{proc.stdout}{proc.stderr}"


def test_nvcc_check_fails_on_a_warning(nvcc, tmp_path):
    code = "template <typename T> __global__ void k(T* x) { int unused = 3; x[0] = T(1); }\n"
    proc = nvcc_compile(nvcc, tmp_path, code, ["k<float>"], ["-std=c++17"])
    assert proc.returncode != 0 and "unused" in proc.stderr, proc.stderr


# --- NVRTC through ctypes -------------------------------------------------------------


class NVRTC:
    """The few libnvrtc entry points a compile check needs (the C API, through ctypes)."""

    def __init__(self, path):
        if os.sep in path:  # loaded by path: its builtins library is found only when already loaded
            for builtins in glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*")):
                if ".alt." not in os.path.basename(builtins):
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        lib = self.lib = ctypes.CDLL(path)
        self.path = path
        P, I, S, C = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p
        for fn, args in {
            "nvrtcVersion": [ctypes.POINTER(I), ctypes.POINTER(I)],
            "nvrtcCreateProgram": [ctypes.POINTER(P), C, C, I, P, P],
            "nvrtcDestroyProgram": [ctypes.POINTER(P)],
            "nvrtcAddNameExpression": [P, C],
            "nvrtcCompileProgram": [P, I, ctypes.POINTER(C)],
            "nvrtcGetProgramLogSize": [P, ctypes.POINTER(S)],
            "nvrtcGetProgramLog": [P, C],
            "nvrtcGetLoweredName": [P, C, ctypes.POINTER(C)],
            "nvrtcGetPTXSize": [P, ctypes.POINTER(S)],
            "nvrtcGetPTX": [P, C],
        }.items():
            getattr(lib, fn).argtypes, getattr(lib, fn).restype = args, I
        lib.nvrtcGetErrorString.argtypes, lib.nvrtcGetErrorString.restype = [I], C
        major, minor = I(), I()
        self._ok(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _ok(self, status, what):
        if status != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def compile(self, code, filename, options, names=()):
        """Compile like CuPy's RawModule: the status, log, {name expression: lowered name} and PTX."""
        lib, prog = self.lib, ctypes.c_void_p()
        self._ok(lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), filename.encode(), 0, None, None),
                 "nvrtcCreateProgram")  # fmt: skip
        try:
            for name in names:
                self._ok(lib.nvrtcAddNameExpression(prog, name.encode()), f"nvrtcAddNameExpression({name!r})")
            opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            status = lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._ok(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            buf = ctypes.create_string_buffer(size.value + 1)
            self._ok(lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
            result = NvrtcResult(status, lib.nvrtcGetErrorString(status).decode(), buf.value.decode(errors="replace"))
            if status != 0:
                return result
            for name in names:
                lowered = ctypes.c_char_p()
                got = lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(lowered))
                result.lowered[name] = lowered.value.decode() if got == 0 and lowered.value else None
            self._ok(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            result.ptx_size = size.value
            buf = ctypes.create_string_buffer(size.value + 1)
            self._ok(lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
            result.ptx = buf.value.decode(errors="replace")
            return result
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


@dataclasses.dataclass
class NvrtcResult:
    status: int
    status_name: str
    log: str
    lowered: dict = dataclasses.field(default_factory=dict)
    ptx_size: int = 0
    ptx: str = ""

    def problems(self, names):
        """What is wrong with this compile (empty when all is well): errors, warnings, unresolved names."""
        if self.status != 0:
            return [f"{self.status_name}:\n{self.log}"]
        out = []
        if "warning" in self.log.lower():  # NVRTC has no -Werror; nvcc runs with one
            out.append(f"NVRTC warned (nvcc runs with -Werror all-warnings):\n{self.log}")
        for name in names:
            lowered = self.lowered.get(name)
            if not lowered:
                out.append(f"name expression {name!r} has no lowered name")
            elif f".entry {lowered}(" not in self.ptx:
                out.append(f"name expression {name!r} lowers to {lowered}, which is no .entry of the PTX")
        if len(set(self.lowered.values())) != len(self.lowered):
            out.append(f"two name expressions lower to one kernel: {self.lowered}")
        if self.ptx_size <= 1:  # the size counts the terminating NUL
            out.append("NVRTC produced no PTX")
        return out


def nvrtc_candidates():
    """Where libnvrtc may be, in order, after REFDIFF_NVRTC: the loader's search, pip wheels, toolkits."""
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or ()) if spec else ():
        yield from sorted(glob.glob(os.path.join(base, "*", "lib", "libnvrtc.so*")))
    nvcc = find_nvcc()
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")]
    roots += [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None, "/usr/local/cuda"]
    for root in dict.fromkeys(r for r in roots if r):
        yield from sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")))


@pytest.fixture(scope="module")
def nvrtc():
    path = os.environ.get("REFDIFF_NVRTC")
    if path:  # asked for explicitly: not loading it is a failure, not a skip
        try:
            return NVRTC(path)
        except (OSError, AttributeError, RuntimeError) as exc:
            pytest.fail(f"REFDIFF_NVRTC={path} does not load: {exc}")
    tried = []
    for candidate in nvrtc_candidates():
        try:
            return NVRTC(candidate)
        except (OSError, AttributeError, RuntimeError) as exc:
            tried.append(f"{candidate} ({exc})")
    pytest.skip("libnvrtc not found (set REFDIFF_NVRTC=/path/to/libnvrtc.so.N or pip install nvidia-cuda-nvrtc)"
                + (f"; tried {', '.join(tried)}" if tried else ""))  # fmt: skip


@cu_params
def test_nvrtc_compiles_like_cupy(nvrtc, cu):
    for b in builds_for(cu):
        options = (*b.options, *CUPY_APPENDS)
        result = nvrtc.compile(b.code, cu.name, options, b.names)
        problems = result.problems(b.names)
        where = f"NVRTC {nvrtc.version} ({nvrtc.path}) on {cu.name} ({b.launcher}), options {options}: "
        assert not problems, where + "\n".join(problems)


def _first_build():
    cu = CU_SOURCES[0]
    return cu, builds_for(cu)[0]


def test_nvrtc_check_reports_a_syntax_error(nvrtc, tmp_path):
    cu, b = _first_build()
    broken = tmp_path / cu.name
    broken.write_text(b.code + "\n__device__ int refdiff_broken = ;\n")
    line = broken.read_text().count("\n")
    result = nvrtc.compile(broken.read_text(), cu.name, (*b.options, *CUPY_APPENDS), b.names)
    assert result.status == NVRTC_COMPILATION_ERROR, result
    (problem,) = result.problems(b.names)
    assert f"{cu.name}({line}): error" in problem, problem


def test_nvrtc_check_reports_an_unknown_name_expression(nvrtc):
    cu, b = _first_build()
    names = (*b.names, "refdiff_no_such_kernel<float>")
    result = nvrtc.compile(b.code, cu.name, (*b.options, *CUPY_APPENDS), names)
    assert result.status == NVRTC_COMPILATION_ERROR and "refdiff_no_such_kernel" in result.log, result


def test_nvrtc_check_reports_a_warning(nvrtc, tmp_path):
    cu, b = _first_build()
    warned = tmp_path / cu.name
    warned.write_text(b.code + "\n__device__ void refdiff_warns() { int unused = 3; }\n")
    result = nvrtc.compile(warned.read_text(), cu.name, (*b.options, *CUPY_APPENDS), b.names)
    assert result.status == 0, result.log
    problems = result.problems(b.names)
    assert len(problems) == 1 and "warned" in problems[0] and '"unused"' in problems[0], problems
