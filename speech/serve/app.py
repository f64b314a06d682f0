"""The HTTP API (FastAPI) and the demo page, over one :class:`~speech.inference.Synthesizer` (two-stage) or
:class:`~speech.sled.inference.SledSynthesizer` (``--sled``: the continuous AR path, same interface).

    POST /v1/tts          text + a reference clip (upload) or a registered voice id -> audio/wav
    POST /v1/voices       register a reference clip once (speaker vectors computed once)
    GET  /v1/voices       the registered voices;  DELETE /v1/voices/{id}
    POST /v1/tts/stream   the same form -> a chunked audio/wav stream (sizes 0xFFFFFFFF), audio as it is generated
    GET  /health          liveness, queue and batching counters
    GET  /                the demo page;  GET /docs, /redoc  the OpenAPI docs (no CDN needed)

Every refusal is a 4xx with a one-line JSON body ``{"error": "..."}``; a model error is a 500
with a one-line reason, its traceback only in the server log.
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import soundfile as sf
import torch
from fastapi import FastAPI, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from speech.inference import InferenceError, SynthesisOptions, Synthesizer, Utterance
from speech.serve.batcher import DynamicBatcher, QueueFull
from speech.serve.voices import RegistryFull, Voice, VoiceRegistry
from speech.serve.voices import voice_id as make_voice_id

__all__ = ["ServeConfig", "create_app"]

log = logging.getLogger("speech.serve")


@dataclass
class ServeConfig:
    """Limits of what one request may ask for, and the defaults of its sampling options."""

    max_text_chars: int = 500
    max_body_bytes: int = 20 * 2**20
    max_voices: int = 100
    defaults: SynthesisOptions = dataclasses.field(default_factory=SynthesisOptions)


class SynthesisForm(BaseModel):
    """The form fields of POST /v1/tts and POST /v1/tts/stream (one definition for both), besides the
    uploaded clip (``ReferenceClip``). An option left out keeps the server's default
    (``ServeConfig.defaults``); its name is the :class:`SynthesisOptions` field it sets."""

    text: str = Field("", description="what to say")
    voice_id: str | None = Field(None, description="a registered voice (POST /v1/voices)")
    prompt_text: str | None = Field(None, description="transcript of the uploaded clip (one-shot)")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    sampling: Literal["config", "ras", "topk", "greedy"] | None = None
    top_k: int | None = Field(None, ge=1, le=1000)
    top_p: float | None = Field(None, gt=0, le=1)
    min_len_ratio: float | None = Field(None, ge=0, le=50)
    max_len_ratio: float | None = Field(None, gt=0, le=50)
    n_steps: int | None = Field(None, ge=1, le=100)
    cfg_w: float | None = Field(None, ge=0, le=10)
    solver: Literal["euler", "midpoint"] | None = None
    stop_threshold: float | None = Field(None, ge=0, le=1, description="--sled: stop probability threshold")

    def options(self, defaults: SynthesisOptions) -> SynthesisOptions:
        """``defaults`` with the sampling options this form gives."""
        names = {f.name for f in dataclasses.fields(SynthesisOptions)}
        given = {k: v for k, v in self.model_dump(include=names).items() if v is not None}
        return dataclasses.replace(defaults, **given)


# The parameters of /v1/tts and /v1/tts/stream: the form fields (every one optional, so the request body is
# optional in the OpenAPI schema too) and the uploaded reference clip, a file part beside them.
SynthesisFields = Annotated[SynthesisForm, Form(default_factory=SynthesisForm)]
ReferenceClip = Annotated[UploadFile | None, File(description="reference clip (or give voice_id)")]


def _wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono PCM wav header for a stream of unknown length: RIFF and data sizes 0xFFFFFFFF."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def _pcm16(audio: torch.Tensor) -> bytes:
    """Float samples in [-1, 1] -> little-endian 16-bit PCM, rounded as soundfile writes PCM_16."""
    return (audio.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().astype("<i2").tobytes()


def _one_line(message: Any) -> str:
    return " ".join(str(message).split()) or "error"


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` (declared, or counted as it streams in) is a 413."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reason = f"request body larger than {self.max_bytes} bytes (--max_body_mb)"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"error": reason}, status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, reason)
            return message

        await self.app(scope, limited, send)


def create_app(synth: Synthesizer, batcher: DynamicBatcher, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application; ``batcher`` owns every model call."""
    config = config or ServeConfig()
    voices = VoiceRegistry(config.max_voices)
    # /docs and /redoc with their scripts served from here, not a CDN: they work on an offline machine.
    app = FastAPIOffline(
        title="speech-serve",
        version="0.1.0",
        description="Zero-shot TTS: text + a reference voice -> 24 kHz wav. Errors are `{\"error\": \"one line\"}`.",
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.state.synth, app.state.batcher, app.state.voices = synth, batcher, voices
    page = resources.files("speech.serve").joinpath("page.html").read_text(encoding="utf-8")

    # ------------------------------------------------------------------------------ errors

    @app.exception_handler(HTTPException)
    async def _http_error(request: Any, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": _one_line(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        return JSONResponse({"error": _one_line(f"{where}: {err.get('msg', 'invalid')}")}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Any, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": "internal error (details in the server log)"}, status_code=500)

    # ----------------------------------------------------------------------------- helpers

    def check_text(text: str) -> str:
        text = text.strip()
        if not text:
            raise HTTPException(422, "empty text")
        if len(text) > config.max_text_chars:
            raise HTTPException(422, f"text is {len(text)} characters, more than {config.max_text_chars} (--max_text_chars)")
        return text

    def read_clip(data: bytes, filename: str, text: str, prompt_text: str | None) -> Utterance:
        """Validate an uploaded clip exactly as inference.py validates a prompt wav (via a temp file),
        but refuse one over ``max_prompt_seconds`` instead of cutting it."""
        name = Path(filename or "upload").name
        if not data:
            raise HTTPException(422, f"reference clip {name!r} is empty (0 bytes)")
        suffix = Path(name).suffix if Path(name).suffix.isascii() and len(Path(name).suffix) <= 8 else ""
        fd, tmp = tempfile.mkstemp(prefix="speech-serve-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                info = sf.info(tmp)
                seconds = info.frames / info.samplerate
            except Exception as exc:
                reason = _one_line(exc).replace(tmp, name)
                raise HTTPException(415, f"reference clip {name!r} is not audio that can be decoded ({reason})") from None
            if seconds > synth.max_prompt_seconds:
                raise HTTPException(
                    422, f"reference clip {name!r} is {seconds:.1f} s, longer than {synth.max_prompt_seconds:g} s "
                    "(--max_prompt_seconds): cut it")
            try:
                utterance = synth.prepare(name, text, tmp, prompt_text)
            except InferenceError as exc:
                raise HTTPException(422, _one_line(exc).replace(tmp, name)) from None
        finally:
            os.unlink(tmp)
        return dataclasses.replace(utterance, prompt_path=name)

    async def upload(reference: UploadFile | None, text: str, prompt_text: str | None) -> Utterance:
        data = await reference.read()
        return await run_in_threadpool(read_clip, data, reference.filename or "upload", text, prompt_text)

    async def wait(future: Any) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except InferenceError as exc:
            raise HTTPException(422, _one_line(exc)) from None
        except Exception:
            log.exception("synthesis failed")
            raise HTTPException(500, "synthesis failed (internal error; details in the server log)") from None

    def submit(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except QueueFull as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None

    async def build_request(form: SynthesisForm, reference: UploadFile | None) -> tuple[Utterance, SynthesisOptions]:
        """The checked request of /v1/tts and /v1/tts/stream: its utterance and its sampling options."""
        text = check_text(form.text)
        voice_id = (form.voice_id or "").strip() or None
        if (reference is None) == (voice_id is None):
            raise HTTPException(422, "give either a reference clip (field 'reference') or a voice_id, not both" if voice_id
                                else "give a reference clip (field 'reference') or a voice_id")
        if voice_id is not None:
            voice = voices.get(voice_id)
            if voice is None:
                raise HTTPException(404, f"unknown voice id {voice_id!r} (GET /v1/voices lists them)")
            ids = synth.text_tokenizer.encode(text)
            if not ids:
                raise HTTPException(422, f"text {text!r} gives no tokens")
            utterance = dataclasses.replace(voice.utterance, text=text, text_token=torch.tensor(ids, dtype=torch.long))
        else:
            utterance = await upload(reference, text, form.prompt_text)
        return utterance, form.options(config.defaults)

    # ---------------------------------------------------------------------------- routes

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/health", summary="Liveness, queue and batching counters (503 when the model worker is gone)")
    async def health() -> JSONResponse:
        return JSONResponse(status_code=200 if batcher.alive else 503, content={
            "status": "ok" if batcher.alive else "model worker stopped",
            "model": "sled" if hasattr(synth, "sled") else "two-stage",
            "sample_rate": synth.sample_rate,
            "queued": batcher.queued,
            "max_queue": batcher.max_queue,
            "max_batch": batcher.max_batch,
            "batch_window_ms": round(batcher.window_s * 1000, 3),
            "requests": batcher.requests,
            "batches": batcher.batches,
            "mean_batch_size": round(batcher.requests / batcher.batches, 3) if batcher.batches else None,
            "voices": len(voices),
            "max_text_chars": config.max_text_chars,
            "min_prompt_seconds": synth.min_prompt_seconds,
            "max_prompt_seconds": synth.max_prompt_seconds,
        })

    @app.get("/v1/voices", summary="The registered voices")
    async def list_voices() -> dict[str, Any]:
        return {"voices": voices.list()}

    @app.post("/v1/voices", status_code=201, summary="Register a reference clip as a voice")
    async def add_voice(
        reference: Annotated[UploadFile | None, File(description="reference clip of the voice (wav, flac, ogg...)")] = None,
        name: Annotated[str, Form(max_length=100)] = "",
        prompt_text: Annotated[str | None, Form(description="transcript of the clip (one-shot prompting)")] = None,
    ) -> dict[str, Any]:
        if reference is None:
            raise HTTPException(422, "no reference clip uploaded (field 'reference')")
        utterance = await upload(reference, "voice", prompt_text)
        vid = make_voice_id(utterance)
        known = voices.get(vid)
        if known is not None:
            return known.info()
        speaker = await wait(submit(batcher.call, lambda: synth.speaker_vectors(utterance.prompt)))
        stored = dataclasses.replace(utterance, utt=vid, text="", text_token=torch.zeros(0, dtype=torch.long),
                                     speaker=speaker)
        seconds = utterance.prompt.numel() / synth.sample_rate
        try:
            voice = voices.add(Voice(vid, name.strip() or Path(utterance.prompt_path).stem, stored, seconds))
        except RegistryFull as exc:
            raise HTTPException(409, str(exc)) from None
        return voice.info()

    @app.delete("/v1/voices/{voice_id}", status_code=204, summary="Forget a registered voice")
    async def delete_voice(voice_id: str) -> Response:
        if not voices.remove(voice_id):
            raise HTTPException(404, f"unknown voice id {voice_id!r}")
        return Response(status_code=204)

    @app.post(
        "/v1/tts",
        summary="Text + a reference clip or a voice id -> 24 kHz wav",
        response_class=Response,
        responses={200: {"content": {"audio/wav": {}}, "description": "16-bit PCM wav; X-* headers give timings"}},
    )
    async def tts(
        form: SynthesisFields,
        reference: ReferenceClip = None,
    ) -> Response:
        start = time.monotonic()
        utterance, options = await build_request(form, reference)
        result = await wait(submit(batcher.submit, utterance, options))
        audio = result.synthesis.audio
        buffer = io.BytesIO()
        sf.write(buffer, audio.clamp(-1, 1).numpy(), synth.sample_rate, format="WAV", subtype="PCM_16")
        seconds = audio.numel() / synth.sample_rate
        total = time.monotonic() - start
        headers = {
            "X-Audio-Seconds": f"{seconds:.4f}",
            "X-Tokens": str(result.synthesis.n_tokens),
            "X-Batch-Size": str(result.batch_size),
            "X-Queue-Seconds": f"{result.queue_seconds:.4f}",
            "X-Compute-Seconds": f"{result.compute_seconds:.4f}",
            "X-Total-Seconds": f"{total:.4f}",
            "X-RTF": f"{total / max(seconds, 1e-9):.4f}",
            "Content-Disposition": 'inline; filename="speech.wav"',
        }
        return Response(buffer.getvalue(), media_type="audio/wav", headers=headers)

    @app.post(
        "/v1/tts/stream",
        summary="Text + a reference clip or a voice id -> 24 kHz wav, streamed as it is generated",
        response_class=StreamingResponse,
        responses={200: {"content": {"audio/wav": {}}, "description": "16-bit PCM wav with a streaming header"},
                   409: {"description": "the loaded models cannot stream (a flow that is not causal, a codec "
                                        "without a bounded receptive field)"}},
    )
    async def tts_stream(
        form: SynthesisFields,
        reference: ReferenceClip = None,
    ) -> StreamingResponse:
        """The fields and refusals of /v1/tts; the answer is chunked ``audio/wav``: a 44-byte 16-bit mono
        PCM header whose RIFF and data sizes are 0xFFFFFFFF (length unknown: read to the end of the
        stream), then the samples of each chunk as :meth:`Synthesizer.stream` yields them. Each chunk
        is computed by the model worker thread (one job per chunk), so streams and batches interleave.
        A flow that is not causal (or, on either path, a codec decoder without a bounded receptive
        field, e.g. a flowae) cannot stream: 409 (so is a prompt text without a speech tokenizer on the
        two-stage path). With ``--sled``, the SLED LM's patches go to the codec chunk by chunk. An error after the first chunk ends the stream
        early (logged). The uploaded clip or the voice's clip is the prompt (its speaker vectors are
        recomputed: the stream takes a clip)."""
        utterance, options = await build_request(form, reference)
        try:
            chunks = synth.stream_utterance(utterance, options)
        except InferenceError as exc:
            raise HTTPException(409, _one_line(exc)) from None
        done = object()

        def step() -> Any:
            return next(chunks, done)

        async def next_chunk() -> Any:
            while True:
                try:
                    return await asyncio.wrap_future(batcher.call(step))
                except QueueFull:  # mid-stream: wait for room rather than cut the audio
                    await asyncio.sleep(0.05)

        def close() -> None:  # on the worker thread: the generator's frames hold model state
            try:
                batcher.call(chunks.close)
            except QueueFull:
                pass

        try:
            first = await wait(submit(batcher.call, step))
        except BaseException:
            close()
            raise

        async def body() -> Any:
            yield _wav_stream_header(synth.sample_rate)
            chunk = first
            try:
                while chunk is not done:
                    yield _pcm16(chunk)
                    chunk = await next_chunk()
            except Exception:
                log.exception("streaming synthesis failed after the first chunk: the stream ends early")
            finally:
                close()

        return StreamingResponse(body(), media_type="audio/wav",
                                 headers={"Content-Disposition": 'inline; filename="speech.wav"'})

    return app
