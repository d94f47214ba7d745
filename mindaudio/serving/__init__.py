"""The transcription server: an HTTP and WebSocket front (Starlette, run by uvicorn) to one model worker.

- `audio`: uploads and live PCM as signals, and the per-request limits;
- `worker`: the thread that owns the MindSpore model and batches requests that arrive together;
- `recognition`: signals -> transcripts with word times, through the worker;
- `live`: live streams (re-decoding partials for bidirectional models; an adapter for a streaming recogniser);
- `service`: the above built from a config and a checkpoint;
- `app`: the ASGI application (the page, /health, POST /transcribe, WebSocket /stream).

Beside training at the top of the package's layers: it imports inference and the layers below.
"""
