"""Many texts at once: the rows of one batch, decoded together with one forward pass per step.

    from batching import generate_batch
    rows = generate_batch(prompts, params, n_head, 20)  # row i == gpt2.generate(prompts[i], ...)

Written once, for the command line (several samples, --jsonl) and the server (requests that come and
go): RunningBatch holds the rows decoding together, their next token's logits and one KV cache; rows
join it between two steps (admit) and leave it when they are done (keep). It knows no HTTP and no JSON.

The rows are lined up at the right: a row whose prompt is shorter than the longest starts after `pad`
empty positions. Each row counts its positions from its own first token, and the mask hides the empty
positions from every query, so a row gets the numbers it would get alone (up to rounding) whatever
its neighbours are. Each prompt is read on its own into its row of the cache; from then on all rows
take one step together (gpt2.gpt2_cached, with pad).
"""

import numpy as np

import gpt2


def row_rngs(seed, n_rows):
    """A random stream for each row, made from the seed and the row's number (a fresh seed if None)."""
    entropy = np.random.SeedSequence(seed).entropy  # one seed for every row
    return [np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(row,))) for row in range(n_rows)]


def prefill_rows(prompts, params, n_head, length, n_prompt):
    """Each prompt read on its own into its row of one cache of `length` positions, the rows lined up at
    the right, ending at position n_prompt. Returns (the next token's logits [n_rows, n_vocab],
    kv_cache, pad)."""
    pad = np.array([n_prompt - len(inputs) for inputs in prompts])  # empty positions before each row's prompt
    buffers, _ = gpt2.new_kv_cache(params, n_head, length, batch=(len(prompts),))
    first_logits, index_of_prompt = [], {}
    for i, inputs in enumerate(prompts):
        if tuple(inputs) in index_of_prompt:  # the same prompt again (several samples): copy its work
            buffers[:, i] = buffers[:, index_of_prompt[tuple(inputs)]]
            first_logits.append(first_logits[index_of_prompt[tuple(inputs)]])
            continue
        buffers[:, i, :, : pad[i]] = 0  # masked, but NaN left in fresh memory would get through the mask
        row_cache = buffers[:, i, :, pad[i] :]  # a view: [n_layer, 2*n_head, length - pad, d]
        logits, _ = gpt2.gpt2_cached(inputs, **params, n_head=n_head, kv_cache=gpt2.KVCache(row_cache, 0))
        first_logits.append(logits)
        index_of_prompt[tuple(inputs)] = i
    return np.stack(first_logits), gpt2.KVCache(buffers, n_prompt), pad


class RunningBatch:
    """The rows decoding together: each row's next-token logits [n_rows, n_vocab], its row of the KV
    cache after pad[i] empty positions, and how many more tokens it may be given (to_come[i])."""

    def __init__(self, params, n_head, max_length=None):
        self.params, self.n_head = params, n_head
        # positions of the cache at most: rows that join later start later, so it may outgrow n_ctx
        self.max_length = max_length or 2 * len(params["wpe"])
        self.logits, self.kv_cache, self.pad, self.to_come = None, None, None, np.zeros(0, int)

    def __len__(self):
        return len(self.to_come)

    def admit(self, prompts, n_tokens):
        """New rows for the prompts, each to be given at most n_tokens[i] tokens. When a new prompt is
        longer than what the rows hold so far, or the cache has too little room left, the cache is laid
        out anew, the old rows moved to the right. False, and nothing changes, if the cache would then be
        longer than max_length (an empty batch takes any prompts)."""
        n_past = self.kv_cache.n_past if len(self) else 0
        n_prompt = max(n_past, *(len(inputs) for inputs in prompts))
        to_come = np.concatenate([self.to_come, n_tokens]).astype(int)
        length = n_prompt + int(to_come.max()) - 1  # room for every row's tokens still to come (the last is not fed)
        if len(self) and length > self.max_length:
            return False
        logits, kv_cache, pad = prefill_rows(prompts, self.params, self.n_head, length, n_prompt)
        if len(self):
            shift, new_buffers = n_prompt - n_past, kv_cache.buffers
            buffers = np.zeros((new_buffers.shape[0], len(to_come), *new_buffers.shape[2:]), np.float32)
            buffers[:, : len(self), :, shift:n_prompt] = self.kv_cache.buffers[:, :, :, :n_past]
            buffers[:, len(self) :] = new_buffers
            logits, kv_cache = np.concatenate([self.logits, logits]), gpt2.KVCache(buffers, n_prompt)
            pad = np.concatenate([self.pad + shift, pad])
        self.logits, self.kv_cache, self.pad, self.to_come = logits, kv_cache, pad, to_come
        return True

    def keep(self, running):  # [n_rows] booleans: the rows that go on; the others cost no more compute
        self.logits, self.pad, self.to_come = self.logits[running], self.pad[running], self.to_come[running]
        self.kv_cache = gpt2.KVCache(self.kv_cache.buffers[:, running], self.kv_cache.n_past)

    def step(self, token_ids):  # [n_rows] each row's chosen token, fed through the model: the next logits
        self.to_come -= 1
        self.logits, self.kv_cache = gpt2.gpt2_cached(
            token_ids[:, None], **self.params, n_head=self.n_head, kv_cache=self.kv_cache, pad=self.pad
        )


def generate_batch_stream(
    prompts,
    params,
    n_head,
    n_tokens_to_generate,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=None,
    stop_at_end_of_text=True,
    batch_size=None,
    end_of_text=gpt2.END_OF_TEXT,
):
    """gpt2.generate_stream for many prompts (token-id lists of any lengths). Yields, at each step,
    [(row, token id, logits)] for the rows that took a token, a row being the index of its prompt.
    batch_size rows decode together (all by default), one forward pass per step for all of them; then
    the next batch_size rows. Row i draws its samples from its own random stream, made from the seed
    and i, whatever rows are beside it; batch_size changes speed and memory, and the rounding of the
    logits' last bits, which moves a sampled draw only when it falls that close to a boundary."""
    gpt2.check_generation(prompts, params, n_tokens_to_generate, temperature, top_k, top_p, seed)
    if batch_size is not None:
        gpt2.check_whole_number("batch_size", batch_size, 1)
    rngs = row_rngs(seed, len(prompts))
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    batch_size = batch_size or max(len(prompts), 1)
    stop = end_of_text if stop_at_end_of_text else None
    for first in range(0, len(prompts), batch_size):
        rows = np.arange(first, min(first + batch_size, len(prompts)))
        batch = RunningBatch(params, n_head)
        batch.admit([prompts[row] for row in rows], [n_tokens_to_generate] * len(rows))
        yield from decode(batch, rows, rngs, sampling, stop)


def decode(batch, rows, rngs, sampling, stop):
    """The steps of generate_batch_stream for one batch: its rows' numbers, every row's random stream;
    a row ends before the id stop (None: never), or after its tokens."""
    while len(batch):
        uniforms = np.array([rngs[row].random() for row in rows])
        token_ids = gpt2.next_token(batch.logits, uniforms, **sampling)  # [n_running]
        running = token_ids != stop
        yield [(int(rows[i]), int(token_ids[i]), batch.logits[i]) for i in np.flatnonzero(running)]
        running &= batch.to_come > 1  # a row given its last token is done
        if not running.all():  # a finished row leaves the batch
            rows, token_ids = rows[running], token_ids[running]
            batch.keep(running)
        if len(batch):
            batch.step(token_ids)


def generate_batch(prompts, params, n_head, n_tokens_to_generate, **options):
    """The new ids of each prompt, as gpt2.generate() gives them for that prompt alone (sampled rows:
    see generate_batch_stream, which takes the same options, batch_size among them)."""
    new_ids = [[] for _ in prompts]
    for step in generate_batch_stream(prompts, params, n_head, n_tokens_to_generate, **options):
        for row, token_id, _ in step:
            new_ids[row].append(token_id)
    return new_ids
