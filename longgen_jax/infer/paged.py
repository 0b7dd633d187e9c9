"""Host-side page allocation for the paged layout of full-attention layers.

Pages are handed out on demand (a row gets a page when its length first reaches it) from one
free list; page 0 of every pool is the scratch page (never handed out). The table is a numpy
array mirrored into ``HybridCache.page_table`` whenever it changes.
"""

from __future__ import annotations

import numpy as np

from longgen_jax.infer.errors import InferError


class PageAllocator:
  """Free list of pages ``1 .. num_pages - 1`` of ``page_size`` tokens."""

  def __init__(self, num_pages: int, page_size: int):
    if num_pages < 2:
      raise InferError(f"a page pool needs >= 2 pages (one is scratch), got {num_pages}")
    self.page_size = int(page_size)
    self.num_pages = int(num_pages)
    self._free = list(range(self.num_pages - 1, 0, -1))

  @property
  def free_pages(self) -> int:
    return len(self._free)

  def ensure(self, table: np.ndarray, lengths: np.ndarray) -> bool:
    """Gives every row the pages covering positions ``< lengths[b]``; True if ``table`` changed."""
    changed = False
    for b, n in enumerate(np.asarray(lengths)):
      need = -(-int(n) // self.page_size)
      if need > table.shape[1]:
        raise InferError(f"row {b}: {int(n)} tokens exceed the paged capacity "
                         f"{table.shape[1] * self.page_size}")
      for j in range(need):
        if table[b, j] == 0:
          if not self._free:
            raise InferError(f"page pool exhausted ({self.num_pages - 1} pages of "
                             f"{self.page_size} tokens); raise num_pages")
          table[b, j] = self._free.pop()
          changed = True
    return changed

  def release(self, table: np.ndarray, row: int | None = None) -> None:
    """Returns the pages of ``row`` (all rows when None) to the free list."""
    rows = range(table.shape[0]) if row is None else [row]
    for b in rows:
      for j in range(table.shape[1]):
        if table[b, j]:
          self._free.append(int(table[b, j]))
          table[b, j] = 0
