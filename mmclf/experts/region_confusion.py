"""The region confusion mechanism of DCL (Destruction and Construction Learning, Chen et al., CVPR 2019).

An image is split into a grid x grid array of regions; the regions of each row are shuffled so that each moves
at most `max_shift` places, then the regions of each column likewise. A region therefore ends at most
`max_shift` rows and `max_shift` columns away from where it was. The shuffle is returned as `source`: for
each position of the destroyed image (row-major), the index of the original region now there, so the
location targets of the alignment head follow from it exactly.

The paper draws each row's order by sorting i + r_i with r_i ~ U(-k, k). For k = 1 (the default) that keeps
every region within 1 place; for larger k it lets a region move up to 2k - 1 places, so here the jitter is
U(-(k + 1) / 2, (k + 1) / 2): the same distribution for k = 1, and the promised bound of k places for any k.
"""

from __future__ import annotations

import torch


def jittered_order(size: int, lines: int, max_shift: int, generator: torch.Generator | None) -> torch.Tensor:
    """`lines` independent orders of `size` items, each item moved at most `max_shift` places: [lines, size]."""
    # item j can overtake item i only if j - i < the jitter's width (max_shift + 1), so it moves <= max_shift places
    jitter = (torch.rand(lines, size, generator=generator) - 0.5) * (max_shift + 1)
    return torch.argsort(torch.arange(size) + jitter, dim=1, stable=True)


def region_permutation(grid: int, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`source` [grid * grid]: the original region index at each position of the destroyed image (row-major)."""
    if grid < 1 or max_shift < 0:
        raise ValueError(f"region confusion needs grid >= 1 and max_shift >= 0, got grid={grid}, max_shift={max_shift}")
    regions = torch.arange(grid * grid).reshape(grid, grid)
    regions = regions.gather(1, jittered_order(grid, grid, max_shift, generator))  # within each row
    regions = regions.gather(0, jittered_order(grid, grid, max_shift, generator).T)  # within each column
    return regions.flatten()


def shuffle_regions(image: torch.Tensor, source: torch.Tensor, grid: int) -> torch.Tensor:
    """The image [channels, height, width] with region `source[p]` moved to position p; sides divisible by grid."""
    channels, height, width = image.shape
    if height % grid or width % grid:
        raise ValueError(f"a {height}x{width} image does not split into a {grid}x{grid} grid of equal regions")
    h, w = height // grid, width // grid
    regions = image.reshape(channels, grid, h, grid, w).permute(1, 3, 0, 2, 4).reshape(grid * grid, channels, h, w)
    return regions[source].reshape(grid, grid, channels, h, w).permute(2, 0, 3, 1, 4).reshape(channels, height, width)


def location_targets(sources: torch.Tensor, grid: int) -> torch.Tensor:
    """Original (row, column) of the region at each position, scaled to the cell centres in (-1, 1) (the range of
    the alignment head's tanh): `sources` [batch, grid * grid] -> [batch, 2, grid, grid]."""
    rows, columns = torch.div(sources, grid, rounding_mode="floor"), sources % grid
    coordinates = torch.stack([rows, columns], dim=1).reshape(-1, 2, grid, grid).float()
    return (2 * coordinates + 1) / grid - 1


def region_confusion(image: torch.Tensor, grid: int = 7, max_shift: int = 1,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The destroyed image and its `source` permutation (see `region_permutation`)."""
    source = region_permutation(grid, max_shift, generator)
    return shuffle_regions(image, source, grid), source
