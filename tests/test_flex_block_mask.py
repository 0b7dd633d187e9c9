"""The FlexAttention BlockMask built from our analytic tables equals create_block_mask's (CPU)."""

import numpy as np
import pytest

from benchmarks import flex_masks
from pallas_kernels.spec import AttentionSpec

torch = pytest.importorskip("torch")
fa = pytest.importorskip("torch.nn.attention.flex_attention")

SPECS = ["full", "sink_window:64:512", "sink_window:0:256", "sink_window:300:256",
         "strided:2:3", "strided:1:4", "strided:3:2@64"]


def _rows(num, idx):
  num, idx = np.asarray(num).reshape(-1), np.asarray(idx)[0, 0]
  return [sorted(idx[i, :num[i]].tolist()) for i in range(num.size)]


@pytest.mark.parametrize("L", [1024, 1536])
@pytest.mark.parametrize("spec", SPECS)
def test_tables_match_create_block_mask(spec, L):
  spec = AttentionSpec.parse(spec)
  mod = flex_masks.mask_mod_for(spec)
  ref = fa.create_block_mask(mod, None, None, L, L, device="cpu", BLOCK_SIZE=128)
  ours = flex_masks.block_mask_from_tables(spec, L, torch, "cpu", mod)
  assert _rows(ours.kv_num_blocks, ours.kv_indices) == _rows(ref.kv_num_blocks, ref.kv_indices)
  assert (_rows(ours.full_kv_num_blocks, ours.full_kv_indices)
          == _rows(ref.full_kv_num_blocks, ref.full_kv_indices))
  # The transposed (backward) lists torch derives from ours agree too.
  assert _rows(ours.q_num_blocks, ours.q_indices) == _rows(ref.q_num_blocks, ref.q_indices)


def test_mask_mod_is_spec_allowed():
  L = 640
  qi, ki = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
  for s in SPECS + ["chunked:256@64"]:   # any registered pattern
    spec = AttentionSpec.parse(s)
    mod = flex_masks.mask_mod_for(spec)
    got = mod(0, 0, torch.as_tensor(qi), torch.as_tensor(ki)).numpy()
    np.testing.assert_array_equal(got, spec.allowed(qi, ki), err_msg=s)
