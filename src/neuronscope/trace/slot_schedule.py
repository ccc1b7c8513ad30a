"""The host side of slot decoding (:mod:`neuronscope.trace.slot_decode`): what each packed forward call runs.

Greedy decoding of many prompts with a KV cache of only ``slots`` prompts. Every call of the model is one packed
sequence of ``slots + chunk`` tokens, in two lanes:

- the **decode lane**, row ``s`` for slot ``s``: the last token chosen for the prompt held by slot ``s``, at its
  next position (a slot that is not decoding runs a padding row);
- the **prefill lane**, ``chunk`` rows: the next prompt tokens still to be read, of the prompt being admitted
  (a prompt's tokens may be split over calls, and one call may end a prompt and start the next); when a prompt's
  last token is in the lane, that row's logits choose its first new token and the slot decodes from the next call.

Decoding at a small batch reads every weight for a few tokens: the prefill tokens ride along at almost no cost,
and the cache holds ``slots`` prompts however many are captioned. A prompt admitted into a slot writes its
positions ``0 .. T - 1`` there; attention sees only the slot's positions up to its own (the mask of
:mod:`~neuronscope.trace.slot_decode`), so a slot's earlier prompt is never read. A slot freed in a call (its
last step was chosen) takes a new prompt only from the next call: its decode row still reads the slot in that call.

Every index here is a host integer; :class:`StepPlan` packs one call's into one tensor (one copy to the device).
Padding rows sit in slot ``slots`` (the trash slot: one cache position and one row of every per-slot table that
nothing reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: the fields of a plan, in the order they are packed, and the lane width each has
#: (q: slots + chunk rows; p: chunk rows; r: 2 · slots read-out rows).
FIELDS = (("q_slot", "q"), ("q_pos", "q"), ("write", "q"), ("src", "p"),
          ("read_rows", "r"), ("read_dest", "r"), ("read_step", "r"), ("read_first", "r"))


@dataclass(frozen=True)
class PlanLayout:
    """The sizes of a packed call: ``slots`` decode rows, ``chunk`` prefill rows, ``cache_len`` positions per slot.

    Read-out rows (whose logits are computed) are ``2 · slots``: one per decode row, and room for every slot to end
    its prompt in the same call (unused read-outs point at row 0 and write to the trash slot)."""

    slots: int
    chunk: int
    cache_len: int

    def __post_init__(self) -> None:
        if self.slots < 1 or self.chunk < 1:
            raise ValueError(f"slot decoding needs at least one slot and one prompt row per call, got slots="
                             f"{self.slots}, chunk={self.chunk}")

    @property
    def rows(self) -> int:
        return self.slots + self.chunk

    @property
    def reads(self) -> int:
        return 2 * self.slots

    @property
    def trash(self) -> int:
        """The trash cache position (and pool row): ``slots · cache_len``."""
        return self.slots * self.cache_len

    def width(self, lane: str) -> int:
        return {"q": self.rows, "p": self.chunk, "r": self.reads}[lane]

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``field -> (start, stop)`` in the packed plan."""
        out, start = {}, 0
        for name, lane in FIELDS:
            out[name] = (start, start + self.width(lane))
            start += self.width(lane)
        return out

    @property
    def size(self) -> int:
        return sum(self.width(lane) for _, lane in FIELDS)


@dataclass
class StepPlan:
    """One call: ``fields`` (name -> host integers, see :data:`FIELDS`), the prompts to load into the pool before
    it (``admitted``: (slot, prompt)), the prompts whose last step it chooses (``finished``: (slot, prompt)), and
    the prompt each slot decodes in it (``decoding``: slot -> prompt), which the engine's late stop flags refer to."""

    fields: dict[str, list[int]]
    admitted: list[tuple[int, int]] = field(default_factory=list)
    finished: list[tuple[int, int]] = field(default_factory=list)
    decoding: dict[int, int] = field(default_factory=dict)

    def packed(self) -> list[int]:
        return [value for name, _ in FIELDS for value in self.fields[name]]


@dataclass
class _Slot:
    prompt: int
    length: int
    cursor: int = 0  # prompt tokens read so far
    step: int = 0  # the next new token this slot chooses (0 while its prompt is being read)


class SlotSchedule:
    """Plans calls until every prompt has ``steps`` new tokens (or has stopped: :meth:`stop`).

    Example:
        >>> schedule = SlotSchedule(lengths=[600] * 16, layout=PlanLayout(slots=4, chunk=128, cache_len=620),
        ...                         steps=20)
        >>> while (plan := schedule.plan()) is not None:
        ...     ...  # load plan.admitted, run the call, park plan.finished
    """

    def __init__(self, lengths: Sequence[int], layout: PlanLayout, steps: int):
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if max(lengths, default=0) + steps > layout.cache_len:
            raise ValueError(f"a slot of {layout.cache_len} positions cannot hold a prompt of {max(lengths)} "
                             f"tokens and {steps} new ones")
        if min(lengths, default=1) < 1:
            raise ValueError("every prompt needs at least one token")
        self.lengths, self.layout, self.steps = list(lengths), layout, steps
        self.next_prompt = 0
        self.slots: list[_Slot | None] = [None] * layout.slots
        self.reading: list[int] = []  # slots whose prompt is being read, oldest first

    @property
    def done(self) -> bool:
        return self.next_prompt == len(self.lengths) and all(slot is None for slot in self.slots)

    def stop(self, slot: int, prompt: int) -> bool:
        """Slot ``slot`` stopped early (its prompt chose an end-of-sequence token): free it if it still decodes
        ``prompt``; whether it did."""
        held = self.slots[slot]
        if held is None or held.prompt != prompt or held.step == 0:
            return False
        self.slots[slot] = None
        return True

    def plan(self) -> StepPlan | None:
        """The next call, or None when every prompt is done."""
        if self.done:
            return None
        layout = self.layout
        slots, trash = layout.slots, layout.trash
        fields = {name: [0] * layout.width(lane) for name, lane in FIELDS}
        fields["q_slot"] = [slots] * layout.rows
        fields["write"] = [trash] * layout.rows
        fields["src"] = [trash] * layout.chunk
        fields["read_dest"] = [slots] * layout.reads
        plan = StepPlan(fields)
        freed = set()
        for index, held in enumerate(self.slots):  # the decode lane
            if held is None or held.step == 0:
                continue
            position = held.length + held.step - 1  # the previous new token goes in here
            self._row(fields, index, index, position)
            self._read(fields, index, index, index, held.step, first=False)
            plan.decoding[index] = held.prompt
            held.step += 1
            if held.step == self.steps:
                plan.finished.append((index, held.prompt))
                self.slots[index] = None
                freed.add(index)
        row, read = slots, slots
        while row < layout.rows:  # the prefill lane
            index = self._reading_slot(plan, freed)
            if index is None:
                break
            held = self.slots[index]
            count = min(layout.rows - row, held.length - held.cursor)
            for offset in range(count):
                position = held.cursor + offset
                self._row(fields, row + offset, index, position)
                fields["src"][row + offset - slots] = index * layout.cache_len + position
            held.cursor += count
            row += count
            if held.cursor == held.length:  # its last prompt token is in this call: it chooses new token 0
                self.reading.remove(index)
                self._read(fields, read, row - 1, index, 0, first=True)
                read += 1
                plan.decoding[index] = held.prompt
                held.step = 1
                if self.steps == 1:
                    plan.finished.append((index, held.prompt))
                    self.slots[index] = None
                    freed.add(index)
        return plan

    def _reading_slot(self, plan: StepPlan, freed: set[int]) -> int | None:
        """The slot whose prompt the prefill lane reads next, admitting the next prompt into a free slot if none."""
        if self.reading:
            return self.reading[0]
        if self.next_prompt == len(self.lengths):
            return None
        free = [index for index, held in enumerate(self.slots) if held is None and index not in freed]
        if not free:
            return None
        index, prompt = free[0], self.next_prompt
        self.next_prompt += 1
        self.slots[index] = _Slot(prompt, self.lengths[prompt])
        self.reading.append(index)
        plan.admitted.append((index, prompt))
        return index

    def _row(self, fields: dict[str, list[int]], row: int, slot: int, position: int) -> None:
        fields["q_slot"][row] = slot
        fields["q_pos"][row] = position
        fields["write"][row] = slot * self.layout.cache_len + position

    @staticmethod
    def _read(fields: dict[str, list[int]], read: int, row: int, slot: int, step: int, first: bool) -> None:
        fields["read_rows"][read] = row
        fields["read_dest"][read] = slot
        fields["read_step"][read] = step
        fields["read_first"][read] = int(first)
