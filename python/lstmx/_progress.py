"""A progress bar for long loops (the demo and the examples): private, not part of the API."""

from __future__ import annotations

import shutil
import sys
import time


class Progress:
    """``[########------------]  400/1000  loss 1.234  (12.3 s)`` on stderr: redrawn in place
    on a terminal, a line every tenth of the run elsewhere (a log file, a pipe)."""

    WIDTH = 20

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.enabled, self.t0 = max(total, 1), enabled, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.every = max(1, self.total // 10)

    def update(self, done: int, text: str = "") -> None:
        """Show that ``done`` of ``total`` steps are finished, with ``text`` after the count."""
        if not self.enabled or not (self.tty or done % self.every == 0 or done == self.total):
            return
        fill = self.WIDTH * done // self.total
        line = (f"[{'#' * fill}{'-' * (self.WIDTH - fill)}] {done:>{len(str(self.total))}}/"
                f"{self.total}  {text}  ({time.perf_counter() - self.t0:.1f} s)")
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            sys.stderr.write("\r" + line[:width].ljust(width) + ("\n" if done == self.total
                                                                 else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
