"""``benchmarks/ptxas_offline.py`` without its side venv (no CUDA plugin, no ptxas): the Mosaic
kernel modules of a small CUDA lowering on CPU, the ptxas log parser on a real log, --config
parsing, and the one-line error when the side venv is missing. The compile step itself needs the
side venv (the script's docstring) and is not run here."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import ptxas_offline as po  # pylint: disable=g-import-not-at-top,wrong-import-position

# ptxas 13.0's log of the fused backward kernel (strided:16:64, 4K, MosaicBwdConfig(rederive=False,
# registers=(232, 40)), the defaults before 2026-12-06).
LOG = """\
ptxas info    : (C7519) warpgroup.arrive is injected in around line 1418 by compiler to allow \
use of registers in GMMA in function 'new_body_mosaic_gpu_kernel'
ptxas info    : (C7519) warpgroup.arrive is injected in around line 3044 by compiler to allow \
use of registers in GMMA in function 'new_body_mosaic_gpu_kernel'
ptxas warning : Registers are spilled to local memory in function 'new_body_mosaic_gpu_kernel', \
536 bytes spill stores, 576 bytes spill loads
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'new_body_mosaic_gpu_kernel' for 'sm_90a'
ptxas info    : Function properties for new_body_mosaic_gpu_kernel
    384 bytes stack frame, 536 bytes spill stores, 576 bytes spill loads
ptxas info    : Used 168 registers, used 16 barriers, 384 bytes cumulative stack size, 1 bytes smem
ptxas info    : Compile time = 326.015 ms
"""


def test_parse_ptxas_log():
  assert po.parse_ptxas(LOG) == dict(
      function="new_body_mosaic_gpu_kernel", arch="sm_90a", registers=168, stack=384,
      spill_stores=536, spill_loads=576, notes={"C7519": 2})
  assert "registers" not in po.parse_ptxas("ptxas fatal   : Unresolved extern function")


def test_ex2_under_wgmma():
  sass = "\n".join([
      "HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24, gsb0",
      "HGMMA.64x128x16.F32.BF16 R88, R152, gdesc[UR8].tnspB, R88, gsb0",
      "WARPGROUP.DEPBAR.LE gsb0, 0x1", "MUFU.EX2 R1, R1", "FADD R2, R1, R1", "MUFU.EX2 R3, R3",
      "WARPGROUP.DEPBAR.LE gsb0, 0x0", "MUFU.EX2 R4, R4",
      "WARPGROUP.DEPBAR.LE gsb0, 0x1", "MUFU.EX2 R5, R5", "HGMMA.64x128x16.F32.BF16 R24"])
  assert po.ex2_under_wgmma(sass) == [2, 1]
  assert po.ex2_under_wgmma("WARPGROUP.DEPBAR.LE gsb0, 0x0\nMUFU.EX2 R1, R1") == []


def test_parse_config():
  assert po.parse_config("rederive=True,registers=(240,24)") == (
      "rederive_True_registers_240_24", {"rederive": True, "registers": (240, 24)})
  assert po.parse_config("r240: registers=(240, 24) , rederive=False") == (
      "r240", {"registers": (240, 24), "rederive": False})
  with pytest.raises(po.SetupError, match="field=<Python literal>"):
    po.parse_config("rederive")
  with pytest.raises(po.SetupError, match="^--fwd-config 'longest_first': "):
    po.parse_config("longest_first", "--fwd-config")


def test_one_mosaic_module_per_kernel():
  table = po.kernels("strided:4:4", 512, heads=4, kv_heads=2, head_dim=128,
                     configs=(("", {}), ("r240", {"registers": (240, 24)})),
                     fwd_configs=(("sf", {"longest_first": False}),))
  assert list(table) == ["fwd", "fwd_sf", "dq", "dkv", "bwd_fused", "dq_r240", "dkv_r240",
                         "bwd_fused_r240"]
  assert table["fwd_sf"][0] == "fwd" and table["fwd_sf"][3] == {"longest_first": False}
  for name in ("fwd", "fwd_sf", "dq", "dkv", "bwd_fused"):
    _, fn, shapes, _ = table[name]
    mods = po.mosaic_modules(fn, shapes)
    assert len(mods) == 1 and mods[0].startswith(b"ML\xefR"), name   # MLIR bytecode


def test_missing_side_venv_is_one_line(tmp_path):
  p = subprocess.run([sys.executable, "benchmarks/ptxas_offline.py", "--work", str(tmp_path),
                      "--only", "dkv"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                     check=False)
  assert p.returncode == 2 and p.stdout == ""
  assert p.stderr.count("\n") == 1 and "no side venv python" in p.stderr, p.stderr
