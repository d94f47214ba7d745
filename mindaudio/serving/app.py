"""The ASGI application (Starlette): the page, /health, POST /transcribe and the /stream WebSocket.

Every error a client can cause is answered and the server goes on: over a limit -> 413, audio it
cannot use -> 400, both as JSON {"error": "..."} (on the WebSocket: an {"error": ...} message and a
close). A bug inside a request is logged and answered 500; it never stops the server.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from mindaudio.serving.audio import (BadAudio, RequestTooLarge, decode_upload, parse_stream_start,
                                     pcm_to_float)
from mindaudio.serving.service import Service

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
# WebSocket close codes (RFC 6455): 1008 policy violation (a malformed stream), 1009 too big.
CLOSE_BAD_STREAM = 1008
CLOSE_TOO_BIG = 1009


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# A body over the limit is still read (and thrown away) up to this many bytes past it before the
# 413 goes out: a client that sends its whole body before reading the answer (urllib, curl without
# Expect: 100-continue) then gets the 413 instead of a broken pipe. Larger bodies are cut off.
DRAIN_BYTES = 64 * 1024 * 1024


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body; RequestTooLarge when it exceeds `limit` bytes (known from Content-Length
    or while reading), after draining at most DRAIN_BYTES more of it."""
    declared = request.headers.get("content-length")
    declared = int(declared) if declared is not None and declared.isdigit() else None
    parts, size = [], 0
    if declared is None or declared <= limit:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                break
            parts.append(chunk)
        else:
            return b"".join(parts)
    parts.clear()
    if declared is None or declared <= limit + DRAIN_BYTES:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit + DRAIN_BYTES:
                break
    size_text = f" of {declared} bytes" if declared is not None else ""
    raise RequestTooLarge(f"request body{size_text} over the limit of {limit} bytes")


async def _upload(request: Request, limit: int):
    """(bytes, filename) of the uploaded audio: the raw body (filename from ?filename= or the
    X-Filename header), or the field "file" of a multipart form."""
    body = await _read_body(request, limit)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
        except Exception as err:  # noqa: BLE001  (python-multipart's errors: a malformed form)
            raise BadAudio(f"cannot read the multipart form: {err}") from None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadAudio('a multipart upload must carry the audio in a file field named "file"')
            return await upload.read(), upload.filename or "upload"
        finally:
            await form.close()
    name = request.query_params.get("filename") or request.headers.get("x-filename") or "upload"
    return body, name


def create_app(service: Service) -> Starlette:
    """The application serving `service`'s model."""
    page = PAGE.read_text(encoding="utf-8")
    limits = service.limits

    async def index(request: Request):
        return HTMLResponse(page)

    async def health(request: Request):
        return JSONResponse(service.health())

    async def transcribe(request: Request):
        service.counters["requests"] += 1
        try:
            data, name = await _upload(request, limits.max_upload_bytes)
            signal = await asyncio.to_thread(decode_upload, data, name, service.recognizer.spect.sample_rate, limits)
            del data
            result = await service.recognizer.transcribe(signal)
        except ClientDisconnect:
            return _error(400, "the client went away before its upload ended")  # nobody reads it
        except RequestTooLarge as err:
            service.counters["errors"] += 1
            return _error(413, str(err))
        except BadAudio as err:
            service.counters["errors"] += 1
            return _error(400, str(err))
        except Exception as err:  # noqa: BLE001  (a bug: answered, logged, and the server goes on)
            service.counters["errors"] += 1
            logger.exception("POST /transcribe failed")
            return _error(500, f"internal error: {type(err).__name__}: {err}")
        return JSONResponse({"filename": name, **result.as_dict()})

    async def stream(websocket: WebSocket):
        await websocket.accept()
        service.counters["streams"] += 1
        service.active_streams += 1
        session = None
        try:
            start = await websocket.receive()
            if start["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(start.get("code", 1000))
            if start.get("text") is None:
                raise BadAudio('the first message must be text: JSON {"sample_rate": N, "format": "pcm_s16le"}')
            try:
                rate = parse_stream_start(json.loads(start["text"]))
            except json.JSONDecodeError as err:
                raise BadAudio(f"the first message is not JSON ({err.msg}): send "
                               f'{{"sample_rate": N, "format": "pcm_s16le"}}') from None

            async def send_partial(text: str):
                await websocket.send_json({"partial": text})

            session = service.sessions(rate, send_partial, limits)
            await websocket.send_json({"event": "ready", "sample_rate": rate, "format": "pcm_s16le",
                                       "model_sample_rate": service.recognizer.spect.sample_rate,
                                       "partials": service.description["stream"]["partials"]})
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                if message.get("bytes") is not None:
                    await session.feed(pcm_to_float(message["bytes"]))
                    continue
                try:
                    event = json.loads(message.get("text") or "")
                except json.JSONDecodeError as err:
                    raise BadAudio(f"a text message that is not JSON ({err.msg}): send binary PCM or "
                                   f'{{"event": "end"}}') from None
                if not isinstance(event, dict) or event.get("event") != "end":
                    raise BadAudio(f'unknown message {str(event)[:80]!r}: send binary PCM or {{"event": "end"}}')
                result = await session.finish()
                await websocket.send_json({"final": result.text, "words": result.words,
                                           "duration": round(result.duration, 3),
                                           "processing_seconds": round(result.processing_seconds, 3)})
                await websocket.close()
                return
        except WebSocketDisconnect:
            return  # the client went away: its state is freed below
        except (BadAudio, RequestTooLarge) as err:
            service.counters["errors"] += 1
            await _close_with(websocket, str(err), CLOSE_TOO_BIG if isinstance(err, RequestTooLarge)
                              else CLOSE_BAD_STREAM)
        except Exception as err:  # noqa: BLE001  (a bug: reported to the client, logged, server goes on)
            service.counters["errors"] += 1
            logger.exception("WebSocket /stream failed")
            await _close_with(websocket, f"internal error: {type(err).__name__}: {err}", 1011)
        finally:
            if session is not None:
                await session.close()
            service.active_streams -= 1

    app = Starlette(routes=[Route("/", index), Route("/health", health),
                            Route("/transcribe", transcribe, methods=["POST"]),
                            WebSocketRoute("/stream", stream)],
                    lifespan=_lifespan(service))
    app.state.service = service
    return app


def _lifespan(service: Service):
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()
    return lifespan


async def _close_with(websocket: WebSocket, message: str, code: int) -> None:
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    try:
        await websocket.send_json({"error": message})
        await websocket.close(code=code, reason=message.encode()[:120].decode(errors="ignore"))
    except Exception:  # noqa: BLE001  (the client may already be gone)
        pass
