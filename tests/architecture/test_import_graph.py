"""Imports run one way (ARCHITECTURE.md): web -> queue -> worker -> inference -> turbokernels, with no circle, and
the web side (turbosite, generation minus the GPU worker's modules) never imports torch, inference or turbokernels.
The graph is drawn from the source, so imports inside functions count too."""

from __future__ import annotations

from tests.architecture.imports import (
    WORKER_SIDE,
    Edge,
    eager_closure,
    find_cycle,
    import_edges,
    in_gpu_stack,
    is_web_module,
    module_files,
)


def test_the_graph_is_drawn_from_every_package():
    modules = module_files()
    edges = import_edges()
    expected = {"turbosite.broker", "generation.queue", "generation.actors", "inference.pipeline",
                "turbokernels.dispatch", *WORKER_SIDE}
    assert expected <= set(modules)
    # Arrows the design relies on, so a broken drawing cannot pass by finding nothing.
    assert Edge("generation.actors", "generation.worker", lazy=False) in edges
    assert Edge("generation.worker", "inference.types", lazy=False) in edges
    assert Edge("inference.dit", "turbokernels.dispatch", lazy=False) in edges


def test_the_cycle_finder_finds_cycles():
    edges = [Edge("a", "b", False), Edge("b", "c", True), Edge("c", "a", False)]
    assert find_cycle(edges, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    assert find_cycle(edges[:2], {"a", "b", "c"}) is None


def test_no_import_cycle_among_our_modules():
    cycle = find_cycle(import_edges(), set(module_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_queue_module_and_the_actor_touch_dramatiq_messages():
    """generation.queue is the one place that sends; turbosite.broker only configures the broker."""
    edges = import_edges()
    broker_imports = {e.target for e in edges if e.source == "turbosite.broker"}
    assert not any(name.startswith("generation") for name in broker_imports), broker_imports
    senders = {e.source for e in edges if e.target == "generation.actors"}
    # The consumers: the embedded worker thread, the GPU worker and a multi-GPU group's rank 0.
    assert senders <= {"generation.embedded", "generation.management.commands.run_gpu_worker",
                       "generation.group_worker"}, senders


def test_no_arrow_from_the_web_side_into_the_gpu_stack():
    arrows = [e for e in import_edges() if is_web_module(e.source) and in_gpu_stack(e.target)]
    assert arrows == []


def test_importing_a_web_module_loads_no_worker_module():
    """Module-level imports of the web side never reach the worker's modules (which bring the GPU stack)."""
    edges = import_edges()
    web = [name for name in module_files() if is_web_module(name)]
    assert len(web) > 30
    for name in web:
        reached = eager_closure(name, edges)
        assert not (reached & WORKER_SIDE), f"{name} loads {sorted(reached & WORKER_SIDE)}"
        assert not any(in_gpu_stack(module) for module in reached), f"{name} loads {sorted(filter(in_gpu_stack, reached))}"
