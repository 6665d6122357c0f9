"""One progress display for a whole training run, in the run's step numbers.

The trainer calls ``model.fit`` once per chunk of steps (silently); Keras'
own bar would restart, and print "Epoch k/k", for every chunk. `Progress`
instead shows ``step 237/500`` with the loss, throughput and time left:

* ``verbose=1``: one line updated in place on a terminal or notebook; when
  stdout is a file or pipe, a new line every 5% of the run (and at the end);
* ``verbose=2``: one line per chunk (at most one per ``--chunk_steps``);
* ``verbose=0``: nothing.
"""

from __future__ import annotations

import sys
import time


def _duration(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of steps ``start_step + 1 .. total_steps``.

    Args:
        total_steps: the run's last step.
        start_step: the step the run resumes from.
        verbose: 0, 1 or 2 (see the module docstring).
        stream: where to print (default stdout).
    """

    def __init__(self, total_steps, start_step=0, verbose=1, stream=None):
        self.total_steps = total_steps
        self.start_step = start_step
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.interactive = verbose == 1 and (
            getattr(self.stream, "isatty", lambda: False)()
            or "ipykernel" in sys.modules
        )
        self.every = max(1, (total_steps - start_step) // 20)
        self._first = None  # (time, step) at the end of the first step (compiles)
        self._last_print = 0.0
        self._line = ""
        self.step = start_step

    def _text(self, step, loss, tokens_per_second):
        width = len(str(self.total_steps))
        parts = [f"step {step:>{width}}/{self.total_steps}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        now = time.time()
        if self._first is not None and step > self._first[1]:
            per_step = (now - self._first[0]) / (step - self._first[1])
            parts.append(f"{per_step:.3f} s/step")
            parts.append(f"ETA {_duration(per_step * (self.total_steps - step))}")
        if tokens_per_second:
            parts.append(f"{tokens_per_second:,.0f} tokens/s")
        return "  ".join(parts)

    def _write(self, text, newline):
        if self.interactive:
            pad = " " * max(0, len(self._line) - len(text))
            self.stream.write("\r" + text + pad + ("\n" if newline else ""))
            self._line = "" if newline else text
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, step, loss=None, tokens_per_second=None):
        """After step `step` (the run's numbering)."""
        self.step = step
        if self._first is None:
            self._first = (time.time(), step)
        if self.verbose != 1:
            return
        now = time.time()
        last = step >= self.total_steps
        if self.interactive:
            if last or now - self._last_print >= 0.1:
                self._last_print = now
                self._write(self._text(step, loss, tokens_per_second), last)
        elif last or (step - self.start_step) % self.every == 0:
            self._write(self._text(step, loss, tokens_per_second), True)

    def end_chunk(self, loss=None, tokens_per_second=None):
        """After a chunk of steps (verbose=2 prints one line per chunk)."""
        if self.verbose == 2 and self.step > self.start_step:
            self._write(self._text(self.step, loss, tokens_per_second), True)

    def message(self, text):
        """Prints `text` on its own line without breaking the display."""
        if self.interactive and self._line:
            self.stream.write("\n")
            self._line = ""
        self.stream.write(text + "\n")
        self.stream.flush()
