"""The plan of slot decoding against the rules it must keep: every prompt's positions read once and in order, each
new token chosen once at its producing position, no position written twice in a call, no slot taking a prompt
while it holds another, and a stopped prompt freeing its slot."""

from __future__ import annotations

import pytest

from neuronscope.trace.slot_schedule import PlanLayout, SlotSchedule


@pytest.mark.parametrize("lengths,slots,chunk,steps", [([7, 4, 6, 2, 5], 2, 4, 6), ([3] * 6, 3, 32, 1),
                                                        ([9, 1, 1, 8], 1, 5, 3), ([5, 5], 4, 2, 4)])
def test_the_plan_reads_every_prompt_once_in_order_and_decodes_each_step_once(lengths, slots, chunk, steps):
    layout = PlanLayout(slots, chunk, max(lengths) + steps)
    schedule = SlotSchedule(lengths, layout, steps)
    read = {prompt: [] for prompt in range(len(lengths))}  # positions written per prompt, in order
    chosen = {prompt: [] for prompt in range(len(lengths))}
    holder: dict[int, int] = {}  # slot -> prompt
    calls = 0
    while (plan := schedule.plan()) is not None:
        calls += 1
        f = plan.fields
        freed_now = {slot for slot, _ in plan.finished}
        for slot, prompt in plan.admitted:
            assert slot not in holder, "a slot took a prompt while it held another"
            holder[slot] = prompt
        writes = [w for w in f["write"] if w != layout.trash]
        assert len(writes) == len(set(writes)), "two rows of one call write one position"
        for row in range(layout.rows):
            slot = f["q_slot"][row]
            if slot == slots:
                assert f["write"][row] == layout.trash
                continue
            assert f["write"][row] == slot * layout.cache_len + f["q_pos"][row]
            read[holder[slot]].append(f["q_pos"][row])
            if row >= slots:
                assert f["src"][row - slots] == f["write"][row]
        for index in range(layout.reads):
            slot = f["read_dest"][index]
            if slot == slots:
                continue
            prompt, row = holder[slot], f["read_rows"][index]
            assert f["q_slot"][row] == slot
            assert f["q_pos"][row] == lengths[prompt] - 1 + f["read_step"][index]
            assert bool(f["read_first"][index]) == (f["read_step"][index] == 0)
            chosen[prompt].append(f["read_step"][index])
        for slot in freed_now:
            del holder[slot]
    assert schedule.done and not holder and calls > 0
    for prompt, length in enumerate(lengths):
        assert read[prompt] == list(range(length + steps - 1)), prompt
        assert chosen[prompt] == list(range(steps)), prompt


def test_a_prompt_that_stops_early_frees_its_slot():
    layout = PlanLayout(1, 8, 12)
    schedule = SlotSchedule([3, 3], layout, steps=5)
    first = schedule.plan()
    assert first.admitted == [(0, 0)] and first.decoding == {0: 0}
    assert not schedule.stop(0, 1) and schedule.stop(0, 0)  # only the prompt it decodes
    second = schedule.plan()
    assert second.admitted == [(0, 1)]
