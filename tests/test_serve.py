"""`python gpt2.py --serve` against the official `openai` client: the same texts as the command line,
streams that add up to the whole, the model's log-probabilities and attention weights against
HuggingFace's, OpenAI's errors for bad requests, and many clients at once."""

import json
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import PROMPT, PROMPT_IDS, SMALL_HPARAMS, ServerProcess, cli

openai = pytest.importorskip("openai")

MODEL = "124M"
pytestmark = pytest.mark.slow  # servers in new processes, the browser


@pytest.fixture(scope="module")
def server(small_models_dir):
    """The small model served on a free port (a ServerProcess)."""
    with ServerProcess("--models_dir", str(small_models_dir)) as served:
        assert "serving 124M on http://127.0.0.1:" in served.log()
        yield served
        assert served.stop() == 130


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


def post(url, data, headers=None):
    """(status, JSON answer) of a raw POST."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def command_line_text(capsys, models_dir, *flags):
    result = cli(capsys, PROMPT, "--models_dir", str(models_dir), *flags)
    assert result.returncode == 0, result.stderr
    return result.stdout[:-1]  # the text, then a newline


def test_models_lists_the_loaded_model(client):
    assert [model.id for model in client.models.list().data] == [MODEL]


def test_greedy_completion_equals_the_command_line(client, capsys, small_models_dir):
    completion = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].finish_reason == "length"
    assert completion.choices[0].text == command_line_text(capsys, small_models_dir, "-n", "12")
    assert completion.usage.prompt_tokens == 10 and completion.usage.completion_tokens == 12


def test_every_neutral_field_of_openais_request_is_taken(client, capsys, small_models_dir):
    """The fields the server does not compute, each at the value that changes nothing, and
    max_tokens null, which OpenAI reads as its default of 16."""
    neutral = {"frequency_penalty": 0, "presence_penalty": 0, "best_of": 1, "logit_bias": {}, "suffix": ""}
    completion = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=None, temperature=0, top_p=1, n=1, logprobs=None, echo=False,
        stop=None, seed=None, user="a learner", stream=False, **neutral,
    )  # fmt: skip
    assert completion.choices[0].text == command_line_text(capsys, small_models_dir, "-n", "16")
    assert completion.usage.completion_tokens == 16


def test_token_id_prompts_give_the_texts_of_the_same_prompts(client):
    from helpers import PROMPT_IDS

    as_text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text
    as_ids = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=8, temperature=0)
    assert as_ids.choices[0].text == as_text and as_ids.usage.prompt_tokens == len(PROMPT_IDS)
    both = client.completions.create(model=MODEL, prompt=[PROMPT_IDS, PROMPT_IDS[:3]], max_tokens=8, temperature=0)
    assert both.choices[0].text == as_text and len(both.choices) == 2
    echoed = client.completions.create(model=MODEL, prompt=PROMPT_IDS, max_tokens=1, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(PROMPT)


def test_langchains_openai_class_gets_the_command_lines_text(server, capsys, small_models_dir):
    langchain_openai = pytest.importorskip("langchain_openai")

    llm = langchain_openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="none", model=MODEL, temperature=0, max_tokens=12, max_retries=0
    )
    assert llm.invoke(PROMPT) == command_line_text(capsys, small_models_dir, "-n", "12")
    assert "".join(llm.stream(PROMPT)) == command_line_text(capsys, small_models_dir, "-n", "12")


def test_sampled_completions_equal_the_command_lines_with_the_same_seed(client, capsys, small_models_dir):
    options = {"temperature": 0.9, "top_p": 0.95, "seed": 7}
    one = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, **options, extra_body={"top_k": 40})
    flags = ("-n", "10", "--temperature", "0.9", "--top_p", "0.95", "--seed", "7", "--top_k", "40")
    assert one.choices[0].text == command_line_text(capsys, small_models_dir, *flags)
    three = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=10, n=3, **options, extra_body={"top_k": 40}
    )
    printed = command_line_text(capsys, small_models_dir, *flags, "--n_samples", "3")
    samples = [block.split("\n", 1)[1] for block in printed.split("======== SAMPLE ")[1:]]
    assert [choice.text for choice in sorted(three.choices, key=lambda c: c.index)] == [s.rstrip("\n") for s in samples]
    assert len(set(samples)) == 3
    again = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=10, n=3, **options, extra_body={"top_k": 40}
    )
    assert [c.text for c in again.choices] == [c.text for c in three.choices]


@pytest.mark.parametrize(
    "options",
    [{"temperature": 0}, {"temperature": 1.0, "seed": 3, "n": 2}, {"temperature": 0, "echo": True, "logprobs": 2}],
)
def test_streamed_chunks_join_to_the_whole_text(client, options):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=15, **options)
    pieces, logprobs = {}, {}
    for chunk in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=15, stream=True, **options):
        for choice in chunk.choices:
            pieces[choice.index] = pieces.get(choice.index, "") + choice.text
            if choice.logprobs:
                for key in ("tokens", "token_logprobs", "text_offset"):
                    logprobs.setdefault((choice.index, key), []).extend(getattr(choice.logprobs, key))
    assert pieces == {choice.index: choice.text for choice in whole.choices}
    if "logprobs" in options:  # each token's logprobs came with it
        for (index, key), values in logprobs.items():
            assert values == getattr(whole.choices[index].logprobs, key), key


def test_logprobs_are_the_models_log_softmax_as_huggingface_computes_it(client, hf_small, encoder):
    from hf_reference import hf_greedy, hf_logits

    prompt_ids = encoder.encode(PROMPT)
    completion = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=5, echo=True
    )
    choice = completion.choices[0]
    new_ids = hf_greedy(hf_small, prompt_ids, 8)
    assert choice.text == PROMPT + encoder.decode(new_ids)
    ids = prompt_ids + new_ids
    logits = hf_logits(hf_small, ids).astype(np.float64)
    log_softmax = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    logprobs = choice.logprobs
    assert logprobs.tokens == [encoder.decode([i]) for i in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # nothing predicts the first token
    expected = [log_softmax[i - 1, ids[i]] for i in range(1, len(ids))]
    np.testing.assert_allclose(logprobs.token_logprobs[1:], expected, atol=1e-4)
    for i in range(1, len(ids)):
        top = np.argsort(log_softmax[i - 1])[::-1][:5]
        assert list(logprobs.top_logprobs[i]) == [encoder.decode([int(t)]) for t in top]
        np.testing.assert_allclose(list(logprobs.top_logprobs[i].values()), log_softmax[i - 1, top], atol=1e-4)
    offsets = [len(encoder.decode(ids[:i])) for i in range(len(ids))]
    assert logprobs.text_offset == offsets


def test_stop_strings_end_the_text_before_them(client):
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, logprobs=0).choices[0]
    tokens = whole.logprobs.tokens
    # a stop string over two tokens: its start comes in one token, its end in the next
    k = next(k for k in range(5, len(tokens) - 1) if len(tokens[k]) >= 2 and tokens[k + 1])
    stop = tokens[k][-2:] + tokens[k + 1][:1]
    cut = whole.text[: whole.text.index(stop)]
    stopped = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop, "never seen"]
    )
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == (cut, "stop")
    streamed = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stop=stop, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == cut and chunks[-1].choices[0].finish_reason == "stop"


def test_several_prompts_in_one_request_and_many_clients_at_once(client):
    prompts = ["Hello, my name is", "The meaning of life is", PROMPT, "Once upon a time", "1, 2, 3,", "def f(x):"]
    requests = [
        {"prompt": p, "max_tokens": 6 + i, "temperature": 0.8 * (i % 2), "seed": i} for i, p in enumerate(prompts)
    ]
    alone = [client.completions.create(model=MODEL, **r).choices[0].text for r in requests]
    together = client.completions.create(model=MODEL, prompt=prompts[:3], max_tokens=6, temperature=0)
    assert [c.text for c in together.choices] == [
        client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0).choices[0].text
        for p in prompts[:3]
    ]
    results = [None] * len(requests)

    def ask(i):
        results[i] = client.completions.create(model=MODEL, **requests[i]).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == alone


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_tokens": 0}, "max_tokens must be a whole number from 1 to 1024, not 0"),
        (
            {"temperature": 101},
            "temperature must be a number at least 0 and at most 100, not 101",
        ),  # as the command line
        ({"top_p": 0}, "top_p must be a number above 0 and at most 1, not 0"),
        ({"n": 17}, "n must be a whole number from 1 to 16, not 17"),
        ({"logprobs": 6}, "logprobs must be a whole number from 0 to 5, not 6"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop must be a non-empty string or a list of at most 4 of them"),
        ({"max_tokens": 60}, "maximum context length is 64 tokens, however you requested 70 tokens"),
        ({"model": "gpt-4"}, "the model `gpt-4` is not served here: this server has `124M`"),
        ({"prompt": [1, "a"]}, "prompt must be a string, a list of token ids, or a non-empty list of either"),
        ({"prompt": [50257]}, "a prompt's token ids must be from 0 to 50256"),
        ({"frequency_penalty": 0.5}, "frequency_penalty 0.5 is not computed by this server: only 0"),
        ({"best_of": 2}, "best_of 2 is not computed by this server: only 1"),
        ({"logit_bias": {"50256": -100}}, 'logit_bias {"50256": -100} is not computed by this server: only {}'),
        ({"extra_body": {"repetition_penalty": 1.2}}, "Unrecognized request argument supplied: repetition_penalty"),
        ({"extra_body": {"top_k": -1}}, "top_k must be a whole number from 0 to 50257, not -1"),
        ({"seed": "1"}, 'seed must be a whole number from 0 to 9223372036854775807, not "1"'),
    ],
)
def test_bad_requests_get_openais_error(client, options, message):
    request = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, **options}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**request)
    assert message in caught.value.message
    assert caught.value.status_code == 400 and caught.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"{not json", "the body is not JSON"),
        (b'["a list"]', "the body must be a JSON object"),
        (b'{"model": "124M", "prompt": "' + b"a" * 1_000_001 + b'"}', "the request body is over 1000000 bytes"),
        (b"\xff\xfe", "the body is not JSON"),
        (b'{"model": "124M", "prompt": "\\ud800"}', "the body holds a lone surrogate"),
        (b"[" * 100_000, "the body is nested too deeply"),
        (b'{"model": "124M", "prompt": "a", "n": ' + b"1" * 5000 + b"}", "it holds an integer of too many digits"),
        (b'{"model": "124M", "prompt": "' + b"a" * 200_000 + b'"}', "the prompt is longer than 64 tokens can be"),
    ],
    ids=["not-json", "a-list", "over-1-MB", "not-utf-8", "lone-surrogate", "deep", "big-integer", "long-word"],
)
def test_malformed_bodies_get_openais_error(server, data, message):
    status, answer = post(f"{server.url}/v1/completions", data)
    assert (
        status == 400
        and message in answer["error"]["message"]
        and set(answer["error"]) == {"message", "type", "param", "code"}
    )


def test_a_body_over_the_limit_sent_whole_gets_its_answer(server):
    """A client that sends all of a large body before it reads (as urllib and the openai client do)
    gets the 400, not a connection closed under it while it sends."""
    host, port = server.url.removeprefix("http://").split(":")
    body = b'{"prompt": "' + b"a" * 8_000_000 + b'"}'
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Type: application/json\r\n")
        connection.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = b""
        while piece := connection.recv(65536):
            answer += piece
    assert answer.startswith(b"HTTP/1.1 400") and b"the request body is over 1000000 bytes" in answer


def test_no_path_reads_files(server):
    for path in ("/../../etc/passwd", "/page.html", "/serve.py", "/v1/../gpt2.py"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{server.url}{path}", timeout=10)
        assert caught.value.code == 404


def test_a_path_served_by_another_method_gets_405_with_the_methods_it_takes(server):
    """HTTP's rule (RFC 9110, 15.5.6): a known path asked with a method it does not take is a 405 with
    an Allow header, not a 404."""
    for method, path, allowed in (("GET", "/v1/completions", "POST"), ("POST", "/v1/models", "GET")):
        request = urllib.request.Request(f"{server.url}{path}", b"{}" if method == "POST" else None, method=method)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 405 and caught.value.headers["Allow"] == allowed
        assert json.loads(caught.value.read())["error"]["code"] == "method_not_allowed"


def test_the_page_is_self_contained(server):
    with urllib.request.urlopen(f"{server.url}/", timeout=10) as response:
        page = response.read().decode()
    assert response.headers["Content-Type"].startswith("text/html") and "<script>" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page  # nothing fetched from elsewhere


def test_attention_weights_are_huggingfaces(server, hf_small, encoder):
    import torch

    ids = encoder.encode(PROMPT)
    implementation, hf_small.config._attn_implementation = hf_small.config._attn_implementation, "eager"
    try:  # eager: the implementation that returns its weights
        with torch.no_grad():
            attentions = hf_small(torch.tensor([ids]), output_attentions=True).attentions
    finally:
        hf_small.config._attn_implementation = implementation
    for layer, head in [(0, 0), (1, 3)]:
        status, answer = post(
            f"{server.url}/v1/attention", json.dumps({"prompt": PROMPT, "layer": layer, "head": head}).encode()
        )
        assert status == 200 and [t["id"] for t in answer["tokens"]] == ids
        np.testing.assert_allclose(answer["weights"], attentions[layer][0, head].numpy(), atol=1e-4)
    status, answer = post(f"{server.url}/v1/attention", json.dumps({"prompt": PROMPT, "layer": 2}).encode())
    assert status == 400 and "layer must be a whole number from 0 to 1, not 2" in answer["error"]["message"]
    status, answer = post(f"{server.url}/v1/attention", json.dumps({"prompt": "a" + " a" * 64}).encode())
    assert status == 400 and "the page's views take a prompt of 1 to 64 tokens, not 65" in answer["error"]["message"]


def hf_inside(hf_small, ids, ablate=()):
    """HuggingFace's model on ids, with the heads in ablate switched off (their slices zeroed at the input
    of the attention's c_proj, by a forward pre-hook): its outputs, with hidden states and attentions."""
    import torch

    d = SMALL_HPARAMS["n_embd"] // SMALL_HPARAMS["n_head"]

    def zero(heads):
        def hook(module, args):
            x = args[0].clone()
            for head in heads:
                x[..., head * d : (head + 1) * d] = 0.0
            return (x,)

        return hook

    layers = {layer for layer, _ in ablate}
    hooks = [
        hf_small.transformer.h[layer].attn.c_proj.register_forward_pre_hook(
            zero([h for on, h in ablate if on == layer])
        )
        for layer in layers
    ]
    implementation, hf_small.config._attn_implementation = hf_small.config._attn_implementation, "eager"
    try:  # eager: the implementation that returns its weights
        with torch.no_grad():
            return hf_small(torch.tensor([ids]), output_attentions=True, output_hidden_states=True)
    finally:
        hf_small.config._attn_implementation = implementation
        for hook in hooks:
            hook.remove()


def test_the_logit_lens_is_huggingfaces_at_every_layer_and_position(server, hf_small, encoder):
    import torch

    ids = encoder.encode(PROMPT)
    out = hf_inside(hf_small, ids)
    with torch.no_grad():  # after each block but the last, ln_f and the tied head; the last is the model's own
        expected = [
            torch.log_softmax(hf_small.lm_head(hf_small.transformer.ln_f(h)), -1) for h in out.hidden_states[1:-1]
        ]
    expected = [e[0].numpy() for e in expected] + [torch.log_softmax(out.logits, -1)[0].numpy()]
    status, answer = post(f"{server.url}/v1/lens", json.dumps({"prompt": PROMPT, "top": 3}).encode())
    assert status == 200 and [t["id"] for t in answer["tokens"]] == ids
    assert len(answer["layers"]) == SMALL_HPARAMS["n_layer"] and all(
        len(layer) == len(ids) for layer in answer["layers"]
    )
    for ours, theirs in zip(answer["layers"], expected):
        for entries, row in zip(ours, theirs):
            assert [e["id"] for e in entries] == list(np.argsort(-row)[:3])
            np.testing.assert_allclose([e["logprob"] for e in entries], row[[e["id"] for e in entries]], atol=1e-4)


def test_the_most_likely_tokens_are_torchs_top_k_of_its_log_softmax():
    import torch

    from serve.top_tokens import most_likely

    rng = np.random.default_rng(0)
    for n_vocab in (50257, 257, 10):  # groups and leftovers; fewer groups than tokens asked for; not one group
        logits = rng.standard_normal((70, n_vocab), dtype=np.float32) * 4  # 70 rows: pieces on threads
        logits[1] = 0.0  # all tied
        logits[2, ::3] = logits[2].max() + 1  # many tied for the largest, in many groups
        for n_top in (1, 5, 100):
            ids, logprobs = most_likely(logits, n_top)
            theirs = torch.log_softmax(torch.from_numpy(logits).double(), -1)
            top = torch.topk(theirs, min(n_top, n_vocab)).values.numpy()
            np.testing.assert_allclose(logprobs, top, atol=1e-5)
            np.testing.assert_allclose(np.take_along_axis(theirs.numpy(), ids, 1), top, atol=1e-12)
            assert all(len(set(row)) == len(row) for row in ids.tolist())


def test_every_head_at_once_and_heads_switched_off_are_huggingfaces(server, hf_small, encoder):
    import torch

    ids, ablate = encoder.encode(PROMPT), [[0, 1], [0, 2]]
    for off in ([], ablate):
        out = hf_inside(hf_small, ids, [tuple(pair) for pair in off])
        request = {"prompt": PROMPT, "layer": "all", "ablate": off}
        status, answer = post(f"{server.url}/v1/attention", json.dumps(request).encode())
        assert status == 200
        np.testing.assert_allclose(answer["weights"], torch.stack(out.attentions)[:, 0].numpy(), atol=1e-4)
        status, answer = post(
            f"{server.url}/v1/next", json.dumps({"prompt": PROMPT, "ablate": off, "top": 20}).encode()
        )
        theirs = torch.log_softmax(out.logits[0, -1], -1).numpy()
        assert status == 200 and [t["id"] for t in answer["tokens"]] == list(np.argsort(-theirs)[:20])
        np.testing.assert_allclose([t["logprob"] for t in answer["tokens"]], np.sort(theirs)[::-1][:20], atol=1e-4)
    unchanged = hf_inside(hf_small, ids).logits[0, -1]
    assert float((out.logits[0, -1] - unchanged).abs().max()) > 1e-2  # switching those heads off matters


def test_sampled_probs_are_huggingfaces_warpers_in_order(server, hf_small, encoder):
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = hf_inside(hf_small, encoder.encode(PROMPT)).logits[:, -1]
    for temperature, top_k, top_p in [(0.7, 20, 0.9), (1.5, 0, 0.5), (1.0, 3, 1.0)]:
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        scores = TopPLogitsWarper(top_p)(None, scores)
        theirs = torch.softmax(scores, -1)[0].numpy()
        request = {"prompt": PROMPT, "temperature": temperature, "top_k": top_k, "top_p": top_p, "top": 50}
        status, answer = post(f"{server.url}/v1/next", json.dumps(request).encode())
        assert status == 200
        ours = [t["sampled_prob"] for t in answer["tokens"]]
        np.testing.assert_allclose(ours, theirs[[t["id"] for t in answer["tokens"]]], atol=1e-5)
        assert 0 in ours or top_k == 0  # filtered out: 0
    status, answer = post(f"{server.url}/v1/next", json.dumps({"prompt": PROMPT, "temperature": 0}).encode())
    assert [t["sampled_prob"] for t in answer["tokens"]][:2] == [1.0, 0.0]  # greedy: the most likely, always


def test_a_redraw_and_moving_a_sampling_control_run_the_model_once_per_prompt(small_params, encoder, monkeypatch):
    from serve import views

    runs = []
    inside = views.inside
    monkeypatch.setattr(views, "inside", lambda *args: runs.append(args[3]) or inside(*args))
    monkeypatch.setattr(views, "KEPT_PASSES", {})
    n_head = SMALL_HPARAMS["n_head"]
    answers = [
        views.next_view({"prompt": PROMPT, "temperature": t, "ablate": off}, encoder, small_params, n_head)
        for t, off in [(1.0, []), (0.5, []), (0.5, [[0, 1]]), (1.5, [[0, 1]])]
    ]
    for off in [], [[0, 1]]:  # the rest of the page's redraw
        views.lens_view({"prompt": PROMPT, "ablate": off}, encoder, small_params, n_head)
        views.attention_view({"prompt": PROMPT, "layer": "all", "ablate": off}, encoder, small_params, n_head)
        views.attention_view({"prompt": PROMPT, "layer": 1, "head": 2, "ablate": off}, encoder, small_params, n_head)
    assert runs == [frozenset(), frozenset({(0, 1)})]  # once per prompt and set of heads switched off
    assert [t["sampled_prob"] for t in answers[0]["tokens"]] != [t["sampled_prob"] for t in answers[1]["tokens"]]
    assert [t["logprob"] for t in answers[0]["tokens"]] == [t["logprob"] for t in answers[1]["tokens"]]
    assert answers[0] == views.next_view({"prompt": PROMPT}, encoder, small_params, n_head)  # nothing written


def test_views_asked_at_once_wait_for_one_forward_pass_and_a_failed_one_is_run_again(
    small_params, encoder, monkeypatch
):
    from concurrent.futures import ThreadPoolExecutor

    from serve import views

    runs, inside = [], views.inside

    def slow_inside(*args):  # long enough for the other requests to come while it runs
        runs.append(args[3])
        time.sleep(0.3)
        if len(runs) == 1:
            raise MemoryError("planted")
        return inside(*args)

    monkeypatch.setattr(views, "inside", slow_inside)
    monkeypatch.setattr(views, "KEPT_PASSES", {})
    views = [views.lens_view, views.next_view, views.attention_view, views.lens_view]

    def ask(view):
        try:
            return view({"prompt": PROMPT}, encoder, small_params, SMALL_HPARAMS["n_head"])
        except MemoryError as e:
            return str(e)

    with ThreadPoolExecutor(len(views)) as threads:
        assert list(threads.map(ask, views)) == ["planted"] * len(views)  # one pass, its failure for all
        answers = list(threads.map(ask, views))
    assert len(runs) == 2 and answers[0] == answers[3] and "layers" in answers[0]


@pytest.mark.parametrize(
    "path, request_body, message",
    [
        ("/v1/lens", {"prompt": PROMPT, "top": 6}, "top must be a whole number from 1 to 5, not 6"),
        ("/v1/lens", {"prompt": PROMPT, "layer": 0}, "layer"),
        ("/v1/next", {"prompt": PROMPT, "ablate": [[0, 4]]}, "ablate's head must be a whole number from 0 to 3, not 4"),
        ("/v1/next", {"prompt": PROMPT, "ablate": [0, 1]}, "ablate must be a list of [layer, head] pairs"),
        ("/v1/next", {"prompt": PROMPT, "top_p": 0}, "top_p"),
        ("/v1/next", {"prompt": ""}, "the page's views take a prompt of 1 to 64 tokens, not 0"),
        ("/v1/attention", {"prompt": PROMPT, "layer": "all", "head": 0}, 'no "head" with it'),
    ],
)
def test_the_views_refuse_bad_input_as_the_completions_endpoint_does(server, path, request_body, message):
    status, answer = post(f"{server.url}{path}", json.dumps(request_body).encode())
    assert (
        status == 400 and answer["error"]["type"] == "invalid_request_error" and message in answer["error"]["message"]
    )


def test_tokenize_gives_openais_ids(server, tiktoken_gpt2):
    status, answer = post(f"{server.url}/v1/tokenize", json.dumps({"prompt": PROMPT + " 🤗"}).encode())
    assert status == 200 and [t["id"] for t in answer["tokens"]] == tiktoken_gpt2.encode(PROMPT + " 🤗")


def test_tokenize_refuses_unknown_fields(server):
    status, answer = post(f"{server.url}/v1/tokenize", json.dumps({"prompt": PROMPT, "n": 1}).encode())
    assert status == 400 and answer["error"]["message"] == "Unrecognized request argument supplied: n"


def test_a_request_that_exactly_fits_the_context_is_answered(client, tiktoken_gpt2):
    n_prompt = len(tiktoken_gpt2.encode(PROMPT))
    request = {"model": MODEL, "prompt": PROMPT, "temperature": 0, "stop": None}
    whole = client.completions.create(max_tokens=SMALL_HPARAMS["n_ctx"] - n_prompt, **request).choices[0]
    assert whole.finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 64 tokens"):
        client.completions.create(max_tokens=SMALL_HPARAMS["n_ctx"] - n_prompt + 1, **request)


def test_a_token_that_starts_with_the_stop_string_has_no_logprobs(client):
    """The stop string is the whole text of a token: that token, and its logprobs, are left out."""
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, logprobs=0).choices[0]
    tokens, offsets = whole.logprobs.tokens, whole.logprobs.text_offset
    k = next(k for k in range(3, len(tokens)) if tokens[k].strip() and whole.text.find(tokens[k]) == offsets[k])
    stopped = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, logprobs=0, stop=tokens[k]
    ).choices[0]
    assert (stopped.text, stopped.finish_reason) == (whole.text[: offsets[k]], "stop")
    assert stopped.logprobs.tokens == tokens[:k] and stopped.logprobs.text_offset == offsets[:k]


def test_sigterm_finishes_the_request_in_flight_then_exits_143(small_models_dir):
    with ServerProcess("--models_dir", str(small_models_dir)) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0, timeout=30)
        stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=0, stream=True)
        first = next(iter(stream))
        served.process.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert first.choices[0].text + "".join(c.choices[0].text for c in rest)
        assert rest[-1].choices[0].finish_reason == "length"
        assert served.process.wait(timeout=60) == 143
        served.reader.join(timeout=10)
        assert "terminated (SIGTERM)" in served.log()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--serve", PROMPT], "--serve takes its prompts from requests: not with a prompt"),
        (["--serve", "--port", "70000"], "port must be a whole number from 0 to 65535"),
        (["--serve", "--temperature", "0.5"], "--temperature is not for --serve: each request gives its own options"),
        ([PROMPT, "--port", "9000"], "--host and --port go with --serve"),
    ],
)
def test_serve_usage_mistakes_exit_2(capsys, args, message):
    result = cli(capsys, *args)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "flag",
    [
        ("-n", "5"),
        ("--temperature", "0.5"),
        ("--top_k", "3"),
        ("--top_p", "0.5"),
        ("--seed", "1"),
        ("--nostop_at_end_of_text",),
        ("--show_probs", "2"),
        ("--n_samples", "2"),
        ("--score",),
        ("--stride", "3"),
        ("--prepend_end_of_text",),
    ],
)
def test_serve_refuses_every_option_that_a_request_brings(capsys, flag):
    from cli.flags import REQUEST_OPTIONS

    name = flag[0].lstrip("-").removeprefix("no") if flag[0] != "-n" else "n_tokens_to_generate"
    assert name in REQUEST_OPTIONS
    result = cli(capsys, "--serve", *flag)
    assert result.returncode == 2 and f"--{name} is not for --serve" in result.stderr, result.stderr


def test_a_port_in_use_fails_at_once(capsys, small_models_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(capsys, "--serve", "--port", str(port), "--models_dir", str(small_models_dir))
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


def test_the_page_in_chromium(server, client, tmp_path):
    """A real browser types a prompt, generates, and reads back the tokens, their probabilities and the
    attention heat map; the screenshot is left in the test's folder."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    greedy = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.goto(f"{server.url}/")
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#prompt", PROMPT)
            page.fill("#max_tokens", "8")
            page.fill("#temperature", "0")
            page.click("#generate")
            page.wait_for_selector("#generated[data-done=true]", timeout=60_000)
            page.wait_for_selector("#heatmap .cell")
            written = PROMPT + greedy.choices[0].text  # the heat map covers what the model wrote too
            prompt_ids = page.eval_on_selector_all(
                "#prompt_tokens .token", "spans => spans.map(s => Number(s.dataset.id))"
            )
            assert prompt_ids == PROMPT_IDS
            texts = page.eval_on_selector_all("#generated .token", "spans => spans.map(s => s.textContent)")
            probs = page.eval_on_selector_all("#generated .token", "spans => spans.map(s => Number(s.dataset.prob))")
            assert "".join(texts) == greedy.choices[0].text
            np.testing.assert_allclose(probs, np.exp(greedy.choices[0].logprobs.token_logprobs), atol=1e-4)
            for layer, head in [("0", "0"), ("1", "3")]:
                page.select_option("#layer", layer)
                page.select_option("#head", head)
                page.wait_for_selector(f"#heatmap[data-layer='{layer}'][data-head='{head}']")
                weights = page.eval_on_selector_all(
                    "#heatmap .cell", "cells => cells.map(c => Number(c.dataset.weight))"
                )
                _, expected = post(
                    f"{server.url}/v1/attention",
                    json.dumps({"prompt": written, "layer": int(layer), "head": int(head)}).encode(),
                )
                assert weights == [w for row in expected["weights"] for w in row]
            page.hover("#generated .token >> nth=0")
            assert "the model's top choices" in page.inner_text("#tip")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            check_the_views(page, server, written, tmp_path)
        finally:
            browser.close()
    assert not errors, errors
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_the_views(page, server, text, tmp_path):
    """The lens, every head and the next-token bars as the API gives them for the prompt and what the
    model wrote; a sampling control moved, and heads switched off; each view's screenshot in tmp_path."""

    def api(path, **request):
        status, answer = post(f"{server.url}{path}", json.dumps({"prompt": text, **request}).encode())
        assert status == 200, answer
        return answer

    def bars(selector):
        names = page.eval_on_selector_all(
            f"{selector} .name", "ns => ns.map(n => [Number(n.dataset.id), Number(n.dataset.sampled)])"
        )
        return [i for i, _ in names], [p for _, p in names]

    page.wait_for_selector("#lens[data-done='[]'] td")
    lens = api("/v1/lens", top=5)["layers"]
    shown = page.eval_on_selector_all(
        "#lens tr", "rows => rows.slice(1).map(r => [...r.cells].slice(1).map(c => Number(c.dataset.id)))"
    )
    assert shown == [[position[0]["id"] for position in layer] for layer in lens]
    heads = page.eval_on_selector_all("#heads canvas", "cs => cs.map(c => JSON.parse(c.dataset.weights))")
    assert heads == [head for layer in api("/v1/attention", layer="all")["weights"] for head in layer]
    expected = api("/v1/next", top=10)["tokens"]
    assert bars("#next") == ([t["id"] for t in expected], [t["sampled_prob"] for t in expected])
    page.fill("#next_temperature", "0.5")
    page.fill("#next_top_k", "3")
    page.wait_for_selector("""#next[data-done='{"temperature":0.5,"top_k":3,"top_p":1}']""")
    moved = api("/v1/next", top=10, temperature=0.5, top_k=3)["tokens"]
    assert bars("#next")[1] == [t["sampled_prob"] for t in moved] != [t["sampled_prob"] for t in expected]
    page.check("#switches input[data-layer='0'][data-head='1']")
    page.wait_for_selector("#ablated[data-done='[[0,1]]'] .name")
    page.wait_for_selector("#lens[data-done='[[0,1]]'] td")
    ablated = api("/v1/next", top=10, temperature=0.5, top_k=3, ablate=[[0, 1]])["tokens"]
    assert bars("#ablated") == ([t["id"] for t in ablated], [t["sampled_prob"] for t in ablated])
    assert [t["logprob"] for t in ablated] != [t["logprob"] for t in moved]
    for name in ("heads", "lens", "next", "ablated"):
        page.locator(f"#{name}").screenshot(path=str(tmp_path / f"page-{name}.png"))
    overtaken = api("/v1/lens", top=5, ablate=[[0, 1], [0, 2]])["layers"]
    page.evaluate(HOLD_THE_NEXT_LENS)
    page.check("#switches input[data-layer='0'][data-head='2']")  # its lens answer comes back last
    page.uncheck("#switches input[data-layer='0'][data-head='2']")
    page.wait_for_timeout(2000)
    shown = page.eval_on_selector_all(
        "#lens tr", "rows => rows.slice(1).map(r => [...r.cells].slice(1).map(c => Number(c.dataset.id)))"
    )
    lens = api("/v1/lens", top=5, ablate=[[0, 1]])["layers"]
    assert (
        shown
        == [[position[0]["id"] for position in layer] for layer in lens]
        != [[position[0]["id"] for position in layer] for layer in overtaken]
    )


HOLD_THE_NEXT_LENS = """() => {  // the next answer of /v1/lens reaches the page 1.5 s late, after newer ones
  const fetch = window.fetch;
  let held = false;
  window.fetch = async (path, init) => {
    const response = await fetch(path, init);
    if (path === "/v1/lens" && !held) {
      held = true;
      await new Promise((resolve) => setTimeout(resolve, 1500));
    }
    return response;
  };
}"""


@pytest.fixture
def in_process(small_params, encoder, monkeypatch):
    """The server in this process, on the small model (so that a test can slow the model down or break
    it): (base URL, the rows the decoder was given)."""
    from serve.app import App
    from serve.server import bind, serve

    server = bind("127.0.0.1", 0, 64)
    app = App(MODEL, encoder, small_params, SMALL_HPARAMS["n_head"], batch_size=16)
    rows, put = [], app.decoder.waiting.put
    monkeypatch.setattr(app.decoder.waiting, "put", lambda row: (rows.append(row), put(row)))
    thread = threading.Thread(target=serve, args=(server, app))
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", rows
    server.shutdown()
    thread.join()


def test_a_client_that_leaves_costs_no_more_compute(in_process, monkeypatch):
    import gpt2

    url, rows = in_process
    step = gpt2.gpt2_cached
    monkeypatch.setattr(gpt2, "gpt2_cached", lambda *args, **kwargs: (time.sleep(0.02), step(*args, **kwargs))[1])
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 50, "stream": True, "n": 2}).encode()
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Type: application/json\r\n")
        connection.sendall(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        shown = b""
        while b"data: " not in shown:
            shown += connection.recv(4096)
    deadline = time.monotonic() + 10
    while not all(row.cancelled for row in rows) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # what the decoder made after the client left: at most the step it was on
    made = [len(row.ids) for row in rows]
    assert len(rows) == 2 and all(row.cancelled for row in rows) and max(made) < 20, made
    time.sleep(0.2)
    assert [len(row.ids) for row in rows] == made  # and nothing since
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3).choices[0].finish_reason == "length"


def test_a_failure_of_the_model_costs_its_requests_not_the_server(in_process, monkeypatch):
    import batching

    url, _ = in_process
    prefill, failures = batching.prefill_rows, []

    def failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise MemoryError("no memory left")
        return prefill(*args, **kwargs)

    monkeypatch.setattr(batching, "prefill_rows", failing_once)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
    assert "the model failed on this request: MemoryError: no memory left" in caught.value.message
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3).choices[0].finish_reason == "length"


def test_a_failure_after_a_request_joined_fails_the_newcomer_too(in_process, monkeypatch):
    """B joins A's running batch; the next step fails: both requests get the error, neither hangs."""
    import batching
    import gpt2

    url, _ = in_process
    prefill, step, prefills = batching.prefill_rows, gpt2.gpt2_cached, []
    monkeypatch.setattr(
        batching, "prefill_rows", lambda *args, **kwargs: (prefills.append(1), prefill(*args, **kwargs))[1]
    )

    def slow_then_failing(*args, **kwargs):
        time.sleep(0.03)
        if len(prefills) >= 2 and kwargs.get("pad") is not None:  # a step of the batch B has joined
            raise MemoryError("no memory left")
        return step(*args, **kwargs)

    monkeypatch.setattr(gpt2, "gpt2_cached", slow_then_failing)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=20)
    stream = client.completions.create(model=MODEL, prompt="Hello", max_tokens=40, temperature=0, stream=True)
    next(iter(stream))  # A is running
    with pytest.raises(openai.InternalServerError, match="no memory left"):
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5)
    with pytest.raises(openai.APIError, match="no memory left"):
        list(stream)


def test_a_request_joins_the_batch_that_is_running(in_process, monkeypatch):
    """B, sent while A decodes, joins A's batch between two steps (its longer prompt moves A's rows to
    the right in the cache) and ends long before A; both get the texts they get alone."""
    import gpt2

    url, rows = in_process
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    a = {"prompt": "Hello", "max_tokens": 40, "temperature": 0}
    b = {"prompt": PROMPT + " and then, much later,", "max_tokens": 5, "temperature": 0.9, "seed": 4}
    alone = [client.completions.create(model=MODEL, **request).choices[0].text for request in (a, b)]
    step = gpt2.gpt2_cached
    monkeypatch.setattr(gpt2, "gpt2_cached", lambda *args, **kwargs: (time.sleep(0.03), step(*args, **kwargs))[1])
    stream = client.completions.create(model=MODEL, stream=True, **a)
    chunks = [next(iter(stream))]  # A is running
    b_text = client.completions.create(model=MODEL, **b).choices[0].text
    b_done = len(rows[-2].ids)  # how far A had come when B ended
    chunks += list(stream)
    assert b_text == alone[1] and "".join(c.choices[0].text for c in chunks) == alone[0]
    assert b_done < 30, b_done


def test_an_error_inside_a_stream_ends_it_with_an_error_event(in_process, monkeypatch):
    """The status line is sent: the error must be an event of the stream, then [DONE], not a second
    HTTP response written into the body."""
    from serve.completions import Completion

    url, _ = in_process
    chunks = Completion.chunks

    def failing(self, connection):
        stream = chunks(self, connection)
        yield next(stream)
        raise KeyError("a bug")

    monkeypatch.setattr(Completion, "chunks", failing)
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "stream": True}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", body)
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [line for line in response.read().decode().split("\n") if line]
    assert "HTTP/1.1" not in "".join(events)
    assert json.loads(events[0].removeprefix("data: "))["choices"]
    assert json.loads(events[1].removeprefix("data: "))["error"]["type"] == "server_error"
    assert events[2:] == ["data: [DONE]"]


def test_a_stream_whose_client_left_before_its_first_chunk_stops_its_rows(small_params, encoder):
    """The server closes a stream however it ended, its headers' write included: the rows stop then
    too, not after max_tokens more tokens for nobody."""
    import types

    from serve import completions

    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 50, "stream": True, "n": 2}
    options = completions.read_completion_request(body, MODEL)
    completion = completions.Completion(options, MODEL, encoder, small_params, SMALL_HPARAMS["n_head"])
    request = types.SimpleNamespace(connection=None, n_tokens=None)
    completions.Streamed(completion, request).close()  # never iterated: the headers' write failed
    assert all(row.cancelled for row in completion.rows) and request.n_tokens == 0
