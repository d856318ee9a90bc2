"""`python gpt2.py --serve`: the model over HTTP, for people and for programs.

- `GET /`: the learner's page (page.html): the prompt as tokens, generation streaming in with each
  token's probability and the model's alternatives, and the attention weights of any layer and head.
- `POST /v1/completions`, `GET /v1/models`: OpenAI's completions API, so that the official `openai`
  client and the tools built on it work unchanged.
- `POST /v1/tokenize`, `/v1/attention`, `/v1/lens`, `/v1/next`: what the page shows of a prompt: its
  tokens, the attention weights of a head or of every head, what each layer would predict (the logit
  lens), and the next token's distribution under the sampling filters; with heads switched off.

Split by layer, as llama.cpp's server is:
- server.py: HTTP, which knows no model: a thread per connection, routes, errors, limits, shutdown.
- app.py: the model, the page and the decoder, and the routes, one line for each endpoint.
- schema.py: the checks of a request's fields, and a prompt's tokens.
- completions.py: OpenAI's completions, whole or streamed, with logprobs.
- decoder.py: the one thread that generates: the requests' rows decode together as one running batch
  (batching.py), a request that comes while a batch runs joining it between two steps.
- views.py: the page's views; top_tokens.py: the most likely tokens, for the views and logprobs.

The forward passes that only read a prompt, the logprobs of an echoed prompt and the page's views, run
on the request's own thread beside the decoder: the weights are never written, and NumPy lets go of the
interpreter's lock while it multiplies; the lens's search of its logits, elementwise work, is shared out
to a thread per core (common.py). The views of one prompt share one forward pass (views.kept_inside).
"""
