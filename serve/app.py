"""What the server serves: the model, its page and its decoder (App), and the routes, one line for each
endpoint. A new endpoint is a function `(app, body, request) -> answer` in a file of its own and a line
in ROUTES.
"""

import functools
import os

from serve import completions, views
from serve.decoder import Decoder
from serve.schema import refuse_unknown, text, tokens_of

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "page.html")


class App:
    """What every request reads: the model, its name, the page and the decoder; and the routes."""

    def __init__(self, model_name, encoder, params, n_head, batch_size):
        self.model_name, self.encoder, self.params, self.n_head = model_name, encoder, params, n_head
        with open(PAGE, "rb") as f:
            self.page = f.read()
        self.decoder = Decoder(params, n_head, batch_size)
        self.decoder.start()
        self.routes = {key: functools.partial(route, self) for key, route in ROUTES.items()}


def page(app, body, request):  # the learner's page
    return app.page


def models(app, body, request):  # OpenAI's list of models, with the sizes the page needs
    model = {"id": app.model_name, "object": "model", "created": 0, "owned_by": "gpt2.py"}
    sizes = {"n_layer": len(app.params["blocks"]), "n_head": app.n_head, "n_ctx": len(app.params["wpe"])}
    model.update(sizes, attention_max_tokens=min(views.ATTENTION_MAX_TOKENS, sizes["n_ctx"]))
    return {"object": "list", "data": [model]}


def tokenize(app, body, request):  # a prompt's tokens: their ids and texts
    refuse_unknown(body, ("prompt",))
    return {"tokens": tokens_of(text("prompt", body.get("prompt")), app.encoder, len(app.params["wpe"]))}


def view(function):  # one of views.py's, as a route
    return lambda app, body, request: function(body, app.encoder, app.params, app.n_head)


ROUTES = {
    "GET /": page,
    "GET /index.html": page,
    "GET /v1/models": models,
    "POST /v1/completions": completions.answer,
    "POST /v1/tokenize": tokenize,
    "POST /v1/attention": view(views.attention_view),
    "POST /v1/lens": view(views.lens_view),
    "POST /v1/next": view(views.next_view),
}
