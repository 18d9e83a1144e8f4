"""The interactive build picker of ``depot pull`` with no build named: the project's builds,
newest first, one per line; arrow keys move, typing filters, Enter picks, Esc or Ctrl-C
cancels.

Why our own small module and not prompt_toolkit: a one-list picker needs a key reader and a
redraw; rich (already the CLI's progress bars) redraws a table in place (``Live``), and
``termios`` gives the keys. prompt_toolkit would bring a second terminal framework, its own
event loop, and an input model far larger than four keys and a filter.

The state and the keys are pure (:class:`PickerState`, :func:`parse_keys`): unit-tested
without a terminal; :func:`pick` is the terminal part, drawn on stderr, reading stdin in
cbreak mode (no echo, no line buffering; Ctrl-C still interrupts).
"""

from __future__ import annotations

import os
import sys
import termios
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from core.errors import InputError

UP, DOWN, ENTER, BACKSPACE, CANCEL = "up", "down", "enter", "backspace", "cancel"
PAGE_UP, PAGE_DOWN, HOME, END, CLEAR = "pageup", "pagedown", "home", "end", "clear"

_SEQUENCES = {
    b"\x1b[A": UP,
    b"\x1bOA": UP,
    b"\x1b[B": DOWN,
    b"\x1bOB": DOWN,
    b"\x1b[5~": PAGE_UP,
    b"\x1b[6~": PAGE_DOWN,
    b"\x1b[H": HOME,
    b"\x1bOH": HOME,
    b"\x1b[1~": HOME,
    b"\x1b[F": END,
    b"\x1bOF": END,
    b"\x1b[4~": END,
}
_SINGLE = {
    b"\r": ENTER,
    b"\n": ENTER,
    b"\x7f": BACKSPACE,
    b"\x08": BACKSPACE,
    b"\x03": CANCEL,  # Ctrl-C (when the terminal does not turn it into SIGINT)
    b"\x04": CANCEL,  # Ctrl-D
    b"\x10": UP,  # Ctrl-P
    b"\x0e": DOWN,  # Ctrl-N
    b"\x15": CLEAR,  # Ctrl-U
}


class PickerCancelled(InputError):
    def __init__(self) -> None:
        super().__init__("no build picked")


def parse_keys(data: bytes) -> list[str]:
    """The keys in one read from the terminal: names above, or single printable characters.
    A lone Esc cancels; unknown escape sequences are skipped."""
    if data == b"\x1b":
        return [CANCEL]
    keys: list[str] = []
    i = 0
    while i < len(data):
        if data[i : i + 1] == b"\x1b":
            for sequence, name in _SEQUENCES.items():
                if data.startswith(sequence, i):
                    keys.append(name)
                    i += len(sequence)
                    break
            else:
                i = _skip_escape(data, i)
            continue
        byte = data[i : i + 1]
        if byte in _SINGLE:
            keys.append(_SINGLE[byte])
            i += 1
            continue
        # A UTF-8 character: its lead byte says how many bytes it has.
        length = 1 if data[i] < 0xC0 else 2 if data[i] < 0xE0 else 3 if data[i] < 0xF0 else 4
        text = data[i : i + length].decode(errors="ignore")
        if text.isprintable():
            keys.append(text)
        i += length
    return keys


def _skip_escape(data: bytes, i: int) -> int:
    """Past an escape sequence we do not know (CSI: up to its final byte)."""
    if data[i + 1 : i + 2] in (b"[", b"O"):
        j = i + 2
        while j < len(data) and not 0x40 <= data[j] <= 0x7E:
            j += 1
        return j + 1
    return i + 2


@dataclass(frozen=True, slots=True)
class Choice:
    value: str  # what picking it returns (the build id)
    cells: tuple[str, ...]  # the columns shown

    @property
    def text(self) -> str:
        return " ".join(self.cells).lower()


@dataclass
class PickerState:
    choices: Sequence[Choice]
    query: str = ""
    cursor: int = 0  # index into visible()
    page: int = 10
    _visible: list[Choice] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._refilter()

    def _refilter(self) -> None:
        terms = self.query.lower().split()
        self._visible = [c for c in self.choices if all(t in c.text for t in terms)]
        self.cursor = min(self.cursor, max(len(self._visible) - 1, 0))

    def visible(self) -> list[Choice]:
        return self._visible

    @property
    def current(self) -> Choice | None:
        return self._visible[self.cursor] if self._visible else None

    def press(self, key: str) -> str | None:
        """Apply a key; the picked value on Enter (when something is shown).
        PickerCancelled on Esc / Ctrl-C / Ctrl-D."""
        last = max(len(self._visible) - 1, 0)
        if key == CANCEL:
            raise PickerCancelled()
        if key == ENTER:
            return self.current.value if self.current is not None else None
        if key == UP:
            self.cursor = max(self.cursor - 1, 0)
        elif key == DOWN:
            self.cursor = min(self.cursor + 1, last)
        elif key == PAGE_UP:
            self.cursor = max(self.cursor - self.page, 0)
        elif key == PAGE_DOWN:
            self.cursor = min(self.cursor + self.page, last)
        elif key == HOME:
            self.cursor = 0
        elif key == END:
            self.cursor = last
        elif key == BACKSPACE:
            self.query = self.query[:-1]
            self._refilter()
        elif key == CLEAR:
            self.query = ""
            self._refilter()
        elif len(key) == 1:
            self.query += key
            self.cursor = 0
            self._refilter()
        return None


def render(state: PickerState, header: Sequence[str], title: str, height: int) -> Group:
    """The picker as rich renderables: a prompt line, then a window of rows around the
    cursor (at most ``height`` of them)."""
    visible = state.visible()
    rows = max(height, 1)
    start = min(max(state.cursor - rows // 2, 0), max(len(visible) - rows, 0))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column(" ")
    for name in header:
        table.add_column(name, no_wrap=True)
    for i, choice in enumerate(visible[start : start + rows], start):
        selected = i == state.cursor
        table.add_row(">" if selected else " ", *choice.cells, style="reverse" if selected else "")
    prompt = Text.assemble(
        (f"{title} ", "bold"),
        "filter: ",
        (state.query or "", "bold cyan"),
        "_",
        (f"  ({len(visible)} of {len(state.choices)})  ", "dim"),
        ("up/down move, type to filter, Enter pull, Esc cancel", "dim"),
    )
    parts: list[Table | Text] = [prompt, table]
    if not visible:
        parts.append(Text("no build matches the filter", style="yellow"))
    return Group(*parts)


def pick(
    choices: Sequence[Choice],
    header: Sequence[str],
    title: str,
    *,
    stdin_fd: int | None = None,
    stream: TextIO | None = None,
) -> str:
    """Show the picker on the terminal; the picked value. PickerCancelled if cancelled."""
    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    console = Console(file=stream or sys.stderr)
    height = max(console.size.height - 4, 3)
    state = PickerState(choices, page=height)
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        with Live(
            render(state, header, title, height),
            console=console,
            auto_refresh=False,
            transient=True,
        ) as live:
            while True:
                data = os.read(fd, 64)
                if not data:
                    raise PickerCancelled()
                for key in parse_keys(data):
                    picked = state.press(key)
                    if picked is not None:
                        return picked
                live.update(render(state, header, title, height), refresh=True)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
