"""patternkit.dag: a declaration is checked before anything runs, and knows its order."""

from __future__ import annotations

import pytest

from patternkit.dag import Dag, DagError, Step


def test_a_valid_declaration_knows_its_order_and_downstream() -> None:
    dag = Dag.declare([Step("build", ("train", "evaluate")), Step("gather"),
                       Step("prep", ("gather",)), Step("train", ("prep",)),
                       Step("evaluate", ("train", "prep"))])
    assert dag.order == ("gather", "prep", "train", "evaluate", "build")
    assert dag.downstream("prep") == ("train", "evaluate", "build")
    assert dag.downstream("build") == ()
    assert dag.steps["prep"].queue_name == "prep"


@pytest.mark.parametrize(("steps", "problem", "named"), [
    ([Step("a", ("c",)), Step("b", ("a",)), Step("c", ("b",))], "cycle", "a"),
    ([Step("a"), Step("b", ("x",))], "missing_upstream", "b <- x"),
    ([Step("a"), Step("a")], "duplicate", "a"),
    ([Step("a", ("a",))], "cycle", "a -> a"),
])
def test_a_broken_declaration_is_refused_naming_the_steps(
        steps: list[Step], problem: str, named: str) -> None:
    with pytest.raises(DagError) as caught:
        Dag.declare(steps)
    assert caught.value.problem == problem
    assert named in str(caught.value)
