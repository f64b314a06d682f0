"""The OpenAPI schema of the synthesis endpoints (no model needed): POST /v1/tts and POST /v1/tts/stream take
the same form, every field optional, as one multipart body with a file part for the reference clip."""
from __future__ import annotations

import pytest

from speech.inference import SynthesisOptions
from speech.serve.app import SynthesisForm, create_app

FIELDS = {"text", "reference", "voice_id", "prompt_text", "seed", "sampling", "top_k", "top_p", "min_len_ratio",
          "max_len_ratio", "n_steps", "cfg_w", "solver", "stop_threshold"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app(None, None).openapi()  # the schema reads no model


def form_fields(schema: dict, path: str) -> tuple[str, dict]:
    """The media type and the fields (name -> JSON schema) of an endpoint's request body, refs and allOf resolved."""
    body = schema["paths"][path]["post"]["requestBody"]
    assert not body.get("required"), "every field has a default: the body itself is optional"
    (media_type, content), = body["content"].items()

    def resolve(node: dict) -> dict:
        if "$ref" in node:
            return resolve(schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]])
        fields = dict(node.get("properties", {}))
        for part in node.get("allOf", []):
            fields.update(resolve(part))
        assert not node.get("required"), node
        return fields

    return media_type, resolve(content["schema"])


def test_both_synthesis_endpoints_take_the_same_form_fields(schema):
    media, fields = form_fields(schema, "/v1/tts")
    assert media == "multipart/form-data" and set(fields) == FIELDS
    assert form_fields(schema, "/v1/tts/stream") == (media, fields)
    reference = fields["reference"]["anyOf"][0]
    assert reference == {"type": "string", "contentMediaType": "application/octet-stream"}  # a file picker in /docs
    assert fields["n_steps"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 100}
    assert fields["sampling"]["anyOf"][0]["enum"] == ["config", "ras", "topk", "greedy"]
    assert fields["text"]["default"] == "" and "description" in fields["voice_id"]


def test_form_options_override_only_what_is_given():
    defaults = SynthesisOptions(seed=5, top_k=30, n_steps=8)
    options = SynthesisForm(text="hi", voice_id="v", n_steps=4, solver="midpoint").options(defaults)
    assert options == SynthesisOptions(seed=5, top_k=30, n_steps=4, solver="midpoint")
    assert SynthesisForm().options(defaults) == defaults
    # every sampling option of the form is a SynthesisOptions field (the rest say what and with whose voice)
    options_fields = set(SynthesisOptions.__dataclass_fields__)
    assert set(SynthesisForm.model_fields) - options_fields == {"text", "voice_id", "prompt_text"}
