"""Splitting a grid's cells among the ranks of a distributed run.

Every rank plans the same cells in the same order (:mod:`aepurify.evaluation.plan`) and calls
:func:`split_cells` with the same world size, so every rank computes the same split without
talking to the others. Cells that share crafted adversarial examples (gray-box and transfer
cells of one attack and epsilon, see :class:`~aepurify.evaluation.cells.Cell`) form one unit and
go to one rank, so the examples are still crafted once. Units are dealt out most expensive
first, each to the rank with the least estimated work so far (longest-processing-time first,
Graham 1969), and each rank runs its units in that order: the long cells start first and the
short ones fill the gaps at the end.

The cost estimate counts network passes per image and is only used for balancing; a row's value
never depends on which rank computes it (each row derives its seeds from its own key).
"""

from __future__ import annotations

import inspect

from ..attacks import ATTACKS
from .cells import Cell
from .store import eps_key

# A gradient step costs about a forward and a backward pass: three forward passes.
GRADIENT_PASSES = 3.0
# Through a purifier as well as the classifier: about twice a classifier's pass (a rough
# middle: a JPEG costs less, APuDAE's 13-step refinement far more).
PURIFIER_FACTOR = 2.0


def unit_key(cell: Cell) -> tuple:
    """Cells with the same key share crafted examples and must run on one rank (in run.py's
    terms: one (attack, eps) group and one craft owner); every other cell is a unit alone."""
    if cell.attack is None or not cell.shared:
        return ("own", cell.key)
    assert cell.threat_model is not None
    return ("shared", cell.attack_index, eps_key(cell.eps), cell.threat_model.base,
            *cell.craft_owner)


def attack_iterations(name: str, params: dict) -> float:
    """Gradient steps of one run of attack ``name`` with ``params``: its ``steps`` option (else
    the registered default); a gradient-free attack's ``n_queries`` count a third each; 1 for a
    one-step attack (fgsm) or one whose options say nothing."""
    defaults = {}
    if name in ATTACKS:
        defaults = {k: p.default for k, p in inspect.signature(ATTACKS.get(name)).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    steps = params.get("steps", defaults.get("steps"))
    if isinstance(steps, (int, float)) and not isinstance(steps, bool):
        return float(steps)
    queries = params.get("n_queries", defaults.get("n_queries"))
    if isinstance(queries, (int, float)) and not isinstance(queries, bool):
        return float(queries) / GRADIENT_PASSES
    return 1.0


def craft_cost(cell: Cell) -> float:
    """Estimated forward passes (times images) to craft a cell's examples (0 for clean rows)."""
    if cell.attack is None or cell.threat_model is None:
        return 0.0
    tm = cell.threat_model
    per_image = attack_iterations(cell.attack.name, cell.attack.params) * GRADIENT_PASSES
    if tm.uses_purifier_gradients:
        per_image *= PURIFIER_FACTOR
    if tm.eot:
        per_image *= tm.eot_samples
    return cell.n * cell.attack.restarts * per_image


def eval_cost(cell: Cell) -> float:
    """Estimated forward passes (times images) to classify a cell's (adversarial) images."""
    restarts = cell.attack.restarts if cell.attack is not None else 1
    return cell.n * restarts * PURIFIER_FACTOR


def unit_cost(cells: list[Cell]) -> float:
    """A unit's estimated work: its examples crafted once, classified under every cell."""
    return max(craft_cost(c) for c in cells) + sum(eval_cost(c) for c in cells)


def units_of(cells: list[Cell]) -> list[list[Cell]]:
    """``cells`` grouped by :func:`unit_key`, units in order of first appearance, cells in
    their given order inside a unit."""
    units: dict[tuple, list[Cell]] = {}
    for cell in cells:
        units.setdefault(unit_key(cell), []).append(cell)
    return list(units.values())


def split_cells(cells: list[Cell], world: int) -> list[list[Cell]]:
    """Each rank's cells, in the order that rank runs them.

    Deterministic: the same cells in the same order and the same ``world`` always give the same
    split, on every rank. Units (cells sharing crafted examples) stay whole; the most expensive
    unit goes first to the least loaded rank (ties: the lower rank).

    Args:
        cells: the planned cells in run order (:func:`~aepurify.evaluation.cells.order_cells`).
        world: number of ranks, at least 1.

    Returns:
        ``world`` lists whose concatenation holds every cell exactly once.

    Raises:
        ValueError: ``world`` < 1.
    """
    if world < 1:
        raise ValueError(f"world size must be at least 1; got {world}")
    units = units_of(cells)
    ranked = sorted(range(len(units)), key=lambda i: (-unit_cost(units[i]), i))
    loads = [0.0] * world
    shares: list[list[Cell]] = [[] for _ in range(world)]
    for i in ranked:
        rank = min(range(world), key=lambda r: (loads[r], r))
        shares[rank].extend(units[i])
        loads[rank] += unit_cost(units[i])
    return shares


def estimated_loads(cells: list[Cell], world: int) -> list[float]:
    """The estimated work of each rank's share (what :func:`split_cells` balanced)."""
    return [sum(unit_cost(u) for u in units_of(share)) for share in split_cells(cells, world)]
