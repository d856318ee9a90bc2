"""The one thread that generates: the rows of the requests decode together as one RunningBatch
(batching.py), each row with its own options. A row that comes while a batch runs joins it between
two steps (up to batch_size rows); a row that is done, or whose client has gone, leaves it at once.

A row is what a route puts in `decoder.waiting`: its prompt_ids, max_tokens, its random stream (rng)
and sampling options, `add(token_id, logits)`, which says whether the row is done, and `events`, a
queue that gets (index, "failed", the error, 0) if the model fails on its batch.
"""

import queue
import sys
import threading
import time

import numpy as np

import gpt2
from batching import RunningBatch

# Once a request comes to an idle decoder, it waits for others that were sent at about the same time:
# until none has come for GATHER_SECONDS, GATHER_MAX_SECONDS at most.
GATHER_SECONDS, GATHER_MAX_SECONDS = 0.02, 0.2


class Decoder(threading.Thread):
    def __init__(self, params, n_head, batch_size):
        super().__init__(daemon=True, name="decoder")
        self.params, self.n_head, self.batch_size = params, n_head, batch_size
        self.waiting, self.deferred = queue.Queue(), []  # deferred: rows that would have made the cache too long

    def run(self):
        while True:
            self.decode(self.gather())

    def gather(self):
        """The rows to start a batch with: at least one (waiting for it) and those sent at about the same time."""
        rows, self.deferred = self.deferred[: self.batch_size], self.deferred[self.batch_size :]
        if not rows:
            rows.append(self.waiting.get())
        deadline = time.monotonic() + GATHER_MAX_SECONDS
        while len(rows) < self.batch_size:
            try:
                rows.append(self.waiting.get(timeout=min(GATHER_SECONDS, max(0.0, deadline - time.monotonic()))))
            except queue.Empty:
                break
        return rows

    def newcomers(self, room):
        """Rows that wait, deferred ones first, at most room of them."""
        rows, self.deferred = self.deferred[:room], self.deferred[room:]
        while len(rows) < room and not self.waiting.empty():
            rows.append(self.waiting.get())
        return rows

    def decode(self, newcomers):
        """One batch, from its first rows until no row is left. taken: every row the batch has taken
        from the queue, those that have left it too, so that a failure fails them all."""
        batch, rows, taken = RunningBatch(self.params, self.n_head), [], []
        try:
            while True:
                taken += newcomers
                rows += self.admit(batch, [row for row in newcomers if not row.cancelled])
                if not rows:
                    return
                rows = self.step(batch, rows)
                newcomers = self.newcomers(self.batch_size - len(rows))
        except Exception as e:  # costs this batch's requests, not the server
            print(f"error while decoding: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            for row in taken:
                if row.finish_reason is None and not row.cancelled:
                    row.cancelled = True  # and so out of the next batch, if it was deferred
                    row.events.put((row.index, "failed", f"{type(e).__name__}: {e}", 0))

    def admit(self, batch, newcomers):
        """The newcomers that join the batch: all, or none if the cache would grow too long for them,
        and they wait for the next batch."""
        if newcomers and not batch.admit([row.prompt_ids for row in newcomers], [row.max_tokens for row in newcomers]):
            self.deferred += newcomers
            return []
        return newcomers

    def step(self, batch, rows):
        """Each row's next token from its logits; the rows that go on (returned) feed theirs through the model."""
        token_ids = np.array(
            [gpt2.next_token(batch.logits[i], row.rng.random(), **row.sampling) for i, row in enumerate(rows)]
        )
        running = np.array(
            [
                not row.add(int(t), batch.logits[i]) and not row.cancelled
                for i, (row, t) in enumerate(zip(rows, token_ids))
            ]
        )
        if not running.all():  # a row that is done, or whose client left, costs no more compute
            batch.keep(running)
            token_ids, rows = token_ids[running], [row for row, keep in zip(rows, running) if keep]
        if rows:
            batch.step(token_ids)
        return rows
