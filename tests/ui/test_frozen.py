"""The recorded daemon answers every command the console can send, as the daemon would."""

from __future__ import annotations

import typing

import pytest
from frozen import FrozenSource

from daetui.control.commands import COMMANDS, Command

# An argument of each type the commands take: enough for the recording to answer.
SAMPLES: dict[object, object] = {str: "www.example.test", int: 1, bool: True, list[int]: [1],
                                 list[str]: ["proxy"], str | None: None, int | None: None}


@pytest.mark.parametrize("c", COMMANDS.values(), ids=lambda c: c.name)
async def test_every_command_has_an_answer_of_its_type(c: Command) -> None:
    source = FrozenSource()
    assert source.answer(c.name) is not None, f"FrozenSource has no _{c.name}"
    args = {p.name: SAMPLES[p.type] for p in c.params if p.required}
    result = await getattr(source, c.method)(**args)
    if c.result is None:
        assert result is None
    else:
        assert isinstance(result, typing.get_origin(c.result) or c.result)


async def test_a_command_it_does_not_know_fails() -> None:
    with pytest.raises(ValueError, match="no answer"):
        await FrozenSource().call("closeall")
